"""The `python` middleware: the user's factory, found on server.python_path.

Each compile calls the factory again with its options, so a reload always
builds fresh middleware objects. Modules are imported once and kept while
their files are unchanged; when any .py file under python_path changed
since the last compile, every module loaded from there is forgotten and
imported afresh (so a package and its submodules never mix old and new
code). A middleware keeps state across reloads only in module globals, and
only while its files do not change; what the factory builds lives as long
as the snapshot.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys
import threading
from inspect import iscoroutinefunction
from pathlib import Path
from typing import Any

from .chain import Step
from .models import PythonMiddleware

_lock = threading.Lock()  # compiles run in a thread; validate in the main one
_signature: dict[Path, bytes] = {}  # each source's sha256 at the last compile
_folders: list[Path] = []  # python_path at the last compile
_inserted: set[str] = set()  # the folders this module put on sys.path
_roots: set[str] = set()  # every folder a compile has used


def sources(folders: list[Path]) -> list[Path]:
    """The .py files under the python_path folders (what a reload watches)."""
    out: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            out.extend(sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts))
    return out[:10000]


def _refresh(folders: list[Path]) -> None:
    global _signature, _folders
    # By content: a same-size edit that kept its mtime (cp -p, rsync -t, a
    # reproducible build's fixed timestamps) is still a change, as it is
    # for the config digest that made this compile happen.
    signature = {}
    for path in sources(folders):
        try:
            signature[path] = hashlib.sha256(path.read_bytes()).digest()
        except OSError:
            continue
    if signature == _signature and folders == _folders:
        return
    for path, digest in signature.items():
        if _signature.get(path) != digest:
            # A .pyc is trusted while its source keeps its whole-second mtime
            # and its size: such an edit would import the old code from it.
            with contextlib.suppress(OSError, NotImplementedError):
                os.unlink(importlib.util.cache_from_source(str(path)))
    # Modules of folders that left python_path are forgotten too, or one of
    # the same name in a new folder would never be imported.
    left = [f for f in _folders if f not in folders]
    for folder in left:
        if str(folder) in _inserted and str(folder) in sys.path:
            sys.path.remove(str(folder))
            _inserted.discard(str(folder))
    _signature, _folders = signature, list(folders)
    _roots.update(str(f.resolve()) for f in [*folders, *left])
    roots = sorted(_roots)
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and any(str(Path(file).resolve()).startswith(r + "/") for r in roots):
            del sys.modules[name]
    importlib.invalidate_caches()


def python_step(name: str, cfg: PythonMiddleware, folders: list[Path]) -> Step:
    """Import the factory, call it, and wrap what it returns. ValueError with
    the dotted path of the key at fault when any of it fails."""
    where = f"middlewares.{name}.factory"
    module_name, _, attr = cfg.factory.partition(":")
    with _lock:
        for folder in reversed(folders):  # ahead of any folder an older config named
            if str(folder) in sys.path:
                sys.path.remove(str(folder))
            sys.path.insert(0, str(folder))
            _inserted.add(str(folder))
        _refresh(folders)
        try:
            target: Any = importlib.import_module(module_name)
        except Exception as e:
            raise ValueError(f"{where}: cannot import {module_name!r}: {e!r}") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"{where}: {module_name!r} has no {attr!r}") from None
    if not callable(target):
        raise ValueError(f"{where}: {cfg.factory!r} is not callable")
    try:
        made = target(dict(cfg.options))
    except Exception as e:
        raise ValueError(f"{where}: the factory raised {e!r}") from None
    on_request = getattr(made, "on_request", None)
    on_response = getattr(made, "on_response", None)
    if on_request is None and on_response is None:
        raise ValueError(
            f"{where}: the factory returned {type(made).__name__}, "
            "which has neither on_request nor on_response"
        )
    for hook_name, hook in (("on_request", on_request), ("on_response", on_response)):
        if hook is not None and not callable(hook):
            raise ValueError(f"{where}: {hook_name} of {type(made).__name__} is not callable")
    return Step(
        name,
        "python",
        on_request,
        on_response,
        response_async=on_response is not None and _is_async(on_response),
    )


def _is_async(hook: Any) -> bool:
    return iscoroutinefunction(hook) or iscoroutinefunction(type(hook).__call__)

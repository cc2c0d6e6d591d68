"""pyproxyd.compiled: what setup.py compiles and how a process tells what it runs."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

from pyproxyd import compiled


def test_every_listed_module_exists_and_has_no_async_generator() -> None:
    # mypyc cannot compile async generators: a module that grows one must
    # move it (as bodies.py holds the body streams) or leave the list.
    import ast
    import importlib.util

    for name in compiled.MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        source = Path(spec.origin).with_name(name.rsplit(".", 1)[-1] + ".py").read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.AsyncFunctionDef):
                yields = [n for n in ast.walk(node) if isinstance(n, ast.Yield | ast.YieldFrom)]
                assert not yields, f"{name}.{node.name} is an async generator"


def test_status_tells_compiled_and_stale_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = tmp_path / "fresh.cpython-311-x86_64-linux-gnu.so"
    built.write_bytes(b"")
    (tmp_path / "fresh.py").write_text("")
    old = tmp_path / "edited.cpython-311-x86_64-linux-gnu.so"
    old.write_bytes(b"")
    (tmp_path / "edited.py").write_text("")
    os.utime(old, (1_000_000, 1_000_000))  # built long before the .py was saved
    (tmp_path / "plain.py").write_text("")
    files = {"pkg.fresh": built, "pkg.edited": old, "pkg.plain": tmp_path / "plain.py"}
    for name, file in files.items():
        module = types.ModuleType(name)
        module.__file__ = str(file)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(compiled, "MODULES", tuple(files))

    monkeypatch.setattr(compiled, "IN_CHECKOUT", True)
    assert compiled.status() == (["pkg.fresh", "pkg.edited"], ["pkg.edited"])
    monkeypatch.setattr(compiled, "IN_CHECKOUT", False)  # a wheel's mtimes say nothing
    assert compiled.status() == (["pkg.fresh", "pkg.edited"], [])

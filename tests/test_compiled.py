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

    for name in compiled.MODULES:
        source = compiled.source(name).read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.AsyncFunctionDef):
                yields = [n for n in ast.walk(node) if isinstance(n, ast.Yield | ast.YieldFrom)]
                assert not yields, f"{name}.{node.name} is an async generator"


def test_status_tells_compiled_and_stale_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib.machinery import ExtensionFileLoader, ModuleSpec, SourceFileLoader

    (tmp_path / "sub").mkdir()
    files = {"fresh": "fresh", "edited": "sub/edited", "plain": "plain"}
    for stem in files.values():
        (tmp_path / f"{stem}.py").write_text("")
        (tmp_path / f"{stem}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    os.utime(tmp_path / "fresh.py", (1_000_000, 1_000_000))  # built after the last edit
    os.utime(tmp_path / "plain.py", (1_000_000, 1_000_000))
    os.utime(tmp_path / "sub/edited.cpython-311-x86_64-linux-gnu.so", (1_000_000, 1_000_000))
    names = []
    for key, stem in files.items():
        name = "pkg." + stem.replace("/", ".")
        path = str(tmp_path / f"{stem}.py")
        loader = SourceFileLoader(name, path) if key == "plain" else ExtensionFileLoader(name, path)
        module = types.ModuleType(name)
        module.__spec__ = ModuleSpec(name, loader, origin=path)
        monkeypatch.setitem(sys.modules, name, module)
        names.append(name)

    got = compiled.status(tuple(names), tmp_path, checkout=True)
    assert got == (["pkg.fresh", "pkg.sub.edited"], ["pkg.sub.edited"])
    # an installed wheel's mtimes say nothing
    assert compiled.status(tuple(names), tmp_path, checkout=False) == (got[0], [])


def test_a_process_started_elsewhere_runs_what_the_suite_runs(tmp_path: Path) -> None:
    # The console script runs from any directory: the build must live inside
    # the package (mypyc's shared library once landed at the top of the
    # checkout, where only a process started there could import it).
    import subprocess

    code = "from pyproxyd.compiled import status; print(len(status()[0]))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(compiled.status()[0])


def test_every_compiled_module_says_so_first() -> None:
    # mypyc holds a compiled module to stricter rules (declared types checked
    # at run time, no async generators): its reader must know at once.
    import ast

    from pyproxyd.compiled import OWN, source

    for name in OWN:  # (the vendored ones are python-hyper's, as released)
        doc = ast.get_docstring(ast.parse(source(name).read_text())) or ""
        assert doc.splitlines()[0].startswith("Compiled by mypyc"), name


def test_no_compiled_function_reuses_an_exception_name_for_two_types() -> None:
    # mypyc gives an `except ... as NAME` variable the type of its first clause
    # in the function: a later clause of another native type binding the same
    # NAME raises TypeError instead of handling the exception.
    import ast

    from pyproxyd.compiled import MODULES, source

    found = []
    for name in MODULES:
        for fn in ast.walk(ast.parse(source(name).read_text())):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            types: dict[str, set[str]] = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.ExceptHandler) and node.name:
                    caught = ast.unparse(node.type) if node.type else "BaseException"
                    types.setdefault(node.name, set()).add(caught)
            found += [(name, fn.name, var) for var, kinds in types.items() if len(kinds) > 1]
    assert found == []

"""The build backend: setuptools, plus what the mypyc build of the request path needs.

PYPROXYD_COMPILE decides how a wheel is built (`pip install .`, `python -m build`):

    unset   compiled when a C compiler and the Python headers are found; else pure
            Python, with one line saying so. Editable installs stay pure (a checkout
            compiles in place with scripts/compile.sh).
    1       compiled, or the build fails
    0       pure Python

The compiled build runs mypy (which carries mypyc) over the package, with the
configuration `mypy pyproxyd` uses, pydantic plugin included: so that it sees
the same types, the runtime dependencies are build requirements too, and all
of them only when the build compiles. setup.py asks `plan()` the same question.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401 - the rest of the backend, as setuptools has it
    build_editable,
    build_sdist,
    build_wheel,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

ROOT = Path(__file__).resolve().parent
MYPYC = "mypy>=2.4"
HOW = (
    "install gcc and the Python headers (Debian: apt-get install gcc python3-dev) and "
    "install again (PYPROXYD_COMPILE=1 makes a build that cannot compile fail)"
)


@dataclass(frozen=True)
class Plan:
    compile: bool
    required: bool  # PYPROXYD_COMPILE=1: fail rather than fall back to pure Python
    why_pure: str = ""
    missing_tools: bool = False  # pure for want of a compiler or headers: say how to get them

    def pure_line(self) -> str:
        line = f"building pure Python ({self.why_pure})"
        if self.missing_tools:
            line += f"; for the compiled request path (about 1.4x the req/s per core) {HOW}"
        return line


def plan(env: Mapping[str, str], *, editable: bool, compiler: bool, headers: bool) -> Plan:
    want = env.get("PYPROXYD_COMPILE", "").strip()
    if want not in ("", "0", "1"):
        raise ValueError(f"PYPROXYD_COMPILE={want!r}: 1 (compile), 0 (pure) or unset (auto)")
    if want == "1":
        return Plan(compile=True, required=True)
    if want == "0":
        return Plan(compile=False, required=False, why_pure="PYPROXYD_COMPILE=0")
    if editable:
        why = "an editable install; scripts/compile.sh compiles a checkout in place"
        return Plan(compile=False, required=False, why_pure=why)
    missing = [n for n, ok in (("C compiler", compiler), ("Python headers", headers)) if not ok]
    if missing:
        why = "no " + " and no ".join(missing)
        return Plan(compile=False, required=False, why_pure=why, missing_tools=True)
    return Plan(compile=True, required=False)


def c_compiler() -> str | None:
    """The compiler setuptools would run ($CC, else the one Python was built with)."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(cc.split()[0])


def python_headers() -> bool:
    return (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file()


def current_plan(*, editable: bool) -> Plan:
    return plan(os.environ, editable=editable, compiler=c_compiler() is not None,
                headers=python_headers())  # fmt: skip


def say(line: str) -> None:
    """One line for whoever builds: pip shows it with -v, `python -m build` always."""
    print(f"pyproxyd: {line}", file=sys.stderr, flush=True)


def compile_requires() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    return [MYPYC, *project["dependencies"]]


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    extra = compile_requires() if current_plan(editable=False).compile else []
    return [*_setuptools.get_requires_for_build_wheel(config_settings), *extra]


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    extra = compile_requires() if current_plan(editable=True).compile else []
    return [*_setuptools.get_requires_for_build_editable(config_settings), *extra]

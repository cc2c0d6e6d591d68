"""The build: the request path compiled by mypyc where it can be; metadata is in pyproject.toml.

    pip install .                      # compiled with a C compiler and the Python headers,
                                       # else pure Python (one line says so; pip -v shows it)
    PYPROXYD_COMPILE=1 pip install .   # compiled, or fail; PYPROXYD_COMPILE=0: pure
    scripts/compile.sh                 # the same compile, in place, for a checkout

pyproxyd_build.py (the build backend) decides, and declares mypy and the runtime
dependencies as build requirements when it compiles. The compiled modules are the
same source, type-checked and turned into C by mypyc (as black and mypy ship
theirs): per request they cost about half the Python time (scripts/bench/hotpath.py).
Modules with async generators, config and CLI code stay interpreted;
`pyproxyd --version` and the `listening` log line count the compiled ones.
"""

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # a build runs setup.py alone
import pyproxyd_build as backend
from pyproxyd.compiled import MODULES, source
from pyproxyd.shipped import SHIPPED

ROOT = Path(__file__).resolve().parent

# The commands that build extensions; metadata, sdist and the requirements
# query (egg_info) run this file too, and must not wait for mypyc.
BUILDS = {"bdist_wheel", "build", "build_ext", "install", "editable_wheel"}


class BuildPy(build_py):
    """Puts the files of a VM install (`pyproxyd files`) into the package's share/."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install reads them in the checkout
        share = Path(self.build_lib) / "pyproxyd" / "share"
        for item in SHIPPED:
            target = share / item.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / item.source, target)


class BuildExt(build_ext):
    """Without PYPROXYD_COMPILE=1, a C build that fails leaves a pure-Python package."""

    required = True

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:
            if self.required:
                raise
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.extensions = []
            why = f"{type(e).__name__}; the compiler's lines above say more"
            backend.say(f"building pure Python: the C build failed ({why}); {backend.HOW}")


def mypyc_extensions(plan: "backend.Plan") -> list:
    if not plan.compile:
        backend.say(plan.pure_line())
        return []
    backend.say(f"compiling the request path with mypyc: {len(MODULES)} modules, a few minutes "
                "(PYPROXYD_COMPILE=0 skips it)")  # fmt: skip
    try:
        from mypyc.build import mypycify
    except ImportError:
        if plan.required:
            raise
        backend.say(
            f"building pure Python: mypy (which carries mypyc) is not installed; {backend.HOW}"
        )
        return []
    try:
        return mypycify(
            [str(source(m, Path("pyproxyd"))) for m in MODULES],
            opt_level="3",
            debug_level="0",
            # The modules' shared C library goes inside the package (a top-level
            # one would not be found by an editable install run from elsewhere).
            group_name="pyproxyd.native",
        )
    except (Exception, SystemExit) as e:  # mypyc exits on a type error
        if plan.required:
            raise
        backend.say(f"building pure Python: mypyc failed ({e!r}); {backend.HOW}")
        return []


ext_modules = []
if BUILDS & set(sys.argv[1:]):
    plan = backend.current_plan(editable="editable_wheel" in sys.argv)
    ext_modules = mypyc_extensions(plan)
    BuildExt.required = plan.required

setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPy, "build_ext": BuildExt})

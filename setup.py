"""Optional mypyc build of the request path; everything else is in pyproject.toml.

    pip install "mypy>=2.4" setuptools wheel    # mypyc, and what a build without isolation needs
    PYPROXYD_COMPILE=1 pip install --no-build-isolation .   # and a C compiler, Python headers
    scripts/compile.sh                                       # the same, in place, for a checkout

Without PYPROXYD_COMPILE=1 this is a plain pure-Python install. The compiled
modules are the same source, type-checked and turned into C by mypyc (as black
and mypy ship theirs): per request they cost about half the Python time
(scripts/bench/hotpath.py). Modules with async generators, config and
CLI code stay interpreted; the `listening` log line counts the compiled ones.
"""

import os
import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # a build runs setup.py alone
from pyproxyd.compiled import MODULES, source

ext_modules = []
if os.environ.get("PYPROXYD_COMPILE") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(
        [str(source(m, Path("pyproxyd"))) for m in MODULES],
        opt_level="3",
        debug_level="0",
        # The modules' shared C library goes inside the package (a top-level
        # one would not be found by an editable install run from elsewhere).
        group_name="pyproxyd.native",
    )

setup(ext_modules=ext_modules)

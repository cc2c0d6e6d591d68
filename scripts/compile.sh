#!/usr/bin/env bash
# Compile the request path with mypyc, in place: the .so files sit beside the
# .py files, and Python imports an extension before a source file.
#
#   scripts/compile.sh           # build (sets up .venv first, as scripts/test.sh)
#   scripts/compile.sh --clean   # remove the build: pure Python again
#
# The modules are listed in pyproxyd/compiled.py; setup.py builds them when
# PYPROXYD_COMPILE=1. Needs a C compiler and the Python headers (installed
# with apt-get when run as root). After editing a compiled module, build
# again: `pyproxyd run` logs a warning when a .py is newer than its build.
set -euo pipefail

# shellcheck source=scripts/install_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/install_lib.sh" # test.sh's helpers, compiler_ready; runs nothing

clean() {
  compiled_files | xargs -r rm -f
  rm -rf "$REPO/build"
}

build() {
  cd "$REPO"
  setup_venv test # mypy (which carries mypyc) is a test extra
  compiler_ready "$VENV/bin/python"
  clean
  say "mypyc: compiling $("$VENV/bin/python" -c 'from pyproxyd.compiled import MODULES; print(len(MODULES))') modules"
  PYPROXYD_COMPILE=1 "$VENV/bin/python" setup.py -q build_ext --inplace >"$REPO/build.log" 2>&1 || {
    tail -40 "$REPO/build.log" >&2
    return 1
  }
  rm -f "$REPO/build.log"
  "$VENV/bin/python" -c '
from pyproxyd.compiled import MODULES, status
compiled, stale = status()
missing = sorted(set(MODULES) - set(compiled))
print(f"compiled {len(compiled)} of {len(MODULES)} modules" + (f"; not compiled: {missing}" if missing else ""))
raise SystemExit(1 if missing or stale else 0)'
}

if [ "${1:-}" = "--clean" ]; then
  clean
else
  build
fi

#!/usr/bin/env bash
# Helpers for the scripts that build or install pyproxyd (compile.sh, demo.sh,
# ci_install_check.sh), on top of test.sh's (REPO, VENV, say, find_python,
# as_root, apt_install). Sourced; runs nothing.

# shellcheck source=scripts/test.sh
source "$(dirname "${BASH_SOURCE[0]}")/test.sh"

# compiler_ready PYTHON: a C compiler and PYTHON's headers are there, installed
# with apt-get when run as root and missing; otherwise says what is missing.
compiler_ready() {
  local py=$1 missing=() ver include
  command -v cc >/dev/null 2>&1 || missing+=(gcc)
  ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  include=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  [ -f "$include/Python.h" ] || missing+=("python$ver-dev")
  [ ${#missing[@]} -eq 0 ] && return 0
  if as_root; then
    say "apt-get install ${missing[*]}"
    apt_install "${missing[@]}"
  else
    echo "error: compiling needs ${missing[*]} (apt-get install ${missing[*]})" >&2
    return 1
  fi
}

# new_venv DIR: a venv at DIR made with find_python's interpreter (a broken one is replaced).
new_venv() {
  local dir=$1 py ver
  [ -x "$dir/bin/python" ] && "$dir/bin/python" -c '' 2>/dev/null && return 0
  rm -rf "$dir"
  py=$(find_python)
  "$py" -m venv "$dir" 2>/dev/null && return 0
  rm -rf "$dir" # Debian ships venv (ensurepip) apart from the interpreter
  ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  if as_root && apt_install "python$ver-venv"; then
    "$py" -m venv "$dir"
  else
    echo "error: '$py -m venv' failed; install python$ver-venv (apt-get install python$ver-venv)" >&2
    return 1
  fi
}

# pip_quiet: pip's options for scripts: quiet, and no progress bars in CI logs.
pip_quiet=(-q --disable-pip-version-check)
if [ "${CI:-}" = "true" ]; then
  pip_quiet+=(--progress-bar off)
fi

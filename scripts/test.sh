#!/usr/bin/env bash
# Set up .venv and run the whole test suite: ruff check, ruff format --check,
# mypy, pytest on the source, and pytest again with the request path compiled by
# mypyc (scripts/compile.sh; PYPROXYD_TEST_COMPILED=0 skips that run).
#
#   scripts/test.sh                        # everything
#   scripts/test.sh -x tests/test_config.py   # extra arguments go to pytest
#
# Works from any directory and on a fresh Debian machine: it creates .venv
# (python3.11, or python3 when that is 3.11 or newer), installs the project
# with its test extras, and, when run as root, installs the system packages
# the tests use (redis-server, etcd, wrk, promtool, chromium) if they are missing.
# Exits non-zero when any step fails; every check runs even when an earlier
# one failed.
#
# scripts/demo.sh sources this file for setup_venv; sourced, it runs nothing.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$REPO/.venv"

say() { printf '\n==> %s\n' "$*"; }

find_python() {
  local py
  for py in python3.11 python3; do
    if command -v "$py" >/dev/null 2>&1 &&
      "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$py"
      return 0
    fi
  done
  echo "error: Python 3.11 or newer is needed (python3.11 or python3)" >&2
  return 1
}

as_root() { [ "$(id -u)" -eq 0 ]; }

# The mypyc build's files (scripts/compile.sh): extensions inside the package.
compiled_files() { find "$REPO/pyproxyd" \( -name '*.so' -o -name '*.pyd' \); }

apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "warning: no apt-get to install $*" >&2
    return 1
  fi
  if [ "$apt_updated" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

make_venv() {
  local py
  py=$(find_python)
  say "creating .venv with $py ($("$py" --version 2>&1))"
  if "$py" -m venv "$VENV"; then
    return 0
  fi
  # Debian ships venv (ensurepip) separately from the interpreter.
  rm -rf "$VENV"
  local ver
  ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  if as_root && apt_install "python$ver-venv"; then
    "$py" -m venv "$VENV"
  else
    echo "error: '$py -m venv' failed; install python$ver-venv (apt-get install python$ver-venv)" >&2
    return 1
  fi
}

# setup_venv [EXTRAS]: create .venv if needed and install the project into it
# (editable, with the optional dependencies EXTRAS, e.g. "test"). The install
# is skipped when pyproject.toml has not changed since the last one.
setup_venv() {
  local extras=${1:-}
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
    rm -rf "$VENV"
    make_venv
  fi
  # The checkout itself on the venv's path: scripts import harness/ (the
  # suite's real backends) and their own siblings as they import pyproxyd.
  "$VENV/bin/python" -c 'import site, sys; open(site.getsitepackages()[0] + "/pyproxyd-dev.pth", "w").write(sys.argv[1] + "\n")' "$REPO"
  local stamp="$VENV/.installed${extras:+-$extras}"
  local digest
  digest=$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$digest" ]; then
    return 0
  fi
  say "pip install -e '.${extras:+[$extras]}'"
  local quiet=(-q)
  [ "${CI:-}" = "true" ] && quiet=(--progress-bar off)
  "$VENV/bin/python" -m pip install "${quiet[@]}" --disable-pip-version-check -e "$REPO${extras:+[$extras]}"
  echo "$digest" >"$stamp"
  echo "$digest" >"$VENV/.installed" # the extras include the project itself
}

install_system_packages() {
  local missing=() cmd pkg
  for pair in redis-server:redis-server wrk:wrk openssl:openssl promtool:prometheus chromium:chromium \
    chromedriver:chromium-driver etcd:etcd-server etcdctl:etcd-client; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if as_root; then
    say "apt-get install ${missing[*]}"
    apt_install "${missing[@]}" || echo "warning: could not install ${missing[*]}" >&2
  else
    echo "note: ${missing[*]} not installed (run as root to install); tests that need them cannot run" >&2
  fi
}

main() {
  cd "$REPO"
  setup_venv test
  install_system_packages
  export PATH="$VENV/bin:$PATH"

  # The team's spec beside the checkout, when there, is checked as well as docs/.
  local spec="$REPO/../shared/spec/gateway.toml"
  if [ -z "${PYPROXYD_SPEC:-}" ] && [ -f "$spec" ]; then
    export PYPROXYD_SPEC="$spec"
  fi

  local failed=()
  say "ruff check ."
  ruff check . || failed+=("ruff check")
  say "ruff format --check ."
  ruff format --check . || failed+=("ruff format")
  say "mypy pyproxyd (strict on the pure cores: pyproject.toml)"
  mypy pyproxyd || failed+=("mypy")

  # The suite runs twice: on the source, then with the request path compiled
  # by mypyc (scripts/compile.sh), which is how the benchmarks run it. The
  # checkout is left as it was found, compiled or not.
  local had_build=0
  [ -n "$(compiled_files)" ] && had_build=1
  bash "$REPO/scripts/compile.sh" --clean
  say "pytest -q $* (pure Python)"
  PYPROXYD_EXPECT_COMPILED=0 pytest -q "$@" || failed+=("pytest")
  if [ "${PYPROXYD_TEST_COMPILED:-1}" = "1" ]; then
    if bash "$REPO/scripts/compile.sh"; then
      say "pytest -q $* (compiled)"
      PYPROXYD_EXPECT_COMPILED=1 pytest -q "$@" || failed+=("pytest (compiled)")
    else
      failed+=("compile (PYPROXYD_TEST_COMPILED=0 skips the compiled run)")
    fi
    [ "$had_build" = "1" ] || bash "$REPO/scripts/compile.sh" --clean
  fi

  if [ ${#failed[@]} -gt 0 ]; then
    printf '\nFAILED: %s\n' "${failed[*]}" >&2
    return 1
  fi
  printf '\nall checks passed\n'
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi

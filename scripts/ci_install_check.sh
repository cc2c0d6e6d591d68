#!/usr/bin/env bash
# What a user installs, checked the way a user installs it: build the sdist and
# the wheel from it (python -m build, default settings), install the wheel into
# a fresh venv in a folder of its own, and from there
#   - `pyproxyd --version` must say compiled, every module (N/N);
#   - `pyproxyd files --write DIR` writes the VM files, `validate` accepts the
#     example config among them;
#   - that config runs (its ports moved to free ones) in front of the two demo
#     backends, and scripts/demo_tour.py sends its requests through it: routing,
#     the API key's 401 and 200, the rate limit's 429 and headers.
#
#   scripts/ci_install_check.sh            # .ci/run runs it after scripts/test.sh
#   scripts/ci_install_check.sh WHEEL      # check a wheel built already
#
# Needs a C compiler and the Python headers (installed with apt-get when run as
# root and missing). The build takes about 2 minutes (mypyc); pip's cache
# serves the dependencies. PYPROXYD_KEEP_INSTALL=1 keeps the folder.
set -euo pipefail

# shellcheck source=scripts/install_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/install_lib.sh" # compiler_ready, new_venv, pip_quiet

PY=$(find_python)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pyproxyd-install.XXXXXX")
pids=()
finish() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  if [ "${PYPROXYD_KEEP_INSTALL:-0}" = "1" ]; then
    echo "kept $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap finish EXIT

fail() {
  printf '\nFAILED (install check): %s\n' "$*" >&2
  exit 1
}

wheel=${1:-}
if [ -z "$wheel" ]; then
  compiler_ready "$PY"
  say "python -m build (sdist, then the wheel from it) -> $WORK/dist"
  new_venv "$WORK/tools"
  "$WORK/tools/bin/python" -m pip install "${pip_quiet[@]}" "build>=1.2"
  if ! "$WORK/tools/bin/python" -m build --outdir "$WORK/dist" "$REPO" >"$WORK/build.log" 2>&1; then
    tail -40 "$WORK/build.log" >&2
    fail "python -m build"
  fi
  grep '^pyproxyd:' "$WORK/build.log" || true # what the build chose, and why
  wheel=$(ls "$WORK"/dist/*.whl)
fi

say "pip install $(basename "$wheel") into a fresh venv ($WORK/venv)"
new_venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install "${pip_quiet[@]}" "$wheel"
cd "$WORK" # away from the checkout: only the installed package can be imported
bin="$WORK/venv/bin"

say "pyproxyd --version"
version=$("$bin/pyproxyd" --version)
echo "$version"
[[ $version =~ \(compiled\ ([0-9]+)/([0-9]+)\)$ ]] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ] ||
  fail "the installed wheel does not run compiled: $version"

say "pyproxyd files --write $WORK/files; pyproxyd validate -c $WORK/files/gateway.toml"
"$bin/pyproxyd" files --write "$WORK/files" >/dev/null
"$bin/pyproxyd" validate -c "$WORK/files/gateway.toml" || fail "validate of the example config"
for name in pyproxyd.service README.md grafana/pyproxyd-dashboard.json prometheus/alerts.yml; do
  [ -s "$WORK/files/$name" ] || fail "pyproxyd files wrote no $name"
done

say "the example config, run from the install, and scripts/demo_tour.py through it"
read -r gw admin alpha beta < <("$bin/python" -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$gw/; s/127\.0\.0\.1:9901/127.0.0.1:$admin/" \
  -e "s/127\.0\.0\.1:9101/127.0.0.1:$alpha/g; s/127\.0\.0\.1:9102/127.0.0.1:$beta/g" \
  "$WORK/files/gateway.toml" >"$WORK/run.toml"
for backend in "$alpha:alpha" "$beta:beta"; do
  "$bin/python" "$REPO/scripts/demo_upstream.py" --port "${backend%%:*}" --name "${backend#*:}" \
    >>"$WORK/backends.log" 2>&1 &
  pids+=($!)
done
"$bin/pyproxyd" run -c "$WORK/run.toml" >"$WORK/gateway.log" 2>&1 &
pids+=($!)
gateway_pid=$!
"$bin/python" - "$admin" "$alpha" "$beta" "$gateway_pid" <<'PY' || { tail -20 "$WORK/gateway.log" >&2; fail "the gateway did not get ready"; }
import os, socket, sys, time, urllib.request

admin, alpha, beta, pid = (int(a) for a in sys.argv[1:])
deadline = time.monotonic() + 30
def up(check):
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit("the gateway exited")
        try:
            return check()
        except OSError:
            time.sleep(0.1)
    sys.exit("timed out")
for port in (alpha, beta):
    up(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close())
up(lambda: urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1).close())
PY
"$bin/python" "$REPO/scripts/demo_tour.py" --gateway "127.0.0.1:$gw" || fail "demo_tour.py through the installed gateway"

printf '\ninstall check passed: %s\n' "$version"

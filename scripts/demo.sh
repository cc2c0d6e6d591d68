#!/usr/bin/env bash
# Run the gateway on etc/gateway.toml in front of two demo backends, show what it
# does with real requests, and keep it running.
#
#   scripts/demo.sh                      # Ctrl-C stops the gateway and both backends
#   PYPROXYD_COMPILE=0 scripts/demo.sh   # the pure-Python build: no compile wait
#
# Installs the project into .venv-demo as a user would (`pip install .`): the
# request path compiled by mypyc when a C compiler and the Python headers are
# there (installed with apt-get when run as root; the first build takes about
# 2 minutes), pure Python otherwise, with a line saying why. It installs again
# only when the package's source changed. Then it starts scripts/demo_upstream.py
# on 127.0.0.1:9101 (alpha) and :9102 (beta), runs `pyproxyd run -c
# etc/gateway.toml`, and scripts/demo_tour.py sends requests through it:
# routing, an API key (401, then 200 with the key it prints) and a rate limit
# (429 with its headers). No Redis needed.
set -euo pipefail

# shellcheck source=scripts/install_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/install_lib.sh" # REPO, say, compiler_ready, new_venv
cd "$REPO"
DEMO="$REPO/.venv-demo" # the installed build; .venv is the checkout's (editable, tests)

# What the installed build is made of: the package's files and how to build
# them (a compiler installed since a pure build makes the next run compile).
source_digest() {
  {
    echo "PYPROXYD_COMPILE=${PYPROXYD_COMPILE:-} cc=$(command -v cc || true)"
    "$DEMO/bin/python" -c 'import os, sysconfig; print(os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))'
    find pyproxyd setup.py pyproject.toml pyproxyd_build.py MANIFEST.in -type f \
      \( -name '*.py' -o -name '*.lua' -o -name '*.html' -o -name '*.toml' -o -name '*.in' \
      -o -name py.typed \) -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -d' ' -f1
}

install_demo() {
  new_venv "$DEMO"
  if [ "${PYPROXYD_COMPILE:-}" != "0" ]; then
    compiler_ready "$DEMO/bin/python" 2>/dev/null || true # without: pip builds pure Python
  fi
  local digest
  digest=$(source_digest)
  [ "$(cat "$DEMO/.installed" 2>/dev/null)" = "$digest" ] && return 0
  say "pip install . into .venv-demo (the first compile takes about 2 minutes)"
  "$DEMO/bin/python" -m pip uninstall -q -y pyproxyd 2>/dev/null || true
  if ! "$DEMO/bin/python" -m pip install -v --disable-pip-version-check "$REPO" \
    >"$DEMO/install.log" 2>&1; then
    tail -40 "$DEMO/install.log" >&2
    echo "error: pip install failed; the whole log is $DEMO/install.log" >&2
    return 1
  fi
  sed -n 's/^ *\(pyproxyd: .*\)/\1/p' "$DEMO/install.log" # the build's choice, and why
  echo "$digest" >"$DEMO/.installed"
}

install_demo
"$DEMO/bin/pyproxyd" --version

pids=() # started by this script; stopped in reverse order (the gateway first)
stop_all() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  pids=()
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_ports free|open PORT...: until every port is free to bind / accepts connections.
wait_ports() {
  "$DEMO/bin/python" - "$@" <<'PY'
import socket, sys, time

want, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
deadline = time.monotonic() + 15
for port in ports:
    while True:
        try:
            if want == "free":
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
                    s.bind(("127.0.0.1", port))
            else:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if want == "free" or time.monotonic() > deadline:
                sys.exit(f"error: port {port} is {'in use' if want == 'free' else 'not answering'}")
            time.sleep(0.1)
PY
}

wait_ports free 9101 9102 8080 9901
for backend in 9101:alpha 9102:beta; do
  "$DEMO/bin/python" scripts/demo_upstream.py --port "${backend%%:*}" --name "${backend#*:}" &
  pids+=($!)
done
wait_ports open 9101 9102

# In the background so that a signal to this script is acted on at once
# (bash runs traps only between foreground commands); SIGTERM lets it drain.
"$DEMO/bin/pyproxyd" run -c etc/gateway.toml &
pids+=($!)
gateway=$!
wait_ports open 8080

say "what the gateway does with a few requests (scripts/demo_tour.py)"
"$DEMO/bin/python" scripts/demo_tour.py --gateway 127.0.0.1:8080 || true

cat <<'TRY'

The gateway listens on 127.0.0.1:8080 (admin and status page on 127.0.0.1:9901). In another terminal:

  curl -s 127.0.0.1:8080/ping                                 # exact path -> alpha
  curl -s 127.0.0.1:8080/api/users/7                          # strip_prefix: alpha sees /users/7
  curl -s -H 'Api-Version: v2' 127.0.0.1:8080/api/users/7     # header predicate -> beta
  curl -s -X PATCH 127.0.0.1:8080/api/users/7                 # method not allowed by any route: 404
  curl -s 127.0.0.1:8080/v1/user/42                           # rewrite: alpha sees /users/42
  curl -si 127.0.0.1:8080/account/orders                      # no API key: 401
  curl -s -H 'X-API-Key: pyproxyd-demo-key' 127.0.0.1:8080/account/orders   # the demo key: 200
  for i in $(seq 7); do curl -s -o /dev/null -w '%{http_code} ' '127.0.0.1:8080/search?q=x'; done
                                                              # 5 pass, then 429 (2 a second refill)
  curl -si '127.0.0.1:8080/search?q=x' | grep -i ratelimit    # RateLimit-Policy, RateLimit, X-RateLimit-*
  for i in $(seq 10); do curl -s 127.0.0.1:8080/shop/cart; echo; done   # canary: ~1 in 10 on beta
  curl -s 127.0.0.1:8080/static/css/site.css                  # weighted round robin, 3 alpha : 1 beta
  curl -s 127.0.0.1:8080/nowhere                              # no route: 404 JSON error
  curl -s 127.0.0.1:9901/healthz; curl -s 127.0.0.1:9901/readyz
  .venv-demo/bin/pyproxyd explain -c etc/gateway.toml GET /api/users/7 -H 'Api-Version: v2'

Ctrl-C stops the gateway and the demo backends.

TRY

wait "$gateway"

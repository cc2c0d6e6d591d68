#!/usr/bin/env bash
# Run the gateway on etc/gateway.toml in front of two demo backends.
#
#   scripts/demo.sh      # Ctrl-C stops the gateway and both backends
#
# Creates .venv and installs the project when needed (see scripts/test.sh),
# starts scripts/demo_upstream.py on 127.0.0.1:9101 (alpha) and :9102 (beta)
# in the background, prints requests to try, then runs
# `pyproxyd run -c etc/gateway.toml` in the foreground. No Redis needed.
set -euo pipefail

# shellcheck source=scripts/test.sh
source "$(dirname "${BASH_SOURCE[0]}")/test.sh" # defines REPO, VENV, setup_venv; runs nothing
cd "$REPO"
setup_venv

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
  "$VENV/bin/python" - "$@" <<'PY'
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
  "$VENV/bin/python" scripts/demo_upstream.py --port "${backend%%:*}" --name "${backend#*:}" &
  pids+=($!)
done
wait_ports open 9101 9102

cat <<'TRY'

The gateway listens on 127.0.0.1:8080 (admin on 127.0.0.1:9901). In another terminal:

  curl -s 127.0.0.1:8080/ping                                 # exact path -> alpha
  curl -s 127.0.0.1:8080/api/users/7                          # strip_prefix: alpha sees /users/7
  curl -s -H 'Api-Version: v2' 127.0.0.1:8080/api/users/7     # header predicate -> beta
  curl -s -X PATCH 127.0.0.1:8080/api/users/7                 # method not allowed by any route: 404
  curl -s 127.0.0.1:8080/v1/user/42                           # rewrite: alpha sees /users/42
  for i in $(seq 10); do curl -s 127.0.0.1:8080/shop/cart; echo; done   # canary: ~1 in 10 on beta
  curl -s 127.0.0.1:8080/static/css/site.css                  # weighted round robin, 3 alpha : 1 beta
  curl -s 127.0.0.1:8080/nowhere                              # no route: 404 JSON error
  curl -s 127.0.0.1:9901/healthz; curl -s 127.0.0.1:9901/readyz
  .venv/bin/pyproxyd explain -c etc/gateway.toml GET /api/users/7 -H 'Api-Version: v2'

Ctrl-C stops the gateway and the demo backends.

TRY

# In the background so that a signal to this script is acted on at once
# (bash runs traps only between foreground commands); SIGTERM lets it drain.
"$VENV/bin/pyproxyd" run -c etc/gateway.toml &
pids+=($!)
wait "${pids[-1]}"

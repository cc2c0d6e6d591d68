#!/usr/bin/env python3
"""Throughput of a rate-limited route against the same route with no limit.

    .venv/bin/python scripts/bench/ratelimit_bench.py [--duration 5s] [--rounds 3]

One pyproxyd process (pinned alone on core 1) with three routes to the same
nginx `return 200` backend; wrk, nginx and redis-server share core 0. The
limits never refuse (a huge rate), so every row measures the cost of
deciding, not of answering 429:

  none    /none/**   no rate_limit
  local   /local/**  token_bucket, backend = "local", key = "ip"
  redis   /redis/**  token_bucket, backend = "redis" (one EVALSHA a request)

Prints the median req/s, p50 and p99 per row and each row's ratio to `none`.
Needs wrk, nginx and redis-server. Every process started here is stopped by PID.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from proxy_bench import NGINX_BACKEND, start, stop, wait_port, wrk, wrk_args

BACKEND_PORT, PY_PORT, REDIS_PORT = 18380, 18390, 18391

PYPROXYD = f"""
[server]
listen = ["127.0.0.1:{PY_PORT}"]
[admin]
listen = "127.0.0.1:0"
[logging]
access_log = true
file = "/dev/null"
[upstreams.backend]
targets = [{{ url = "http://127.0.0.1:{BACKEND_PORT}" }}]
[redis]
url = "redis://127.0.0.1:{REDIS_PORT}/0"
timeout = "50ms"
[rate_limits.local]
algorithm = "token_bucket"
key = "ip"
rate = "1000000/s"
burst = 1000000
[rate_limits.redis]
algorithm = "token_bucket"
backend = "redis"
key = "ip"
rate = "1000000/s"
burst = 1000000
[[routes]]
id = "none"
path = "/none/**"
upstream = "backend"
[[routes]]
id = "local"
path = "/local/**"
upstream = "backend"
rate_limit = "local"
[[routes]]
id = "redis"
path = "/redis/**"
upstream = "backend"
rate_limit = "redis"
"""


def main() -> None:
    args = wrk_args(__doc__, ("wrk", "nginx", "redis-server"))
    rows = {"none": "/none/x", "local": "/local/x", "redis": "/redis/x"}
    results: dict[str, list[tuple[float, float, float, int]]] = {k: [] for k in rows}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "backend.conf").write_text(NGINX_BACKEND.replace("{tmp}", tmpdir))
        (tmp / "py.toml").write_text(PYPROXYD)
        try:
            procs.append(
                start(["nginx", "-g", "daemon off;", "-c", str(tmp / "backend.conf")], "0",
                      tmp / "b.log")
            )  # fmt: skip
            procs.append(
                start(["redis-server", "--port", str(REDIS_PORT), "--save", "", "--appendonly",
                       "no", "--dir", tmpdir], "0", tmp / "r.log")
            )  # fmt: skip
            procs.append(
                start([sys.executable, "-m", "pyproxyd", "run", "-c", str(tmp / "py.toml")], "1",
                      tmp / "p.log")
            )  # fmt: skip
            for port in (BACKEND_PORT, REDIS_PORT, PY_PORT):
                wait_port(port)
            names = list(rows)
            for r in range(args.rounds):
                for name in names[r % 3 :] + names[: r % 3]:
                    wrk(PY_PORT, args.warmup, args.connections, rows[name])
                    results[name].append(wrk(PY_PORT, args.duration, args.connections, rows[name]))
                    print(f"round {r + 1} {name}: {results[name][-1][0]:.0f} req/s",
                          file=sys.stderr)  # fmt: skip
        finally:
            stop(procs)
    med = {
        k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in results.items()
    }
    errs = {k: sum(x[3] for x in v) for k, v in results.items()}
    print(f"\n{args.rounds} rounds x {args.duration}, {args.connections} connections; medians\n")
    print("| route | req/s | p50 ms | p99 ms | non-2xx | vs none |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, (rps, p50, p99) in med.items():
        print(f"| {k} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errs[k]} | "
              f"{rps / med['none'][0]:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()

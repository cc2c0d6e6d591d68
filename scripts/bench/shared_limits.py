#!/usr/bin/env python3
"""What the shared local rate limiter costs: a limited route against a plain one.

    .venv/bin/python scripts/bench/shared_limits.py [--duration 5s] [--rounds 5]

Four pyproxyd instances, one config each, all pinned on core 1 (only the one
under test is busy), nginx `return 200` (proxy_bench's backend config on this
script's port) and wrk (proxy_bench.wrk) on core 0:

  plain-w2    server.workers = 2, the catch-all route alone
  limit-w2    server.workers = 2, + a local token_bucket keyed by ip,
              1000000/s with a burst of 1000000 (never refuses: the cost of
              deciding), kept in the shared zone (pyproxyd/shm): per request a
              bucket lock (a robust mutex), a load and a store
  plain-w1    server.workers = 1, the route alone
  limit-w1    server.workers = 1, + the same limit, in the process (LocalStore)

The two workers of a w2 instance share core 1 with each other, so a row's
req/s is what one core gives, and limit-w2 / plain-w2 is the limiter's CPU
cost with workers (target >= 0.90x); limit-w1 / plain-w1 is the cost without
them, as features_bench measures. Each round runs every row (order rotated),
a warm-up run before each measured run; each row is compared with its plain
row of the same round and the median of those ratios printed (the host's speed
drifts within a minute). Because other work on the host moves req/s by 2x
from run to run, the CPU the instance's processes used (utime + stime from
/proc, workers included) per request is measured too: its ratio is what the
limiter costs, whatever share of the core the instance got. Needs wrk and
nginx (`apt-get install -y wrk nginx-light`). Only 127.0.0.1, ports
18430-18438. Every process started here is stopped by PID at the end.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from features_bench import validate
from proxy_bench import (
    backend_conf,
    gateway_toml,
    start,
    stop,
    wait_port,
    wait_ready,
    wrk,
    wrk_args,
)
from workers_scale import cpu_seconds

BACKEND_PORT = 18430
ROWS = {  # name -> (listen, admin, workers, limited)
    "plain-w2": (18431, 18435, 2, False),
    "limit-w2": (18432, 18436, 2, True),
    "plain-w1": (18433, 18437, 1, False),
    "limit-w1": (18434, 18438, 1, True),
}
BASE = {"limit-w2": "plain-w2", "limit-w1": "plain-w1"}

LIMIT = """rate_limit = "local"
[rate_limits.local]
algorithm = "token_bucket"
backend = "local"
key = "ip"
rate = "1000000/s"
burst = 1000000
"""


def main() -> None:
    args = wrk_args(__doc__)
    results: dict[str, list[tuple[float, float, float, int]]] = {k: [] for k in ROWS}
    cpu: dict[str, list[float]] = {k: [] for k in ROWS}  # CPU us per request
    seconds = float(args.duration.rstrip("s"))
    procs = []
    pids: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "backend.conf").write_text(backend_conf(BACKEND_PORT, tmpdir))
        for name, (port, admin, workers, limited) in ROWS.items():
            conf = tmp / f"{name}.toml"
            text = gateway_toml(port, BACKEND_PORT, admin=admin, workers=workers)
            conf.write_text(text + (LIMIT if limited else ""))
            validate(conf)
        try:
            nginx = ["nginx", "-g", "daemon off;", "-c", str(tmp / "backend.conf")]
            procs.append(start(nginx, "0", tmp / "b.log"))
            for name in ROWS:
                cmd = [sys.executable, "-m", "pyproxyd", "run", "--no-watch", "-c"]
                procs.append(start([*cmd, str(tmp / f"{name}.toml")], "1", tmp / f"{name}.log"))
                pids[name] = procs[-1].pid
            wait_port(BACKEND_PORT)
            for port, admin, _w, _l in ROWS.values():
                wait_port(port)
                wait_ready(admin)
            names = list(ROWS)
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    port = ROWS[name][0]
                    wrk(port, args.warmup, args.connections)
                    before = cpu_seconds(pids[name])
                    results[name].append(wrk(port, args.duration, args.connections))
                    used = cpu_seconds(pids[name]) - before
                    cpu[name].append(used * 1e6 / max(1.0, results[name][-1][0] * seconds))
                    print(f"round {r + 1} {name}: {results[name][-1][0]:.0f} req/s, "
                          f"{cpu[name][-1]:.1f} us CPU a request", file=sys.stderr)  # fmt: skip
        finally:
            stop(procs)
    med = {
        k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in results.items()
    }
    errs = {k: sum(x[3] for x in v) for k, v in results.items()}
    paired = {
        k: statistics.median(
            x[0] / (p[0] or 1.0) for x, p in zip(results[k], results[base], strict=True)
        )
        for k, base in BASE.items()
    }
    cpu_paired = {
        k: statistics.median(c / (p or 1.0) for c, p in zip(cpu[k], cpu[base], strict=True))
        for k, base in BASE.items()
    }
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"\n{args.rounds} rounds x {args.duration}, {args.connections} connections; "
          "gateways on core 1, wrk and nginx on core 0; medians\n")  # fmt: skip
    print("| config | req/s | p50 ms | p99 ms | non-2xx/errors | req/s vs its plain "
          "(per round) | CPU us a request | CPU vs its plain (per round) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for k, (rps, p50, p99) in med.items():
        ratio = f"{paired[k]:.2f}x" if k in paired else ""
        cost = f"{cpu_paired[k]:.2f}x" if k in cpu_paired else ""
        print(f"| {k} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errs[k]} | {ratio} "
              f"| {cpu_med[k]:.1f} | {cost} |")  # fmt: skip
    print(f"\ntarget >= 0.90x of plain's req/s (<= 1.11x its CPU a request): shared "
          f"(workers = 2) {paired['limit-w2']:.2f}x req/s, {cpu_paired['limit-w2']:.2f}x CPU; "
          f"in-process (workers = 1) {paired['limit-w1']:.2f}x req/s, "
          f"{cpu_paired['limit-w1']:.2f}x CPU")  # fmt: skip


if __name__ == "__main__":
    main()

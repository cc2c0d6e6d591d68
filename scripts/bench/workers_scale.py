#!/usr/bin/env python3
"""Throughput of pyproxyd with server.workers = 1 against server.workers = 2.

    .venv/bin/python scripts/bench/workers_scale.py [--duration 5s] [--rounds 3]
        [--gateway-cpus 0-1] [--wrk-cpus 0] [--backend-cpus 0]

Two pyproxyd instances with the same config apart from `server.workers` (and
their ports), in front of one nginx `return 200` backend (proxy_bench's backend
config on this script's port). Each round runs wrk (like proxy_bench: one
thread, keep-alive, `--connections`) against each, order rotated; a warm-up
run precedes every measured run. Prints the median req/s, p50 and p99, the
CPU the gateway's process tree used during the run (in cores), and the ratio
2 workers / 1 worker.

By default nothing is pinned, so the two workers can use both cores; the
--*-cpus options pin with taskset (e.g. --gateway-cpus 0-1 --wrk-cpus 0
--backend-cpus 0). On a 2-core machine wrk, nginx and the gateway share the
same cores, so 2 workers cannot reach 2x: the ratio is what this machine
allows, and the CPU column shows how much of it the gateway got.
Needs wrk and nginx (`apt-get install -y wrk nginx-light`). Only 127.0.0.1,
ports 18410-18414. Every process started here is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proxy_bench import backend_conf, gateway_toml, start, stop, to_ms, wait_port, wait_ready

from harness.gateway import children

BACKEND_PORT = 18410
PORTS = {1: (18411, 18413), 2: (18412, 18414)}  # workers -> (listen, admin)

Result = tuple[float, float, float, int, float]  # req/s, p50 ms, p99 ms, errors, CPU cores


def all_cpus() -> str:
    """The CPUs this process may run on, as a taskset list (pinning to them = no pinning)."""
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    tree, todo = [pid], [pid]
    while todo:
        kids = children(todo.pop())
        tree += kids
        todo += kids
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its descendants, in seconds."""
    ticks = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def run_wrk(
    port: int, duration: str, connections: int, threads: int, cpus: str | None
) -> tuple[float, float, float, int]:
    """proxy_bench.wrk with a choice of CPUs (None: unpinned): (req/s, p50, p99, errors)."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}", "--latency"]
    cmd.append(f"http://127.0.0.1:{port}/api/users/1")
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"(?m)^\s+50%\s+(\S+)", out)
    p99 = re.search(r"(?m)^\s+99%\s+(\S+)", out)
    if not (rps and p50 and p99):
        print(f"wrk output for port {port} could not be read:\n{out}", file=sys.stderr)
        return 0.0, 0.0, 0.0, 1
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return float(rps.group(1)), to_ms(p50.group(1)), to_ms(p99.group(1)), errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--warmup", default="1s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--gateway-cpus", default=None, help="taskset list; default: not pinned")
    ap.add_argument("--wrk-cpus", default=None, help="taskset list; default: not pinned")
    ap.add_argument("--backend-cpus", default=None, help="taskset list; default: not pinned")
    args = ap.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install -y wrk nginx-light util-linux")
    allowed = all_cpus()
    print(f"os.cpu_count() = {os.cpu_count()}, usable CPUs = {allowed} "
          f"({len(os.sched_getaffinity(0))}); load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"pinning: gateway {args.gateway_cpus or 'none'}, wrk {args.wrk_cpus or 'none'}, "
          f"backend {args.backend_cpus or 'none'}")  # fmt: skip
    if len(os.sched_getaffinity(0)) <= 2:
        print("note: wrk, the nginx backend and the gateway share these cores, so 2 workers "
              "cannot reach 2x here")  # fmt: skip

    results: dict[int, list[Result]] = {1: [], 2: []}
    procs: list[subprocess.Popen[bytes]] = []
    gateways: dict[int, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "backend.conf").write_text(backend_conf(BACKEND_PORT, tmpdir))
        try:
            nginx = ["nginx", "-g", "daemon off;", "-c", str(tmp / "backend.conf")]
            procs.append(start(nginx, args.backend_cpus or allowed, tmp / "b.log"))
            for workers, (port, admin) in PORTS.items():
                conf = tmp / f"w{workers}.toml"
                conf.write_text(gateway_toml(port, BACKEND_PORT, admin=admin, workers=workers))
                cmd = [sys.executable, "-m", "pyproxyd", "run", "--no-watch", "-c", str(conf)]
                gw = start(cmd, args.gateway_cpus or allowed, tmp / f"w{workers}.log")
                procs.append(gw)
                gateways[workers] = gw
            wait_port(BACKEND_PORT)
            for workers, (port, admin) in PORTS.items():
                wait_port(port)
                wait_ready(admin)
                print(f"workers={workers}: {len(process_tree(gateways[workers].pid))} "
                      "process(es)", file=sys.stderr)  # fmt: skip
            names = list(PORTS)
            for r in range(args.rounds):
                for workers in names[r % 2 :] + names[: r % 2]:
                    port = PORTS[workers][0]
                    run_wrk(port, args.warmup, args.connections, args.wrk_threads, args.wrk_cpus)
                    cpu0, t0 = cpu_seconds(gateways[workers].pid), time.monotonic()
                    res = run_wrk(port, args.duration, args.connections, args.wrk_threads,
                                  args.wrk_cpus)  # fmt: skip
                    cores = (cpu_seconds(gateways[workers].pid) - cpu0) / (time.monotonic() - t0)
                    results[workers].append((*res, cores))
                    print(f"round {r + 1} workers={workers}: {res[0]:.0f} req/s, "
                          f"gateway {cores:.2f} cores", file=sys.stderr)  # fmt: skip
        finally:
            stop(procs)

    med = {
        k: [statistics.median(x[i] for x in v) for i in (0, 1, 2, 4)] for k, v in results.items()
    }
    errs = {k: sum(x[3] for x in v) for k, v in results.items()}
    base = med[1][0] or 1.0
    print(f"\n{args.rounds} rounds x {args.duration}, {args.connections} connections, "
          f"wrk -t{args.wrk_threads}; medians\n")  # fmt: skip
    print("| server.workers | req/s | p50 ms | p99 ms | errors | gateway CPU (cores) | vs 1 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k, (rps, p50, p99, cores) in med.items():
        print(f"| {k} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errs[k]} | {cores:.2f} | "
              f"{rps / base:.2f}x |")  # fmt: skip
    print(f"\n2 workers / 1 worker: {med[2][0] / base:.2f}x throughput "
          f"(on {len(os.sched_getaffinity(0))} CPUs shared with wrk and nginx)")  # fmt: skip


if __name__ == "__main__":
    main()

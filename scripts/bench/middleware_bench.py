#!/usr/bin/env python3
"""What middlewares cost: a route with a `headers` and a no-op `python`
middleware against the same route without any.

    .venv/bin/python scripts/bench/middleware_bench.py [--duration 5s] [--rounds 5]

Two pyproxyd instances, one config each, both pinned on core 1 (only the one
under test is busy), nginx `return 200` (proxy_bench's backend config on this
script's port) and wrk (proxy_bench.wrk) on core 0:

  plain       the catch-all route alone (features_bench's plain row)
  middleware  + middlewares = ["tag", "noop"]: a headers middleware that sets
              a request header, sets one response header and removes another,
              and bench_middleware.py's python middleware, whose on_request
              and on_response do nothing (features_bench.EXTRA["middleware"])

Issue 20's target: middleware >= 0.95x plain's req/s (<= 1.05x its CPU a
request), compiled build (scripts/compile.sh). Each round runs both rows (order
rotated), a warm-up run before each measured run; the ratios printed are the
medians of each round's ratio (the host's speed drifts within a minute), for
req/s and for the CPU the instance used (utime + stime from /proc) per request,
which holds whatever share of the core the instance got. With `--side-by-side`
both rows run at once (a wrk each, both gateways sharing core 1), so whatever
the host does meanwhile touches both alike: the CPU ratio is then the
steadiest measure on a busy host; req/s then says nothing. The two rows
swap places every round (the second place read about 1% dearer with the same
config in both; `--same` runs that A/A check). With `--one-process` one
gateway serves both routes (paths of the same length) and wrk drives them in
turns, `--pairs N` pairs of runs in each of `--rounds` fresh processes: the
CPU its threads ran (schedstat, ns) over the requests the route answered
(/metrics). Nothing then differs between the rows but the route, not the
process (hash seed, memory layout) nor its place; what is left is the host's
drift between two runs, which the number of pairs averages out. Needs wrk and nginx
(`apt-get install -y wrk nginx-light`). Only 127.0.0.1, ports 18440-18444.
Every process started here is stopped by PID at the end.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from features_bench import EXTRA, validate
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

BACKEND_PORT = 18440
ROWS = {"plain": (18441, 18443), "middleware": (18442, 18444)}  # name -> (listen, admin)
HERE = Path(__file__).resolve().parent  # bench_middleware.py, on server.python_path


def _both(
    duration: str, connections: int, ports: dict[str, int] | None = None
) -> dict[str, tuple[float, float, float, int]]:
    """A wrk run against each row (on `ports`, default ROWS'), at the same time."""
    got: dict[str, tuple[float, float, float, int]] = {}
    where = ports or {name: listen for name, (listen, _) in ROWS.items()}

    def run(name: str) -> None:
        got[name] = wrk(where[name], duration, connections)

    threads = [threading.Thread(target=run, args=(name,)) for name in where]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def opened(admin: int) -> float:
    """Upstream connections the instance has opened so far (its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("pyproxyd_upstream_connections_opened_total")
    )


def side_by_side(args: Any, tmp: Path) -> None:
    """Both rows under load at once, `args.rounds` times: each one's CPU a
    request, and the median of the rounds' ratios. The rows swap places
    (ports, start order, wrk order) every round, the gateways started afresh:
    with the same config in both, the second place measured about 1% dearer
    (1.005-1.015x in five runs), which went to the middleware row each time."""
    seconds = float(args.duration.rstrip("s"))
    ratios = []
    cmd = [sys.executable, "-m", "pyproxyd", "run", "--no-watch", "-c"]
    for r in range(args.rounds):
        order = list(ROWS) if r % 2 == 0 else list(reversed(ROWS))  # row names, by place
        place = {name: list(ROWS.values())[i] for i, name in enumerate(order)}
        pids: dict[str, int] = {}
        started = []
        try:
            for i, name in enumerate(order):
                conf = tmp / f"{name}-{i}.toml"
                started.append(start([*cmd, str(conf)], "1", tmp / f"{name}-{i}.log"))
                pids[name] = started[-1].pid
            for port, admin in place.values():
                wait_port(port)
                wait_ready(admin)
            ports = {name: place[name][0] for name in order}
            _both(args.warmup, args.connections, ports)
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            was = {name: opened(place[name][1]) for name in order}
            got = _both(args.duration, args.connections, ports)
            cpu = {
                name: (cpu_seconds(pid) - before[name]) * 1e6 / max(1.0, got[name][0] * seconds)
                for name, pid in pids.items()
            }
            # The sampler counts opened connections once a second: let it catch up.
            time.sleep(1.2)
            fresh = {
                name: (opened(place[name][1]) - was[name]) * 100 / max(1.0, got[name][0] * seconds)
                for name in order
            }
        finally:
            stop(started)
        ratios.append(cpu["middleware"] / (cpu["plain"] or 1.0))
        print(f"round {r + 1} ({order[0]} first): plain {got['plain'][0]:.0f} req/s "
              f"{cpu['plain']:.1f} us CPU a request, middleware {got['middleware'][0]:.0f} req/s "
              f"{cpu['middleware']:.1f} us: {ratios[-1]:.3f}x; new upstream connections a "
              f"request {fresh['plain']:.2f}% / {fresh['middleware']:.2f}%",
              file=sys.stderr)  # fmt: skip
    same = " (--same: both rows plain)" if args.same else ""
    print(f"\n{args.rounds} rounds x {args.duration}, both rows at once on core 1, places "
          f"swapped each round{same}; middleware against plain (median of per-round ratios): "
          f"{statistics.median(ratios):.3f}x CPU a request (target <= 1.05x)")  # fmt: skip


def run_ns(pid: int) -> int:
    """Nanoseconds `pid`'s threads have run (/proc/PID/task/*/schedstat):
    exact, where utime + stime count 10 ms ticks."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            continue
    return total


def served(admin: int) -> dict[str, float]:
    """Requests answered so far, per route (pyproxyd_requests_total on /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("pyproxyd_requests_total{"):
            route = line.split('route="', 1)[1].split('"', 1)[0]
            counts[route] = counts.get(route, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


# --one-process: both routes in one gateway, on paths and ids of the same
# length (the access log and the metrics' labels hold them).
PATHS = {"plain": "/api/users/1", "middleware": "/apj/users/1"}
IDS = {"plain": "plain", "middleware": "chain"}


def one_process_toml(extra: str, keepalive: int, same: bool) -> str:
    port, admin = ROWS["plain"]
    text = gateway_toml(
        port, BACKEND_PORT, admin=admin, server=f'python_path = ["{HERE}"]', keepalive=keepalive
    )
    text = text.replace('id = "all"\npath = "/**"', 'id = "plain"\npath = "/api/**"')
    return text + (
        '[[routes]]\nid = "chain"\npath = "/apj/**"\nupstream = "backend"\n'
        + ("" if same else extra)
    )


def one_process(args: Any, tmp: Path, extra: str, keepalive: int) -> None:
    """Both routes served by one gateway process, driven in turns: `args.rounds`
    fresh processes (each with its own hash seed and memory layout), and in
    each, `args.pairs` pairs of runs (plain then middleware, or the other
    way, alternately). A run's cost is the CPU time the process's threads
    ran (schedstat, in ns) over the requests its route answered (/metrics):
    no process-to-process difference, no 10 ms ticks, no wrk count. Prints
    the median of each process's pair ratios and the median of all pairs."""
    conf = tmp / "one.toml"
    conf.write_text(one_process_toml(extra, keepalive, args.same))
    validate(conf)
    port, admin = ROWS["plain"]
    cmd = [sys.executable, "-m", "pyproxyd", "run", "--no-watch", "-c", str(conf)]
    every: list[float] = []
    medians: list[float] = []
    for r in range(args.rounds):
        proc = start(cmd, "1", tmp / f"one-{r}.log")
        try:
            wait_port(port)
            wait_ready(admin)
            for name in PATHS:
                wrk(port, args.warmup, args.connections, PATHS[name])
            ratios = []
            for k in range(args.pairs):
                order = list(PATHS) if k % 2 == 0 else list(reversed(PATHS))
                cost: dict[str, float] = {}
                for name in order:
                    counted = served(admin).get(IDS[name], 0.0)
                    ran, began = run_ns(proc.pid), time.monotonic()
                    wrk(port, args.duration, args.connections, PATHS[name])
                    ran, wall = run_ns(proc.pid) - ran, time.monotonic() - began
                    n = served(admin).get(IDS[name], 0.0) - counted
                    cost[name] = ran / 1e3 / max(1.0, n)
                    busy = ran / 1e9 / wall
                ratios.append(cost["middleware"] / cost["plain"])
                print(f"process {r + 1} pair {k + 1}: plain {cost['plain']:.2f} us, middleware "
                      f"{cost['middleware']:.2f} us a request: {ratios[-1]:.3f}x "
                      f"(core busy {busy:.0%})", file=sys.stderr)  # fmt: skip
        finally:
            stop([proc])
        every += ratios
        medians.append(statistics.median(ratios))
        print(f"process {r + 1}: median {medians[-1]:.3f}x", file=sys.stderr)
    same = " (--same: no middlewares on either route)" if args.same else ""
    print(f"\n{args.rounds} processes x {args.pairs} pairs of {args.duration} runs, one gateway "
          f"on core 1 serving both routes{same}; middleware against plain, CPU a request: "
          f"{statistics.median(every):.3f}x (median of all pairs; per process "
          f"{', '.join(f'{m:.3f}' for m in medians)}; target <= 1.05x)")  # fmt: skip


def main() -> None:
    # --route FILE: the middleware row's route lines from FILE (a variant of
    # the bench's config), taken off before wrk_args, which knows only flags.
    # --keepalive N: the upstream's idle connections (32 by default, as every
    # bench here; fewer than wrk's 64 connections, so 1-4% of requests open one).
    route = None
    keepalive = 32
    for option in ("--route", "--keepalive"):
        if option in sys.argv:
            at = sys.argv.index(option)
            if option == "--route":
                route = sys.argv[at + 1]
            else:
                keepalive = int(sys.argv[at + 1])
            del sys.argv[at : at + 2]
    pairs = 6
    if "--pairs" in sys.argv:
        at = sys.argv.index("--pairs")
        pairs = int(sys.argv[at + 1])
        del sys.argv[at : at + 2]
    args = wrk_args(
        __doc__,
        flags={
            "--one-process": "both routes in one gateway, driven in turns (see above)",
            "--side-by-side": "run both rows at once (see above)",
            "--same": "with --side-by-side or --one-process: no middlewares (an A/A check)",
        },
    )
    args.pairs = pairs
    results: dict[str, list[tuple[float, float, float, int]]] = {k: [] for k in ROWS}
    cpu: dict[str, list[float]] = {k: [] for k in ROWS}  # CPU us a request
    seconds = float(args.duration.rstrip("s"))
    procs = []
    pids: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "backend.conf").write_text(backend_conf(BACKEND_PORT, tmpdir))
        for name, (port, admin) in ROWS.items():
            conf = tmp / f"{name}.toml"
            server = f'python_path = ["{HERE}"]' if name == "middleware" else ""
            extra = EXTRA["plain"] if args.same else EXTRA[name]
            if name == "middleware" and route:
                extra = Path(route).read_text()
            conf.write_text(
                gateway_toml(port, BACKEND_PORT, admin=admin, server=server, keepalive=keepalive)
                + extra
            )
            validate(conf)
            # The same config in each place, for --side-by-side's swaps.
            for i, (listen, adm) in enumerate(ROWS.values()):
                text = gateway_toml(
                    listen, BACKEND_PORT, admin=adm, server=server, keepalive=keepalive
                )
                (tmp / f"{name}-{i}.toml").write_text(text + extra)
        try:
            nginx = ["nginx", "-g", "daemon off;", "-c", str(tmp / "backend.conf")]
            procs.append(start(nginx, "0", tmp / "b.log"))
            if args.side_by_side:
                wait_port(BACKEND_PORT)
                side_by_side(args, tmp)
                return
            if args.one_process:
                wait_port(BACKEND_PORT)
                extra = Path(route).read_text() if route else EXTRA["middleware"]
                one_process(args, tmp, extra, keepalive)
                return
            for name in ROWS:
                cmd = [sys.executable, "-m", "pyproxyd", "run", "--no-watch", "-c"]
                procs.append(start([*cmd, str(tmp / f"{name}.toml")], "1", tmp / f"{name}.log"))
                pids[name] = procs[-1].pid
            wait_port(BACKEND_PORT)
            for port, admin in ROWS.values():
                wait_port(port)
                wait_ready(admin)
            names = list(ROWS)
            for r in range(args.rounds):
                for name in names[r % 2 :] + names[: r % 2]:
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
    rps = {k: statistics.median(x[0] for x in v) for k, v in results.items()}
    errs = {k: sum(x[3] for x in v) for k, v in results.items()}
    ratio = statistics.median(
        m[0] / (p[0] or 1.0) for m, p in zip(results["middleware"], results["plain"], strict=True)
    )
    cost = statistics.median(
        m / (p or 1.0) for m, p in zip(cpu["middleware"], cpu["plain"], strict=True)
    )
    print(f"\n{args.rounds} rounds x {args.duration}, {args.connections} connections; "
          "gateways on core 1, wrk and nginx on core 0; medians\n")  # fmt: skip
    print("| config | req/s | non-2xx/errors | CPU us a request |")
    print("|---|---:|---:|---:|")
    for k in ROWS:
        print(f"| {k} | {rps[k]:,.0f} | {errs[k]} | {statistics.median(cpu[k]):.1f} |")
    print(f"\nmiddleware against plain (median of per-round ratios): {ratio:.3f}x req/s, "
          f"{cost:.3f}x CPU a request (target >= 0.95x req/s)")  # fmt: skip


if __name__ == "__main__":
    main()

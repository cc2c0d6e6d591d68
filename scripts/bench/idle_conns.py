#!/usr/bin/env python3
"""Memory and latency of pyproxyd holding 10,000 idle keep-alive client connections.

    .venv/bin/python scripts/bench/idle_conns.py [--conns 10000] [--rounds 3] [--duration 2s]

One pyproxyd (`server.workers = 1` by default, `keepalive_timeout = "300s"` so
nothing is closed while we measure) pinned on core 1, in front of nginx
`return 200` on core 0 (proxy_bench's backend config on this script's port).
The client side is this process: it raises RLIMIT_NOFILE first (the gateway
inherits the limit) and, if the hard limit is too low, opens as many
connections as it allows and says so.

  1. RSS at baseline (VmRSS of the gateway, summed over its process tree when
     workers > 1), after a warm-up of a few hundred requests.
  2. Latency without idle connections: `--rounds` x 200 sequential GETs, each
     round on one fresh keep-alive connection (median and p99 per round).
  3. Opens `--conns` HTTP/1.1 connections that each send one GET and read the
     whole answer, so each is a real keep-alive connection the gateway holds;
     waits `--duration`, then RSS again (total and per connection).
  4. The same latency rounds while they stay open, and the ratio to step 2.
  5. Checks how many idle connections are still open and that a sample of them
     can still be reused, closes them, and reads RSS once more.

Prints a markdown table of medians over rounds. Target: RSS under 150 MB with
10k idle connections, a request under 10 ms. No assertions: a benchmark only.
Needs nginx (`apt-get install -y nginx-light`). Only 127.0.0.1, ports 18400-18402.
Every process started here is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proxy_bench import backend_conf, gateway_toml, start, stop, wait_port, wait_ready

BACKEND_PORT, PY_PORT, ADMIN_PORT = 18400, 18401, 18402
PATH = "/api/users/1"
REQUEST = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{PY_PORT}\r\n\r\n".encode()

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def parse_duration(value: str) -> float:
    """ "2s", "500ms", "1m" or a bare number of seconds."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return float(value)


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE as far as `want` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, from /proc/*/stat."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: split after it
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, todo = [pid], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        tree += kids
        todo += kids
    return tree


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mib(pid: int) -> tuple[float, int]:
    """(VmRSS summed over the process tree in MiB, number of processes)."""
    pids = process_tree(pid)
    return sum(rss_kib(p) for p in pids) / 1024, len(pids)


def latency_round(port: int, requests: int) -> tuple[float, float, int]:
    """`requests` sequential GETs on one fresh keep-alive connection: (p50 ms, p99 ms, non-200)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times: list[float] = []
    bad = 0
    try:
        for _ in range(requests):
            t0 = time.perf_counter()
            conn.request("GET", PATH)
            resp = conn.getresponse()
            resp.read()
            times.append((time.perf_counter() - t0) * 1000)
            bad += resp.status != 200
    finally:
        conn.close()
    times.sort()
    p99 = times[max(0, math.ceil(0.99 * len(times)) - 1)]
    return statistics.median(times), p99, bad


def latency(port: int, rounds: int, requests: int) -> tuple[float, float, int]:
    """Median over rounds of each round's p50 and p99, and the non-200 count."""
    runs = [latency_round(port, requests) for _ in range(rounds)]
    return (
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs),
        sum(r[2] for r in runs),
    )


async def read_response(reader: asyncio.StreamReader) -> int:
    """Reads one whole HTTP/1.1 response (Content-Length or chunked); returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if "content-length" in fields:
        await reader.readexactly(int(fields["content-length"]))
    elif "chunked" in fields.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def open_idle(port: int, n: int, concurrency: int) -> tuple[list[Conn], list[str]]:
    """Opens `n` connections; each sends one GET and reads the answer, then stays idle."""
    sem = asyncio.Semaphore(concurrency)

    async def one() -> Conn:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4096)
            writer.write(REQUEST)
            status = await asyncio.wait_for(read_response(reader), 30)
            if status != 200:
                writer.close()
                raise RuntimeError(f"status {status}")
            return reader, writer

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    conns = [r for r in results if isinstance(r, tuple)]
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return conns, errors


async def check_idle(conns: list[Conn], sample: int) -> tuple[int, int]:
    """(connections not closed by the gateway, sampled connections that served a 2nd GET)."""
    await asyncio.sleep(0.2)  # let the loop see any EOF that arrived while it was not running
    alive = [c for c in conns if not c[0].at_eof() and not c[1].is_closing()]

    async def reuse(conn: Conn) -> bool:
        try:
            conn[1].write(REQUEST)
            return await asyncio.wait_for(read_response(conn[0]), 10) == 200
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return False

    picked = random.sample(alive, min(sample, len(alive)))
    ok = await asyncio.gather(*(reuse(c) for c in picked))
    return len(alive), sum(ok)


async def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=10_000, help="idle connections to open")
    ap.add_argument("--rounds", type=int, default=3, help="latency rounds before and during")
    ap.add_argument("--requests", type=int, default=200, help="sequential GETs per round")
    ap.add_argument("--duration", default="2s", help="idle hold before the RSS reading")
    ap.add_argument("--workers", type=int, default=1, help="server.workers of the gateway")
    ap.add_argument("--concurrency", type=int, default=200, help="connections opened at a time")
    args = ap.parse_args()
    if not shutil.which("nginx"):
        raise SystemExit("nginx is missing: apt-get install -y nginx-light")

    before_limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = raise_nofile(args.conns + 1024)
    n = min(args.conns, soft - 256)
    print(f"RLIMIT_NOFILE soft {before_limit[0]} -> {soft} (hard {hard}); the gateway inherits it")
    if n < args.conns:
        print(f"hard limit too low for {args.conns} connections: opening {n} instead")

    procs: list[subprocess.Popen[bytes]] = []
    loop = asyncio.new_event_loop()
    conns: list[Conn] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "backend.conf").write_text(backend_conf(BACKEND_PORT, tmpdir))
        (tmp / "py.toml").write_text(  # long enough that nothing closes while we measure
            gateway_toml(PY_PORT, BACKEND_PORT, admin=ADMIN_PORT, workers=args.workers,
                         server='keepalive_timeout = "300s"')
        )  # fmt: skip
        try:
            nginx = ["nginx", "-g", "daemon off;", "-c", str(tmp / "backend.conf")]
            procs.append(start(nginx, "0", tmp / "b.log"))
            gw_cmd = [sys.executable, "-m", "pyproxyd", "run", "--no-watch", "-c"]
            gateway = start([*gw_cmd, str(tmp / "py.toml")], "1", tmp / "p.log")
            procs.append(gateway)
            wait_port(BACKEND_PORT)
            wait_port(PY_PORT)
            wait_ready(ADMIN_PORT)

            latency(PY_PORT, 2, args.requests)  # warm-up: imports, pools, allocator
            time.sleep(0.5)
            rss0, nprocs = tree_rss_mib(gateway.pid)
            lat0 = latency(PY_PORT, args.rounds, args.requests)

            t0 = time.perf_counter()
            conns, errors = loop.run_until_complete(open_idle(PY_PORT, n, args.concurrency))
            opened_in = time.perf_counter() - t0
            opened = len(conns)
            print(f"opened {len(conns)}/{n} keep-alive connections in {opened_in:.1f}s",
                  file=sys.stderr)  # fmt: skip
            if errors:
                print(f"{len(errors)} failed, first: {errors[0]}", file=sys.stderr)
            time.sleep(parse_duration(args.duration))
            rss1, _ = tree_rss_mib(gateway.pid)
            lat1 = latency(PY_PORT, args.rounds, args.requests)
            rss1b, _ = tree_rss_mib(gateway.pid)

            alive, reused = loop.run_until_complete(check_idle(conns, 100))
            sample = min(100, alive)
            loop.run_until_complete(close_all(conns))
            conns = []
            time.sleep(1.0)
            rss2, _ = tree_rss_mib(gateway.pid)
            log_tail = (tmp / "p.log").read_text(errors="replace").strip().splitlines()[-3:]
        finally:
            if conns:
                loop.run_until_complete(close_all(conns))
            loop.close()
            stop(procs)

    per_conn = (rss1 - rss0) * 1024 / max(1, opened)
    print(f"\npyproxyd workers={args.workers} ({nprocs} process(es), RSS summed over them); "
          f"{opened} idle connections held, {args.rounds} rounds x {args.requests} sequential "
          f"GETs on a fresh connection; medians over rounds\n")  # fmt: skip
    print("| state | RSS MiB | p50 ms | p99 ms | non-200 |")
    print("|---|---:|---:|---:|---:|")
    print(f"| no idle connections | {rss0:.1f} | {lat0[0]:.2f} | {lat0[1]:.2f} | {lat0[2]} |")
    print(f"| {opened} idle connections | {rss1:.1f} | {lat1[0]:.2f} | {lat1[1]:.2f} | "
          f"{lat1[2]} |")  # fmt: skip
    print(f"| after closing them | {rss2:.1f} | | | |")
    print()
    print(f"RSS growth: {rss1 - rss0:+.1f} MiB, {per_conn:.1f} KiB per idle connection "
          f"(after the latency rounds: {rss1b:.1f} MiB)")  # fmt: skip
    print(f"latency with idle connections vs without: p50 {lat1[0] / lat0[0]:.2f}x, "
          f"p99 {lat1[1] / lat0[1]:.2f}x")  # fmt: skip
    print(f"still open at the end: {alive}/{opened}; reused after idling: {reused}/{sample}; "
          f"open errors: {len(errors)}")  # fmt: skip
    print(f"target: RSS < 150 MB with 10k idle: {rss1 * 1.048576:.1f} MB ({rss1:.1f} MiB); "
          f"request < 10 ms: p99 {lat1[1]:.2f} ms")  # fmt: skip
    if alive < opened:
        print("gateway log tail:\n  " + "\n  ".join(log_tail))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Python CPU per proxied request, without sockets: the gateway's own code only.

    .venv/bin/python scripts/bench/hotpath.py [--against PATH] [--runs 3] [--requests 6400]

The gateway (Proxy + Frontend, the config of scripts/bench/pyproxyd.toml:
request id, trace context, access log to /dev/null, metrics) is driven in
process: 64 client connections and 64 pooled upstream connections whose
transports are stubs, so each request is parsed, routed, written upstream,
answered with nginx's 62-byte reply and relayed back, with no system call.
Batches of 64 requests per event-loop pass, as under load, so a task's
wake-up costs what it costs in a busy loop.

Kernel time (about a quarter of a request under wrk) and uvloop's I/O are not
in it, so it tells the cost of a code change much more steadily than wrk on
this shared host. With `--against PATH` (another checkout, e.g. a
`git worktree` of main) both run alternately, each in a fresh process pinned
to the same core, and the ratio of medians is printed. With `--paired`
(`--flavour F`, `--requests 2560`): plain and F in one process, their rounds
alternated and timed in the thread's CPU time, the median of the rounds'
ratios a run: the steadiest ratio on a host that other work keeps busy. A
benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CONFIG = """
[server]
listen = ["127.0.0.1:18200"]
[logging]
format = "json"
access_log = true
file = "/dev/null"
[upstreams.backend]
targets = [{ url = "http://127.0.0.1:18080" }]
keepalive = 128
keepalive_requests = 100000000
[[routes]]
id = "all"
path = "/**"
upstream = "backend"
"""
# Issue 9's second target: the same route with a local token bucket that never
# refuses, and with a cached RS256 JWT check: features_bench.py's rows.
# Issue 18's: any of them "-shared", compiled with a shared zone as a worker of
# `workers > 1` is (local limits, breakers and ejection in pyproxyd/shm).
from features_bench import EXTRA  # noqa: E402

FLAVOURS = {**EXTRA, **{f"{k}-shared": v for k, v in EXTRA.items()}}

REQUEST = b"GET /api/users/1 HTTP/1.1\r\nHost: 127.0.0.1:18200\r\n\r\n"
BODY = b'{"id":1,"name":"user","email":"user@example.com","active":true}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 03:50:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%b"
) % (len(BODY), BODY)
CLIENTS = 64


class _Transport:
    """Enough of asyncio.Transport for both sides: writes go to `sink`."""

    def __init__(self, sink: Any, extra: dict[str, Any]) -> None:
        self.sink = sink
        self.extra = extra
        self.owner: Any = None
        self.closing = False

    def write(self, data: bytes) -> None:
        self.sink(self, data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


async def _rig(flavour: str) -> Any:
    """The gateway of one flavour, driven in process: a coroutine function
    that sends one batch (a request on each client connection) and relays
    the upstream's answers."""
    from pyproxyd.compile import compile_snapshot
    from pyproxyd.config_load import load
    from pyproxyd.frontend.connection import Frontend
    from pyproxyd.observe.logging import AccessLog, configure

    try:
        from pyproxyd.proxy.handler import Proxy
    except ImportError:  # a checkout from before proxy/ became a package (--against)
        from pyproxyd.proxy import Proxy  # type: ignore[no-redef,attr-defined]
    from pyproxyd.snapshot import SnapshotHolder
    from pyproxyd.upstream.connection import UpstreamConnection

    request = REQUEST
    with tempfile.TemporaryDirectory() as d:
        if flavour.startswith("jwt"):
            from auth_bench import make_token  # writes jwks.json

            token = make_token(Path(d))
            request = REQUEST[:-2] + b"Authorization: Bearer %s\r\n\r\n" % token.encode()
        path = Path(d, "gateway.toml")
        path.write_text(CONFIG + FLAVOURS[flavour])
        configure("json", "info", "/dev/null")
        zone = None
        if flavour.endswith("-shared"):
            from pyproxyd.shm.zone import Zone

            zone = Zone.create()
        snap = compile_snapshot(load(path), zone=zone)
    proxy = Proxy(SnapshotHolder(snap), AccessLog())
    front = Frontend(proxy, header_timeout=60, keepalive_timeout=75, max_header_size=8190)
    loop = asyncio.get_running_loop()
    pool = snap.upstreams["backend"].targets[0].pool

    asked: list[Any] = []
    answered: list[bytes] = []
    for _ in range(CLIENTS):
        conn = UpstreamConnection(pool, loop)
        t = _Transport(lambda t, data: asked.append(t.owner), {})
        t.owner = conn
        conn.connection_made(t)  # type: ignore[arg-type]
        pool._core.idle.append(conn)
    clients = []
    for i in range(CLIENTS):
        c = front.protocol(False)()
        extra = {"peername": ("127.0.0.1", 40000 + i), "sockname": ("127.0.0.1", 18200)}
        c.connection_made(_Transport(lambda t, data: answered.append(data), extra))  # type: ignore[arg-type]
        clients.append(c)

    async def until(done: Any) -> None:
        for _ in range(1000):
            if done():
                return
            await asyncio.sleep(0)
        raise SystemExit("stuck: the gateway did not answer every request")

    async def batch() -> None:
        for c in clients:
            c.data_received(request)
        await until(lambda: len(asked) >= CLIENTS)
        for conn in asked:
            conn.data_received(RESPONSE)
        asked.clear()
        await until(lambda: len(answered) >= CLIENTS)
        if not answered[0].startswith(b"HTTP/1.1 200 OK\r\n"):
            raise SystemExit(f"unexpected answer: {answered[0][:200]!r}")
        answered.clear()

    return batch


async def _measure(requests: int, rounds: int, flavour: str) -> list[float]:
    batch = await _rig(flavour)
    for _ in range(50):
        await batch()
    batches = max(1, requests // CLIENTS)
    results = []
    for _ in range(rounds):
        gc.collect()
        before = _calibrate()
        started = time.perf_counter()
        for _ in range(batches):
            await batch()
        elapsed = time.perf_counter() - started
        # The host's speed drifts (2x within a minute here): each round is
        # scaled by a fixed CPU loop timed right around it.
        speed = (before + _calibrate()) / 2
        results.append(elapsed / (batches * CLIENTS) * 1e6 * CALIBRATION_US / speed)
    return results


CALIBRATION_US = (
    8_500.0  # _calibrate() on this 2-core host at its usual speed: the unit of the results
)


def _calibrate() -> float:
    """Microseconds of a fixed mix of interpreter work (calls, dicts, bytes)."""
    started = time.perf_counter()
    d: dict[bytes, int] = {}
    parts = []
    for i in range(20_000):
        key = b"k%d" % (i & 255)
        d[key] = d.get(key, 0) + len(key)
        parts.append(key.lower())
    b"".join(parts)
    return (time.perf_counter() - started) * 1e6


async def _paired(requests: int, rounds: int, flavour: str) -> tuple[float, float, float]:
    """plain and `flavour` in one process, their rounds alternated, timed in
    this thread's CPU time: (plain us, flavour us, median of the rounds'
    ratios). Time the host gives other processes does not count, and each
    ratio compares rounds run side by side."""
    rigs = [await _rig("plain"), await _rig(flavour)]
    for _ in range(50):
        for batch in rigs:
            await batch()
    batches = max(1, requests // CLIENTS)
    times: list[list[float]] = [[], []]
    for r in range(rounds):
        for k in (0, 1) if r % 2 == 0 else (1, 0):
            started = time.thread_time()
            for _ in range(batches):
                await rigs[k]()
            times[k].append((time.thread_time() - started) / (batches * CLIENTS) * 1e6)
    ratios = [b / a for a, b in zip(*times, strict=True)]
    return statistics.median(times[0]), statistics.median(times[1]), statistics.median(ratios)


def _child(requests: int, flavour: str) -> None:
    import uvloop

    if flavour.startswith("paired:"):
        flavour = flavour.partition(":")[2]
        a, b, ratio = uvloop.run(_paired(requests, 120, flavour))
        print(f"plain {a:.2f} us, {flavour} {b:.2f} us, median ratio {ratio:.3f}x")
        return
    results = uvloop.run(_measure(requests, 7, flavour))
    print(statistics.median(results))


def _run(checkout: Path, requests: int, flavour: str, raw: bool = False) -> Any:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(requests), flavour]
    if sys.platform.startswith("linux"):  # the last core, where peers.sh puts the proxy
        cmd = ["taskset", "-c", str((os.cpu_count() or 1) - 1), *cmd]
    out = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), check=True,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    last = out.stdout.strip().splitlines()[-1]
    return last if raw else float(last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", type=Path, help="another checkout to compare with")
    ap.add_argument("--flavour", choices=sorted(FLAVOURS), default="plain",
                    help="the route compared with --against (default plain)")  # fmt: skip
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=6400, help="per timed round (7 rounds a run)")
    ap.add_argument("--paired", action="store_true",
                    help="plain against --flavour in one process (this tree, or "
                    "--against's), thread CPU time, 120 alternated rounds a run "
                    "(--requests 2560 suits it)")  # fmt: skip
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(int(args.child[0]), args.child[1])
        return
    if args.paired:
        for i in range(args.runs):
            out = _run(args.against or REPO, args.requests, "paired:" + args.flavour, raw=True)
            print(f"run {i + 1}: {out}", flush=True)
        return
    # Without --against: this tree's routes against `plain` (the three of
    # features_bench, or --flavour alone). With it: one route, this tree
    # against the other checkout.
    if args.against is not None:
        rows = [(args.against, args.flavour), (REPO, args.flavour)]
    elif args.flavour.endswith("-shared") and args.flavour != "plain-shared":
        rows = [(REPO, "plain-shared"), (REPO, args.flavour)]
    elif args.flavour != "plain":
        rows = [(REPO, "plain"), (REPO, args.flavour)]
    else:
        rows = [(REPO, "plain"), (REPO, "ratelimit"), (REPO, "jwt")]
    got: dict[tuple[Path, str], list[float]] = {row: [] for row in rows}
    for i in range(args.runs):
        for row in rows:
            got[row].append(_run(row[0], args.requests, row[1]))
        print(f"run {i + 1}: " + ", ".join(f"{r[1]} {r[0]}: {got[r][-1]:.2f}" for r in rows),
              flush=True)  # fmt: skip
    print("\nmedian us of Python per proxied request, scaled to a host where the")
    print("calibration loop takes 8.5 ms:")
    base = statistics.median(got[rows[0]])
    for row in rows:
        med = statistics.median(got[row])
        print(f"  {row[1]:<10} {row[0]}: {med:7.2f} us  ({med / base:.3f}x {rows[0][1]} "
              f"{'of ' + str(rows[0][0]) if args.against else ''})")  # fmt: skip
    if args.against is None:
        print("(wrk's req/s ratio is nearer 1: the kernel's share of a request is the same)")


if __name__ == "__main__":
    main()

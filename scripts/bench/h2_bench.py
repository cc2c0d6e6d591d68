#!/usr/bin/env python3
"""HTTP/2 from clients (h2c) against HTTP/1.1 on the same route, ratios in one run.

    .venv/bin/python scripts/bench/h2_bench.py [--duration 5s] [--rounds 3]

The backend is nginx `return 200` on core 0 with the load tools; each proxy
is pinned alone on core 1. Rows (each round runs every row, order rotated):

  h1            wrk    -> pyproxyd (http2 = true)  -> backend
  h1-http2-off  wrk    -> pyproxyd (http2 = false) -> backend  (HTTP/1.1 must not be slower)
  h2c           h2load -> pyproxyd h2c             -> backend
  nginx-h2c     h2load -> nginx (`http2 on`)       -> backend  (the peer)

With `--idle N` (e.g. 1000) it then opens N h2c connections that each get
one answer and stay open, and prints the gateway's RSS before and after
(per connection).

h2load runs 8 connections with 16 streams each (128 requests in flight, as
wrk's 64 connections are in the same range of pressure). Prints the median
req/s per row, errors, and the ratios h2c/h1, h1/h1-http2-off and
h2c/nginx-h2c. Needs wrk, h2load and nginx (`apt-get install -y wrk
nghttp2-client nginx-light`). Every process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from proxy_bench import backend_conf, gateway_toml, start, stop, wait_port, wrk

BACKEND, H1, H1_OFF, NGINX = 18480, 18481, 18482, 18483
PATH = "/api/users/1"

NGINX_H2C = f"""
worker_processes 1;
pid {{tmp}}/proxy.pid;
error_log {{tmp}}/proxy-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000000;  # (its default 1000 a connection: h2load -D does not reconnect)
  upstream backend {{ server 127.0.0.1:{BACKEND}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{NGINX} http2;  # (`http2 on;` from nginx 1.25.1)
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def h2load(port: int, duration: str, warmup: str) -> tuple[float, int]:
    """One h2load run on core 0: (req/s, failed + errored)."""
    seconds = duration.rstrip("s")
    cmd = ["h2load", "-c8", "-m16", "-t1", f"-D{seconds}", f"--warm-up-time={warmup.rstrip('s')}",
           f"http://127.0.0.1:{port}{PATH}"]  # fmt: skip
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored", out)  # fmt: skip
    if rate is None or done is None:
        print(f"h2load output for port {port} could not be read:\n{out}", file=sys.stderr)
        return 0.0, 1
    return float(rate.group(1)), int(done.group(2)) + int(done.group(3))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def idle_h2c(port: int, n: int) -> list[asyncio.StreamWriter]:
    """n h2c connections, one answered request each, left open."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import StreamEnded

    async def one() -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = H2Connection(H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":path", PATH), (":scheme", "http"),
                              (":authority", "bench")], end_stream=True)  # fmt: skip
        writer.write(conn.data_to_send())
        while True:
            data = await reader.read(65536)
            if not data:
                raise SystemExit("the gateway closed an idle h2c connection")
            events = conn.receive_data(data)
            writer.write(conn.data_to_send())
            if any(isinstance(e, StreamEnded) for e in events):
                return writer

    writers = []
    for i in range(0, n, 100):  # bounded batches
        writers += await asyncio.gather(*(one() for _ in range(min(100, n - i))))
    return writers


def measure_idle(port: int, pid: int, n: int) -> None:
    async def run() -> None:
        before = rss_kib(pid)
        writers = await idle_h2c(port, n)
        await asyncio.sleep(1.0)
        after = rss_kib(pid)
        for w in writers:
            w.close()
        print(
            f"\nidle h2c connections: {len(writers)}; gateway RSS {before / 1024:.1f} MiB -> "
            f"{after / 1024:.1f} MiB ({(after - before) / len(writers):.1f} KiB a connection)"
        )

    asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--warmup", default="1s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64, help="wrk's")
    ap.add_argument("--idle", type=int, default=0, help="then hold this many idle h2c connections")
    args = ap.parse_args()
    for tool in ("wrk", "h2load", "nginx"):
        if not shutil.which(tool):
            raise SystemExit(
                f"{tool} is missing: apt-get install -y wrk nghttp2-client nginx-light"
            )
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # (inherited by the gateway)
    pyproxyd = [sys.executable, "-m", "pyproxyd", "run", "-c"]
    nginx = ["nginx", "-g", "daemon off;", "-c"]
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, list[tuple[float, int]]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "backend.conf").write_text(backend_conf(BACKEND, tmpdir))
        (tmp / "proxy.conf").write_text(NGINX_H2C.replace("{tmp}", tmpdir))
        (tmp / "on.toml").write_text(gateway_toml(H1, BACKEND, server="http2 = true"))
        (tmp / "off.toml").write_text(gateway_toml(H1_OFF, BACKEND, server="http2 = false"))
        try:
            procs.append(start([*nginx, str(tmp / "backend.conf")], "0", tmp / "b.log"))
            procs.append(start([*nginx, str(tmp / "proxy.conf")], "1", tmp / "n.log"))
            procs.append(start([*pyproxyd, str(tmp / "on.toml")], "1", tmp / "on.log"))
            procs.append(start([*pyproxyd, str(tmp / "off.toml")], "1", tmp / "off.log"))
            for port in (BACKEND, NGINX, H1, H1_OFF):
                wait_port(port)

            def h1(port: int) -> tuple[float, int]:
                wrk(port, args.warmup, args.connections, PATH)
                rps, _, _, errors = wrk(port, args.duration, args.connections, PATH)
                return rps, errors

            rows = {
                "h1": lambda: h1(H1),
                "h1-http2-off": lambda: h1(H1_OFF),
                "h2c": lambda: h2load(H1, args.duration, args.warmup),
                "nginx-h2c": lambda: h2load(NGINX, args.duration, args.warmup),
            }
            results = {k: [] for k in rows}
            names = list(rows)
            for r in range(args.rounds):  # bounded: rounds x rows runs of --duration
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    results[name].append(rows[name]())
                    print(f"round {r + 1} {name}: {results[name][-1][0]:.0f} req/s",
                          file=sys.stderr)  # fmt: skip
            if args.idle:
                measure_idle(H1, procs[2].pid, args.idle)
        finally:
            stop(procs)
    med = {k: statistics.median(x[0] for x in v) for k, v in results.items()}
    errs = {k: sum(x[1] for x in v) for k, v in results.items()}
    print(f"\n{args.rounds} rounds x {args.duration}; medians\n")
    print("| row | req/s | errors |")
    print("|---|---:|---:|")
    for k, rps in med.items():
        print(f"| {k} | {rps:,.0f} | {errs[k]} |")

    def ratio(a: str, b: str) -> str:
        return f"{a} / {b}: " + (f"{med[a] / med[b]:.2f}x" if med[b] else "n/a")

    pairs = (("h2c", "h1"), ("h1", "h1-http2-off"), ("h2c", "nginx-h2c"))
    print("\n" + "; ".join(ratio(a, b) for a, b in pairs))


if __name__ == "__main__":
    main()

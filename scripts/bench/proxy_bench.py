#!/usr/bin/env python3
"""Throughput of pyproxyd against the same backend hit directly, and against nginx.

    .venv/bin/python scripts/bench/proxy_bench.py [--duration 5] [--rounds 3]

Everything runs on 127.0.0.1. The backend is nginx `return 200` (a Python
backend would be the bottleneck) on core 0 with wrk; the proxy under test is
pinned alone on core 1. Rows (each round runs every row, order rotated):

  direct        wrk -> backend                      (ceiling)
  nginx         wrk -> nginx proxy (keepalive 32) -> backend
  pyproxyd      wrk -> pyproxyd (keepalive = 32)  -> backend
  pyproxyd-ka0  wrk -> pyproxyd (keepalive = 0)   -> backend   (the pool experiment)
  naive-aiohttp wrk -> ../shared/bench's naive aiohttp proxy (uvloop) -> backend, when present

Prints the median req/s, p50 and p99 per row and ratios against direct and
nginx. Needs wrk and nginx (`apt-get install -y wrk nginx-light`).
Every process started here is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BACKEND_PORT, NGINX_PORT, PY_PORT, PY0_PORT, NAIVE_PORT = 18380, 18381, 18382, 18383, 18384
NAIVE = REPO.parent / "shared" / "bench" / "naive_aiohttp_proxy.py"
BODY = '{"id":1,"name":"Ada Lovelace","email":"ada@example.com","ok":1}'

NGINX_BACKEND = f"""
worker_processes 1;
pid {{tmp}}/backend.pid;
error_log {{tmp}}/backend-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000000;
  server {{
    listen 127.0.0.1:{BACKEND_PORT};
    location / {{ default_type application/json; return 200 '{BODY}'; }}
  }}
}}
"""

NGINX_PROXY = f"""
worker_processes 1;
pid {{tmp}}/proxy.pid;
error_log {{tmp}}/proxy-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream backend {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{NGINX_PORT};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def gateway_toml(
    port: int,
    backend: int,
    *,
    admin: int = 0,
    workers: int = 1,
    keepalive: int = 32,
    server: str = "",
) -> str:
    """One catch-all route to `backend`, with what a production route has on
    (JSON access log to /dev/null, metrics): the config every bench starts from.
    `server` adds lines to [server]; a route setting can be appended."""
    return f"""
[server]
listen = ["127.0.0.1:{port}"]
workers = {workers}
{server}
[admin]
listen = "127.0.0.1:{admin}"
[logging]
format = "json"
access_log = true
file = "/dev/null"
[upstreams.backend]
targets = [{{ url = "http://127.0.0.1:{backend}" }}]
keepalive = {keepalive}
[[routes]]
id = "all"
path = "/**"
upstream = "backend"
"""  # fmt: skip


def backend_conf(port: int, tmpdir: str) -> str:
    """NGINX_BACKEND listening on `port` instead of BACKEND_PORT."""
    return NGINX_BACKEND.replace(f":{BACKEND_PORT};", f":{port};").replace("{tmp}", tmpdir)


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {timeout}s")


def start(cmd: list[str], cpu: str, log: Path) -> subprocess.Popen[bytes]:
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", cpu, *cmd]
    return subprocess.Popen(
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def wait_ready(admin_port: int, timeout: float = 20.0) -> None:
    """Until /readyz answers 200 (with workers > 1: every worker reported ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"pyproxyd not ready on admin port {admin_port} after {timeout}s")


def wrk_args(
    doc: str, tools: tuple[str, ...] = ("wrk", "nginx"), flags: dict[str, str] | None = None
) -> argparse.Namespace:
    """The options every wrk benchmark here takes, after checking its tools
    exist; `flags`: a bench's own on/off options (name -> help)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--warmup", default="1s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    for flag, text in (flags or {}).items():
        ap.add_argument(flag, action="store_true", help=text)
    args = ap.parse_args()
    packages = {"wrk": "wrk", "nginx": "nginx-light", "redis-server": "redis-server"}
    for tool in tools:
        if not shutil.which(tool):
            need = " ".join(packages[t] for t in tools)
            raise SystemExit(f"{tool} is missing: apt-get install -y {need}")
    return args


def to_ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", value)
    assert m, value
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def wrk(
    port: int,
    duration: str,
    connections: int,
    path: str = "/api/users/1",
    headers: dict[str, str] | None = None,
) -> tuple[float, float, float, int]:
    """One wrk run on core 0: (req/s, p50 ms, p99 ms, errors)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}", "--latency"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = [
        re.search(p, out)
        for p in (r"Requests/sec:\s+([\d.]+)", r"(?m)^\s+50%\s+(\S+)", r"(?m)^\s+99%\s+(\S+)")
    ]
    if not all(found):
        print(f"wrk output for port {port} could not be read:\n{out}", file=sys.stderr)
        return 0.0, 0.0, 0.0, 1
    rps = float(found[0].group(1))  # type: ignore[union-attr]
    p50 = to_ms(found[1].group(1))  # type: ignore[union-attr]
    p99 = to_ms(found[2].group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return rps, p50, p99, errors


def main() -> None:
    args = wrk_args(__doc__)
    pyproxyd = [sys.executable, "-m", "pyproxyd", "run", "-c"]
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "backend.conf").write_text(NGINX_BACKEND.replace("{tmp}", tmpdir))
        (tmp / "proxy.conf").write_text(NGINX_PROXY.replace("{tmp}", tmpdir))
        for name, port, ka in (("py", PY_PORT, 32), ("py0", PY0_PORT, 0)):
            (tmp / f"{name}.toml").write_text(gateway_toml(port, BACKEND_PORT, keepalive=ka))
        nginx = ["nginx", "-g", "daemon off;", "-c"]
        try:
            procs.append(start([*nginx, str(tmp / "backend.conf")], "0", tmp / "b.log"))
            procs.append(start([*nginx, str(tmp / "proxy.conf")], "1", tmp / "n.log"))
            procs.append(start([*pyproxyd, str(tmp / "py.toml")], "1", tmp / "p.log"))
            procs.append(start([*pyproxyd, str(tmp / "py0.toml")], "1", tmp / "p0.log"))
            rows = {"direct": BACKEND_PORT, "nginx": NGINX_PORT, "pyproxyd": PY_PORT,
                    "pyproxyd-ka0": PY0_PORT}  # fmt: skip
            if NAIVE.exists():  # the naive aiohttp proxy of ../shared/bench, as a floor
                naive = [sys.executable, str(NAIVE), "--port", str(NAIVE_PORT), "--upstream",
                         f"http://127.0.0.1:{BACKEND_PORT}", "--uvloop"]  # fmt: skip
                procs.append(start(naive, "1", tmp / "naive.log"))
                rows["naive-aiohttp"] = NAIVE_PORT
            for port in rows.values():
                wait_port(port)
            results: dict[str, list[tuple[float, float, float, int]]] = {k: [] for k in rows}
            names = list(rows)
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    wrk(rows[name], args.warmup, args.connections)
                    results[name].append(wrk(rows[name], args.duration, args.connections))
                    print(f"round {r + 1} {name}: {results[name][-1][0]:.0f} req/s",
                          file=sys.stderr)  # fmt: skip
        finally:
            stop(procs)
    med = {
        k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in results.items()
    }
    errs = {k: sum(x[3] for x in v) for k, v in results.items()}
    print(f"\n{args.rounds} rounds x {args.duration}, {args.connections} connections; medians\n")
    print("| row | req/s | p50 ms | p99 ms | errors | vs direct | vs nginx |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k, (rps, p50, p99) in med.items():
        print(f"| {k} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errs[k]} | "
              f"{rps / med['direct'][0]:.2f}x | {rps / med['nginx'][0]:.2f}x |")  # fmt: skip
    ratio = med["pyproxyd"][0] / med["pyproxyd-ka0"][0]
    print(f"\npool experiment: keepalive=32 vs keepalive=0 throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The longest event-loop stall while a 5,000-route config reloads under load.

    .venv/bin/python scripts/bench/reload_stall.py [--routes 5000] [--reloads 5]

Runs the real gateway in this process with a lag probe (a 1 ms sleep loop
that records how late it wakes), puts wrk load on it, and compares the worst
stall of a window with no reload (baseline) against windows where the
5,000-route file is edited and reloaded. Also counts failed requests.
Needs wrk and nginx (the backend). Loopback only; everything started here is
stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import uvloop

REPO = Path(__file__).resolve().parents[2]

from pyproxyd.config_load import load  # noqa: E402
from pyproxyd.server import Gateway  # noqa: E402

BACKEND_PORT, GW_PORT = 18480, 18481

NGINX = f"""
worker_processes 1;
pid {{tmp}}/backend.pid;
error_log {{tmp}}/backend-error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000000;
  server {{ listen 127.0.0.1:{BACKEND_PORT};
    location / {{ default_type application/json; return 200 '{{"ok":1}}'; }} }} }}
"""


def config(routes: int, edit: int) -> str:
    out = [
        f'[server]\nlisten = ["127.0.0.1:{GW_PORT}"]\n[admin]\nlisten = "127.0.0.1:0"\n'
        "[logging]\naccess_log = false\n"
        f'[upstreams.app]\ntargets = [{{ url = "http://127.0.0.1:{BACKEND_PORT}" }}]\n'
    ]
    for i in range(routes):
        pattern = (f"/svc{i}/v1/items/{{id}}", f"/svc{i}/**", f"/exact/{i}")[i % 3]
        out.append(f'[[routes]]\nid = "r{i}"\npath = "{pattern}"\nupstream = "app"\n')
    out.append(f'[[routes]]\nid = "edit{edit}"\npath = "/edit/{edit}"\nupstream = "app"\n')
    out.append('[[routes]]\nid = "hot"\npath = "/hot/**"\nupstream = "app"\n')
    return "".join(out)


class LagProbe:
    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, loop.time() - t - 0.001)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "backend.conf").write_text(NGINX.replace("{tmp}", str(tmp)))
    backend = subprocess.Popen(
        ["nginx", "-g", "daemon off;", "-c", str(tmp / "backend.conf")], start_new_session=True
    )
    path = tmp / "gateway.toml"
    path.write_text(config(args.routes, 0))
    t0 = time.perf_counter()
    loaded = load(path)
    gw = Gateway(loaded)
    await gw.start()
    print(f"cold load+compile of {args.routes} routes: {time.perf_counter() - t0:.2f}s")
    reloader = gw.reloader
    probe = LagProbe()
    probe.start()
    window = args.reloads * 2.0 + 4
    wrk = await asyncio.create_subprocess_exec(
        "wrk", "-t1", "-c16", f"-d{window:.0f}s", f"http://127.0.0.1:{GW_PORT}/hot/x",
        stdout=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        await asyncio.sleep(1.0)
        probe.take()
        await asyncio.sleep(1.5)
        baseline = probe.take()
        stalls, durations = [], []
        for i in range(1, args.reloads + 1):
            path.write_text(config(args.routes, i))
            probe.take()
            t = time.perf_counter()
            assert await reloader.reload(), reloader.last_error
            durations.append(time.perf_counter() - t)
            await asyncio.sleep(0.2)
            stalls.append(probe.take())
            await asyncio.sleep(1.0)
        out, _ = await wrk.communicate()
    finally:
        if wrk.returncode is None:
            os.killpg(wrk.pid, signal.SIGTERM)
        await gw.stop()
        os.killpg(backend.pid, signal.SIGTERM)
        backend.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)
    text = out.decode()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: (.*)", text)
    rate = rps.group(1) if rps else "?"
    non_2xx = errors.group(1) if errors else 0
    socket_errors = sock.group(1) if sock else "none"
    print(f"under load: {rate} req/s, non-2xx: {non_2xx}, socket errors: {socket_errors}")
    print(f"baseline worst loop stall (no reload): {baseline * 1000:.1f} ms")
    print(f"reload wall time: median {sorted(durations)[len(durations) // 2]:.2f}s")
    print(f"worst loop stall during reload: {max(stalls) * 1000:.1f} ms "
          f"(each: {', '.join(f'{s * 1000:.1f}' for s in stalls)} ms)")  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routes", type=int, default=5000)
    ap.add_argument("--reloads", type=int, default=5)
    uvloop.install()
    asyncio.run(main(ap.parse_args()))

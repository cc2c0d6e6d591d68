#!/usr/bin/env python3
"""HTTP/2 and gRPC through pyproxyd, nginx and Caddy, and HTTP/1.1 before and after HTTP/2.

    bash scripts/compile.sh        # the numbers are for the compiled build
    PYTHONPATH=. .venv/bin/python scripts/bench/h2_bench.py [--duration 5s] [--rounds 5]
        [--base ../wt-h1base] [--idle 1000] [--profile] [--rows h2c-pyproxyd,...]
        [--quota 20]

`--base`: a checkout of another commit (`git worktree add --detach DIR c02263f`,
the one before HTTP/2), compiled there too; pyproxyd runs from each checkout
(cwd and PYTHONPATH), so each imports its own code and build.

Every proxy is pinned on core 1 (all started at once, only the one under test
busy); the load tools and the backends share core 0. Backends: nginx
`return 200` with a small JSON body over HTTP/1.1 (proxy_bench's), and a
grpcio server (grpc.aio, a generic handler echoing /echo.Echo/Unary's message
back) in its own process. Rows (each round runs every row, order rotated, a
warm-up run before each measured one):

  h2c-pyproxyd   h2load (h2c prior knowledge) -> pyproxyd -> HTTP/1.1 backend
  h2c-nginx      h2load -> nginx (`listen ... http2`, h2c in nginx 1.22) -> backend
  h2c-caddy      h2load -> Caddy (`servers { protocols h1 h2c }`) -> backend
  grpc-direct    h2load gRPC unary -> the grpcio server (its ceiling, not a proxy)
  grpc-pyproxyd  h2load gRPC unary -> pyproxyd (upstream protocol = "h2c") -> grpcio
  grpc-nginx     h2load gRPC unary -> nginx (`grpc_pass`, keepalive 32) -> grpcio
  grpc-caddy     h2load gRPC unary -> Caddy (`reverse_proxy h2c://...`) -> grpcio
  h1-main        wrk -> pyproxyd of this checkout (http2 on, the default) -> backend
  h1-base        wrk -> pyproxyd of `--base` (a checkout of the commit before
                 HTTP/2, compiled too) with the same config -> backend

h2load runs `--h2-conns` connections x `--streams` streams (8 x 16: 128
requests in flight; wrk has 64 connections). A gRPC call is a POST of a
5-byte-prefixed protobuf message (`-d`) with `content-type: application/grpc`
and `te: trailers`; h2load counts 2xx only, so before measuring a grpcio
client makes one call through each proxy and checks it ends with status OK
and the echoed message. Because other work on the host moves req/s by up to
2x, the CPU the proxy's processes used (utime + stime from /proc, workers and
children included) per request is measured too: 1e6 / (CPU us a request) is
its requests per second per core, what the issue's goal compares. Each row is
compared with its peer of the same round and the median of those ratios
printed, and the write syscalls a request (/proc/PID/io `syscw`: write and
writev, which all three use for sockets). How many modules each pyproxyd
checkout runs compiled is printed (pyproxyd/compiled.py's status).

`--quota PCT` (as root, cgroup v1's cpu controller): each proxy may use
only PCT% of core 1 (1 ms in 10 for 10%). Unlimited, a proxy that the
backend keeps below a full core goes idle between calls; on this VM each
wake-up from idle finds the caches cold, so its CPU a request depends on
how often it sleeps as much as on its code (one call in flight: 320 us a
gRPC call through pyproxyd, 88 with 128 in flight, and half as much with a
busy loop at nice 19 keeping the core awake). With a quota below what the
backend's calls need, every proxy is busy for all the time it may run: its
req/s is what PCT% of a core serves, and req/s / PCT% is its requests per
second per core (pick a PCT whose req/s stays below grpc-direct's).

With `--idle N` (default 1000): then N h2c connections that each made one
request and stay open, to a fresh pyproxyd (one worker), to nginx and to
Caddy: RSS of each before and after, KiB per connection. With `--profile`:
pyproxyd sampled during one more h2c and one more gRPC run, by py-spy
(`record --native`: Python frames and the compiled modules' C functions;
`pip install py-spy`) when found, else `perf record` (C symbols only); the
share of samples inside h2/hpack/hyperframe, and the top leaf frames.
`--keep-profiles DIR` keeps the raw stacks.

Needs h2load, wrk, nginx, caddy, grpcio (`apt-get install -y nghttp2-client
wrk nginx-light caddy`). Only 127.0.0.1, ports 18560-18579. Every process
started here is stopped by PID at the end. A benchmark: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from idle_conns import process_tree, rss_kib
from proxy_bench import (
    REPO,
    backend_conf,
    gateway_toml,
    start,
    stop,
    wait_port,
    wait_ready,
    wrk,
)
from workers_scale import cpu_seconds

BACKEND, GRPC = 18560, 18561
PY, PY_ADMIN = 18562, 18563  # the h2c and gRPC pyproxyd of this checkout
H1_MAIN, H1_MAIN_ADMIN, H1_BASE, H1_BASE_ADMIN = 18564, 18565, 18566, 18567
IDLE, IDLE_ADMIN = 18568, 18569  # a fresh pyproxyd for the idle connections
NGINX_H2C, NGINX_GRPC, CADDY_H2C, CADDY_GRPC = 18570, 18571, 18572, 18573
PATH = "/api/users/1"
CGROUP = Path("/sys/fs/cgroup/cpu")  # --quota's (cgroup v1, as this machine mounts it)
GRPC_PATH = "/echo.Echo/Unary"
MESSAGE = b"\x0a\x05hello"  # echo.Note{text: "hello"}, the protobuf wire form
GRPC_BODY = b"\x00" + struct.pack(">I", len(MESSAGE)) + MESSAGE  # uncompressed, length-prefixed

GRPC_ROUTE = f"""
[upstreams.grpc]
targets = [{{ url = "http://127.0.0.1:{GRPC}" }}]
protocol = "h2c"
[[routes]]
id = "grpc"
path = "/echo.Echo/**"
upstream = "grpc"
"""

NGINX_PROXY = f"""
worker_processes 1;
pid {{tmp}}/proxy.pid;
error_log {{tmp}}/proxy-error.log;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000000;  # (also HTTP/2's requests a connection since 1.19.7)
  keepalive_timeout 300s;
  client_body_temp_path {{tmp}}/cb; proxy_temp_path {{tmp}}/p; fastcgi_temp_path {{tmp}}/f;
  uwsgi_temp_path {{tmp}}/u; scgi_temp_path {{tmp}}/s;
  upstream be {{ server 127.0.0.1:{BACKEND}; keepalive 32; keepalive_requests 1000000000; }}
  upstream grpcbe {{ server 127.0.0.1:{GRPC}; keepalive 32; keepalive_requests 1000000000; }}
  server {{
    listen 127.0.0.1:{NGINX_H2C} http2;  # h2c with prior knowledge (`http2 on;` from 1.25.1)
    location / {{
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
  server {{
    listen 127.0.0.1:{NGINX_GRPC} http2;
    location / {{ grpc_pass grpc://grpcbe; }}
  }}
}}
"""

CADDYFILE = f"""{{
    admin off
    auto_https off
    servers {{
        protocols h1 h2c
    }}
    log {{
        output discard
    }}
}}
http://127.0.0.1:{CADDY_H2C} {{
    bind 127.0.0.1
    reverse_proxy 127.0.0.1:{BACKEND} {{
        transport http {{
            keepalive 300s
            keepalive_idle_conns_per_host 32
        }}
    }}
}}
http://127.0.0.1:{CADDY_GRPC} {{
    bind 127.0.0.1
    reverse_proxy h2c://127.0.0.1:{GRPC}
}}
"""


def serve_grpc(port: int) -> None:
    """The grpcio backend (run in its own process): /echo.Echo/Unary answers its message."""
    import grpc

    async def unary(request: bytes, context: object) -> bytes:
        return request  # no serializers: the message's bytes both ways

    async def main() -> None:
        server = grpc.aio.server()
        handlers = {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("echo.Echo", handlers),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def check_grpc(port: int) -> str:
    """One unary call with a grpcio client: 'OK' when it ended OK with the message echoed."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(GRPC_PATH)
        try:
            answer, outcome = call.with_call(MESSAGE, timeout=5)
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()}"
    if outcome.code() != grpc.StatusCode.OK or answer != MESSAGE:
        return f"{outcome.code().name}, answer {answer!r}"
    return "OK"


def h2load(port: int, duration: str, conns: int, streams: int, grpc_body: Path | None) -> dict:
    """One h2load run on core 0: req/s, requests done, and those not 2xx or failed."""
    cmd = ["taskset", "-c", "0", "h2load", f"-c{conns}", f"-m{streams}", "-t1",
           f"-D{duration.rstrip('s')}"]  # fmt: skip
    path = PATH
    if grpc_body is not None:
        cmd += ["-d", str(grpc_body), "-H", "content-type: application/grpc",
                "-H", "te: trailers"]  # fmt: skip
        path = GRPC_PATH
    cmd.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored", out)  # fmt: skip
    if rate is None or done is None:
        print(f"h2load output for port {port} could not be read:\n{out}", file=sys.stderr)
        return {"rps": 0.0, "requests": 0, "errors": 1}
    # (failed: not 2xx or 3xx, errored included; a gRPC error status is in the trailers,
    # which h2load does not read: check_grpc looks at it)
    requests, failed = int(done.group(1)), int(done.group(3))
    return {"rps": float(rate.group(1)), "requests": requests, "errors": failed}


def writes(pid: int) -> int:
    """write-family syscalls (write, writev; not send/sendmsg) of `pid`'s process tree."""
    count = 0
    for p in process_tree(pid):
        try:
            text = Path(f"/proc/{p}/io").read_text()
        except OSError:
            continue
        m = re.search(r"syscw: (\d+)", text)
        count += int(m.group(1)) if m else 0
    return count


def wrk_row(port: int, duration: str, connections: int) -> dict:
    rps, _p50, _p99, errors = wrk(port, duration, connections, PATH)
    return {"rps": rps, "requests": rps * float(duration.rstrip("s")), "errors": errors}


def limit(pid: int, percent: int) -> Path:
    """`pid` and its descendants in a cgroup of their own (cgroup v1's cpu
    controller) allowed `percent`% of a core: 1 ms in 10 for 10%, so that a
    proxy that gets more requests than that lets it serve is busy all the
    time it may run, and its req/s is what that share of a core can do."""
    group = CGROUP / f"h2bench-{pid}"
    group.mkdir()
    (group / "cpu.cfs_period_us").write_text("10000")
    (group / "cpu.cfs_quota_us").write_text(str(percent * 100))
    for p in process_tree(pid):
        (group / "cgroup.procs").write_text(str(p))
    return group


def compiled_modules(checkout: Path) -> str:
    """'compiled/listed' request-path modules of that checkout's build (pyproxyd/compiled.py)."""
    code = ("from pyproxyd.compiled import MODULES, status; c, stale = status(); "
            "print(f'{len(c)}/{len(MODULES)}' + (' STALE' if stale else ''))")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    return out.stdout.strip() or out.stderr.strip()[-200:]


async def idle_h2c(port: int, n: int) -> list[asyncio.StreamWriter]:
    """n h2c connections, one answered request each, left open (opened 100 at a time)."""
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
        for _ in range(100):  # bounded: a few frames make the answer
            data = await asyncio.wait_for(reader.read(65536), 30)
            if not data:
                break
            events = conn.receive_data(data)
            writer.write(conn.data_to_send())
            if any(isinstance(e, StreamEnded) for e in events):
                return writer
        raise RuntimeError(f"no answer on an h2c connection to {port}")

    writers: list[asyncio.StreamWriter] = []
    for i in range(0, n, 100):
        writers += await asyncio.gather(*(one() for _ in range(min(100, n - i))))
    return writers


def measure_idle(name: str, port: int, pid: int, n: int) -> dict:
    """RSS of `pid`'s process tree before and after n idle h2c connections."""

    def rss() -> int:
        return sum(rss_kib(p) for p in process_tree(pid))

    async def run() -> dict:
        await idle_h2c(port, 50)  # warm-up: the first connections' one-off allocations
        await asyncio.sleep(1.0)
        before = rss()
        writers = await idle_h2c(port, n)
        await asyncio.sleep(2.0)
        after = rss()
        open_ = sum(not w.is_closing() for w in writers)
        for w in writers:
            w.close()
        await asyncio.sleep(0.5)
        return {"name": name, "n": len(writers), "open": open_, "before": before, "after": after}

    return asyncio.run(run())


def py_spy() -> str | None:
    """py-spy on PATH, beside this interpreter or in this checkout's .venv."""
    for cand in (shutil.which("py-spy"), Path(sys.executable).with_name("py-spy"),
                 REPO / ".venv" / "bin" / "py-spy"):  # fmt: skip
        if cand and Path(cand).exists():
            return str(cand)
    return None


def profile(pid: int, run: Callable[[], object], seconds: float, out: Path) -> str:
    """Where `pid`'s CPU goes while `run()` runs: py-spy (Python frames, and with --native
    the compiled modules' C functions), else perf (C symbols only)."""
    spy = py_spy()
    if spy:
        cmd = [spy, "record", "--pid", str(pid), "--native", "--rate", "250", "--format", "raw",
               "--duration", str(max(1, int(seconds) - 1)), "--output", str(out)]  # fmt: skip
    else:
        cmd = ["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", str(out)]
    rec = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run()
    finally:
        if not spy:
            rec.send_signal(2)  # SIGINT: perf writes its file and exits
        rec.wait(60)
    if spy:
        return summarize_spy(out)
    rep = subprocess.run(["perf", "report", "-i", str(out), "--no-children", "--stdio",
                          "--sort", "dso,sym", "-g", "none", "--percent-limit", "0.7"],
                         capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    return "\n".join([x for x in rep.splitlines() if x.strip() and not x.startswith("#")][:25])


H2_LIBS = ("h2", "hpack", "hyperframe")  # python-hyper's HTTP/2 stack (vendored)


# A compiled function of the vendored stack: mypyc names it by its module's
# shortest unique suffix (CPyDef_h2___connection___..., CPyDef_frame___...).
_COMPILED_H2 = re.compile(
    r"^CPy\w*?_(h2|hpack|hyperframe|frame_buffer|utilities|windows|table|huffman\w*|frame|flags)___"
)
_PACKAGE = {"frame_buffer": "h2", "utilities": "h2", "windows": "h2", "table": "hpack",
            "frame": "hyperframe", "flags": "hyperframe"}  # fmt: skip


def where(frame: str) -> str:
    """A py-spy frame 'func (pkg/mod.py:12)' -> 'pkg' (a C library: its file name);
    the vendored HTTP/2 stack (pyproxyd/_vendor/h2/..., or compiled) -> its package."""
    m = re.search(r"\(([^)]*)\)$", frame)
    path = m.group(1).split(":")[0] if m else "?"
    if path.startswith("pyproxyd/_vendor/"):
        return path.split("/")[2]
    c = _COMPILED_H2.match(frame)
    if c is not None:
        name = c.group(1)
        return "hpack" if name.startswith("huffman") else _PACKAGE.get(name, name)
    return path.split("/")[0] if not path.startswith("/") else path.rsplit("/", 1)[-1]


def summarize_spy(out: Path, top: int = 20) -> str:
    """py-spy's raw stacks: share of samples by leaf frame and by the leaf's package, and the
    share spent inside the HTTP/2 libraries (any of their frames on the stack)."""
    leaves: dict[str, int] = {}
    areas: dict[str, int] = {}
    total = in_h2 = 0
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        leaf = re.sub(r":\d+\)$", ")", frames[-1])
        n = int(count)
        total += n
        leaves[leaf] = leaves.get(leaf, 0) + n
        areas[where(leaf)] = areas.get(where(leaf), 0) + n
        in_h2 += n if any(where(f) in H2_LIBS for f in frames) else 0
    if not total:
        return "(no samples)"
    by_area = sorted(areas.items(), key=lambda x: -x[1])[:8]
    lines = [f"{total} samples; inside h2/hpack/hyperframe (inclusive): {in_h2 * 100 / total:.0f}%",
             "self time by the leaf's package: "
             + ", ".join(f"{k} {v * 100 / total:.0f}%" for k, v in by_area)]  # fmt: skip
    for leaf, n in sorted(leaves.items(), key=lambda x: -x[1])[:top]:
        lines.append(f"  {n * 100 / total:5.1f}%  {leaf}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--warmup", default="1s")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64, help="wrk's")
    ap.add_argument("--h2-conns", type=int, default=8, help="h2load's connections")
    ap.add_argument("--streams", type=int, default=16, help="h2load's streams a connection")
    ap.add_argument("--base", type=Path, help="a checkout of the commit before HTTP/2 (compiled)")
    ap.add_argument("--idle", type=int, default=1000, help="idle h2c connections (0: skip)")
    ap.add_argument("--profile", action="store_true", help="profile pyproxyd (h2c, gRPC rows)")
    ap.add_argument("--keep-profiles", type=Path, help="copy the raw profiles into this folder")
    ap.add_argument("--rows", help="only these rows, comma-separated (default: all)")
    ap.add_argument("--quota", type=int, default=0, help="PCT: each proxy's share of a core")
    args = ap.parse_args()
    for tool, pkg in (("h2load", "nghttp2-client"), ("wrk", "wrk"), ("nginx", "nginx-light"),
                      ("caddy", "caddy"), ("taskset", "util-linux")):  # fmt: skip
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install -y {pkg}")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # (inherited by the proxies)
    seconds = float(args.duration.rstrip("s"))
    procs: list[subprocess.Popen[bytes]] = []
    pids: dict[str, int] = {}
    compiled: dict[str, str] = {}
    results: dict[str, list[dict]] = {}
    checks: dict[str, str] = {}
    idle: list[dict] = []
    profiles: dict[str, str] = {}
    groups: list[Path] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "grpc.bin").write_bytes(GRPC_BODY)
        (tmp / "backend.conf").write_text(backend_conf(BACKEND, tmpdir))
        (tmp / "proxy.conf").write_text(NGINX_PROXY.replace("{tmp}", tmpdir))
        (tmp / "c").mkdir()
        (tmp / "c" / "Caddyfile").write_text(CADDYFILE)
        (tmp / "py.toml").write_text(gateway_toml(PY, BACKEND, admin=PY_ADMIN) + GRPC_ROUTE)
        (tmp / "h1-main.toml").write_text(gateway_toml(H1_MAIN, BACKEND, admin=H1_MAIN_ADMIN))
        (tmp / "h1-base.toml").write_text(gateway_toml(H1_BASE, BACKEND, admin=H1_BASE_ADMIN))
        idle_conf = gateway_toml(
            IDLE, BACKEND, admin=IDLE_ADMIN, server='keepalive_timeout = "300s"'
        )
        (tmp / "idle.toml").write_text(idle_conf)

        def pyproxyd(name: str, checkout: Path, conf: str) -> None:
            # cwd and PYTHONPATH: that checkout's pyproxyd (and its .so files) is imported
            cmd = ["taskset", "-c", "1", sys.executable, "-m", "pyproxyd", "run", "--no-watch",
                   "-c", str(tmp / conf)]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(checkout)}
            procs.append(subprocess.Popen(cmd, cwd=checkout, env=env, start_new_session=True,
                                          stdout=(tmp / f"{name}.log").open("wb"),
                                          stderr=subprocess.STDOUT))  # fmt: skip
            pids[name] = procs[-1].pid
            compiled[name] = compiled_modules(checkout)

        try:
            nginx = ["nginx", "-g", "daemon off;", "-c"]
            procs.append(start([*nginx, str(tmp / "backend.conf")], "0", tmp / "b.log"))
            grpc_cmd = [sys.executable, __file__, "--grpc-server", str(GRPC)]
            procs.append(start(grpc_cmd, "0", tmp / "grpc.log"))
            pids["grpc"] = procs[-1].pid
            procs.append(start([*nginx, str(tmp / "proxy.conf")], "1", tmp / "n.log"))
            pids["nginx"] = procs[-1].pid
            caddy = ["env", "GOMAXPROCS=1", f"HOME={tmp / 'c'}", f"XDG_DATA_HOME={tmp / 'c'}",
                     f"XDG_CONFIG_HOME={tmp / 'c'}", "caddy", "run", "--config",
                     str(tmp / "c" / "Caddyfile"), "--adapter", "caddyfile"]  # fmt: skip
            procs.append(start(caddy, "1", tmp / "caddy.log"))
            pids["caddy"] = procs[-1].pid
            pyproxyd("pyproxyd", REPO, "py.toml")
            pyproxyd("h1-main", REPO, "h1-main.toml")
            if args.base:
                pyproxyd("h1-base", args.base.resolve(), "h1-base.toml")
            if args.idle:
                pyproxyd("idle", REPO, "idle.toml")
            for port in (BACKEND, GRPC, NGINX_H2C, NGINX_GRPC, CADDY_H2C, CADDY_GRPC):
                wait_port(port)
            if args.quota:
                for name in ("nginx", "caddy", "pyproxyd", "h1-main", "h1-base"):
                    if name in pids:
                        groups.append(limit(pids[name], args.quota))
            for admin in (
                (PY_ADMIN, H1_MAIN_ADMIN)
                + ((H1_BASE_ADMIN,) if args.base else ())
                + ((IDLE_ADMIN,) if args.idle else ())
            ):
                wait_ready(admin)
            for port, name in ((GRPC, "direct"), (PY, "pyproxyd"), (NGINX_GRPC, "nginx"),
                               (CADDY_GRPC, "caddy")):  # fmt: skip
                checks[name] = check_grpc(port)
            print("gRPC unary through each (grpcio client): "
                  + ", ".join(f"{k} {v}" for k, v in checks.items()), file=sys.stderr)  # fmt: skip

            def h2(port: int, grpc: bool) -> Callable[[str], dict]:
                body = tmp / "grpc.bin" if grpc else None
                return lambda d: h2load(port, d, args.h2_conns, args.streams, body)

            def h1(port: int) -> Callable[[str], dict]:
                return lambda d: wrk_row(port, d, args.connections)

            rows: dict[str, tuple[str | None, Callable[[str], dict]]] = {  # name -> (pid, run)
                "h2c-pyproxyd": ("pyproxyd", h2(PY, False)),
                "h2c-nginx": ("nginx", h2(NGINX_H2C, False)),
                "h2c-caddy": ("caddy", h2(CADDY_H2C, False)),
                "grpc-direct": (None, h2(GRPC, True)),
                "grpc-pyproxyd": ("pyproxyd", h2(PY, True)),
                "grpc-nginx": ("nginx", h2(NGINX_GRPC, True)),
                "grpc-caddy": ("caddy", h2(CADDY_GRPC, True)),
                "h1-main": ("h1-main", h1(H1_MAIN)),
            }
            if args.base:
                rows["h1-base"] = ("h1-base", h1(H1_BASE))
            if args.rows:
                rows = {k: v for k, v in rows.items() if k in args.rows.split(",")}
            results = {k: [] for k in rows}
            names = list(rows)
            for r in range(args.rounds):  # bounded: rounds x rows runs of --duration
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    who, run = rows[name]
                    run(args.warmup)
                    pid = pids[who] if who else pids["grpc"]
                    before, wrote = cpu_seconds(pid), writes(pid)
                    res = run(args.duration)
                    used = cpu_seconds(pid) - before
                    res["cpu_us"] = used * 1e6 / max(1.0, res["requests"])
                    res["busy"] = used * 100 / seconds  # % of a core
                    res["writes"] = (writes(pid) - wrote) / max(1.0, res["requests"])
                    results[name].append(res)
                    print(f"round {r + 1} {name}: {res['rps']:.0f} req/s, "
                          f"{res['cpu_us']:.1f} us CPU a request, {res['errors']} errors",
                          file=sys.stderr)  # fmt: skip
            if args.profile:
                for name in [x for x in ("h2c-pyproxyd", "grpc-pyproxyd") if x in rows]:
                    load = functools.partial(rows[name][1], args.duration)
                    out = tmp / f"{name}.prof"
                    profiles[name] = profile(pids["pyproxyd"], load, seconds, out)
                    if args.keep_profiles:
                        args.keep_profiles.mkdir(parents=True, exist_ok=True)
                        shutil.copy(out, args.keep_profiles / out.name)
            if args.idle:
                for name, port in (("pyproxyd", IDLE), ("nginx", NGINX_H2C),
                                   ("caddy", CADDY_H2C)):  # fmt: skip
                    pid = pids["idle" if name == "pyproxyd" else name]
                    idle.append(measure_idle(name, port, pid, args.idle))
        finally:
            stop(procs)
            for group in groups:
                with contextlib.suppress(OSError):
                    group.rmdir()

    report(args, results, checks, compiled, idle, profiles, seconds)


def report(args: argparse.Namespace, results: dict[str, list[dict]], checks: dict[str, str],
           compiled: dict[str, str], idle: list[dict], profiles: dict[str, str],
           seconds: float) -> None:  # fmt: skip
    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in results[name])

    def paired(a: str, b: str, key: str) -> float:
        """Median over rounds of a's value / b's in the same round."""
        return statistics.median(
            x[key] / (y[key] or 1.0) for x, y in zip(results[a], results[b], strict=True)
        )

    quota = f", each limited to {args.quota}% of it" if args.quota else ""
    print(f"\n{args.rounds} rounds x {args.duration}; h2load {args.h2_conns} connections x "
          f"{args.streams} streams, wrk {args.connections} connections; proxies on core 1"
          f"{quota}, load and backends on core 0; medians\n")  # fmt: skip
    print(f"pyproxyd modules compiled: {compiled}")
    print(f"gRPC unary checked with a grpcio client: {checks}\n")
    print("(grpc-direct's CPU and writes are the grpcio server's own; writes: write/writev "
          "syscalls of the proxy's processes, /proc/PID/io syscw)\n")  # fmt: skip
    print("| row | req/s | CPU us a request | req/s per core (1e6 / CPU us) | core used "
          "| writes a request | non-2xx/errors |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in results:
        cpu = med(name, "cpu_us")
        errors = sum(x["errors"] for x in results[name])
        print(f"| {name} | {med(name, 'rps'):,.0f} | {cpu:.1f} | {1e6 / (cpu or 1.0):,.0f} "
              f"| {med(name, 'busy'):.0f}% | {med(name, 'writes'):.2f} | {errors} |")  # fmt: skip
    print(
        "\nper-round ratios (median over rounds); 'per core' = the other's CPU a request / "
        "this one's:"
    )
    pairs = [("h2c-pyproxyd", "h2c-caddy"), ("h2c-pyproxyd", "h2c-nginx"),
             ("grpc-pyproxyd", "grpc-caddy"), ("grpc-pyproxyd", "grpc-nginx")]  # fmt: skip
    if "h1-base" in results:
        pairs.append(("h1-main", "h1-base"))
    for a, b in [(a, b) for a, b in pairs if a in results and b in results]:
        print(f"  {a} / {b}: req/s {paired(a, b, 'rps'):.2f}x, "
              f"req/s per core {paired(b, a, 'cpu_us'):.2f}x")  # fmt: skip
    print(
        "goal: pyproxyd >= 1.00x Caddy's req/s per core on h2c and on gRPC unary; "
        "h1-main >= 0.97x h1-base"
    )
    if idle:
        print("\n| idle h2c connections | RSS before MiB | RSS after MiB | KiB a connection | "
              "still open |")  # fmt: skip
        print("|---|---:|---:|---:|---:|")
        for x in idle:
            per = (x["after"] - x["before"]) / max(1, x["n"])
            print(f"| {x['name']} ({x['n']}) | {x['before'] / 1024:.1f} | "
                  f"{x['after'] / 1024:.1f} | {per:.1f} | {x['open']} |")  # fmt: skip
    for name, top in profiles.items():
        print(f"\nprofile of pyproxyd during {name}:\n{top}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--grpc-server":
        serve_grpc(int(sys.argv[2]))
    else:
        main()

"""Start the real gateway in the test's event loop, on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from pyproxyd.config_load import load
from pyproxyd.server import Gateway

HEAD = """
[server]
listen = ["127.0.0.1:0"]
{server}
[admin]
listen = "127.0.0.1:0"
[logging]
access_log = {access_log}
"""


def free_port() -> int:
    """A port nothing listens on (for 'connection refused' targets)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(body: str, *, server: str = "", access_log: bool = False) -> str:
    return HEAD.format(server=server, access_log=str(access_log).lower()) + body


def one_route(backend_url: str, route_id: str, prefix: str, upstream: str = "app") -> str:
    """One upstream and one `<prefix>/**` route stripping the prefix: the common test setup."""
    return f"""
[upstreams.{upstream}]
targets = [{{ url = "{backend_url}" }}]
[[routes]]
id = "{route_id}"
path = "{prefix}/**"
upstream = "{upstream}"
strip_prefix = 1
"""


@asynccontextmanager
async def gateway(tmp_path: Path, toml: str) -> AsyncIterator[Gateway]:
    path = tmp_path / "gateway.toml"
    path.write_text(toml)
    gw = Gateway(load(path))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def access_lines(path: Path) -> list[dict[str, Any]]:
    """The access-log events of a log file (see the log_file fixture)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if line["event"] == "request"]


def url(gw: Gateway, path: str = "/") -> str:
    return f"http://127.0.0.1:{gw.ports[0]}{path}"


async def fetch(
    target: str, method: str = "GET", **kwargs: object
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    """One request on a fresh client session: (status, headers, body)."""
    async with aiohttp.ClientSession() as s, s.request(method, target, **kwargs) as r:  # type: ignore[arg-type]
        return r.status, r.headers, await r.read()


class GatewayProcess:
    """`pyproxyd run` as a real child process, stopped by PID."""

    def __init__(self, config_path: Path, *args: str, env: dict[str, str] | None = None):
        self.config_path = config_path
        self.args = args
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.output = b""

    async def __aenter__(self) -> GatewayProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pyproxyd", "run", "-c", str(self.config_path), *self.args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(self.env or {})},
        )  # fmt: skip
        return self

    async def wait_ready(self, admin_port: int, timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as s:
            while loop.time() < deadline:
                assert self.proc is not None and self.proc.returncode is None, "gateway exited"
                try:
                    async with s.get(f"http://127.0.0.1:{admin_port}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("gateway not ready in time")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        out, _ = await asyncio.wait_for(self.proc.communicate(), timeout)
        self.output += out or b""
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            workers = children(self.proc.pid)
            self.proc.kill()
            for pid in workers:  # they hold the output pipe open
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            out, _ = await asyncio.wait_for(self.proc.communicate(), 20)
            self.output += out or b""


def children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (a supervisor's workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def make_cert(cert: Path, key: Path, name: str = "localhost") -> bytes:
    """A self-signed pair written to cert and key; returns the certificate (DER)."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


async def served_cert(port: int, server_name: str | None = None) -> bytes:
    """The certificate a new TLS connection is shown (DER), with or without SNI."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=server_name or ""
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    assert der is not None
    return der

"""Start the real gateway in the test's event loop, on port 0."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

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


def url(gw: Gateway, path: str = "/") -> str:
    return f"http://127.0.0.1:{gw.ports[0]}{path}"


async def fetch(
    target: str, method: str = "GET", **kwargs: object
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    """One request on a fresh client session: (status, headers, body)."""
    async with aiohttp.ClientSession() as s, s.request(method, target, **kwargs) as r:  # type: ignore[arg-type]
        return r.status, r.headers, await r.read()

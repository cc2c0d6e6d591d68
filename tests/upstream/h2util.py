"""Helpers of the HTTP/2 upstream tests: configs, and a raw HTTP/1.1 client
that reads chunked trailers (aiohttp's client drops them)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from pyproxyd.server import Gateway


def h2_upstream(*urls: str, protocol: str = "h2c", extra: str = "", route: str = "") -> str:
    targets = ", ".join(f'{{ url = "{u}" }}' for u in urls)
    return f"""
[upstreams.h2]
targets = [{targets}]
protocol = "{protocol}"
{extra}

[[routes]]
id = "h2"
path = "/h2/**"
upstream = "h2"
strip_prefix = 1
{route}
"""


class Raw:
    """One HTTP/1.1 response as read off the socket."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes,
                 trailers: dict[str, str]) -> None:  # fmt: skip
        self.status = status
        self.headers = headers
        self.body = body
        self.trailers = trailers


def parse_response(data: bytes) -> Raw:
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    trailers: dict[str, str] = {}
    if headers.get("transfer-encoding") != "chunked":
        return Raw(status, headers, rest, trailers)
    body = b""
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body += rest[:size]
        rest = rest[size + 2 :]
    for line in rest.decode("latin-1").split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            trailers[name.strip().lower()] = value.strip()
    return Raw(status, headers, body, trailers)


async def raw_request(port: int, request: bytes, timeout: float = 5.0) -> Raw:
    """Send `request` (it should say Connection: close) and read the answer to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    return parse_response(data)


async def admin(gw: Gateway, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{gw.admin_port}{path}") as r,
    ):
        return await r.json()

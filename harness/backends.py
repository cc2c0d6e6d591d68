"""Real upstream servers for tests, on 127.0.0.1 port 0.

`Backend` is an aiohttp server with useful routes that counts TCP connections;
`RawBackend` runs a coroutine per TCP connection, for upstreams that
misbehave on purpose. Both are async context managers:

    async with Backend(name="b1", close_idle_after=0.3) as b:
        ... b.url + "/echo" ...
        assert b.connections_opened == 1
        await wait_for(lambda: b.open_connections == 0)

Routes of `Backend` (every response carries X-Conn-Id and X-Backend):

    /echo[/anything]     any method: JSON {method, path_qs, headers, body_sha256,
                         body_length, backend, conn_id}
    /download/{n}        n bytes of payload(n), streamed in ?chunk= sized writes
                         (chunked; ?length=1 sends Content-Length instead)
    /slow                ?chunks=3&delay=0.2&size=5: chunked; the first chunk at once,
                         then `delay` before each next one (b"00000", b"11111", ...)
    /sleep               ?s=1: wait, then "ok" (for read timeouts)
    /status/{code}       that status, empty body (204/304 bodyless)
    /cookies             ?n=3: that many separate Set-Cookie headers
    /gzip                gzip-compressed payload(1000) with Content-Encoding: gzip, raw
    /close               "bye" with Connection: close

Extra routes (a handler, or a list of RouteDefs) take precedence over these.
`ssl_context=` serves HTTPS; `self_signed(tmp_path)` makes a cert for it.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import inspect
import itertools
import json
import random
import ssl
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@lru_cache(maxsize=16)
def payload(n: int) -> bytes:
    """n deterministic, non-repeating bytes (what /download/{n} sends)."""
    return random.Random(n).randbytes(n)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def wait_for(
    predicate: Callable[[], bool] | Callable[[], Awaitable[bool]], timeout: float = 2.0
) -> None:
    """Poll until predicate() holds (awaited when it is a coroutine function);
    AssertionError after timeout seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def holds() -> bool:
        result = predicate()
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    while not await holds():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


# -- built-in routes -------------------------------------------------------------


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path_qs": request.path_qs,
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_sha256": sha256(body),
            "body_length": len(body),
            "backend": request.app[NAME],
            "conn_id": request.app[STATE].conn_id(request),
        }
    )


async def _download(request: web.Request) -> web.StreamResponse:
    n = int(request.match_info["n"])
    step = int(request.query.get("chunk", "65536"))
    data = payload(n)
    resp = web.StreamResponse()
    resp.content_type = "application/octet-stream"
    if request.query.get("length") or request.method == "HEAD":
        resp.content_length = n
    else:
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    if request.method == "HEAD":
        # aiohttp would put streamed writes on the wire even for HEAD
        return resp
    for i in range(0, n, step):
        await resp.write(data[i : i + step])
    await resp.write_eof()
    return resp


async def _slow(request: web.Request) -> web.StreamResponse:
    chunks = int(request.query.get("chunks", "3"))
    delay = float(request.query.get("delay", "0.2"))
    size = int(request.query.get("size", "5"))
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(chunks):
        if i:
            await asyncio.sleep(delay)
        await resp.write(bytes([48 + i % 10]) * size)
    await resp.write_eof()
    return resp


async def _sleep(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "1")))
    return web.Response(text="ok")


async def _status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]))


async def _cookies(request: web.Request) -> web.Response:
    resp = web.Response(text="cookies")
    for i in range(int(request.query.get("n", "3"))):
        resp.headers.add("Set-Cookie", f"c{i}=v{i}; Path=/")
    return resp


async def _gzip(request: web.Request) -> web.Response:
    return web.Response(
        body=gzip.compress(payload(1000)),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"},
    )


async def _close(request: web.Request) -> web.Response:
    return web.Response(text="bye", headers={"Connection": "close"})


DEFAULT_ROUTES = [
    web.route("*", "/echo", _echo),
    web.route("*", "/echo/{tail:.*}", _echo),
    web.get("/download/{n:\\d+}", _download),
    web.get("/slow", _slow),
    web.get("/sleep", _sleep),
    web.route("*", "/status/{code:\\d+}", _status),
    web.get("/cookies", _cookies),
    web.get("/gzip", _gzip),
    web.get("/close", _close),
]


class Backend:
    """An aiohttp upstream on 127.0.0.1:0 that counts its TCP connections."""

    def __init__(
        self,
        routes: Handler | Iterable[web.RouteDef] | None = None,
        *,
        name: str = "backend",
        close_idle_after: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.ssl_context = ssl_context
        self.close_idle_after = close_idle_after
        self._routes = routes
        self.port = 0
        self.connections_opened = 0  # TCP connections accepted so far
        self.hits = 0  # requests answered
        self.log: list[tuple[str, str, int]] = []  # (method, path_qs, conn id)
        self._ids: dict[object, int] = {}  # open connection's RequestHandler -> conn id
        self._counter = itertools.count(1)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._ids)

    def conn_id(self, request: web.BaseRequest) -> int:
        return self._ids.get(request.protocol, 0)

    async def __aenter__(self) -> Backend:
        app = web.Application()
        app[NAME] = self.name
        app[STATE] = self
        routes = self._routes
        if callable(routes):
            app.router.add_route("*", "/{tail:.*}", routes)
        else:
            app.add_routes(list(routes or ()))
            app.add_routes(DEFAULT_ROUTES)
        app.on_response_prepare.append(self._stamp)
        runner = web.AppRunner(
            app,
            access_log=None,
            # aiohttp closes a keep-alive connection idle this long; 3630 s is its default
            keepalive_timeout=self.close_idle_after if self.close_idle_after else 3630,
        )
        await runner.setup()
        server = runner.server
        assert server is not None
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            self.connections_opened += 1
            self._ids[handler] = next(self._counter)
            made(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            # Keyed by handler: aiohttp drops handler.transport before this runs.
            self._ids.pop(handler, None)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        self.hits += 1
        cid = self.conn_id(request)
        self.log.append((request.method, request.path_qs, cid))
        response.headers["X-Conn-Id"] = str(cid)
        response.headers["X-Backend"] = self.name


NAME = web.AppKey("backend_name", str)
STATE = web.AppKey("backend_state", Backend)


class RawBackend:
    """A TCP server running `handler(reader, writer, conn_number)` per connection.

    The handler owns the bytes on the wire: for upstreams that answer oddly,
    close at chosen moments, or never answer.
    """

    def __init__(self, handler: RawHandler) -> None:
        self.handler = handler
        self.port = 0
        self.connections_opened = 0
        self.open_connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RawBackend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_opened += 1
        self.open_connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(reader, writer, self.connections_opened)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            self.open_connections -= 1
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request from a raw connection: (head, body). Content-Length bodies only."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return head, body


def self_signed(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for localhost / 127.0.0.1."""
    cert, key = directory / "backend.crt", directory / "backend.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


def json_of(data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(data)
    return result

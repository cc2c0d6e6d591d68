"""The HTTP/2 stream as the pipeline's sink (proxy/interface.py), over a real socket.

A handler of our own stands where the proxy does, so that what no HTTP/1.1
upstream gives (trailers, an abort after the head, a cancel) is exercised
through the real frontends: the HTTP/1.1 one hands the h2c connection over,
and harness/h2client.py reads the frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from h2.errors import ErrorCodes

from harness.backends import wait_for
from harness.h2client import H2Client
from pyproxyd.frontend.connection import Frontend
from pyproxyd.frontend.http2 import Http2Frontend
from pyproxyd.proxy.interface import Request

TIMEOUT = 5.0


@asynccontextmanager
async def serving(handler: Callable[[Request], None]) -> AsyncIterator[int]:
    """Both frontends on a plain port with `handler` as the pipeline."""
    loop = asyncio.get_running_loop()
    http1 = Frontend(handler, header_timeout=5, keepalive_timeout=5, max_header_size=8190)
    http2 = Http2Frontend(handler, header_timeout=5, keepalive_timeout=5, body_timeout=5,
                          max_header_size=8190, max_streams=8)  # fmt: skip
    http1.http2 = http2.take
    server = await loop.create_server(http1.protocol(False), "127.0.0.1", 0)
    http1.start()
    http2.start()
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for conn in list(http2.connections):
            conn.abort()
        server.close()
        http1.stop()
        http2.stop()


def in_task(run: Callable[[Request], object]) -> Callable[[Request], None]:
    """A handler that answers in a task, as the pipeline does with a body."""
    tasks: set[asyncio.Task[None]] = set()

    def handler(request: Request) -> None:
        async def go() -> None:
            try:
                await run(request)  # type: ignore[misc]
            finally:
                request.handled()

        task = asyncio.get_running_loop().create_task(go())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return handler


async def test_trailers_end_the_stream_after_the_data() -> None:
    async def run(request: Request) -> None:
        request.start(200, [(b"Content-Type", b"application/grpc")], None)
        await request.write(b"\x00\x00\x00\x00\x03abc")
        request.trailers([(b"Grpc-Status", b"0"), (b"grpc-message", b"fine")])
        request.end()

    async with serving(in_task(run)) as port:
        client = await H2Client.open(port)
        try:
            got = await client.request("POST", "/pkg.Svc/Call", body=b"")
            assert got.status == 200 and got.header("content-type") == "application/grpc"
            assert got.body == b"\x00\x00\x00\x00\x03abc"
            assert got.trailers == [("grpc-status", "0"), ("grpc-message", "fine")]
        finally:
            await client.close()


async def test_an_abort_after_the_head_resets_the_stream() -> None:
    async def run(request: Request) -> None:
        request.start(200, [], None)
        await request.write(b"partial")
        request.abort()

    async with serving(in_task(run)) as port:
        client = await H2Client.open(port)
        try:
            got = await client.request("GET", "/x")
            assert got.reset == ErrorCodes.INTERNAL_ERROR
            assert (await client.request("GET", "/x")).reset == ErrorCodes.INTERNAL_ERROR
        finally:
            await client.close()


async def test_connection_specific_headers_are_dropped_and_framing_is_ours() -> None:
    def handler(request: Request) -> None:
        request.respond(
            200,
            [(b"Connection", b"close"), (b"Transfer-Encoding", b"chunked"), (b"Keep-Alive", b"5"),
             (b"Content-Length", b"999"), (b"X-Kept", b"1"), (b"X-Dropped", b"1")],
            b"hi",
            drop=frozenset({b"x-dropped"}),
            raw=b"X-Request-ID: abc\r\nX-RateLimit-Limit: 10\r\n",
        )  # fmt: skip
        request.handled()

    async with serving(handler) as port:
        client = await H2Client.open(port)
        try:
            got = await client.request("GET", "/x")
            names = [n for n, _ in got.headers]
            assert got.body == b"hi" and got.header("content-length") == "2"
            assert got.header("x-kept") == "1" and got.header("x-request-id") == "abc"
            assert got.header("x-ratelimit-limit") == "10" and got.header("date")
            for name in ("connection", "transfer-encoding", "keep-alive", "x-dropped"):
                assert name not in names
        finally:
            await client.close()


async def test_a_client_reset_calls_cancel_and_fails_the_body() -> None:
    cancelled = asyncio.Event()
    failed: list[BaseException] = []

    async def run(request: Request) -> None:
        try:
            async for _ in request.body_chunks():
                pass
        except Exception as exc:
            failed.append(exc)

    spawn = in_task(run)

    started: list[Request] = []

    def handler(request: Request) -> None:
        request.cancel = cancelled.set  # (set at once, as the proxy sets its own)
        started.append(request)
        spawn(request)

    async with serving(handler) as port:
        client = await H2Client.open(port)
        try:
            sid = client.start("POST", "/upload", end=False)
            await client.send_body(sid, b"x" * 1000, end=False)
            await wait_for(lambda: bool(started))  # (a reset in the same read: next test)
            client.reset(sid)
            await asyncio.wait_for(cancelled.wait(), TIMEOUT)
            await wait_for(lambda: bool(failed))
            assert [type(e).__name__ for e in failed] == ["ClientGone"]
        finally:
            await client.close()


async def test_a_stream_reset_in_the_read_that_opened_it_never_reaches_the_handler() -> None:
    """The handler starts once a read's frames are all in (so a body that came
    with its HEADERS is whole); a stream already reset by then is dropped, the
    cheapest answer to a rapid reset, and the connection goes on."""
    seen: list[str] = []

    def handler(request: Request) -> None:
        seen.append(request.raw_path)
        request.respond(200, [], b"ok")
        request.handled()

    async with serving(handler) as port:
        client = await H2Client.open(port)
        try:
            conn = client.conn
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "GET"), (":path", "/gone"), (":scheme", "http"),
                                    (":authority", "localhost")], end_stream=True)  # fmt: skip
            conn.reset_stream(sid)
            client.flush()  # HEADERS and RST_STREAM in one write
            got = await client.request("GET", "/after")
            assert got.status == 200 and got.body == b"ok"
            assert seen == ["/after"]
        finally:
            await client.close()


async def test_the_body_is_read_as_sent_and_its_window_reopened() -> None:
    async def run(request: Request) -> None:
        total = 0
        async for chunk in request.body_chunks():
            total += len(chunk)
        request.respond(200, [], b"%d %d" % (total, request.received))

    async with serving(in_task(run)) as port:
        client = await H2Client.open(port)
        try:
            size = 3 * 1024 * 1024  # past the 1 MiB connection window: acknowledged as read
            got = await client.request("POST", "/upload", body=b"z" * size)
            assert got.body == b"%d %d" % (size, size)
        finally:
            await client.close()

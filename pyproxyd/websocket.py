"""WebSocket upgrades: the handshake goes upstream, then bytes flow both ways.

Like nginx, the gateway does not parse WebSocket frames: once the upstream
answers 101 it is a byte tunnel between two sockets, with flow control both
ways (a slow reader pauses the other side's socket). The upgrade travels on a
connection of its own, never a pooled one. An upstream that refuses the
upgrade is answered through as a normal response.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from . import errors
from .forwarding import filter_response_headers
from .sockets import half_close
from .upstream.connection import InvalidResponse, failure, response_status

if TYPE_CHECKING:
    from .proxy.interface import Request
    from .proxy.record import RequestInfo
    from .snapshot import Upstream

# A refused upgrade's answer is relayed whole; more than this is cut.
_REFUSAL_LIMIT = 1024 * 1024


class _UpstreamSide(asyncio.Protocol):
    """The upstream socket: parses the handshake answer, then forwards raw bytes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_head: int) -> None:
        self.loop = loop
        self.max_head = max_head  # server.max_header_size, as for any upstream head
        self.head_bytes = 0  # read while the head was incomplete
        self.head_size = 0  # of the header lines parsed
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.head_done = asyncio.Event()
        self.closed = loop.create_future()
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.complete = False
        self.early: list[bytes] = []  # frames that came with the 101
        self.sink: asyncio.Transport | None = None  # the client, once tunnelled
        self.pause_client: Callable[[bool], None] | None = None
        self.error: str | None = None
        self.eof = False  # the upstream finished sending
        self.client_eof = False  # the client finished sending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.write(data)
            return
        if self.head_done.is_set() and self.status == 101:
            self.early.append(data)
            return
        if not self.head_done.is_set():
            self.head_bytes += len(data)
            if self.head_bytes > self.max_head + 64 * 1024:
                # (a refusal's body may ride in the same reads: some slack)
                self._refused("upgrade answer head too large")
                return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            rest = data[exc.args[0] :] if exc.args else b""
            if rest:
                self.early.append(rest)
        except HttpParserError as exc:
            self._refused(failure(exc))

    def _refused(self, why: str) -> None:
        self.error = f"malformed upgrade answer from upstream: {why}"
        self.head_done.set()
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.sink is not None and self.sink.can_write_eof() and not self.client_eof:
            return half_close(self.sink)  # half-close travels on
        return False  # both directions are finished: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.head_done.is_set():
            self.error = f"upstream closed the connection during the upgrade: {exc or 'eof'}"
            self.head_done.set()
        elif self.status != 101 and not self.complete:
            self.complete = True  # a read-until-close refusal body ends here
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self.pause_client is not None:
            self.pause_client(True)  # the upstream is slow: stop reading the client

    def resume_writing(self) -> None:
        if self.pause_client is not None:
            self.pause_client(False)

    def on_status(self, reason: bytes) -> None:
        pass

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done.is_set():
            return  # trailers of a refusal's chunked body
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.max_head:
            raise InvalidResponse("response head too large")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = response_status(self.parser)
        self.head_done.set()

    def on_body(self, data: bytes) -> None:
        self.body_size += len(data)
        if self.body_size <= _REFUSAL_LIMIT:
            self.body.append(data)

    def on_message_complete(self) -> None:
        self.complete = True
        if self.status != 101 and self.transport is not None:
            self.transport.close()


async def proxy_websocket(
    request: Request,
    upstream: Upstream,
    head_common: bytes,
    host_line: bytes | None,
    ex: RequestInfo,
) -> None:
    loop = asyncio.get_running_loop()
    # skips ejected targets; ip_hash / hash:<key> pin the client to its target
    index = upstream.pick(set(), loop.time(), ex.target_key)
    if index is None:
        raise errors.NoHealthyTarget(f"upstream {upstream.name!r} has no target to try")
    target = upstream.targets[index]
    pool = target.pool
    try:
        async with asyncio.timeout(pool.settings.connect_timeout):
            _, side = await loop.create_connection(
                lambda: _UpstreamSide(loop, pool.settings.max_head),
                pool.host,
                pool.port,
                ssl=pool.ssl,
                server_hostname=pool.server_hostname,
            )
    except (TimeoutError, OSError, ValueError) as e:
        raise errors.UpstreamConnectError(
            f"WebSocket connect to {target.label} failed: {e or type(e).__name__}"
        ) from None
    upgrade = request.headers.get("Upgrade", "websocket").encode("latin-1", "replace")
    try:
        if side.transport is None:
            raise errors.BadGateway(side.error or "upstream closed the WebSocket connection")
        side.transport.write(
            head_common
            + b"Connection: Upgrade\r\nUpgrade: %s\r\n" % upgrade
            + (host_line or target.host_header)
            + b"\r\n"
        )
        try:
            async with asyncio.timeout(upstream.read_timeout):
                await side.head_done.wait()
        except TimeoutError:
            raise errors.UpstreamTimeout(
                f"upstream sent no upgrade answer within {upstream.read_timeout:g}s"
            ) from None
        if side.error is not None:
            raise errors.BadGateway(side.error)
        headers = filter_response_headers(side.headers)
        headers.append((b"X-Request-ID", ex.request_id.encode()))
        ex.status = side.status
        if side.status != 101:
            await _relay_refusal(request, side, headers, upstream.read_timeout)
            return
        await _tunnel(request, side, headers)
    finally:
        if side.transport is not None:
            side.transport.abort()


async def _relay_refusal(
    request: Request, side: _UpstreamSide, headers: list[tuple[bytes, bytes]], timeout: float
) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await side.closed
    request.respond(side.status, headers, b"".join(side.body))


async def _tunnel(
    request: Request, side: _UpstreamSide, headers: list[tuple[bytes, bytes]]
) -> None:
    conn = request.tunnel()
    if conn is None:
        raise errors.BadRequest("this protocol cannot switch to a WebSocket tunnel")
    client = conn.transport
    upstream = side.transport
    if client is None or upstream is None:
        return
    # The handshake's own hop-by-hop headers belong to this hop too.
    headers = [*headers, (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    for name, value in side.headers:
        if name.lower() == b"upgrade":
            headers[-1] = (b"Upgrade", value)
    request.start(101, headers, None)
    request.finished = True
    for chunk in side.early:
        client.write(chunk)
    side.early.clear()
    side.sink = client
    side.pause_client = conn.pause_tunnel
    done = conn.loop.create_future()

    def to_upstream(data: bytes) -> None:
        if upstream.is_closing():
            return
        upstream.write(data)

    def client_eof() -> None:
        side.client_eof = True
        if side.eof:
            client_lost()  # both directions are finished
        elif upstream.can_write_eof() and not upstream.is_closing():
            half_close(upstream)

    def client_lost() -> None:
        if not done.done():
            done.set_result(None)

    def client_writable(ok: bool) -> None:
        if upstream.is_closing():
            return
        if ok:
            upstream.resume_reading()
        else:
            upstream.pause_reading()  # the client is slow: stop reading the upstream

    conn.on_writable = client_writable
    for chunk in conn.tunnel(to_upstream, client_eof, client_lost):
        upstream.write(chunk)
    side.closed.add_done_callback(lambda _: client_lost())
    await done
    conn.close()

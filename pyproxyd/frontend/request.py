"""Compiled by mypyc (pyproxyd/compiled.py). An HTTP/1.1 request as the
pipeline sees it (proxy/interface.py), and how it answers.

`ClientRequest` is deliberately small: the raw head as parsed, the views of
its base class, and the response methods, which write straight to the client
transport. `RequestBody` streams the body with flow control: the socket stops
being read while a handler is behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING

from ..proxy.interface import Request

if TYPE_CHECKING:
    from .connection import ClientConnection

# Unread body above this stops reading from the client until the handler catches up.
BODY_HIGH_WATER = 256 * 1024

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_NO_BODY = frozenset({204, 304})


def reason_for(status: int) -> str:
    return _REASONS.get(status, "Unknown")


_STATUS_LINES: dict[tuple[int, str], bytes] = {}


def status_line(status: int, reason: str) -> bytes:
    """b"HTTP/1.1 200 OK\\r\\n", cached: a proxy sees few distinct ones."""
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        text = f"HTTP/1.1 {status} {reason or reason_for(status)}\r\n"
        line = text.encode("latin-1", "replace")
        if len(_STATUS_LINES) < 1024:
            _STATUS_LINES[(status, reason)] = line
    return line


class BodyQueue:
    """What the two frontends' request bodies share: chunks as they arrive,
    the end or a failure, and one reader waiting for either. Each protocol
    adds its own flow control (RequestBody here, StreamBody for HTTP/2)."""

    __slots__ = ("_chunks", "_continue", "_error", "_waiter", "eof", "total")

    def __init__(self, expect_continue: bool) -> None:
        self._chunks: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._continue = expect_continue  # 100 Continue is owed before the first read
        self.eof = False
        self.total = 0  # bytes received so far

    def feed_eof(self) -> None:
        self.eof = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self.eof:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def _take(self) -> bytes:
        """Every chunk in, as one (several arrived ones are joined)."""
        chunks = self._chunks
        self._chunks = []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def whole(self) -> bytes | None:
        """The whole body at once, when the client has sent all of it and none
        of it was read (a small POST, a unary gRPC call: it can go upstream
        with the head, without a reader); None otherwise."""
        if not self.eof or self._error is not None or self._continue:
            return None
        chunks = self._chunks
        if sum([len(c) for c in chunks]) != self.total:
            return None  # a part was read already
        data = self._take()
        self._read()
        return data

    def _read(self) -> None:
        """What the protocol owes the client once the queue was read."""


class RequestBody(BodyQueue):
    """The request body as it arrives, de-framed by the parser."""

    __slots__ = ("_conn", "_size")

    def __init__(self, conn: ClientConnection, expect_continue: bool) -> None:
        super().__init__(expect_continue)
        self._conn = conn
        self._size = 0

    @property
    def awaits_continue(self) -> bool:
        """The client waits for 100 Continue, which the first read sends."""
        return self._continue

    def _read(self) -> None:
        self._size = 0
        self._conn.resume_body()

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self.total += len(data)
        if self._size > BODY_HIGH_WATER:
            self._conn.pause_body()
        self._wake()

    def __aiter__(self) -> RequestBody:
        """Each chunk as soon as it is in (several arrived ones are joined).

        The body is its own async iterator rather than an async generator:
        mypyc compiles this module and has no async generators."""
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                data = self._take()
                self._read()
                return data
            if self.eof:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            if self._continue:
                self._continue = False
                self._conn.send_continue()
            fut = self._conn.loop.create_future()
            self._waiter = fut
            await fut


class ClientRequest(Request):
    """One parsed HTTP/1.1 request head, its body stream, and the answer
    written straight to the client transport (proxy/interface.py)."""

    __slots__ = ("chunked_out", "close_after", "conn", "keep_alive")

    def __init__(
        self,
        conn: ClientConnection,
        method: str,
        raw_path: str,
        version: str,
        raw_headers: list[tuple[bytes, bytes]],
        picked: dict[bytes, bytes],
        keep_alive: bool,
        body: RequestBody | None,
        upgrade: bool,
        content_length: int | None,
    ) -> None:
        super().__init__(
            method, raw_path, version, raw_headers, picked, body, content_length, upgrade,
            conn.secure, conn.peer,
        )  # fmt: skip
        self.conn = conn
        self.keep_alive = keep_alive
        self.chunked_out = False
        self.close_after = False

    # -- the request ---------------------------------------------------------------

    @property
    def local(self) -> str:
        return self.conn.local

    @property
    def client_connected(self) -> bool:
        transport = self.conn.transport
        return transport is not None and not transport.is_closing()

    def tunnel(self) -> ClientConnection:
        return self.conn

    def handled(self) -> None:
        self.conn.done(self)

    # -- the response --------------------------------------------------------------

    def respond(
        self,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        reason: str = "",
        drop: frozenset[bytes] | None = None,
        raw: bytes = b"",
    ) -> None:
        """A whole response in one write (`drop`, `raw`: see ClientConnection.head)."""
        self.started = True
        conn = self.conn
        if self.method == "HEAD" or status in _NO_BODY:
            head = conn.head(self, status, reason, headers, None, keep_length=True, drop=drop,
                             raw=raw)  # fmt: skip
            conn.write(head)
        else:
            head = conn.head(self, status, reason, headers, len(body), keep_length=False,
                             drop=drop, raw=raw)  # fmt: skip
            conn.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                conn.write(body)
            self.sent = len(body)
        self.finished = True

    def start(
        self,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        length: int | None,
        reason: str = "",
        drop: frozenset[bytes] | None = None,
        raw: bytes = b"",
    ) -> None:
        """The status line and headers of a streamed response."""
        self.started = True
        conn = self.conn
        if self.method == "HEAD" or status in _NO_BODY or status < 200:
            conn.write(conn.head(self, status, reason, headers, None, keep_length=True,
                                 drop=drop, raw=raw))  # fmt: skip
        else:
            conn.write(conn.head(self, status, reason, headers, length, keep_length=False,
                                 drop=drop, raw=raw))  # fmt: skip

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self.sent += len(data)
        conn = self.conn
        if self.chunked_out:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            conn.write(data)
        if conn.write_paused:
            await conn.drain()

    def trailers(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """Sent with the last chunk of a chunked answer; a length-framed one
        has nowhere to carry them (RFC 9110 6.5: they may be dropped)."""
        if self.chunked_out and headers:
            lines = b"".join(b"%s: %s\r\n" % hv for hv in headers)
            self.conn.write(b"0\r\n%b\r\n" % lines)
            self.chunked_out = False  # end() writes no second last-chunk
            self.finished = True

    def end(self) -> None:
        if self.chunked_out:
            self.conn.write(b"0\r\n\r\n")
        self.finished = True

    def abort(self) -> None:
        """Cut the client connection: a response that cannot be completed honestly."""
        self.conn.abort()

"""What a handler sees of one client request, and how it answers.

`ClientRequest` is deliberately small: the raw head as parsed, a few lazily
built views (headers, query, cookies) and the response methods, which write
straight to the client transport. `RequestBody` streams the body with flow
control: the socket stops being read while a handler is behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

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


class RequestBody:
    """The request body as it arrives, de-framed by the parser."""

    __slots__ = ("_chunks", "_conn", "_continue", "_error", "_size", "_waiter", "eof", "total")

    def __init__(self, conn: ClientConnection, expect_continue: bool) -> None:
        self._conn = conn
        self._chunks: list[bytes] = []
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._continue = expect_continue  # 100 Continue is owed before the first read
        self.eof = False
        self.total = 0  # bytes received so far

    @property
    def awaits_continue(self) -> bool:
        """The client waits for 100 Continue, which the first read sends."""
        return self._continue

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self.total += len(data)
        if self._size > BODY_HIGH_WATER:
            self._conn.pause_body()
        self._wake()

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

    def __aiter__(self) -> RequestBody:
        """Each chunk as soon as it is in (several arrived ones are joined).

        The body is its own async iterator rather than an async generator:
        mypyc compiles this module and has no async generators."""
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                chunks = self._chunks
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._chunks = []
                self._size = 0
                self._conn.resume_body()
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


class ClientRequest:
    """One parsed request head, its body stream and the response methods."""

    __slots__ = (
        "_cookies",
        "_headers",
        "_query",
        "body",
        "cancel",
        "chunked_out",
        "close_after",
        "conn",
        "content_length",
        "finished",
        "keep_alive",
        "method",
        "picked",
        "raw_headers",
        "raw_path",
        "sent",
        "started",
        "upgrade",
        "version",
    )

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
        self.conn = conn
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.raw_headers = raw_headers
        self.picked = picked  # host, x-request-id, traceparent, x-forwarded-for (lower-case)
        self.keep_alive = keep_alive
        self.body = body
        self.upgrade = upgrade
        self.content_length = content_length
        self._headers: CIMultiDictProxy[str] | None = None
        self._query: MultiDictProxy[str] | None = None
        self._cookies: dict[str, str] | None = None
        self.started = False  # the status line is written
        self.finished = False  # the whole response is written
        self.chunked_out = False
        self.close_after = False
        self.sent = 0  # response body bytes written
        self.cancel: Callable[[], object] | None = None  # set by the handler (see Handler)

    # -- the request ---------------------------------------------------------------

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        h = self._headers
        if h is None:
            h = self._headers = CIMultiDictProxy(
                CIMultiDict(
                    [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.raw_headers]
                )
            )
        return h

    @property
    def lazy_headers(self) -> Mapping[str, str]:
        """`headers`, built only if something actually looks one up."""
        return _LazyHeaders(self)

    def pick(self, name: bytes) -> str | None:
        """One of the picked headers (lower-case name), repeats joined with ", "."""
        value = self.picked.get(name)
        return None if value is None else value.decode("latin-1")

    @property
    def remote(self) -> str:
        return self.conn.peer

    @property
    def secure(self) -> bool:
        return self.conn.secure

    @property
    def host(self) -> str:
        host = self.picked.get(b"host")
        return host.decode("latin-1") if host else self.conn.local

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.conn.transport

    @property
    def query(self) -> MultiDictProxy[str]:
        q = self._query
        if q is None:
            _, _, qs = self.raw_path.partition("?")
            q = self._query = MultiDictProxy(MultiDict(parse_qsl(qs, keep_blank_values=True)))
        return q

    @property
    def cookies(self) -> dict[str, str]:
        c = self._cookies
        if c is None:
            c = {}
            for value in self.headers.getall("Cookie", ()):
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(value)
                except CookieError:
                    continue
                c.update({k: m.value for k, m in jar.items()})
            self._cookies = c
        return c

    @property
    def received(self) -> int:
        body = self.body
        return body.total if body is not None else 0

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

    def end(self) -> None:
        if self.chunked_out:
            self.conn.write(b"0\r\n\r\n")
        self.finished = True

    def abort(self) -> None:
        """Cut the client connection: a response that cannot be completed honestly."""
        self.conn.abort()


class _LazyHeaders(Mapping[str, str]):
    __slots__ = ("_request",)

    def __init__(self, request: ClientRequest) -> None:
        self._request = request

    def __getitem__(self, name: str) -> str:
        return self._request.headers[name]

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        request = self._request
        built = request._headers
        if built is not None:
            return built.get(name, default)
        # A lookup or two per request (Authorization, X-Client-ID): scanning the
        # raw pairs costs less than building the mapping. The first one wins,
        # as with the mapping's get().
        target = name.lower().encode("latin-1", "replace")  # ("?" is in no header name)
        size = len(target)
        for n, v in request.raw_headers:
            if len(n) == size and n.lower() == target:
                return v.decode("latin-1")
        return default

    def getall(self, name: str, default: Sequence[str] = ()) -> Sequence[str]:
        return self._request.headers.getall(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._request.headers)

    def __len__(self) -> int:
        return len(self._request.headers)

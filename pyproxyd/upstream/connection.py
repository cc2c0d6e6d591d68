"""One upstream HTTP/1.1 connection: an asyncio.Protocol fed to httptools.

It parses responses (llhttp), buffers the body with flow control both ways,
and tells the exchange layer about progress through one waiter future. The
exchange layer (http1.py) decides what a failure means; this module only
records it. Exchanges are strictly sequential on a connection (no
pipelining), which is what makes the HEAD trick below safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from ..forwarding import names_more_headers
from ..framing import response_problem

if TYPE_CHECKING:
    from .pool import TargetPool

# Unread response body above this pauses the socket until read() catches up.
READ_HIGH_WATER = 256 * 1024


class InvalidResponse(ValueError):
    """A response head llhttp accepts but HTTP does not."""


def response_status(parser: HttpResponseParser) -> int:
    """The status of a parsed response head, from a parser callback.

    RFC 9110 15: a status is 100-599; llhttp reads any three digits. Relayed,
    a client could not tell success from failure (nginx: "upstream sent
    invalid status"). Raised in a callback, it fails the feed (`failure`).
    """
    status = parser.get_status_code()
    if status > 599:
        raise InvalidResponse(f"invalid status {status}")
    return status


def failure(exc: HttpParserError) -> str:
    """What went wrong in a feed: the callback's own reason when it raised one."""
    cause = exc.__context__
    return str(cause if isinstance(cause, InvalidResponse) else exc)


class Lost(Exception):
    """The connection broke (or spoke garbage) before the response head was complete."""


class WaitTimeout(Exception):
    """A wait reached its deadline before the connection made progress."""


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_active",
        "_body_done",
        "_buffer",
        "_buffered",
        "_chunked",
        "_code",
        "_conn_close",
        "_conn_keepalive",
        "_conn_listed",
        "_content_length",
        "_dirty",
        "_error",
        "_feeding",
        "_head_bytes",
        "_head_done",
        "_head_size",
        "_headers",
        "_informational",
        "_is_head",
        "_loop",
        "_max_head",
        "_parser",
        "_pool",
        "_reading_paused",
        "_reason",
        "_received",
        "_te",
        "_te_value",
        "_version",
        "_waiter",
        "_woken",
        "_write_paused",
        "deadline",
        "idle_since",
        "opened_at",
        "requests",
        "transport",
    )

    def __init__(self, pool: TargetPool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self._max_head = pool.settings.max_head
        self.transport: asyncio.Transport | None = None
        self._parser = HttpResponseParser(self)
        self.requests = 0  # completed exchanges
        self.opened_at = loop.time()
        self.idle_since = self.opened_at
        self._waiter: asyncio.Future[bool] | None = None
        self._feeding = False  # inside feed_data: wake the waiter once it returns
        self._woken = False
        self.deadline = 0.0  # of the current wait (Deadlines)
        self._reading_paused = False
        self._write_paused = False
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._reset(False)
        self._new_message()

    def _reset(self, is_head: bool) -> None:
        self._active = False  # an exchange owns the connection and expects bytes
        self._is_head = is_head
        self._received = False  # any byte of this exchange's response arrived
        self._head_bytes = 0  # bytes read while the final head was incomplete
        self._head_size = 0  # parsed bytes of the heads (interim ones too)
        self._head_done = False
        self._body_done = False
        self._dirty = False  # something happened that forbids reuse
        self._error: str | None = None
        self._informational = False
        # (the message fields are reset by on_message_begin)

    def _new_message(self) -> None:
        self._code = 0
        self._version = "1.1"
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = ""
        self._content_length: int | None = None
        self._te = False
        self._te_value = b""
        self._chunked = False
        self._conn_close = False
        self._conn_keepalive = False
        self._conn_listed = False  # Connection names headers beyond close/keep-alive

    @property
    def is_closed(self) -> bool:
        return self.transport is None

    def __repr__(self) -> str:
        state = "closed" if self.transport is None else "active" if self._active else "idle"
        return f"<UpstreamConnection {self._pool.label} {state} requests={self.requests}>"

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self._active:
            # Nothing was asked: a stray byte (a 408, junk) poisons the connection.
            self.abort()
            return
        self._received = True
        # The waiter hears of a read once all of it is parsed: a head and the
        # body in the same read are one wake-up, and a callback waiter (the
        # proxy's fast path) sees the whole response.
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            self._fail("upstream switched protocols unasked")
        except HttpParserError as exc:
            self._fail(f"malformed response from upstream: {failure(exc)}")
        finally:
            self._feeding = False
        if not self._head_done and self._error is None:
            # httptools holds a header line until it ends: bound what a head
            # still incomplete may take, however the reads cut it.
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self._fail("upstream response head too large")
        if self._woken:
            self._woken = False
            self._wake()

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost does the bookkeeping

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self._active:
            self._pool._lost_idle(self)
        elif self._head_done and not self._body_done:
            if exc is None and self._error is None and self._until_close():
                self._body_done = True  # the read-until-close body ends here
                self.requests += 1
            elif self._error is None:
                self._error = "upstream closed the connection mid-body"
        elif not self._head_done and self._error is None:
            self._error = (
                f"upstream connection lost: {exc}" if exc else "upstream closed the connection"
            )
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    # -- httptools callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        if self._head_done:
            # A second message after the final one: we never pipeline, so the
            # upstream is confused (or this is the stale parser of a HEAD).
            self._dirty = True
        else:
            self._new_message()

    def on_status(self, reason: bytes) -> None:
        if self._head_done:
            # A second response nobody asked for: not this exchange's, and no
            # client's. The connection is not reused (see on_message_begin).
            return
        self._head_size += len(reason) + 15
        self._reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a stray response's or the trailer of a chunked body
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_head:
            raise InvalidResponse("response head too large")
        self._headers.append((name, value))
        n = len(name)
        # Only three names matter here; their lengths are 10, 14 and 17.
        if n == 14 and name.lower() == b"content-length":
            self._content_length = int(value)
        elif n == 17 and name.lower() == b"transfer-encoding":
            self._te = True
            self._te_value = self._te_value + b"," + value if self._te_value else value
            self._chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif n == 10 and name.lower() == b"connection":
            tokens = value.lower()
            if b"close" in tokens:
                self._conn_close = True
            if b"keep-alive" in tokens:
                self._conn_keepalive = True
            if names_more_headers(tokens):
                self._conn_listed = True

    def on_headers_complete(self) -> None:
        if self._head_done:
            return
        parser = self._parser
        status = response_status(parser)
        if status < 200:
            if status != 101:
                self._informational = True  # 100 Continue, 103 Early Hints: skipped
            return
        self._informational = False
        if self._te:
            problem = response_problem(self._te_value, self._content_length is not None)
            if problem is not None:
                raise InvalidResponse(problem)
        self._code = status
        self._version = parser.get_http_version()
        self._head_done = True
        if self._is_head:
            # llhttp cannot be told this answers a HEAD, and would wait for the
            # Content-Length body. Finish here and give later bytes a new parser.
            self._parser = HttpResponseParser(self)
            self._complete()
        self._woken = True  # (parser callbacks run inside feed_data: see data_received)

    def on_body(self, data: bytes) -> None:
        if self._body_done:
            self._dirty = True  # bytes after a HEAD response
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused:
            transport = self.transport
            if transport is not None:
                self._reading_paused = True
                transport.pause_reading()
        self._woken = True

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if not self._body_done:
            self._complete()
            self._woken = True

    # -- state helpers -----------------------------------------------------------

    def _complete(self) -> None:
        self._body_done = True
        self.requests += 1

    def _until_close(self) -> bool:
        return not self._chunked and self._content_length is None

    @property
    def keep_alive(self) -> bool:
        if self._conn_close:
            return False
        if self._version == "1.0" and not self._conn_keepalive:
            return False
        if self._is_head or self._code in (204, 304):
            return True
        return not self._until_close()

    def _fail(self, reason: str) -> None:
        if self._error is None:
            self._error = reason
        self._dirty = True
        self.abort()
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            if self._feeding:
                self._woken = True
                return
            self._waiter = None
            if not w.done():
                w.set_result(True)  # Deadlines drops the connection on its next tick

    def _wait(self, deadline: float) -> asyncio.Future[bool]:
        """Await it for any progress; it raises WaitTimeout once `deadline` passes.

        Not a coroutine (one frame less on every resume) and no timer of its
        own: the pool's Deadlines sweep checks it (see there).
        """
        fut: asyncio.Future[bool] = self._loop.create_future()
        self._waiter = fut
        self.deadline = deadline
        self._pool.deadlines.watch(self)
        return fut

    def take(self) -> bytes:
        buf = self._buffer
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        buf.clear()
        self._buffered = 0
        if self._reading_paused:
            self._reading_paused = False
            transport = self.transport
            if transport is not None:
                transport.resume_reading()
        return data

    # -- used by exchange() ------------------------------------------------------

    def begin(self, is_head: bool) -> None:
        self._reset(is_head)
        self._active = True
        if self._buffer or self._reading_paused:
            # The last response was complete but not all read by its consumer.
            self.take()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise Lost("upstream connection closed before the request was sent")
        try:
            transport.write(data)
        except (OSError, RuntimeError) as exc:
            raise Lost(f"write to upstream failed: {exc}") from None

    async def drain(self, deadline: float) -> None:
        while self._write_paused and not self._head_done:
            if self.transport is None or self._error is not None:
                raise Lost(self._error or "upstream connection closed while sending")
            await self._wait(deadline)

    @property
    def clean(self) -> bool:
        """The whole response arrived, nothing odd happened, keep-alive allowed."""
        return (
            self._body_done
            and not self._dirty
            and self._error is None
            and self.transport is not None
            and self.keep_alive
        )

    def finish(self) -> None:
        self._active = False

    def close(self) -> None:
        """Close; abruptly unless the connection is between exchanges."""
        transport = self.transport
        if transport is None:
            return
        if self._active:
            self.abort()
        else:
            self.transport = None
            transport.close()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            self.transport = None
            transport.abort()


class Deadlines:
    """Read timeouts of one pool's connections, without a timer per wait.

    A uvloop timer armed and cancelled around every wait cost more than the
    rest of the wait; instead each waiting connection records its deadline and
    one timer per pool, running only while something waits, fails the overdue
    ones every TICK seconds. A read timeout fires up to TICK late.
    """

    TICK = 0.02

    __slots__ = ("_handle", "_loop", "_waiting")

    def __init__(self) -> None:
        self._waiting: set[UpstreamConnection] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, conn: UpstreamConnection) -> None:
        self._waiting.add(conn)
        if self._handle is None:
            loop = self._loop = conn._loop
            self._handle = loop.call_later(self.TICK, self._tick)

    def _tick(self) -> None:
        self._handle = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        done = []
        for conn in self._waiting:
            waiter = conn._waiter
            if waiter is None or waiter.done():
                done.append(conn)
            elif conn.deadline <= now:
                done.append(conn)
                conn._waiter = None
                waiter.set_exception(WaitTimeout())
        self._waiting.difference_update(done)
        if self._waiting:
            self._handle = loop.call_later(self.TICK, self._tick)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

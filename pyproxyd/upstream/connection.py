"""Compiled by mypyc (pyproxyd/compiled.py). One upstream HTTP/1.1 connection:
an asyncio.Protocol fed to httptools.

It parses responses (llhttp), buffers the body with flow control both ways,
and tells whoever waits on it about progress through one waiter (the
`Waiter` protocol below). The exchange layer (http1.py) decides what a
failure means; this module only records it. Exchanges are strictly
sequential on a connection (no pipelining), which is what makes the HEAD
trick below safe.

The exchange on a connection is one state machine (h11's `_state.py` is the
model): every state change goes through `_to()`, which refuses a
transition the table does not list.

    IDLE --begin()--> HEAD --final head--> BODY --message end--> DONE
                       |                    |                     |
                       +------ failure -----+-> FAILED            +--finish()--> IDLE

FAILED and a connection marked `reuse_forbidden` never go back to a pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Final, Protocol

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from ..forwarding import names_more_headers
from ..framing import response_problem

if TYPE_CHECKING:
    from .pool import TargetPool

# Unread response body above this pauses the socket until read() catches up.
READ_HIGH_WATER = 256 * 1024

# The states of the exchange on a connection.
# (Final: mypyc inlines them; a plain module global is a dict lookup per use.)
IDLE: Final = 0  # between exchanges: any byte that arrives is a stray one
HEAD: Final = 1  # a request was (or is being) sent; the final response head is not in
BODY: Final = 2  # the final head is in; its body is arriving
DONE: Final = 3  # the whole response is in; not yet handed back to the pool
FAILED: Final = 4  # the exchange broke (`error` says why); the connection is done for
STATE_NAMES = ("IDLE", "HEAD", "BODY", "DONE", "FAILED")


class InvalidResponse(ValueError):
    """A response head llhttp accepts but HTTP does not."""


class StateError(Exception):
    """A transition the state table does not allow: a bug, never input."""


class Waiter(Protocol):
    """What a connection wakes when its exchange makes progress.

    An asyncio.Future fits; so does a callback object (the proxy's
    no-task path). The connection calls `set_result(True)` after a read that
    changed something (a head, body bytes, the end, a failure, room to
    write); the pool's Deadlines calls `set_exception(WaitTimeout())` once
    the connection's `deadline` passes. Each waiter is woken at most once:
    it is forgotten before it is called, and `done()` must be true after.
    """

    def done(self) -> bool: ...

    def set_result(self, result: bool, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


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


class ResponseHead:
    """The final response head of an exchange, as the upstream sent it."""

    __slots__ = (
        "chunked",
        "close",
        "content_length",
        "headers",
        "keepalive",
        "lists_headers",
        "reason",
        "status",
        "te",
        "version",
    )

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Empty, for the next message (one object per connection, not per exchange)."""
        self.status = 0
        self.reason = ""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []  # raw, as received (a new list: a
        # response of the last exchange may still hold the old one)
        self.content_length: int | None = None
        self.te = b""  # the Transfer-Encoding value(s), joined
        self.chunked = False
        self.close = False  # Connection: close
        self.keepalive = False  # Connection: keep-alive
        self.lists_headers = False  # Connection names headers beyond close/keep-alive

    @property
    def until_close(self) -> bool:
        """The body ends where the connection does."""
        return not self.chunked and self.content_length is None


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_buffer",
        "_buffered",
        "_feeding",
        "_head_bytes",
        "_head_size",
        "_informational",
        "_interim",
        "_is_head",
        "_loop",
        "_max_head",
        "_parser",
        "_pool",
        "_reading_paused",
        "_reuse_forbidden",
        "_waiter",
        "_woken",
        "_write_paused",
        "deadline",
        "error",
        "head",
        "idle_since",
        "opened_at",
        "received",
        "requests",
        "state",
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
        self._waiter: Waiter | None = None
        self._feeding = False  # inside feed_data: wake the waiter once it returns
        self._woken = False
        self.deadline = 0.0  # of the current wait (Deadlines)
        self._reading_paused = False
        self._write_paused = False
        self._buffer: list[bytes] = []
        self._buffered = 0
        self.state = IDLE
        self.head = ResponseHead()  # of the exchange under way (or the last one)
        self.error: str | None = None  # why the exchange FAILED
        self.received = False  # any byte of this exchange's response arrived
        self._is_head = False
        self._reuse_forbidden = False
        self._informational = False
        self._interim = False  # an interim (1xx) head was parsed into `head`
        self._head_bytes = 0  # bytes read while the final head was incomplete
        self._head_size = 0  # parsed bytes of the heads (interim ones too)

    @property
    def pool(self) -> TargetPool:
        return self._pool

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def is_closed(self) -> bool:
        return self.transport is None

    @property
    def head_done(self) -> bool:
        """The final response head is in (whatever happened after)."""
        state = self.state
        return state in (BODY, DONE) or (state == FAILED and self.head.status > 0)

    @property
    def body_done(self) -> bool:
        return self.state == DONE

    @property
    def has_data(self) -> bool:
        return bool(self._buffer)

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def __repr__(self) -> str:
        state = "closed" if self.transport is None else STATE_NAMES[self.state].lower()
        return f"<UpstreamConnection {self._pool.label} {state} requests={self.requests}>"

    # -- the state machine ---------------------------------------------------------

    def _to(self, new: int) -> None:
        """The one place the state changes. The table, as code (a table in a
        module global is a dictionary lookup per transition, compiled):
        IDLE -> HEAD -> BODY -> DONE -> IDLE; HEAD and BODY -> FAILED (final).
        A failure after DONE costs the connection, not the answer (_failed)."""
        old = self.state
        if old == IDLE:
            ok = new == HEAD
        elif old == HEAD:
            ok = new in (BODY, FAILED)
        elif old == BODY:
            ok = new in (DONE, FAILED)
        elif old == DONE:
            ok = new == IDLE
        else:
            ok = False
        if not ok:
            raise StateError(f"{STATE_NAMES[old]} -> {STATE_NAMES[new]}")
        self.state = new

    def begin(self, is_head: bool) -> None:
        """An exchange starts: its request is about to be written."""
        self._to(HEAD)
        self._is_head = is_head
        self.received = False
        self._reuse_forbidden = False
        self.error = None
        self._informational = False
        self._interim = False
        self._head_bytes = 0
        self._head_size = 0
        self.head.reset()
        if self._buffer or self._reading_paused:
            # The last response was complete but not all read by its consumer.
            self.take()

    def _complete(self) -> None:
        self._to(DONE)
        self.requests += 1

    def _failed(self, reason: str) -> None:
        if self.state == DONE:
            # The answer is whole (junk came after it): only the connection is lost.
            self._reuse_forbidden = True
        elif self.state != FAILED:
            self.error = reason
            self._to(FAILED)

    def fail(self, reason: str) -> None:
        """The exchange cannot go on (the peer, a parse, a write): close."""
        self._failed(reason)
        self.abort()
        self._wake()

    def write_failed(self, reason: str) -> None:
        """A request head could not be written (start() found the connection
        closing): recorded, so that whoever resumes the exchange sees it."""
        self._failed(reason)

    def forbid_reuse(self) -> None:
        """Something happened that leaves the byte stream in doubt (an answer
        before the whole request was sent, stray bytes): close at release."""
        self._reuse_forbidden = True

    def finish(self) -> None:
        """The exchange is over and the connection goes back to the pool."""
        self._to(IDLE)

    @property
    def clean(self) -> bool:
        """The whole response arrived, nothing odd happened, keep-alive allowed."""
        return (
            self.state == DONE
            and not self._reuse_forbidden
            and self.transport is not None
            and self.keep_alive
        )

    @property
    def keep_alive(self) -> bool:
        head = self.head
        if head.close:
            return False
        if head.version == "1.0" and not head.keepalive:
            return False
        if self._is_head or head.status in (204, 304):
            return True
        return not head.until_close

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state in (IDLE, FAILED):
            # Nothing was asked: a stray byte (a 408, junk) poisons the connection.
            self.abort()
            return
        self.received = True
        # The waiter hears of a read once all of it is parsed: a head and the
        # body in the same read are one wake-up, and a callback waiter (the
        # proxy's fast path) sees the whole response.
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            self._feeding = False
            self.fail("upstream switched protocols unasked")
        except HttpParserError as exc:
            self._feeding = False
            self.fail(f"malformed response from upstream: {failure(exc)}")
        finally:
            self._feeding = False
        if self.state == HEAD:
            # httptools holds a header line until it ends: bound what a head
            # still incomplete may take, however the reads cut it.
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self.fail("malformed response from upstream: response head too large")
        if self._woken:
            self._woken = False
            self._wake()

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost does the bookkeeping

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        state = self.state
        if state == IDLE:
            self._pool.lost_idle(self)
        elif state == BODY:
            if exc is None and self.head.until_close:
                self._complete()  # the read-until-close body ends here
            else:
                self._failed("upstream closed the connection mid-body")
        elif state == HEAD:
            self._failed(
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
        if self.state != HEAD:
            # A second message after the final one: we never pipeline, so the
            # upstream is confused (or this is the stale parser of a HEAD).
            self._reuse_forbidden = True
        elif self._interim:
            self._interim = False
            self.head.reset()  # the final head after a 100 Continue or 103

    def on_status(self, reason: bytes) -> None:
        if self.state != HEAD:
            # A second response nobody asked for: not this exchange's, and no
            # client's. The connection is not reused (see on_message_begin).
            return
        self._head_size += len(reason) + 15
        self.head.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.state != HEAD:
            return  # a stray response's, or the trailer of a chunked body
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_head:
            raise InvalidResponse("response head too large")
        head = self.head
        head.headers.append((name, value))
        n = len(name)
        # Only three names matter here; their lengths are 10, 14 and 17.
        if n == 14 and name.lower() == b"content-length":
            head.content_length = int(value)
        elif n == 17 and name.lower() == b"transfer-encoding":
            head.te = head.te + b"," + value if head.te else value
            head.chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif n == 10 and name.lower() == b"connection":
            tokens = value.lower()
            # (find, not `in`: see frontend/connection.py's on_header)
            if tokens.find(b"close") >= 0:
                head.close = True
            if tokens.find(b"keep-alive") >= 0:
                head.keepalive = True
            if names_more_headers(tokens):
                head.lists_headers = True

    def on_headers_complete(self) -> None:
        if self.state != HEAD:
            return
        parser = self._parser
        status = response_status(parser)
        if status < 200:
            if status != 101:
                self._informational = True  # 100 Continue, 103 Early Hints: skipped
            self._interim = True
            return
        self._informational = False
        head = self.head
        if head.te:
            problem = response_problem(head.te, head.content_length is not None)
            if problem is not None:
                raise InvalidResponse(problem)
        head.status = status
        head.version = parser.get_http_version()
        self._to(BODY)
        if self._is_head:
            # llhttp cannot be told this answers a HEAD, and would wait for the
            # Content-Length body. Finish here and give later bytes a new parser.
            self._parser = HttpResponseParser(self)
            self._complete()
        self._woken = True  # (parser callbacks run inside feed_data: see data_received)

    def on_body(self, data: bytes) -> None:
        if self.state != BODY:
            self._reuse_forbidden = True  # bytes after a HEAD response
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
        if self.state == BODY:
            self._complete()
            self._woken = True

    # -- waiting -------------------------------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            if self._feeding:
                self._woken = True
                return
            self._waiter = None
            if not w.done():
                w.set_result(True)  # Deadlines drops the connection on its next tick

    def watch(self, waiter: Waiter, deadline: float) -> None:
        """Wake `waiter` on the next progress, or fail it once `deadline` passes
        (the pool's Deadlines sweep: no timer of its own per wait)."""
        self._waiter = waiter
        self.deadline = deadline
        self._pool.deadlines.watch(self)

    def unwatch(self, waiter: Waiter) -> None:
        """`waiter` no longer wants to hear (its client left)."""
        if self._waiter is waiter:
            self._waiter = None

    def expire(self, now: float) -> bool:
        """Deadlines' question: is this wait over? Fails an overdue waiter."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            return True
        if self.deadline <= now:
            self._waiter = None
            waiter.set_exception(WaitTimeout())
            return True
        return False

    def wait(self, deadline: float) -> asyncio.Future[bool]:
        """Await it for any progress; it raises WaitTimeout once `deadline` passes.

        Not a coroutine (one frame less on every resume).
        """
        fut: asyncio.Future[bool] = self._loop.create_future()
        self.watch(fut, deadline)
        return fut

    def take(self) -> bytes:
        """The body bytes buffered so far (reading resumes if it was paused)."""
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

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    @property
    def buffered(self) -> int:
        return self._buffered

    # -- writing -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise Lost("upstream connection closed before the request was sent")
        try:
            transport.write(data)
        except (OSError, RuntimeError) as exc:
            raise Lost(f"write to upstream failed: {exc}") from None

    async def drain(self, deadline: float) -> None:
        while self._write_paused and not self.head_done:
            if self.transport is None or self.state == FAILED:
                raise Lost(self.error or "upstream connection closed while sending")
            await self.wait(deadline)

    # -- closing -------------------------------------------------------------------

    def close(self) -> None:
        """Close; abruptly unless the connection is between exchanges."""
        transport = self.transport
        if transport is None:
            return
        if self.state != IDLE:
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
            loop = self._loop = conn.loop
            self._handle = loop.call_later(self.TICK, self._tick)

    def _tick(self) -> None:
        self._handle = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        self._waiting.difference_update([c for c in self._waiting if c.expire(now)])
        if self._waiting:
            self._handle = loop.call_later(self.TICK, self._tick)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

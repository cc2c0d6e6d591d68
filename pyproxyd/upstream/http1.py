"""Compiled by mypyc (pyproxyd/compiled.py). The upstream HTTP/1.1 exchange:
send one request, hand back the response.

`exchange()` takes a pooled connection, writes the request head in one
transport.write, streams the body, waits for the response head, and turns
every failure into the gateway's errors. Timers exist only while a read
actually has to wait. The connection protocol itself is in connection.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from .. import errors
from .connection import READ_HIGH_WATER, Lost, UpstreamConnection, WaitTimeout

if TYPE_CHECKING:
    from .pool import TargetPool

__all__ = [
    "READ_HIGH_WATER",
    "REPLAY_LIMIT",
    "InFlight",
    "ReplayBody",
    "UpstreamConnection",
    "UpstreamResponse",
    "exchange",
]

# Body bytes kept to replay a request after the keep-alive race.
REPLAY_LIMIT = 64 * 1024
# A first body chunk this small rides in the same write as the head.
COALESCE_LIMIT = 16 * 1024


class _Stale(Exception):
    """A reused connection failed before any response byte: the keep-alive race."""


class UpstreamResponse:
    """The head of an upstream response, and its body as de-framed chunks."""

    __slots__ = (
        "_conn",
        "_done",
        "_pool",
        "_timeout",
        "chunked",
        "content_length",
        "headers",
        "lists_headers",
        "reason",
        "status",
        "trailers",
        "version",
    )

    def __init__(self, pool: TargetPool, conn: UpstreamConnection, timeout: float) -> None:
        self._pool = pool
        self._conn = conn
        self._timeout = timeout
        self._done = False
        head = conn.head
        self.status: int = head.status
        self.reason: str = head.reason
        self.headers: list[tuple[bytes, bytes]] = head.headers  # raw, as received
        # Its Connection header names more hop-by-hop headers than the usual ones.
        self.lists_headers: bool = head.lists_headers
        self.version: str = head.version
        self.content_length: int | None = None if head.te else head.content_length
        self.chunked: bool = head.chunked
        # Trailer fields, once the body is read (HTTP/2 upstreams; HTTP/1.1
        # ones' chunked trailers are not kept).
        self.trailers: list[tuple[bytes, bytes]] | None = None

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} {self.reason!r} via {self._conn!r}>"

    def whole_body(self) -> bytes | None:
        """The entire body if it has already arrived (no await needed), else None.
        A small answer usually comes in the same read as its head."""
        conn = self._conn
        if self._done or not conn.body_done:
            return None
        return conn.take() if conn.has_data else b""

    async def read(self) -> bytes:
        """The next de-framed body chunk; b"" at the end of the body."""
        if self._done:
            return b""
        conn = self._conn
        if conn.has_data:
            return conn.take()
        if conn.body_done:
            return b""
        deadline = 0.0
        while True:
            if conn.error is not None:
                err = errors.BadGateway(conn.error)
                err.response_started = True
                self.abort()
                raise err
            if not deadline:
                deadline = conn.loop.time() + self._timeout
            try:
                await conn.wait(deadline)
            except WaitTimeout:
                self.abort()
                err2 = errors.UpstreamTimeout(
                    f"upstream sent nothing for {self._timeout:g}s (read_timeout) mid-body"
                )
                err2.response_started = True
                raise err2 from None
            except BaseException:
                self.abort()
                raise
            if conn.has_data:
                return conn.take()
            if conn.body_done:
                return b""

    def release(self) -> None:
        """Back to the pool when the whole response arrived and keep-alive holds;
        closed otherwise. Idempotent."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        reusable = conn.clean
        if reusable:
            conn.finish()
        self._pool.release(conn, reusable=reusable)

    def abort(self) -> None:
        """Close the connection whatever its state (the client went away). Idempotent."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        conn.abort()
        self._pool.release(conn, reusable=False)


class ReplayBody:
    """The request body iterator, shared by the first try and a replay: what
    was read is kept (up to REPLAY_LIMIT) to be sent again. The h2 exchange
    reads through one too."""

    __slots__ = ("done", "it", "overflow", "sent", "size")

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self.it = body.__aiter__()
        self.sent: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.done = False

    async def next(self, record: bool) -> bytes | None:
        """The next piece, None at the end; a client-side failure is a 400."""
        try:
            chunk = await self.it.__anext__()
        except StopAsyncIteration:
            self.done = True
            return None
        except errors.GatewayError:
            raise
        except Exception as exc:  # the client side failed (reset, bad framing)
            raise errors.BadRequest(f"could not read the request body: {exc}") from exc
        if record:
            self.keep(chunk)
        return chunk

    def keep(self, chunk: bytes) -> None:
        """Remember a piece sent, for a replay; past REPLAY_LIMIT none is kept."""
        if self.overflow:
            return
        self.size += len(chunk)
        if self.size > REPLAY_LIMIT:
            self.overflow = True
            self.sent.clear()
        else:
            self.sent.append(chunk)


async def exchange(
    pool: TargetPool,
    head: bytes,
    body: AsyncIterator[bytes] | None,
    *,
    is_head: bool = False,
    read_timeout: float | None = None,
) -> UpstreamResponse:
    """Send one request on a pooled connection; return once the response head is in.

    `head` is the complete request head, `body` the already-framed body chunks.
    A reused connection that fails before any response byte is replaced by a
    fresh one and the request replayed once (invisible to the caller), as long
    as the body sent so far fits REPLAY_LIMIT.
    """
    timeout = pool.settings.read_timeout if read_timeout is None else read_timeout
    conn = await pool.acquire()
    sender = ReplayBody(body) if body is not None else None
    return await _exchange_on(pool, conn, head, sender, is_head, timeout, conn.requests > 0)


class InFlight:
    """A body-less exchange begun without a task: its head is written on an
    idle pooled connection, and it waits for the answer in callbacks.

    It is the connection's Waiter (connection.py). On the first progress (a
    read that brought something, a failure, or its deadline passing) it calls
    `woke()` once, which a subclass overrides (one object per request: no
    callback to allocate). There it takes a whole answer at once
    (`complete`, `response()`), or goes on in a task with `await resume()`,
    which carries on this very exchange (a timeout already passed is raised
    there, the keep-alive race is replayed there). `cancel()` is for a
    client that left before any of that. `begin()` writes the head on an
    idle connection of `pool`, or says there is none.
    """

    __slots__ = ("conn", "deadline", "fired", "head", "is_head", "pool", "reused", "timeout")

    def __init__(self, pool: TargetPool, head: bytes, is_head: bool, timeout: float) -> None:
        self.pool = pool
        self.head = head
        self.is_head = is_head
        self.timeout = timeout
        self.conn: UpstreamConnection | None = None
        self.reused = False
        self.deadline = 0.0
        self.fired = False

    def begin(self) -> bool:
        """The head written to an idle pooled connection; False when none is
        idle (then exchange() in a task). Call arm() once ready to be woken."""
        conn = self.pool.take_idle()
        if conn is None:
            return False
        self.conn = conn
        self.reused = conn.requests > 0
        self.deadline = conn.loop.time() + self.timeout
        conn.begin(self.is_head)
        try:
            conn.write(self.head)
        except Lost as exc:
            conn.write_failed(str(exc))  # resume() takes it from here (the keep-alive race)
        return True

    def woke(self) -> None:
        """The exchange made progress (the subclass's business)."""
        raise NotImplementedError

    def arm(self) -> None:
        """Wait for the answer; a head that could not be written (a keep-alive
        connection already closing) wakes at once: no read ever would."""
        conn = self.conn
        assert conn is not None
        if conn.error is not None:
            self.set_result(True)
        else:
            conn.watch(self, self.deadline)

    # -- the Waiter protocol (connection.py) --
    def done(self) -> bool:
        return self.fired

    def set_result(self, result: bool, /) -> None:
        if not self.fired:
            self.fired = True
            self.woke()

    def set_exception(self, exception: BaseException, /) -> None:
        self.set_result(False)  # a read timeout: resume() raises it at once

    @property
    def complete(self) -> bool:
        """The whole answer is in, nothing went wrong."""
        conn = self.conn
        return conn is not None and conn.body_done and conn.error is None

    def response(self) -> UpstreamResponse:
        assert self.conn is not None
        return UpstreamResponse(self.pool, self.conn, self.timeout)

    async def resume(self) -> UpstreamResponse:
        """The rest of the exchange in a task, as exchange() would go on."""
        assert self.conn is not None
        return await _exchange_on(
            self.pool, self.conn, self.head, None, self.is_head, self.timeout, self.reused,
            self.deadline,
        )  # fmt: skip

    def cancel(self) -> bool:
        """The client left before the answer: the connection cannot be reused.
        False when it had woken already (then whoever took over cleans up)."""
        conn = self.conn
        if self.fired or conn is None:
            return False
        self.fired = True
        conn.unwatch(self)
        conn.abort()
        self.pool.release(conn, reusable=False)
        return True


async def _exchange_on(
    pool: TargetPool,
    conn: UpstreamConnection,
    head: bytes,
    sender: ReplayBody | None,
    is_head: bool,
    timeout: float,
    reused: bool,
    deadline: float = 0.0,
) -> UpstreamResponse:
    try:
        return await _attempt(pool, conn, head, sender, is_head, timeout, reused, deadline)
    except _Stale:
        pass
    try:
        conn = await pool.renew(conn)
    except errors.UpstreamConnectError as exc:
        raise errors.BadGateway(
            f"keep-alive connection lost, and reconnecting failed: {exc}"
        ) from None
    return await _attempt(pool, conn, head, sender, is_head, timeout, False)


async def _attempt(
    pool: TargetPool,
    conn: UpstreamConnection,
    head: bytes,
    body: ReplayBody | None,
    is_head: bool,
    timeout: float,
    reused: bool,
    sent_at: float = 0.0,
) -> UpstreamResponse:
    """`sent_at` nonzero: the head was written already (by start()), and this
    is the read deadline it set."""
    try:
        deadline = sent_at
        if not sent_at:
            conn.begin(is_head)
            if body is None:
                conn.write(head)
            else:
                await _send_body(conn, head, body, timeout, reused)
        elif not conn.head_done and conn.error is None and sent_at <= conn.loop.time():
            raise WaitTimeout  # it passed while the proxy's callback path waited
        while not conn.head_done:  # (inline: one coroutine less to resume through)
            if conn.error is not None:
                raise Lost(conn.error)
            if not deadline:
                deadline = conn.loop.time() + timeout
            await conn.wait(deadline)
    except Lost as exc:
        if reused and not conn.received and (body is None or not body.overflow):
            raise _Stale from None  # renew() closes it and keeps the slot
        pool.release(conn, reusable=False)
        message = str(exc)
        if reused and body is not None and body.overflow:
            message += f" (request body over {REPLAY_LIMIT} bytes: too large to replay)"
        err = errors.BadGateway(message)
        err.response_started = False
        raise err from None
    except WaitTimeout:
        pool.release(conn, reusable=False)
        raise errors.UpstreamTimeout(
            f"upstream sent no response head within {timeout:g}s (read_timeout)"
        ) from None
    except BaseException:
        pool.release(conn, reusable=False)
        raise
    return UpstreamResponse(pool, conn, timeout)


async def _send_body(
    conn: UpstreamConnection, head: bytes, body: ReplayBody, timeout: float, record: bool
) -> None:
    if body.sent:
        # Replay on a fresh connection: what the first try consumed, in one write.
        conn.write(head + b"".join(body.sent))
    elif body.done:
        conn.write(head)  # an empty body that was already consumed
    else:
        first = await body.next(record)
        if first is None:
            conn.write(head)
        elif len(first) <= COALESCE_LIMIT:
            conn.write(head + first)
        else:
            conn.write(head)
            conn.write(first)
    deadline = 0.0
    while not body.done:
        if conn.head_done:
            # The upstream answered before taking the whole body (a 413, a 401):
            # stop sending; that connection cannot carry another request.
            conn.forbid_reuse()
            return
        if conn.transport is None or conn.error is not None:
            raise Lost(conn.error or "upstream connection closed while sending the body")
        if conn.write_paused:
            # nginx has proxy_send_timeout; read_timeout bounds a stalled upstream here.
            if not deadline:
                deadline = conn.loop.time() + timeout
            await conn.drain(deadline)
            deadline = 0.0
            continue
        chunk = await body.next(record)
        if chunk is None:
            break
        try:
            conn.write(chunk)
        except Lost:
            if not conn.head_done:
                raise
            conn.forbid_reuse()  # answered, then closed: the answer still counts
            return

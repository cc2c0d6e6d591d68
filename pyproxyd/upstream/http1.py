"""The upstream HTTP/1.1 exchange: send one request, hand back the response.

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
    "UpstreamConnection",
    "UpstreamResponse",
    "exchange",
    "resume",
    "start",
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
        "version",
    )

    def __init__(self, pool: TargetPool, conn: UpstreamConnection, timeout: float) -> None:
        self._pool = pool
        self._conn = conn
        self._timeout = timeout
        self._done = False
        self.status: int = conn._code
        self.reason: str = conn._reason
        self.headers: list[tuple[bytes, bytes]] = conn._headers  # raw, as received
        # Its Connection header names more hop-by-hop headers than the usual ones.
        self.lists_headers: bool = conn._conn_listed
        self.version: str = conn._version
        self.content_length: int | None = conn._content_length
        self.chunked: bool = conn._chunked

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} {self.reason!r} via {self._conn!r}>"

    def whole_body(self) -> bytes | None:
        """The entire body if it has already arrived (no await needed), else None.
        A small answer usually comes in the same read as its head."""
        conn = self._conn
        if self._done or not conn._body_done:
            return None
        return conn.take() if conn._buffer else b""

    async def read(self) -> bytes:
        """The next de-framed body chunk; b"" at the end of the body."""
        if self._done:
            return b""
        conn = self._conn
        if conn._buffer:
            return conn.take()
        if conn._body_done:
            return b""
        deadline = 0.0
        while True:
            if conn._error is not None:
                err = errors.BadGateway(conn._error)
                err.response_started = True
                self.abort()
                raise err
            if not deadline:
                deadline = conn._loop.time() + self._timeout
            try:
                await conn._wait(deadline)
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
            if conn._buffer:
                return conn.take()
            if conn._body_done:
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


class _Body:
    """The request body iterator, shared by the first try and a replay."""

    __slots__ = ("done", "it", "overflow", "sent", "size")

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self.it = body.__aiter__()
        self.sent: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.done = False

    async def next(self, record: bool) -> bytes | None:
        try:
            chunk = await self.it.__anext__()
        except StopAsyncIteration:
            self.done = True
            return None
        except errors.GatewayError:
            raise
        except Exception as exc:  # the client side failed (reset, bad framing)
            raise errors.BadRequest(f"could not read the request body: {exc}") from exc
        if record and not self.overflow:
            self.size += len(chunk)
            if self.size > REPLAY_LIMIT:
                self.overflow = True
                self.sent.clear()
            else:
                self.sent.append(chunk)
        return chunk


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
    sender = _Body(body) if body is not None else None
    return await _exchange_on(pool, conn, head, sender, is_head, timeout, conn.requests > 0)


def start(pool: TargetPool, head: bytes, is_head: bool) -> tuple[UpstreamConnection, bool] | None:
    """The first half of a body-less exchange without awaiting: an idle pooled
    connection with `head` written to it, and whether it was reused; None when
    no connection is idle (then `exchange()`). Finish with `resume()`."""
    conn = pool.take_idle()
    if conn is None:
        return None
    reused = conn.requests > 0
    conn.begin(is_head)
    try:
        conn.write(head)
    except Lost as exc:
        conn._error = str(exc)  # resume() takes it from here (the keep-alive race)
    return conn, reused


async def resume(
    pool: TargetPool,
    conn: UpstreamConnection,
    head: bytes,
    is_head: bool,
    timeout: float,
    reused: bool,
    deadline: float,
) -> UpstreamResponse:
    """exchange() from where `start()` left it: the head is written."""
    return await _exchange_on(pool, conn, head, None, is_head, timeout, reused, deadline)


async def _exchange_on(
    pool: TargetPool,
    conn: UpstreamConnection,
    head: bytes,
    sender: _Body | None,
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
    body: _Body | None,
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
        elif not conn._head_done and conn._error is None and sent_at <= conn._loop.time():
            raise WaitTimeout  # it passed while the proxy's callback path waited
        while not conn._head_done:  # (inline: one coroutine less to resume through)
            if conn._error is not None:
                raise Lost(conn._error)
            if not deadline:
                deadline = conn._loop.time() + timeout
            await conn._wait(deadline)
    except Lost as exc:
        if reused and not conn._received and (body is None or not body.overflow):
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
    conn: UpstreamConnection, head: bytes, body: _Body, timeout: float, record: bool
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
        if conn._head_done:
            # The upstream answered before taking the whole body (a 413, a 401):
            # stop sending; that connection cannot carry another request.
            conn._dirty = True
            return
        if conn.transport is None or conn._error is not None:
            raise Lost(conn._error or "upstream connection closed while sending the body")
        if conn._write_paused:
            # nginx has proxy_send_timeout; read_timeout bounds a stalled upstream here.
            if not deadline:
                deadline = conn._loop.time() + timeout
            await conn.drain(deadline)
            deadline = 0.0
            continue
        chunk = await body.next(record)
        if chunk is None:
            break
        try:
            conn.write(chunk)
        except Lost:
            if not conn._head_done:
                raise
            conn._dirty = True  # answered, then closed: the answer still counts
            return

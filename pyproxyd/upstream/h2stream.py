"""Compiled by mypyc (pyproxyd/compiled.py).
One stream of an upstream HTTP/2 connection (h2conn.py): the response as
it arrives, and the waits of the exchange (h2exchange.py) and its body pump.

The response body is acknowledged (stream WINDOW_UPDATE) only as the relay
takes it (`take`), so at most STREAM_WINDOW bytes of an answer wait here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    # (typed as the class itself: compiled, its loop and acknowledge() are
    # reached directly, not through attribute lookups by name)
    from .h2conn import H2UpstreamConnection

# Response bytes one stream may have waiting before the upstream must stop.
STREAM_WINDOW: Final = 256 * 1024


# Waits a StreamDeadlines keeps before the ones already over are dropped.
COMPACT_AT: Final = 256


class StreamError(Exception):
    """A stream cannot go on: reset, refused, or its connection failed."""


class StreamDeadlines:
    """The deadlines of the waits on one pool's streams, under one timer.

    A timer a wait (loop.call_at, then cancel) was 2% of a gRPC call's CPU
    (py-spy). A pool's waits have one timeout, so their deadlines come in
    order: they queue, one timer is armed for the first, and when it fires
    the waits past their deadline end with False. A wait that ended before
    leaves its entry behind, dropped when the queue is compacted (past
    COMPACT_AT, and twice the waits still open) or reaches the front. A
    deadline earlier than the last one queued (another timeout) gets a timer
    of its own, as before."""

    __slots__ = ("_handle", "_limit", "_waits")

    def __init__(self) -> None:
        self._waits: deque[tuple[float, asyncio.Future[bool]]] = deque()
        self._handle: asyncio.TimerHandle | None = None
        self._limit = COMPACT_AT

    def __len__(self) -> int:
        return len(self._waits)

    def add(
        self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[bool], deadline: float
    ) -> asyncio.TimerHandle | None:
        """Ends `fut` with False at `deadline`; a handle to cancel when it has one of its own."""
        waits = self._waits
        if waits and deadline < waits[-1][0]:
            return loop.call_at(deadline, _expire, fut)
        waits.append((deadline, fut))
        if len(waits) > self._limit:
            self._compact()
        if self._handle is None:
            self._handle = loop.call_at(self._waits[0][0], self._fire, loop)
        return None

    def expire(self, now: float) -> float | None:
        """End the waits whose deadline is `now` or before; the next deadline, if any."""
        waits = self._waits
        while waits:
            deadline, fut = waits[0]
            if fut.done():
                waits.popleft()
            elif deadline <= now:
                waits.popleft()
                fut.set_result(False)
            else:
                return deadline
        return None

    def _compact(self) -> None:
        self._waits = deque(w for w in self._waits if not w[1].done())
        self._limit = max(COMPACT_AT, 2 * len(self._waits))

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        after = self.expire(loop.time())
        if after is not None:
            self._handle = loop.call_at(after, self._fire, loop)


class H2Stream:
    """One request/response exchange on an H2UpstreamConnection."""

    __slots__ = (
        "_ack",
        "_chunks",
        "_waiter",
        "_window",
        "buffered",
        "conn",
        "ended",
        "error",
        "headers",
        "local_closed",
        "refused",
        "status",
        "stream_id",
        "trailers",
    )

    def __init__(self, conn: H2UpstreamConnection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.status = 0  # of the final response head; 0 until it is in
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self._chunks: list[bytes] = []
        self.buffered = 0  # body bytes received and not taken yet
        self._ack = 0  # flow-controlled bytes taken and not yet handed back
        self.ended = False  # the upstream sent END_STREAM
        self.local_closed = False  # our side ended (END_STREAM or a reset)
        self.error: str | None = None
        self.refused = False  # never processed by the upstream: safe to send again
        self._waiter: asyncio.Future[bool] | None = None
        self._window: asyncio.Future[bool] | None = None

    def __repr__(self) -> str:
        return f"<H2Stream {self.stream_id} status={self.status} ended={self.ended}>"

    @property
    def head_done(self) -> bool:
        return self.status != 0

    @property
    def has_data(self) -> bool:
        return bool(self._chunks)

    @property
    def closed(self) -> bool:
        """Nothing more will come: the body ended or the stream failed."""
        return self.ended or self.error is not None

    # -- fed by the connection -----------------------------------------------------

    def received(self, data: bytes, flow: int) -> None:
        if data:
            self._chunks.append(data)
            self.buffered += len(data)
        # Padding counts against the window too; it is handed back with the data.
        self._ack += flow - len(data)
        self.wake()

    def fail(self, reason: str, *, refused: bool = False) -> None:
        if self.error is None and not self.ended:
            self.error = reason
            self.refused = refused
        self.wake()
        self.window_opened()

    def wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(True)

    # -- used by the exchange ---------------------------------------------------------

    # The pool's StreamDeadlines end a wait with False, not asyncio.timeout_at: that
    # one cancels the task and uncancels it, a context manager and a Timeout
    # per wait (3% of a gRPC call's CPU, py-spy). Written out in both waits: a
    # coroutine of its own for the shared part cost a coroutine object and
    # attribute access by name per wait.

    async def wait(self, deadline: float | None) -> bool:
        """Until the next progress of the response; False when `deadline` passed first."""
        conn = self.conn
        loop = conn.loop
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiter = fut
        handle = None if deadline is None else conn.pool.deadlines.add(loop, fut, deadline)
        try:
            return await fut
        finally:
            if handle is not None:
                handle.cancel()
            if self._waiter is fut:
                self._waiter = None

    async def wait_window(self, deadline: float | None) -> bool:
        """Until the upstream opens its window (or the stream fails); False on `deadline`."""
        conn = self.conn
        loop = conn.loop
        fut: asyncio.Future[bool] = loop.create_future()
        self._window = fut
        handle = None if deadline is None else conn.pool.deadlines.add(loop, fut, deadline)
        try:
            return await fut
        finally:
            if handle is not None:
                handle.cancel()
            if self._window is fut:
                self._window = None

    def window_opened(self) -> None:
        w = self._window
        if w is not None:
            self._window = None
            if not w.done():
                w.set_result(True)

    def take(self) -> bytes:
        """The body bytes received so far; their window goes back to the upstream."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._ack += len(data)
        self.buffered = 0
        # A quarter of the window at a time: fewer WINDOW_UPDATE frames, and an
        # upstream that used up its window gets it back once the relay took it all.
        if self._ack >= STREAM_WINDOW // 4:
            self.conn.acknowledge(self, self._ack)
            self._ack = 0
        return data


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


def response_head(stream: H2Stream, headers: list[tuple[bytes, bytes]]) -> None:
    status = 0
    kept: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":status" and len(value) == 3 and value.isdigit():
                status = int(value)
        else:
            kept.append((name, value))
    if not 200 <= status <= 599:  # (1xx heads come as InformationalResponseReceived)
        stream.fail("upstream sent a response without a valid :status")
        return
    stream.headers = kept
    stream.status = status
    stream.wake()

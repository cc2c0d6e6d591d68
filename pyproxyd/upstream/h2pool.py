"""Compiled by mypyc (pyproxyd/compiled.py).
The HTTP/2 connections to one upstream target (protocol = "h2c" | "h2").

The rules are the HTTP/1.1 pool's (pool.py), read for multiplexed
connections:

* a request takes a stream slot on a connection: the busiest one that still
  has room (min(max_streams_per_connection, the upstream's
  SETTINGS_MAX_CONCURRENT_STREAMS)), so the others go idle and age out; a
  new connection opens only when every one is full, and requests that
  arrive while it opens wait for it rather than open their own;
* `max_connections` caps the connections (open + opening); beyond it requests
  wait FIFO, bounded by `connect_timeout`;
* `keepalive` idle connections (no stream) are kept; `keepalive_timeout`,
  `keepalive_time` and `keepalive_requests` (streams per connection) retire
  them as in nginx;
* idle connections are PINGed every `ping_interval` (keepalive_timeout / 3,
  at least 15 s: see PING_INTERVAL_MIN); one that leaves a PING
  unanswered for `ping_timeout` is closed;
* a GOAWAY (h2conn.py) takes a connection out of rotation; it closes once its
  last stream is done.

Busy/idle counts are of connections, as for HTTP/1.1 (a connection with at
least one stream is busy); `streams` counts the requests on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from collections import deque
from typing import TYPE_CHECKING

from .. import errors
from .h2conn import H2UpstreamConnection
from .h2stream import StreamDeadlines

if TYPE_CHECKING:
    from .pool import PoolSettings, TargetPool

# An idle connection is PINGed every keepalive_timeout / 3, and never more often
# than this: at most twice in an idle period. gRPC servers (C-core's ping abuse
# policy) answer a third PING without a request in between with GOAWAY
# "too_many_pings" (ENHANCE_YOUR_CALM); seen with grpcio at 50 ms intervals.
PING_INTERVAL_MIN = 15.0


class _Abandoned(Exception):
    """The request opening a connection went away before it was open."""


class _Opening:
    """A connection being opened, and how many requests wait to use it."""

    __slots__ = ("claims", "done")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.done: asyncio.Future[None] = loop.create_future()
        self.claims = 1  # its opener


class H2Pool:
    """HTTP/2 connections to one target; the owner TargetPool reports them."""

    def __init__(
        self,
        owner: TargetPool,
        settings: PoolSettings,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
    ) -> None:
        self.owner = owner
        self.host = owner.host
        self.port = owner.port
        self.label = owner.label
        self.settings = settings
        self.max_streams = settings.max_streams
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.ping_interval = (
            ping_interval
            if ping_interval is not None
            else max(PING_INTERVAL_MIN, settings.keepalive_timeout / 3)
        )
        self.ping_timeout = ping_timeout if ping_timeout is not None else settings.connect_timeout
        self.conns: list[H2UpstreamConnection] = []
        self.opening: list[_Opening] = []
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.deadlines = StreamDeadlines()  # of the waits on its streams (read_timeout)

    def __repr__(self) -> str:
        return (
            f"<H2Pool {self.label} [streams: {self.streams} | connections: {self.busy} busy,"
            f" {self.idle} idle, {len(self.opening)} opening]>"
        )

    # -- what /admin/upstreams and the metrics read (through the TargetPool) -----------

    @property
    def busy(self) -> int:
        return sum(1 for c in self.conns if c.active) + len(self.opening)

    @property
    def idle(self) -> int:
        return sum(1 for c in self.conns if not c.active)

    @property
    def queued(self) -> int:
        return len(self.waiters)

    @property
    def streams(self) -> int:
        return sum(c.active for c in self.conns)

    # -- the rules (time is an argument) --------------------------------------------------

    def _reusable(self, conn: H2UpstreamConnection, now: float) -> bool:
        s = self.settings
        return (
            conn.usable
            and conn.requests + conn.active < s.keepalive_requests
            and now - conn.opened_at < s.keepalive_time
            and (conn.active > 0 or now - conn.idle_since < s.keepalive_timeout)
        )

    def pick(self, now: float) -> H2UpstreamConnection | None:
        """The connection a new stream goes on: the busiest with room; among idle
        ones the most recently used (nginx's LIFO: surplus ones age out)."""
        best: H2UpstreamConnection | None = None
        for conn in self.conns:
            if conn.active >= conn.capacity or not self._reusable(conn, now):
                continue
            if (
                best is None
                or conn.active > best.active
                or (conn.active == best.active == 0 and conn.idle_since > best.idle_since)
            ):
                best = conn
        return best

    def expired(self, now: float) -> list[H2UpstreamConnection]:
        """Idle connections that may not be used again, and any PING left unanswered."""
        timeout = self.ping_timeout
        return [
            c
            for c in self.conns
            if (c.ping_sent_at and now - c.ping_sent_at >= timeout)
            or (not c.active and not self._reusable(c, now))
        ]

    def surplus(self) -> list[H2UpstreamConnection]:
        """Idle connections over the keepalive cap, least recently used first."""
        idle = sorted((c for c in self.conns if not c.active), key=lambda c: c.idle_since)
        over = len(idle) - self.settings.keepalive
        return idle[:over] if over > 0 else []

    # -- acquire / release ----------------------------------------------------------------

    async def acquire(self) -> H2UpstreamConnection:
        """A connection with a stream slot taken for the caller (release() gives it back)."""
        loop = self._get_loop()
        deadline = loop.time() + self.settings.connect_timeout
        while True:
            if self.closed:
                raise errors.UpstreamConnectError(f"pool for {self.label} is closed")
            now = loop.time()
            conn = self.pick(now)
            if conn is not None:
                conn.active += 1
                return conn
            self._close_all(self.expired(now))
            joined = next((op for op in self.opening if op.claims < self.max_streams), None)
            if joined is not None:
                joined.claims += 1
                try:
                    await self._until(asyncio.shield(joined.done), deadline)
                except _Abandoned:
                    pass  # its opener left: look again (and maybe open one ourselves)
                finally:
                    joined.claims -= 1
                continue
            if len(self.conns) + len(self.opening) >= self.settings.max_connections:
                idle = [c for c in self.conns if not c.active]
                if idle:  # full of idle ones that cannot take it (expired, retiring)
                    self._close_all(idle[:1])
                    continue
                fut: asyncio.Future[None] = loop.create_future()
                self.waiters.append(fut)
                try:
                    await self._until(fut, deadline)
                finally:
                    with contextlib.suppress(ValueError):
                        self.waiters.remove(fut)
                continue
            await self._open(loop, deadline)

    def release(self, conn: H2UpstreamConnection) -> None:
        """A stream's exchange is over."""
        conn.active -= 1
        conn.requests += 1
        if conn.active == 0:
            loop = self._get_loop()
            now = conn.idle_since = loop.time()
            s = self.settings
            if self.closed or s.keepalive == 0 or not self._reusable(conn, now):
                self._close_all([conn])
            else:
                self._close_all(self.surplus())
                self._arm(loop)
        self._wake()

    # -- told by the connections -----------------------------------------------------

    def lost(self, conn: H2UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):
            self.conns.remove(conn)
        self._wake()

    def retired(self, conn: H2UpstreamConnection) -> None:
        """A GOAWAY: no new streams; closed once the open ones are done."""
        if not conn.active:
            self._close_all([conn])
        self._wake()

    def capacity_changed(self, conn: H2UpstreamConnection) -> None:
        self._wake()

    def close(self) -> None:
        """Retire: idle connections close now, busy ones after their last stream."""
        self.closed = True
        for conn in list(self.conns):
            if conn.active:
                conn.retire()
            else:
                self._close_all([conn])
        for fut in self.waiters:
            if not fut.done():
                fut.set_exception(errors.UpstreamConnectError(f"pool for {self.label} closed"))
        self.waiters.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # (self.deadlines runs on: the streams of retiring connections keep their timeouts)

    # -- internals ---------------------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def _until(self, fut: asyncio.Future[None], deadline: float) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                await fut
        except TimeoutError:
            raise errors.UpstreamConnectError(
                f"no free HTTP/2 stream to {self.label} within"
                f" {self.settings.connect_timeout:g}s (max_connections)"
            ) from None
        except _Abandoned:
            raise
        except ConnectionError as exc:  # the connection it waited for failed to open
            raise errors.UpstreamConnectError(str(exc)) from None

    def _wake(self) -> None:
        # Every waiter looks again, in arrival order; those that find no room wait again.
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    async def _open(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        op = _Opening(loop)
        self.opening.append(op)
        conn: H2UpstreamConnection | None = None
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    _, conn = await loop.create_connection(
                        lambda: H2UpstreamConnection(self, loop, self.ssl is not None),
                        self.host,
                        self.port,
                        ssl=self.ssl,
                        server_hostname=self.server_hostname,
                    )
                    await conn.ready  # the upstream's SETTINGS: it speaks HTTP/2
            except TimeoutError:
                reason = (
                    f"connect to {self.label} timed out after {self.settings.connect_timeout:g}s"
                )
                raise errors.UpstreamConnectError(reason) from None
            except (OSError, ValueError) as refused:  # refused, unreachable, TLS, not HTTP/2
                raise errors.UpstreamConnectError(
                    f"connect to {self.label} failed: {refused or type(refused).__name__}"
                ) from None
        except BaseException as exc:
            if conn is not None:
                conn.abort()
            if not op.done.done():
                op.done.set_exception(
                    ConnectionError(str(exc) or "connect failed")
                    if isinstance(exc, Exception)
                    else _Abandoned("connect abandoned")
                )
                op.done.exception()  # retrieved: waiters raise their own copy
            raise
        finally:
            self.opening.remove(op)
            self._wake()  # a slot is free again (or a connection to use): waiters look
        self.owner.opened_total += 1
        if self.closed:
            conn.close()
            raise errors.UpstreamConnectError(f"pool for {self.label} is closed")
        self.conns.append(conn)
        op.done.set_result(None)
        self._arm(loop)

    def _close_all(self, conns: list[H2UpstreamConnection]) -> None:
        for conn in conns:
            with contextlib.suppress(ValueError):
                self.conns.remove(conn)
            with contextlib.suppress(Exception):
                conn.close()

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None and self.conns:
            tick = min(self.ping_interval, self.ping_timeout, self.settings.keepalive_timeout)
            self._timer = loop.call_later(max(0.01, min(1.0, tick / 4)), self._sweep)

    def _sweep(self) -> None:
        # One timer per pool, only while it has connections: idle ones expire on
        # time, idle ones get their PING, and an unanswered PING closes.
        self._timer = None
        loop = self._get_loop()
        now = loop.time()
        for conn in self.expired(now):
            if conn.ping_sent_at:
                with contextlib.suppress(ValueError):
                    self.conns.remove(conn)
                conn.fail(f"upstream left a PING unanswered for {self.ping_timeout:g}s")
            else:
                self._close_all([conn])
        for conn in self.conns:
            if not conn.active and now - max(conn.idle_since, conn.pinged_at) >= self.ping_interval:
                conn.ping(now)
        self._arm(loop)

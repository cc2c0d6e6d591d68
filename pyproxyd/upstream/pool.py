"""Compiled by mypyc (pyproxyd/compiled.py).

The per-target upstream connection pool, with nginx's keepalive semantics.

Two layers, in the httpcore discipline:

* `PoolCore` holds every state rule (idle cap, request cap, idle timeout, max
  age, slot limit, FIFO waiters) in plain synchronous methods that take `now`
  and return what must be closed or handed over. Nothing awaits mid-transition,
  so it is table-tested without sockets.
* `TargetPool` does the I/O around it: connecting, closing, timers, futures.

A connection occupies a slot from the moment its open is decided (so a
connect in progress counts against `max_connections`) until it is checked in
idle or closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .. import errors
from .connection import Deadlines, UpstreamConnection


@dataclass(frozen=True, slots=True)
class PoolSettings:
    max_connections: int  # busy + idle per target; further acquirers wait (FIFO)
    keepalive: int  # idle connections kept; 0 = close every connection after its request
    keepalive_requests: int  # a connection is closed after serving this many requests
    keepalive_timeout: float  # an idle connection is closed after this long idle
    keepalive_time: float  # a connection is not reused once open this long
    connect_timeout: float  # connect, plus any wait for a free slot
    read_timeout: float  # default for exchange(): wait for the head / between body reads
    # The largest response head accepted (server.max_header_size; nginx's
    # proxy_buffer_size): a larger one is a 502, not memory and loop time.
    max_head: int = 8190
    # "http1", or "h2c" / "h2": then the target's connections are HTTP/2 ones,
    # each carrying up to `max_streams` requests at once (h2pool.py).
    protocol: str = "http1"
    max_streams: int = 100
    # An https:// target's TLS: CA bundle (None: the system's), name checked, checking on.
    tls_ca: str | None = None
    tls_server_name: str | None = None
    tls_verify: bool = True


class Multiplexed(Protocol):
    """A target's HTTP/2 connections (h2pool.H2Pool), as the pool reports them."""

    @property
    def busy(self) -> int: ...

    @property
    def idle(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def streams(self) -> int: ...

    def close(self) -> None: ...


class PooledConn(Protocol):
    """What the core needs to know about a connection."""

    requests: int
    opened_at: float
    idle_since: float

    @property
    def is_closed(self) -> bool: ...


C = TypeVar("C", bound=PooledConn)

# How long idle connections over the keepalive cap may stay (see checkin).
TRIM_GRACE = 0.02

# A waiter is granted either an idle connection or, with None, a reserved slot
# in which it may open a new connection itself.
Grant = tuple[Hashable, Any]


class PoolCore(Generic[C]):
    """The state rules of one target's pool; time is an argument."""

    __slots__ = ("busy", "closed", "idle", "settings", "trim_at", "waiters")

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.busy = 0  # slots in use: connections lent out or being opened
        # Oldest release on the left. Reuse pops the right end (nginx's cache is
        # LIFO, which lets surplus connections age out); eviction pops the left.
        self.idle: deque[C] = deque()
        self.waiters: deque[Hashable] = deque()
        self.closed = False
        self.trim_at: float | None = None  # when idle connections over the cap close

    # -- rules -----------------------------------------------------------------

    def _reusable_idle(self, conn: C, now: float) -> bool:
        s = self.settings
        return (
            not conn.is_closed
            and now - conn.idle_since < s.keepalive_timeout
            and now - conn.opened_at < s.keepalive_time
            and conn.requests < s.keepalive_requests
        )

    def _keepable(self, conn: C, now: float) -> bool:
        s = self.settings
        return (
            not self.closed
            and s.keepalive > 0
            and not conn.is_closed
            and conn.requests < s.keepalive_requests
            and now - conn.opened_at < s.keepalive_time
        )

    # -- transitions -----------------------------------------------------------

    def checkout(self, now: float, *, fresh: bool = False) -> tuple[C | None, list[C], bool]:
        """Take a connection: (idle conn or None, conns to close, may open a new one).

        (None, _, False) means: every slot is taken, wait with `enqueue`.
        """
        if self.closed:
            return None, [], False
        if not fresh:
            conn, to_close = self.checkout_idle(now)
            if conn is not None:
                return conn, to_close, False
        else:
            to_close = []
        idle = self.idle
        if self.busy + len(idle) >= self.settings.max_connections and idle:
            # A fresh connection is wanted and the slots are full: an idle one
            # makes room, least recently used first.
            to_close.append(idle.popleft())
        if self.busy + len(idle) < self.settings.max_connections and not self.waiters:
            self.busy += 1
            return None, to_close, True
        return None, to_close, False

    def checkout_idle(self, now: float) -> tuple[C | None, list[C]]:
        """The most recently used reusable idle connection, if any: (conn, conns to close)."""
        to_close: list[C] = []
        idle = self.idle
        while idle:
            conn = idle.pop()
            if self._reusable_idle(conn, now):
                self.busy += 1
                return conn, to_close
            to_close.append(conn)
        return None, to_close

    def enqueue(self, waiter: Hashable) -> None:
        self.waiters.append(waiter)

    def remove_waiter(self, waiter: Hashable) -> bool:
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return False
        return True

    def checkin(self, conn: C, now: float, reusable: bool) -> tuple[list[C], list[Grant]]:
        """Give a lent connection back: (conns to close, grants to waiters)."""
        self.busy -= 1
        if not (reusable and self._keepable(conn, now)):
            return [conn], self._grant_slot()
        conn.idle_since = now
        if self.waiters:
            self.busy += 1
            return [], [(self.waiters.popleft(), conn)]
        self.idle.append(conn)
        if len(self.idle) > self.settings.keepalive and self.trim_at is None:
            # Over the cap: the least recently used close after TRIM_GRACE, not
            # now. An event loop releases a batch of connections in one pass
            # and takes them again in the next; closing the surplus in between
            # would reopen as many a moment later (measured: ~1,300 connects a
            # second at keepalive 32 under 64 clients; scripts/bench/proxy_bench.py).
            self.trim_at = now + TRIM_GRACE
        return [], []

    def trim(self, now: float) -> list[C]:
        """Close the least recently used idle connections over the keepalive cap,
        if the grace has passed."""
        if self.trim_at is None or now < self.trim_at:
            return []
        self.trim_at = None
        to_close: list[C] = []
        while len(self.idle) > self.settings.keepalive:
            to_close.append(self.idle.popleft())
        return to_close

    def open_failed(self) -> list[Grant]:
        """A reserved slot is given back unused (connect failed or was abandoned)."""
        self.busy -= 1
        return self._grant_slot()

    def _grant_slot(self) -> list[Grant]:
        if self.waiters and not self.closed:
            self.busy += 1
            return [(self.waiters.popleft(), None)]
        return []

    def drop(self, conn: C) -> bool:
        """An idle connection the peer closed leaves the idle set at once."""
        try:
            self.idle.remove(conn)
        except ValueError:
            return False
        return True

    def expire(self, now: float) -> list[C]:
        """Take out every idle connection that may no longer be reused."""
        keep: deque[C] = deque()
        to_close: list[C] = []
        for conn in self.idle:
            (keep if self._reusable_idle(conn, now) else to_close).append(conn)
        if to_close:
            self.idle = keep
        return to_close

    def next_expiry(self) -> float | None:
        """When the next idle connection expires or the surplus is trimmed
        (None: no idle connection)."""
        if not self.idle:
            return None
        s = self.settings
        first = self.idle[0].idle_since + s.keepalive_timeout
        oldest = min(c.opened_at for c in self.idle) + s.keepalive_time
        soonest = min(first, oldest)
        return soonest if self.trim_at is None else min(soonest, self.trim_at)

    def close(self) -> tuple[list[C], list[Hashable]]:
        """Retire the pool: (idle conns to close, waiters to fail)."""
        self.closed = True
        to_close = list(self.idle)
        self.idle.clear()
        waiters = list(self.waiters)
        self.waiters.clear()
        return to_close, waiters


_SWEEP_SLACK = 0.005  # timers may fire a little early; never spin on a deadline


class TargetPool:
    """Connections to one upstream target (host:port), nginx keepalive semantics."""

    __slots__ = (
        "_core",
        "_loop",
        "_sweep_due",
        "_sweep_handle",
        "deadlines",
        "h2",
        "host",
        "label",
        "opened_total",
        "port",
        "server_hostname",
        "settings",
        "ssl",
    )

    def __init__(
        self,
        host: str,
        port: int,
        settings: PoolSettings,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        label: str = "",
    ) -> None:
        self.host = host
        self.port = port
        self.settings = settings
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.label = label or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        self.opened_total = 0
        self._core: PoolCore[UpstreamConnection] = PoolCore(settings)
        # Pools are built by compile(), possibly before the loop runs: bind lazily.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._sweep_due = 0.0
        self.deadlines = Deadlines()  # read timeouts of its connections
        # An h2c/h2 target's HTTP/2 connections: then this pool lends none of
        # its own (take_idle() finds none) and reports the HTTP/2 ones.
        self.h2: Multiplexed | None = None

    @property
    def busy(self) -> int:
        h2 = self.h2
        return self._core.busy if h2 is None else h2.busy

    @property
    def idle(self) -> int:
        h2 = self.h2
        return len(self._core.idle) if h2 is None else h2.idle

    @property
    def queued(self) -> int:
        h2 = self.h2
        return len(self._core.waiters) if h2 is None else h2.queued

    @property
    def streams(self) -> int:
        """Requests under way on HTTP/2 connections (0 for HTTP/1.1)."""
        h2 = self.h2
        return 0 if h2 is None else h2.streams

    @property
    def closed(self) -> bool:
        return self._core.closed

    def __repr__(self) -> str:
        busy = self._core.busy
        return (
            f"<TargetPool {self.label} [Requests: {busy} active, {self.queued} queued"
            f" | Connections: {busy} active, {self.idle} idle]>"
        )

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    # -- acquire / release -------------------------------------------------------

    async def acquire(self, *, fresh: bool = False) -> UpstreamConnection:
        """An idle connection (most recently used first) or a new one.

        `fresh=True` never reuses an idle connection. Waits FIFO when every slot
        is taken; the wait plus the connect are bounded by `connect_timeout`.
        Raises UpstreamConnectError.
        """
        loop = self._get_loop()
        core = self._core
        if core.closed:
            raise errors.UpstreamConnectError(f"pool for {self.label} is closed")
        now = loop.time()
        conn, to_close, may_open = core.checkout(now, fresh=fresh)
        if to_close:
            _close_all(to_close)
        if conn is not None:
            return conn
        deadline = now + self.settings.connect_timeout
        if not may_open:
            conn = await self._wait(loop, deadline)
            if conn is not None:
                if not fresh:
                    return conn
                # Keep the slot, replace the connection.
                conn.abort()
        return await self._open(loop, deadline)

    def take_idle(self) -> UpstreamConnection | None:
        """acquire() for when an idle connection is ready: no await, else None."""
        core = self._core
        if core.closed or not core.idle:
            return None
        conn, to_close = core.checkout_idle(self._get_loop().time())
        if to_close:
            _close_all(to_close)
        return conn

    async def renew(self, conn: UpstreamConnection) -> UpstreamConnection:
        """Close a lent connection and open a fresh one in the same slot.

        For the keep-alive race: the retry neither queues behind other waiters
        nor lets one of them take the slot meanwhile.
        """
        conn.abort()
        loop = self._get_loop()
        if self._core.closed:
            self._dispatch(self._core.open_failed())
            raise errors.UpstreamConnectError(f"pool for {self.label} is closed")
        return await self._open(loop, loop.time() + self.settings.connect_timeout)

    def release(self, conn: UpstreamConnection, *, reusable: bool) -> None:
        """Give a lent connection back: kept idle if the rules allow, else closed."""
        loop = self._get_loop()
        to_close, grants = self._core.checkin(conn, loop.time(), reusable)
        if to_close:
            _close_all(to_close)
        if grants:
            self._dispatch(grants)
        elif self._core.idle:
            handle = self._sweep_handle
            if handle is None:
                self._arm_sweep(loop)
            elif (trim_at := self._core.trim_at) is not None and self._sweep_due > trim_at:
                handle.cancel()  # the surplus is due before the next expiry
                self._arm_sweep(loop)

    async def aclose(self) -> None:
        """Close idle connections now; busy ones close when released."""
        if self.h2 is not None:
            self.h2.close()
        to_close, waiters = self._core.close()
        _close_all(to_close)
        for fut in waiters:
            assert isinstance(fut, asyncio.Future)
            if not fut.done():
                fut.set_exception(errors.UpstreamConnectError(f"pool for {self.label} closed"))
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    # -- internals ---------------------------------------------------------------

    async def _wait(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> UpstreamConnection | None:
        fut: asyncio.Future[UpstreamConnection | None] = loop.create_future()
        self._core.enqueue(fut)
        handle = loop.call_at(deadline, self._wait_expired, fut)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Granted, but this task is being cancelled: give the grant back.
                self._return_grant(fut.result())
            else:
                self._core.remove_waiter(fut)
            raise
        finally:
            handle.cancel()

    def _wait_expired(self, fut: asyncio.Future[UpstreamConnection | None]) -> None:
        if not fut.done():
            self._core.remove_waiter(fut)
            fut.set_exception(
                errors.UpstreamConnectError(
                    f"no free connection to {self.label} within"
                    f" {self.settings.connect_timeout:g}s (max_connections)"
                )
            )

    def _dispatch(self, grants: list[Grant]) -> None:
        for waiter, granted in grants:
            fut: asyncio.Future[UpstreamConnection | None] = waiter  # type: ignore[assignment]
            if fut.done():
                # Cancelled before its task could dequeue it: pass it on.
                self._return_grant(granted)
            else:
                fut.set_result(granted)

    def _return_grant(self, granted: UpstreamConnection | None) -> None:
        if granted is None:
            self._dispatch(self._core.open_failed())
        else:
            self.release(granted, reusable=True)

    async def _open(self, loop: asyncio.AbstractEventLoop, deadline: float) -> UpstreamConnection:
        # The slot is reserved; every way out without a connection gives it back.
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self, loop),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.server_hostname,
                )
        except TimeoutError:
            self._dispatch(self._core.open_failed())
            raise errors.UpstreamConnectError(
                f"connect to {self.label} timed out after {self.settings.connect_timeout:g}s"
            ) from None
        except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS
            self._dispatch(self._core.open_failed())
            raise errors.UpstreamConnectError(
                f"connect to {self.label} failed: {exc or type(exc).__name__}"
            ) from None
        except BaseException:
            self._dispatch(self._core.open_failed())
            raise
        self.opened_total += 1
        return conn

    def lost_idle(self, conn: UpstreamConnection) -> None:
        """The peer closed a connection that is not lent out."""
        self._core.drop(conn)

    def _arm_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        when = self._core.next_expiry()
        if when is not None:
            self._sweep_due = when  # uvloop's TimerHandle has no when()
            self._sweep_handle = loop.call_at(when + _SWEEP_SLACK, self._sweep)

    def _sweep(self) -> None:
        # One timer per pool, only while idle connections exist, due when the
        # earliest of them expires: idle ones close on time with no traffic.
        self._sweep_handle = None
        loop = self._get_loop()
        now = loop.time()
        to_close = self._core.expire(now) + self._core.trim(now)
        if to_close:
            _close_all(to_close)
        self._arm_sweep(loop)


def _close_all(conns: list[UpstreamConnection]) -> None:
    for conn in conns:
        with contextlib.suppress(Exception):
            conn.close()

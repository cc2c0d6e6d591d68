"""The HTTP/2 pool's rules, over connection states and `now` (no sockets):
which connection a stream goes on, which ones expire, which are surplus.

The connections are real H2UpstreamConnections (h2pool is compiled and
takes nothing else), put in each state as a connection gets there: the
upstream's SETTINGS (its stream limit) fed to it as bytes, a GOAWAY-style
retire(), and the counters the pool itself keeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from pyproxyd._vendor.h2.settings import SettingCodes
from pyproxyd._vendor.hyperframe.frame import SettingsFrame
from pyproxyd.upstream.h2conn import H2UpstreamConnection
from pyproxyd.upstream.h2pool import H2Pool
from pyproxyd.upstream.pool import PoolSettings, TargetPool

SETTINGS = PoolSettings(
    max_connections=8,
    keepalive=2,
    keepalive_requests=100,
    keepalive_timeout=60.0,
    keepalive_time=3600.0,
    connect_timeout=2.0,
    read_timeout=5.0,
    protocol="h2c",
    max_streams=10,
)


@dataclass(eq=False)
class Conn:
    """A connection's state as the rules read it."""

    name: str
    active: int = 0
    capacity: int = 10
    requests: int = 0
    opened_at: float = 0.0
    idle_since: float = 0.0
    ping_sent_at: float = 0.0
    usable: bool = True


class Wire(asyncio.Transport):
    """The socket's side of a connection: what it writes is kept, nothing is read."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


NAMES: dict[int, str] = {}  # id(connection) -> its Conn's name


def connect(p: H2Pool, loop: asyncio.AbstractEventLoop, spec: Conn) -> H2UpstreamConnection:
    conn = H2UpstreamConnection(p, loop, False)
    conn.connection_made(Wire())
    # the upstream's SETTINGS, as they come off the wire
    limit = {SettingCodes.MAX_CONCURRENT_STREAMS: spec.capacity}
    conn.data_received(SettingsFrame(0, settings=limit).serialize())
    assert conn.ready.done() and conn.capacity == min(SETTINGS.max_streams, spec.capacity)
    if not spec.usable:
        conn.retire()
    conn.active, conn.requests = spec.active, spec.requests
    conn.opened_at, conn.idle_since, conn.ping_sent_at = (
        spec.opened_at, spec.idle_since, spec.ping_sent_at
    )  # fmt: skip
    NAMES[id(conn)] = spec.name
    return conn


@pytest.fixture
def pool(loop: asyncio.AbstractEventLoop) -> Iterator[Callable[..., H2Pool]]:
    def make(*specs: Conn) -> H2Pool:
        p = H2Pool(TargetPool("127.0.0.1", 1, SETTINGS), SETTINGS, ping_timeout=2.0)
        p.conns = [connect(p, loop, spec) for spec in specs]
        return p

    yield make
    NAMES.clear()


def name(conn: H2UpstreamConnection | None) -> str | None:
    return None if conn is None else NAMES[id(conn)]


@pytest.mark.parametrize(
    ("conns", "now", "chosen"),
    [
        ([], 10.0, None),
        # The busiest with room: the others go idle and age out.
        ([Conn("a", active=2), Conn("b", active=5), Conn("c")], 10.0, "b"),
        # A full one (ours or the upstream's limit) is passed over.
        ([Conn("a", active=10), Conn("b", active=1)], 10.0, "b"),
        ([Conn("a", active=3, capacity=3), Conn("b")], 10.0, "b"),
        ([Conn("a", active=10)], 10.0, None),
        # Among idle ones, the most recently used (nginx's LIFO).
        ([Conn("a", idle_since=5.0), Conn("b", idle_since=8.0)], 10.0, "b"),
        # Idle past keepalive_timeout, open past keepalive_time, out of requests,
        # retired by a GOAWAY: not used again.
        ([Conn("a", idle_since=0.0)], 61.0, None),
        ([Conn("a", active=1, idle_since=0.0)], 61.0, "a"),  # busy: not idle at all
        ([Conn("a", active=1, opened_at=0.0)], 3600.0, None),
        ([Conn("a", active=1, requests=99)], 10.0, None),  # 99 done + 1 under way = 100
        ([Conn("a", active=1, requests=98)], 10.0, "a"),
        ([Conn("a", usable=False), Conn("b", active=9)], 10.0, "b"),
    ],
)
def test_which_connection_a_new_stream_takes(
    pool: Callable[..., H2Pool], conns: list[Conn], now: float, chosen: str
) -> None:
    assert name(pool(*conns).pick(now)) == chosen


@pytest.mark.parametrize(
    ("conns", "now", "expired"),
    [
        ([Conn("a", idle_since=0.0), Conn("b", idle_since=30.0)], 61.0, ["a"]),
        ([Conn("a", active=1, idle_since=0.0)], 61.0, []),  # busy ones finish first
        ([Conn("a", usable=False)], 1.0, ["a"]),  # retired and idle: close it
        # A PING unanswered for ping_timeout closes even a busy connection.
        ([Conn("a", active=3, ping_sent_at=5.0)], 7.0, ["a"]),
        ([Conn("a", active=3, ping_sent_at=5.0)], 6.9, []),
    ],
)
def test_which_connections_expire(
    pool: Callable[..., H2Pool], conns: list[Conn], now: float, expired: list[str]
) -> None:
    assert [name(c) for c in pool(*conns).expired(now)] == expired


def test_idle_connections_over_keepalive_are_the_least_recently_used(
    pool: Callable[..., H2Pool],
) -> None:
    p = pool(
        Conn("a", idle_since=3.0),
        Conn("b", idle_since=1.0),
        Conn("c", active=1),
        Conn("d", idle_since=2.0),
    )
    assert [name(c) for c in p.surplus()] == ["b"]
    assert (p.busy, p.idle, p.streams) == (1, 3, 1)

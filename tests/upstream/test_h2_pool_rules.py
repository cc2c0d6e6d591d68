"""The HTTP/2 pool's rules, over connection states and `now` (no sockets):
which connection a stream goes on, which ones expire, which are surplus."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

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


def pool(*conns: Conn) -> H2Pool:
    p = H2Pool(TargetPool("127.0.0.1", 1, SETTINGS), SETTINGS, ping_timeout=2.0)
    p.conns = list(conns)  # type: ignore[arg-type]
    return p


def name(conn: Any) -> str | None:
    return None if conn is None else str(conn.name)


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
def test_which_connection_a_new_stream_takes(conns: list[Conn], now: float, chosen: str) -> None:
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
def test_which_connections_expire(conns: list[Conn], now: float, expired: list[str]) -> None:
    assert [c.name for c in pool(*conns).expired(now)] == expired  # type: ignore[attr-defined]


def test_idle_connections_over_keepalive_are_the_least_recently_used() -> None:
    p = pool(
        Conn("a", idle_since=3.0),
        Conn("b", idle_since=1.0),
        Conn("c", active=1),
        Conn("d", idle_since=2.0),
    )
    assert [c.name for c in p.surplus()] == ["b"]  # type: ignore[attr-defined]
    assert (p.busy, p.idle, p.streams) == (1, 3, 1)

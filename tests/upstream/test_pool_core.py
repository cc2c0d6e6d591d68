"""PoolCore state rules over injected timestamps: no sockets, no sleeping."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from pyproxyd.upstream.pool import TRIM_GRACE, PoolCore, PoolSettings

BASE = PoolSettings(
    max_connections=10,
    keepalive=4,
    keepalive_requests=100,
    keepalive_timeout=60.0,
    keepalive_time=3600.0,
    connect_timeout=1.0,
    read_timeout=1.0,
)


@dataclass(eq=False)
class FakeConn:
    name: str
    opened_at: float = 0.0
    requests: int = 0
    idle_since: float = 0.0
    closed: bool = False

    @property
    def is_closed(self) -> bool:
        return self.closed

    def __repr__(self) -> str:
        return self.name


def core(**changes: Any) -> PoolCore[FakeConn]:
    return PoolCore(replace(BASE, **changes))


def open_new(c: PoolCore[FakeConn], name: str, now: float) -> FakeConn:
    """Checkout that must decide to open; returns the 'opened' connection."""
    conn, to_close, may_open = c.checkout(now)
    assert (conn, to_close, may_open) == (None, [], True)
    return FakeConn(name, opened_at=now)


def serve(conn: FakeConn) -> FakeConn:
    conn.requests += 1
    return conn


def test_keepalive_cap_evicts_least_recently_used_after_the_grace() -> None:
    c = core(keepalive=2)
    a, b, d = (open_new(c, n, 0.0) for n in "abd")
    assert c.checkin(serve(a), 1.0, True) == ([], [])
    assert c.checkin(serve(b), 2.0, True) == ([], [])
    assert c.checkin(serve(d), 3.0, True) == ([], [])  # over the cap: kept for now
    assert c.trim_at == 3.0 + TRIM_GRACE
    assert c.next_expiry() == 3.0 + TRIM_GRACE
    assert c.trim(3.0 + TRIM_GRACE / 2) == []
    assert c.trim(3.0 + TRIM_GRACE) == [a]  # released first, so least recently used
    assert list(c.idle) == [b, d]
    assert c.trim_at is None
    assert c.busy == 0


def test_surplus_taken_again_within_the_grace_is_not_closed() -> None:
    c = core(keepalive=2)
    a, b, d = (open_new(c, n, 0.0) for n in "abd")
    for t, conn in ((1.0, a), (1.001, b), (1.002, d)):
        c.checkin(serve(conn), t, True)
    assert c.checkout(1.003) == (d, [], False)  # the next batch reuses it
    assert c.trim(1.002 + TRIM_GRACE) == []  # back at the cap: nothing to close
    assert list(c.idle) == [a, b]


def test_idle_reuse_is_most_recently_used_first() -> None:
    c = core()
    a, b = open_new(c, "a", 0.0), open_new(c, "b", 0.0)
    c.checkin(serve(a), 1.0, True)
    c.checkin(serve(b), 2.0, True)
    assert c.checkout(3.0) == (b, [], False)
    assert c.checkout(3.0) == (a, [], False)
    assert c.busy == 2


def test_keepalive_zero_closes_every_connection() -> None:
    c = core(keepalive=0)
    for t in (1.0, 2.0, 3.0):
        conn = open_new(c, f"c{t}", t)
        assert c.checkin(serve(conn), t, True) == ([conn], [])
        assert len(c.idle) == 0
    assert c.busy == 0


@pytest.mark.parametrize(
    ("served", "kept"),
    [(1, True), (2, True), (3, False), (4, False)],
)
def test_keepalive_requests_closes_after_n(served: int, kept: bool) -> None:
    c = core(keepalive_requests=3)
    conn = open_new(c, "a", 0.0)
    conn.requests = served
    to_close, _ = c.checkin(conn, 1.0, True)
    assert (to_close == []) is kept
    assert (list(c.idle) == [conn]) is kept


@pytest.mark.parametrize(
    ("released_at", "checked_out_at", "reused"),
    [
        (10.0, 10.0, True),
        (10.0, 14.999, True),
        (10.0, 15.0, False),  # idle exactly keepalive_timeout: expired
        (10.0, 30.0, False),
    ],
)
def test_keepalive_timeout_expiry_at_checkout(
    released_at: float, checked_out_at: float, reused: bool
) -> None:
    c = core(keepalive_timeout=5.0)
    conn = open_new(c, "a", 0.0)
    c.checkin(serve(conn), released_at, True)
    got, to_close, may_open = c.checkout(checked_out_at)
    if reused:
        assert (got, to_close, may_open) == (conn, [], False)
    else:
        assert (got, to_close, may_open) == (None, [conn], True)


def test_keepalive_timeout_expiry_by_sweep() -> None:
    c = core(keepalive_timeout=5.0)
    a, b = open_new(c, "a", 0.0), open_new(c, "b", 0.0)
    c.checkin(serve(a), 1.0, True)
    c.checkin(serve(b), 3.0, True)
    assert c.next_expiry() == 6.0
    assert c.expire(5.9) == []
    assert c.expire(6.0) == [a]
    assert c.next_expiry() == 8.0
    assert c.expire(8.0) == [b]
    assert c.next_expiry() is None
    assert len(c.idle) == 0


@pytest.mark.parametrize(
    ("released_at", "checked_out_at", "kept", "reused"),
    [
        (5.0, 9.0, True, True),
        (5.0, 10.0, True, False),  # open exactly keepalive_time when asked again
        (10.0, 10.0, False, False),  # too old already when released
    ],
)
def test_keepalive_time_is_a_max_age(
    released_at: float, checked_out_at: float, kept: bool, reused: bool
) -> None:
    c = core(keepalive_time=10.0)
    conn = open_new(c, "a", 0.0)
    to_close, _ = c.checkin(serve(conn), released_at, True)
    assert (to_close == []) is kept
    if kept:
        got, to_close, _ = c.checkout(checked_out_at)
        assert (got is conn) is reused
        assert (to_close == [conn]) is not reused


def test_max_age_counts_in_next_expiry() -> None:
    c = core(keepalive_timeout=60.0, keepalive_time=10.0)
    conn = open_new(c, "a", 0.0)
    c.checkin(serve(conn), 2.0, True)
    assert c.next_expiry() == 10.0
    assert c.expire(10.0) == [conn]


def test_max_connections_makes_acquirers_wait_and_hands_over_fifo() -> None:
    c = core(max_connections=2)
    a, b = open_new(c, "a", 0.0), open_new(c, "b", 0.0)
    assert c.checkout(1.0) == (None, [], False)  # every slot taken
    c.enqueue("w1")
    c.enqueue("w2")
    # A reusable release goes to the first waiter, not to the idle set.
    assert c.checkin(serve(a), 2.0, True) == ([], [("w1", a)])
    assert len(c.idle) == 0
    # A closed one frees its slot, which the next waiter may open in.
    assert c.checkin(serve(b), 3.0, False) == ([b], [("w2", None)])
    assert c.busy == 2
    assert list(c.waiters) == []


def test_new_acquirer_does_not_jump_the_queue() -> None:
    c = core(max_connections=1)
    open_new(c, "a", 0.0)
    c.enqueue("w1")
    assert c.checkout(1.0) == (None, [], False)


def test_failed_open_passes_its_slot_to_the_first_waiter() -> None:
    c = core(max_connections=1)
    open_new(c, "a", 0.0)  # the slot is reserved while connecting
    c.enqueue("w1")
    assert c.open_failed() == [("w1", None)]
    assert c.busy == 1
    assert c.open_failed() == []
    assert c.busy == 0


def test_removed_waiter_is_not_granted() -> None:
    c = core(max_connections=1)
    a = open_new(c, "a", 0.0)
    c.enqueue("w1")
    c.enqueue("w2")
    assert c.remove_waiter("w1") is True
    assert c.remove_waiter("w1") is False
    assert c.checkin(serve(a), 1.0, True) == ([], [("w2", a)])


def test_closed_idle_connections_are_skipped() -> None:
    c = core()
    a, b = open_new(c, "a", 0.0), open_new(c, "b", 0.0)
    c.checkin(serve(a), 1.0, True)
    c.checkin(serve(b), 2.0, True)
    b.closed = True  # the peer went away while it sat idle
    assert c.checkout(3.0) == (a, [b], False)


def test_closed_connection_is_not_kept_on_release() -> None:
    c = core()
    a = open_new(c, "a", 0.0)
    a.closed = True
    assert c.checkin(serve(a), 1.0, True) == ([a], [])
    assert len(c.idle) == 0


def test_drop_removes_an_idle_connection() -> None:
    c = core()
    a = open_new(c, "a", 0.0)
    c.checkin(serve(a), 1.0, True)
    assert c.drop(a) is True
    assert c.drop(a) is False
    assert len(c.idle) == 0


def test_fresh_checkout_skips_idle_and_evicts_lru_when_full() -> None:
    c = core(max_connections=2)
    a, b = open_new(c, "a", 0.0), open_new(c, "b", 0.0)
    c.checkin(serve(a), 1.0, True)
    # One slot busy, one idle: a fresh connection replaces the idle one.
    assert c.checkout(2.0, fresh=True) == (None, [a], True)
    assert c.busy == 2
    c.checkin(serve(b), 3.0, True)
    assert c.busy == 1
    # Slots free: a fresh connection leaves the idle one alone.
    c2 = core(max_connections=3)
    x = open_new(c2, "x", 0.0)
    c2.checkin(serve(x), 1.0, True)
    assert c2.checkout(2.0, fresh=True) == (None, [], True)
    assert list(c2.idle) == [x]


def test_close_returns_idle_and_waiters_then_closes_releases() -> None:
    c = core(max_connections=2)
    a, b = open_new(c, "a", 0.0), open_new(c, "b", 0.0)
    c.checkin(serve(a), 1.0, True)
    c2 = core(max_connections=1)
    open_new(c2, "z", 0.0)
    c2.enqueue("w1")
    assert c2.close() == ([], ["w1"])
    assert c.close() == ([a], [])
    # Busy ones close when released, and nothing new is handed out.
    assert c.checkin(serve(b), 2.0, True) == ([b], [])
    assert c.checkout(3.0) == (None, [], False)

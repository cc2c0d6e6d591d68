"""The circuit breaker as tables of timestamps: no sockets, no sleeping."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from pyproxyd.resilience.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    STATE_NAMES,
    Breaker,
    BreakerSettings,
    Ticket,
)

BASE = BreakerSettings(
    consecutive_failures=3,
    failure_ratio=0.5,
    min_requests=10,
    interval=10.0,
    timeout=5.0,
    max_requests=2,
    failure_statuses=frozenset({502, 503, 504}),
)


def breaker(**changes: Any) -> tuple[Breaker, list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    b = Breaker(
        replace(BASE, **changes),
        now=0.0,
        name="up",
        listener=lambda a, z: seen.append((STATE_NAMES[a], STATE_NAMES[z])),
    )
    return b, seen


def call(b: Breaker, now: float, ok: bool) -> bool:
    """One request that completes at once; False when the breaker refused it."""
    ticket = b.allow(now)
    if ticket is None:
        return False
    ticket.done(ok, now)
    return True


# Steps: (time, "ok" | "fail", expected state afterwards). A refused request is "x".
STEPS = {
    "three failures in a row trip it": (
        {},
        [(0.1, "fail", "closed"), (0.2, "fail", "closed"), (0.3, "fail", "open")],
    ),
    "a success breaks the run": (
        {},
        [
            (0.1, "fail", "closed"),
            (0.2, "fail", "closed"),
            (0.3, "ok", "closed"),
            (0.4, "fail", "closed"),
            (0.5, "fail", "closed"),
            (0.6, "fail", "open"),
        ],
    ),
    "ratio trips once min_requests outcomes were counted": (
        {"consecutive_failures": 100, "min_requests": 4, "failure_ratio": 0.5},
        [
            (0.1, "fail", "closed"),  # 1/1 but only one counted
            (0.2, "ok", "closed"),
            (0.3, "ok", "closed"),  # 1/3
            (0.4, "fail", "open"),  # 2/4 >= 0.5 with 4 counted
        ],
    ),
    "ratio below the threshold does not trip": (
        {"consecutive_failures": 100, "min_requests": 4, "failure_ratio": 0.5},
        [
            (0.1, "fail", "closed"),
            (0.2, "ok", "closed"),
            (0.3, "ok", "closed"),
            (0.4, "ok", "closed"),
            (0.5, "fail", "closed"),  # 2/5 < 0.5
            (0.6, "ok", "closed"),
        ],
    ),
    "ratio 1.0 needs every counted outcome to have failed": (
        {"consecutive_failures": 100, "min_requests": 1, "failure_ratio": 1.0},
        [(0.1, "ok", "closed"), (0.2, "fail", "closed"), (0.3, "ok", "closed")],
    ),
    "ratio 1.0 with min_requests = 1: a first failure trips": (
        {"consecutive_failures": 100, "min_requests": 1, "failure_ratio": 1.0},
        [(0.1, "fail", "open")],
    ),
    "the interval resets the counts": (
        {"interval": 10.0},
        [
            (1.0, "fail", "closed"),
            (2.0, "fail", "closed"),
            (10.0, "fail", "closed"),  # a new interval began at 10.0: this is its first
            (11.0, "fail", "closed"),
            (12.0, "fail", "open"),
        ],
    ),
    "interval 0 never resets": (
        {"interval": 0.0},
        [(1.0, "fail", "closed"), (500.0, "fail", "closed"), (9000.0, "fail", "open")],
    ),
    "open refuses until timeout, then half-open lets max_requests probes close it": (
        {},
        [
            (1.0, "fail", "closed"),
            (1.0, "fail", "closed"),
            (1.0, "fail", "open"),
            (3.0, "x", "open"),
            (5.99, "x", "open"),
            (6.0, "ok", "half-open"),  # timeout passed: first probe
            (6.1, "ok", "closed"),  # max_requests = 2 successes
            (6.2, "fail", "closed"),  # a fresh generation: one failure is not enough
        ],
    ),
    "a failed probe reopens it for a whole new timeout": (
        {},
        [
            (1.0, "fail", "closed"),
            (1.0, "fail", "closed"),
            (1.0, "fail", "open"),
            (6.0, "ok", "half-open"),
            (7.0, "fail", "open"),
            (11.9, "x", "open"),  # open since 7.0, for 5 s
            (12.0, "ok", "half-open"),
            (12.0, "ok", "closed"),
        ],
    ),
}


@pytest.mark.parametrize("name", list(STEPS))
def test_transitions(name: str) -> None:
    changes, steps = STEPS[name]
    b, _ = breaker(**changes)
    for i, (t, what, want) in enumerate(steps):
        allowed = call(b, t, what == "ok")
        assert allowed == (what != "x"), f"step {i} at t={t}: allowed={allowed}"
        assert STATE_NAMES[b.state] == want, f"step {i} at t={t}"


def trip(b: Breaker, now: float) -> None:
    for _ in range(b.settings.consecutive_failures):
        assert call(b, now, False)
    assert b.state == OPEN


def test_half_open_lets_exactly_max_requests_probes_in_flight() -> None:
    b, _ = breaker(max_requests=3)
    trip(b, 0.0)
    probes = [b.allow(5.0) for _ in range(3)]
    assert all(isinstance(p, Ticket) for p in probes)
    assert b.state == HALF_OPEN
    assert b.allow(5.0) is None  # the fourth waits for the outcomes
    assert b.retry_after(5.0) == 1
    for p in probes[:2]:
        assert p is not None
        p.done(True, 5.1)
    assert b.state == HALF_OPEN
    assert b.allow(5.1) is None
    assert probes[2] is not None
    probes[2].done(True, 5.2)
    assert b.state == CLOSED
    assert b.allow(5.2) is not None


def test_an_abandoned_probe_frees_its_slot() -> None:
    b, _ = breaker(max_requests=1)
    trip(b, 0.0)
    probe = b.allow(5.0)
    assert probe is not None and b.allow(5.0) is None
    probe.abandon()  # the client left before the head arrived
    assert b.state == HALF_OPEN
    again = b.allow(5.0)
    assert again is not None
    again.done(True, 5.0)
    assert b.state == CLOSED


def test_late_outcome_from_before_the_trip_is_ignored() -> None:
    b, _ = breaker()
    slow = b.allow(0.0)  # a slow request, still in flight
    trip(b, 1.0)
    assert slow is not None
    slow.done(True, 2.0)  # a success from the old generation must not count
    assert b.state == OPEN
    assert b.successes == 0


def test_late_success_does_not_close_a_half_open_breaker() -> None:
    b, _ = breaker(max_requests=1)
    slow = b.allow(0.0)
    trip(b, 0.5)
    assert b.current_state(5.5) == HALF_OPEN
    assert slow is not None
    slow.done(True, 5.6)  # from the Closed generation
    assert b.state == HALF_OPEN
    probe = b.allow(5.7)
    assert probe is not None  # the one probe slot is still free


def test_late_failure_does_not_reopen_a_closed_breaker() -> None:
    b, _ = breaker(max_requests=1)
    slow = [b.allow(0.0) for _ in range(5)]  # in flight while the breaker trips and recovers
    trip(b, 0.5)
    assert call(b, 5.5, True)  # the probe closes it
    assert b.state == CLOSED
    for t in slow:
        assert t is not None
        t.done(False, 6.0)  # five failures of an old generation
    assert b.state == CLOSED and b.failures == 0


def test_outcome_from_before_an_interval_roll_over_is_ignored() -> None:
    b, _ = breaker(interval=10.0)
    early = [b.allow(1.0) for _ in range(3)]
    for t in early:
        assert t is not None
        t.done(False, 10.5)  # they finish in the next interval: not counted there
    assert b.state == CLOSED and b.failures == 0
    assert call(b, 10.6, False) and b.consecutive_failures == 1


def test_done_counts_once() -> None:
    b, _ = breaker()
    t = b.allow(0.0)
    assert t is not None
    for _ in range(5):
        t.done(False, 0.0)
    assert b.failures == 1 and b.state == CLOSED


def test_answered_status_decides_the_outcome() -> None:
    b, _ = breaker(consecutive_failures=2)
    for status, failures in ((200, 0), (404, 0), (500, 0), (503, 1)):
        t = b.allow(0.0)
        assert t is not None
        t.answered(status, 0.0)
        assert b.consecutive_failures == failures
    t = b.allow(0.0)
    assert t is not None
    t.answered(502, 0.0)
    assert b.state == OPEN


def test_retry_after_counts_down_to_half_open_and_is_at_least_one() -> None:
    b, _ = breaker(timeout=5.0)
    trip(b, 10.0)
    assert [b.retry_after(t) for t in (10.0, 11.2, 14.0, 14.9)] == [5, 4, 1, 1]


def test_transitions_are_counted_and_reported() -> None:
    b, seen = breaker(max_requests=1)
    trip(b, 0.0)
    assert call(b, 5.0, False)  # half-open probe fails
    assert call(b, 10.0, True)  # half-open probe succeeds
    assert seen == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]
    assert b.transitions == {
        (CLOSED, OPEN): 1,
        (OPEN, HALF_OPEN): 2,
        (HALF_OPEN, OPEN): 1,
        (HALF_OPEN, CLOSED): 1,
    }


def test_refusals_are_counted() -> None:
    b, _ = breaker()
    trip(b, 0.0)
    for t in (1.0, 2.0, 3.0):
        assert b.allow(t) is None
    assert b.refused == 3


def test_zero_timeout_means_gobreakers_default() -> None:
    b, _ = breaker(timeout=0.0)
    trip(b, 0.0)
    assert b.allow(59.9) is None
    assert b.allow(60.0) is not None


def test_snapshot_for_the_admin_view() -> None:
    b, _ = breaker()
    trip(b, 0.0)
    view = b.snapshot(1.0)
    assert view["state"] == "open"
    assert view["retry_after"] == 4
    assert view["transitions"] == {"closed->open": 1}
    assert b.snapshot(5.0)["state"] == "half-open"

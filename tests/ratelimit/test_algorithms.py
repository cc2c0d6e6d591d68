"""Table tests of the pure cores: timestamps in, decisions out, no sleeping."""

from __future__ import annotations

from typing import Any

import pytest

from pyproxyd.ratelimit.algorithms import Decision, LeakyBucket, SlidingWindow, TokenBucket


def run(algo: Any, times: list[float]) -> list[Decision]:
    state: Any = None
    out = []
    for now in times:
        d, state = algo.decide(state, now)
        out.append(d)
    return out


def approx(d: Decision, allowed: bool, remaining: int, reset: float, retry: float, delay: float):
    assert (d.allowed, d.remaining) == (allowed, remaining), d
    assert d.reset == pytest.approx(reset, abs=1e-6), d
    assert d.retry_after == pytest.approx(retry, abs=1e-6), d
    assert d.delay == pytest.approx(delay, abs=1e-6), d


# (t, allowed, remaining, reset, retry_after)
TOKEN_BUCKET = [  # rate 10/s (T = 0.1), burst 3
    (0.00, True, 2, 0.1, 0.0),
    (0.00, True, 1, 0.2, 0.0),
    (0.00, True, 0, 0.3, 0.0),
    (0.00, False, 0, 0.3, 0.1),  # empty: one token back in 100 ms
    (0.05, False, 0, 0.25, 0.05),
    (0.10, True, 0, 0.3, 0.0),  # exactly one token refilled
    (0.10, False, 0, 0.3, 0.1),
    (1.00, True, 2, 0.1, 0.0),  # idle long enough: full again (capacity, not more)
]


def test_token_bucket_table() -> None:
    decisions = run(TokenBucket(10.0, 3), [row[0] for row in TOKEN_BUCKET])
    for d, (_, allowed, remaining, reset, retry) in zip(decisions, TOKEN_BUCKET, strict=True):
        approx(d, allowed, remaining, reset, retry, 0.0)


def test_token_bucket_sustained_rate_and_cap() -> None:
    tb = TokenBucket(2.0, 1)
    times = [i * 0.25 for i in range(16)]  # 4/s offered, 2/s allowed
    assert sum(d.allowed for d in run(tb, times)) == 8
    # A long pause never banks more than `burst` tokens.
    assert [d.allowed for d in run(tb, [0, 100, 100])] == [True, True, False]


def test_token_bucket_fractional_burst_and_headers() -> None:
    tb = TokenBucket(4.0, 1.5)  # a fractional capacity
    assert [d.allowed for d in run(tb, [0, 0, 0.125, 0.25])] == [True, False, True, False]
    assert TokenBucket(10.0, 50).quota == 50
    assert TokenBucket(10.0, 50).window == 5.0


# (t, allowed, remaining, reset, retry_after, delay)
LEAKY_DELAY = [  # rate 10/s, burst 2: one served + two queued
    (0.00, True, 2, 0.1, 0.0, 0.0),
    (0.00, True, 1, 0.2, 0.0, 0.1),
    (0.00, True, 0, 0.3, 0.0, 0.2),
    (0.00, False, 0, 0.3, 0.1, 0.0),  # queue full
    (0.15, True, 0, 0.25, 0.0, 0.15),  # one left: waits behind the two ahead
    (1.00, True, 2, 0.1, 0.0, 0.0),
]


def test_leaky_bucket_delay_table() -> None:
    decisions = run(LeakyBucket(10.0, 2, delay=True), [row[0] for row in LEAKY_DELAY])
    for d, (_, allowed, remaining, reset, retry, delay) in zip(decisions, LEAKY_DELAY, strict=True):
        approx(d, allowed, remaining, reset, retry, delay)


def test_leaky_bucket_reject_mode_never_delays() -> None:
    decisions = run(LeakyBucket(10.0, 2), [0, 0, 0, 0, 0.1])
    assert [d.allowed for d in decisions] == [True, True, True, False, True]
    assert all(d.delay == 0 for d in decisions)
    assert decisions[3].retry_after == pytest.approx(0.1)


def test_leaky_bucket_burst_zero_is_strict_rate() -> None:
    decisions = run(LeakyBucket(5.0, 0), [0, 0.1, 0.2, 0.4, 0.5])
    assert [d.allowed for d in decisions] == [True, False, True, True, False]


def test_bucket_refund_gives_the_slot_back() -> None:
    lb = LeakyBucket(10.0, 1, delay=True)
    _, s = lb.decide(None, 0)
    d2, s = lb.decide(s, 0)
    assert d2.delay == pytest.approx(0.1)
    d3, s = lb.decide(s, 0)
    assert not d3.allowed
    s = lb.refund(s, 0.05)  # the waiting client left
    d4, s = lb.decide(s, 0.05)
    assert d4.allowed and d4.delay == pytest.approx(0.05)
    assert TokenBucket(1.0, 1).refund(0.5, 0.0) is None  # back to empty: state dropped
    assert TokenBucket(1.0, 1).idle(None, 0) and not TokenBucket(1.0, 1).idle(5.0, 1.0)


# (t, allowed, remaining, reset/retry)
SLIDING = [  # 3 in any 10 s
    (0.0, True, 2, 10.0),
    (1.0, True, 1, 9.0),
    (2.0, True, 0, 8.0),
    (3.0, False, 0, 7.0),  # exactly past the limit
    (9.999, False, 0, 0.001),
    (10.0, True, 0, 1.0),  # the entry of t=0 left at t=10
    (10.5, False, 0, 0.5),
    (12.0, True, 1, 8.0),  # t=1 and t=2 gone; 10 and 12 remain
]


def test_sliding_window_table() -> None:
    decisions = run(SlidingWindow(3, 10.0), [row[0] for row in SLIDING])
    for d, (_, allowed, remaining, wait) in zip(decisions, SLIDING, strict=True):
        approx(d, allowed, remaining, wait, 0.0 if allowed else wait, 0.0)


def test_refunding_the_only_request_leaves_no_state() -> None:
    # At this clock reading (now + 60) - 60 is one bit above now: the refunded
    # key must still read as "nothing counted" and be dropped, not kept.
    now = 1988.0009999766369
    assert (now + 60.0) - 60.0 > now
    tb = TokenBucket(1 / 60, 2.0)
    _, state = tb.decide(None, now)
    assert tb.refund(state, now) is None


def test_sliding_window_refund_and_idle() -> None:
    sw = SlidingWindow(2, 1.0)
    d, log = sw.decide(None, 0.0)
    d, log = sw.decide(log, 0.5)
    log = sw.refund(log, 0.5, at=0.5)
    assert log == [0.0]
    d, log = sw.decide(log, 0.6)
    assert d.allowed and d.remaining == 0
    assert not sw.idle(log, 1.5) and sw.idle(log, 1.6)
    assert sw.refund(None, 0) == []

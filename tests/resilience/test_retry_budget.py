"""The retry budget over injected timestamps."""

from __future__ import annotations

import pytest

from pyproxyd.resilience.retry import RetryBudget


def spend(b: RetryBudget, now: float, tries: int) -> int:
    """Ask for `tries` retries at `now`; how many were granted."""
    return sum(b.retry(now) for _ in range(tries))


def test_floor_allows_a_few_retries_a_second_with_no_traffic() -> None:
    b = RetryBudget(ratio=0.2, min_per_second=3, window=10)
    assert spend(b, 0.0, 100) == 30  # 3/s over the 10 s window
    assert b.denied_total == 70


def test_ratio_caps_retries_at_a_share_of_requests() -> None:
    b = RetryBudget(ratio=0.2, min_per_second=3, window=10)
    for _ in range(1000):
        b.request(1.0)
    assert spend(b, 1.0, 1000) == 200  # 20% of 1000, above the floor of 30


@pytest.mark.parametrize(
    ("requests", "granted"),
    [(0, 30), (100, 30), (150, 30), (155, 31), (500, 100)],
)
def test_the_larger_of_floor_and_ratio(requests: int, granted: int) -> None:
    b = RetryBudget(ratio=0.2, min_per_second=3, window=10)
    for _ in range(requests):
        b.request(0.5)
    assert spend(b, 0.5, 1000) == granted


def test_retries_interleaved_with_requests() -> None:
    b = RetryBudget(ratio=0.5, min_per_second=0, window=10)
    granted = []
    for i in range(6):
        b.request(float(i) / 10)
        granted.append(b.retry(float(i) / 10))
    # after n requests, retries <= n / 2
    assert granted == [False, True, False, True, False, True]


def test_counts_leave_the_window_slot_by_slot() -> None:
    b = RetryBudget(ratio=0.2, min_per_second=0, window=10, slots=10)
    for _ in range(100):
        b.request(0.5)  # slot [0, 1)
    for _ in range(100):
        b.request(5.5)  # slot [5, 6)
    assert b.window_requests == 200
    assert spend(b, 5.5, 100) == 40
    assert b.retry(9.9) is False
    assert b.window_requests == 200
    # at 10.0 the slot of 0.5 leaves: 100 requests, 40 retries still in the window
    assert b.retry(10.0) is False
    assert b.window_requests == 100 and b.window_retries == 40
    # at 16.0 everything has left
    assert b.retry(16.0) is False  # the floor is 0 and no requests remain
    assert b.window_requests == 0 and b.window_retries == 0
    b.request(16.0)
    for _ in range(4):
        b.request(16.0)
    assert spend(b, 16.0, 5) == 1


def test_a_long_silence_clears_everything_at_once() -> None:
    b = RetryBudget(ratio=0.2, min_per_second=3, window=10)
    for _ in range(1000):
        b.request(0.0)
    assert spend(b, 0.0, 500) == 200
    assert spend(b, 1_000_000.0, 500) == 30  # only the floor: the old window is gone
    assert b.window_requests == 0


def test_the_clock_going_backwards_stays_in_the_current_slot() -> None:
    b = RetryBudget(ratio=0.2, min_per_second=0, window=10)
    for _ in range(10):
        b.request(5.0)
    b.request(4.0)
    assert b.window_requests == 11
    assert spend(b, 3.0, 5) == 2


def test_lifetime_totals_for_metrics() -> None:
    b = RetryBudget(ratio=0.2, min_per_second=1, window=10)
    for _ in range(20):
        b.request(0.0)
    spend(b, 0.0, 15)
    assert (b.requests_total, b.retries_total, b.denied_total) == (20, 10, 5)
    assert b.snapshot(0.0) == {
        "window_requests": 20,
        "window_retries": 10,
        "window_allowed": 10.0,
        "retries_total": 10,
        "denied_total": 5,
    }


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        RetryBudget(window=0)

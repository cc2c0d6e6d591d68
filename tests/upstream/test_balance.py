"""Balancers over fixed sequences."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pyproxyd.upstream.balance import LeastConn, SmoothRoundRobin, WeightedRandom


def picks(b: SmoothRoundRobin | LeastConn | WeightedRandom, n: int, skip: object = ()) -> str:
    return "".join("abcdefgh"[b.choose(skip)] for _ in range(n))  # type: ignore[index,arg-type]


@pytest.mark.parametrize(
    ("weights", "sequence"),
    [
        ([5, 1, 1], "aabacaa" * 2),  # nginx's documented example
        ([1, 1, 1], "abcabc"),
        ([2, 1], "abaaba"),
        ([3, 0, 1], "aaca" * 2),  # weight 0 is never picked
    ],
)
def test_smooth_round_robin_sequences(weights: list[int], sequence: str) -> None:
    assert picks(SmoothRoundRobin(weights), len(sequence)) == sequence


def test_smooth_round_robin_skips_tried_targets() -> None:
    b = SmoothRoundRobin([5, 1, 1])
    assert picks(b, 4, skip={0}) == "bcbc"
    assert b.choose({0, 1, 2}) is None


def test_smooth_round_robin_all_zero_weights_give_none() -> None:
    assert SmoothRoundRobin([0, 0]).choose() is None


def test_least_conn_picks_fewest_active_per_weight() -> None:
    active = [3, 1, 2]
    b = LeastConn([1, 1, 1], lambda i: active[i])
    assert b.choose() == 1
    active[1] = 5
    assert b.choose() == 2
    # Weight 4 with 6 active (1.5 each) beats weight 1 with 2 active.
    weighted = LeastConn([4, 1], lambda i: [6, 2][i])
    assert weighted.choose() == 0


def test_least_conn_breaks_ties_round_robin() -> None:
    b = LeastConn([1, 1, 1], lambda i: 0)
    assert picks(b, 6) == "abcabc"


def test_least_conn_skip_and_exhaustion() -> None:
    active = [0, 5, 5]
    b = LeastConn([1, 1, 1], lambda i: active[i])
    assert b.choose({0}) in (1, 2)
    assert picks(LeastConn([1, 1, 1], lambda i: 0), 4, skip={1}) == "acac"
    assert b.choose({0, 1, 2}) is None
    assert LeastConn([0, 1], lambda i: 0).choose({1}) is None


def test_weighted_random_is_reproducible_with_a_seeded_rng() -> None:
    first = picks(WeightedRandom([1, 2, 3], random.Random(7)), 30)
    again = picks(WeightedRandom([1, 2, 3], random.Random(7)), 30)
    assert first == again


def test_weighted_random_follows_weights() -> None:
    b = WeightedRandom([1, 3, 0], random.Random(1))
    counts = Counter(picks(b, 4000))
    assert counts["c"] == 0
    assert 0.7 < counts["b"] / 4000 < 0.8  # expected 0.75


def test_weighted_random_skip_and_exhaustion() -> None:
    b = WeightedRandom([1, 1, 1], random.Random(3))
    assert set(picks(b, 50, skip={0, 2})) == {"b"}
    assert b.choose({0, 1, 2}) is None
    assert WeightedRandom([0, 0]).choose() is None


def test_negative_weights_are_rejected() -> None:
    with pytest.raises(ValueError):
        SmoothRoundRobin([1, -1])

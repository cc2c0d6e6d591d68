"""Balancers over fixed sequences."""

from __future__ import annotations

import random
from collections import Counter
from itertools import pairwise

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


# -- 1,000 targets: the picks stay O(1) / O(log n) and keep their meaning

N = 1000
VARIED = [1 + i % 10 for i in range(N)]  # weights 1..10


def counts(
    b: SmoothRoundRobin | LeastConn | WeightedRandom, n: int, skip: object = ()
) -> Counter[int]:
    return Counter(b.choose(skip) for _ in range(n))  # type: ignore[arg-type]


def by_weight(c: Counter[int], weights: list[int]) -> dict[int, float]:
    """Share of picks per weight class, over the share its weight promises."""
    total = sum(c.values())
    got: Counter[int] = Counter()
    for i, k in c.items():
        got[weights[i]] += k
    promised: Counter[int] = Counter()
    for w in weights:
        if w:
            promised[w] += w
    return {w: got[w] / total / (promised[w] / sum(weights)) for w in promised}


def test_smooth_round_robin_1000_equal_is_a_rotation() -> None:
    b = SmoothRoundRobin([1] * N)
    assert [b.choose() for _ in range(2 * N)] == list(range(N)) * 2
    skip = set(range(0, N, 2))
    assert all(b.choose(skip) % 2 == 1 for _ in range(N))  # type: ignore[operator]
    assert b.choose(set(range(N))) is None
    assert b.choose(set(range(N)) - {777}) == 777


def test_smooth_round_robin_1000_varied_weights_one_period() -> None:
    b = SmoothRoundRobin(VARIED)
    period = sum(VARIED)
    picks = [b.choose() for _ in range(period)]
    assert Counter(picks) == {i: w for i, w in enumerate(VARIED)}  # exact, every period
    # smooth: a weight-10 target's picks are spread over the period, not bunched
    where = [k for k, i in enumerate(picks) if i == 9]
    assert max(b - a for a, b in pairwise(where)) < 2 * period / 10


def test_smooth_round_robin_1000_skip_and_zero_weight() -> None:
    weights = [0 if i % 100 == 0 else w for i, w in enumerate(VARIED)]
    b = SmoothRoundRobin(weights)
    skip = set(range(500))
    c = counts(b, 20_000, skip)
    assert min(c) >= 500 and all(weights[i] for i in c)  # not skipped, not weight 0
    shifted = Counter({i - 500: k for i, k in c.items()})
    assert all(0.95 < r < 1.05 for r in by_weight(shifted, weights[500:]).values())
    assert b.choose(set(range(N))) is None


def test_smooth_round_robin_long_period_runs_from_a_heap() -> None:
    weights = [5000 + i for i in range(N)]  # period ~5.5 M: no precomputed schedule
    b = SmoothRoundRobin(weights)
    assert not b.schedule and b.heap
    c = counts(b, 20_000)
    total = sum(weights)
    assert all(abs(c[i] - 20_000 * w / total) < 2 for i, w in enumerate(weights))
    assert all(b.choose({0, 1, 2}) not in (0, 1, 2) for _ in range(100))
    assert b.choose(set(range(N))) is None


def test_weighted_random_1000_follows_weights_and_skip() -> None:
    b = WeightedRandom(VARIED, random.Random(11))
    assert all(0.93 < r < 1.07 for r in by_weight(counts(b, 60_000), VARIED).values())
    skip = set(range(N)) - {5, 6}
    c = counts(b, 300, skip)
    assert set(c) == {5, 6} and 300 * 6 / 13 * 0.7 < c[5] < 300 * 6 / 13 * 1.3
    assert b.choose(set(range(N))) is None


def test_least_conn_1000_two_random_choices() -> None:
    active = [10 if i % 2 else 0 for i in range(N)]  # odd targets busy
    b = LeastConn([1] * N, active.__getitem__, random.Random(5))
    c = counts(b, 20_000)
    idle = sum(k for i, k in c.items() if i % 2 == 0) / 20_000
    assert 0.72 < idle < 0.78  # a busy one wins only if both draws are busy: 1/4
    skip = set(range(N)) - {3}
    assert b.choose(skip) == 3  # the draws miss; the scan finds the one left
    assert b.choose(set(range(N))) is None


def test_least_conn_1000_weighs_by_weight_when_idle() -> None:
    b = LeastConn(VARIED, lambda i: 0, random.Random(6))
    assert all(0.93 < r < 1.07 for r in by_weight(counts(b, 60_000), VARIED).values())

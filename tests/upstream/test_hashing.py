"""Consistent target hashing (rendezvous over a bucket table) for ip_hash and hash:<key>."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from multidict import CIMultiDict

from pyproxyd.snapshot import Target, Upstream
from pyproxyd.split import TARGET, stable_hash
from pyproxyd.upstream.balance import Rendezvous
from pyproxyd.upstream.pool import PoolSettings, TargetPool

N_KEYS = 100_000
KEYS = [stable_hash(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", TARGET) for i in range(N_KEYS)]
URLS = [f"http://10.0.0.{i}:80" for i in range(1, 9)]


def assign(
    r: Rendezvous, ids: list[str], skip: frozenset[int] = frozenset(), n: int = N_KEYS
) -> list[str]:
    out = []
    for k in KEYS[:n]:
        i = r.choose_key(k, skip)
        assert i is not None
        out.append(ids[i])
    return out


@pytest.mark.parametrize("n", [2, 4, 8])
def test_removing_one_of_n_targets_remaps_only_its_keys(n: int) -> None:
    ids = URLS[:n]
    before = assign(Rendezvous([1] * n, ids), ids)
    gone = ids[n // 2]
    rest = [u for u in ids if u != gone]
    after = assign(Rendezvous([1] * (n - 1), rest), rest)
    moved = [i for i in range(N_KEYS) if before[i] != after[i]]
    assert all(before[i] == gone for i in moved)  # only the removed target's keys move
    assert abs(len(moved) / N_KEYS - 1 / n) < 0.01  # and that is 1/N of them
    moved_to = Counter(after[i] for i in moved)  # spread over the others, not dumped on one
    assert all(abs(c / len(moved) - 1 / (n - 1)) < 0.03 for c in moved_to.values())


def test_adding_a_target_takes_only_its_share() -> None:
    before = assign(Rendezvous([1] * 4, URLS[:4]), URLS[:4], n=30_000)
    after = assign(Rendezvous([1] * 5, URLS[:5]), URLS[:5], n=30_000)
    moved = [i for i in range(30_000) if before[i] != after[i]]
    assert all(after[i] == URLS[4] for i in moved)
    assert abs(len(moved) / 30_000 - 1 / 5) < 0.015


def test_the_order_of_targets_does_not_matter() -> None:
    ids = URLS[:5]
    shuffled = ids[:]
    random.Random(3).shuffle(shuffled)
    a = assign(Rendezvous([1] * 5, ids), ids, n=10_000)
    assert a == assign(Rendezvous([1] * 5, shuffled), shuffled, n=10_000)


@pytest.mark.parametrize("weights", [[1, 1], [3, 1], [5, 3, 2], [1, 2, 3, 4], [10, 0, 10]])
def test_weights_are_honoured(weights: list[int]) -> None:
    ids = URLS[: len(weights)]
    counts = Counter(assign(Rendezvous(weights, ids), ids, n=40_000))
    total = sum(weights)
    for url, w in zip(ids, weights, strict=True):
        assert abs(counts.get(url, 0) / 40_000 - w / total) < 0.01, (weights, counts)


def test_skipped_target_hands_keys_to_their_next_best() -> None:
    """An ejected target's keys go elsewhere; everyone else's keys stay."""
    ids = URLS[:4]
    r = Rendezvous([1] * 4, ids)
    before = assign(r, ids, n=20_000)
    during = assign(r, ids, frozenset({1}), n=20_000)
    rest = [ids[0], ids[2], ids[3]]
    without = assign(Rendezvous([1] * 3, rest), rest, n=20_000)
    assert during == without  # skipping = removal, key by key
    assert all(b == d for b, d in zip(before, during, strict=True) if b != ids[1])
    assert r.choose_key(KEYS[0], {0, 1, 2, 3}) is None
    assert Rendezvous([0, 0], URLS[:2]).choose_key(KEYS[0]) is None


def test_same_key_same_target_and_keyless_falls_back_to_weighted_random() -> None:
    r = Rendezvous([1, 3], URLS[:2], rng=random.Random(5))
    assert len({r.choose_key(KEYS[7]) for _ in range(50)}) == 1
    seen = Counter(r.choose() for _ in range(4000))
    assert 900 < seen[0] < 1100
    assert r.choose({1}) == 0


def test_duplicate_urls_get_their_own_share() -> None:
    ids = [URLS[0], URLS[0]]
    r = Rendezvous([1, 1], ids)  # built once: a build fills the whole bucket table
    counts = Counter(r.choose_key(k) for k in KEYS[:20_000])
    assert abs(counts[0] / 20_000 - 0.5) < 0.02


BIG = [f"http://10.{i >> 8}.{i & 255}.1:8080" for i in range(1000)]


def test_one_of_1000_targets_leaving_remaps_only_its_keys() -> None:
    before = assign(Rendezvous([1] * 1000, BIG), BIG)
    gone = BIG[500]
    rest = BIG[:500] + BIG[501:]
    after = assign(Rendezvous([1] * 999, rest), rest)
    moved = [i for i in range(N_KEYS) if before[i] != after[i]]
    assert moved and all(before[i] == gone for i in moved)
    assert moved == [i for i in range(N_KEYS) if before[i] == gone]  # and all of its keys
    assert 0.0005 < len(moved) / N_KEYS < 0.002  # its share, 1/1,000 (65,537 buckets)
    # its ~65 buckets (~1.5 of these keys each) go each to its own next best: spread
    assert len({after[i] for i in moved}) > 30


def test_1000_targets_share_keys_by_weight_and_skip_is_removal() -> None:
    weights = [1 + 2 * (i % 2) for i in range(1000)]  # 1, 3, 1, 3, ...
    r = Rendezvous(weights, BIG)
    got = assign(r, BIG, n=40_000)
    heavy = sum(1 for u in got if int(u.split(".")[2]) % 2) / 40_000
    assert abs(heavy - 0.75) < 0.01
    assert all(c < 40_000 * 3 / 2000 * 2 for c in Counter(got).values())  # none hoards
    skip = frozenset({3, 10})
    rest = [u for i, u in enumerate(BIG) if i not in skip]
    without = Rendezvous([w for i, w in enumerate(weights) if i not in skip], rest)
    assert assign(r, BIG, skip, n=40_000) == assign(without, rest, n=40_000)


class Req:
    def __init__(self, headers: dict[str, str]):
        self.headers = CIMultiDict(headers)
        self.cookies: dict[str, str] = {}


def _upstream(spec: str) -> Upstream:
    from pyproxyd.keys import compile_key

    settings = PoolSettings(10, 1, 100, 60.0, 3600.0, 1.0, 1.0)
    targets = tuple(
        Target(u, u[7:], b"", 1, TargetPool(u[7:].split(":")[0], 80, settings)) for u in URLS[:3]
    )
    r = Rendezvous([1, 1, 1], [t.url for t in targets])
    return Upstream("up", targets, r, 1, 1.0, key=compile_key(spec), keyed=r)


def test_upstream_pick_with_a_client_key() -> None:
    up = _upstream("header:X-Client")
    key = up.target_key(Req({"X-Client": "c-1"}), None, "1.2.3.4")
    assert key == stable_hash("c-1", TARGET)
    first = up.pick(set(), 0.0, key)
    assert all(up.pick(set(), 0.0, key) == first for _ in range(20))
    skip = {first} if first is not None else set()
    second = up.pick(skip, 0.0, key)  # a retry goes to the key's next best target
    assert second is not None and second != first
    assert up.target_key(Req({}), None, "1.2.3.4") is None  # absent: weighted random
    assert up.pick(set(), 0.0, None) in (0, 1, 2)


def test_ip_hash_uses_the_client_address() -> None:
    up = _upstream("ip")
    assert up.target_key(Req({}), None, "10.0.0.7") == stable_hash("10.0.0.7", TARGET)


def test_the_table_and_direct_scoring_give_the_same_owner() -> None:
    # Few targets are scored per pick, many are looked up in a table built
    # once: both must name the very same owner for every key.
    import random as _random

    from pyproxyd.upstream.balance import Rendezvous

    rng = _random.Random(7)
    urls = [f"http://10.0.0.{i}:80" for i in range(40)]
    weights = [rng.randint(1, 5) for _ in urls]
    big = Rendezvous(weights, urls)
    assert big.table  # 40 targets: the table
    for _ in range(3000):
        key = rng.getrandbits(64)
        assert big.choose_key(key) == big._score(key % 65537, ())
    small = Rendezvous(weights[:8], urls[:8])
    assert not small.table
    whole = Rendezvous(weights[:8] + [0] * 32, urls)  # the same 8 live, 32 weightless
    for _ in range(3000):
        key = rng.getrandbits(64)
        assert small.choose_key(key) == whole.choose_key(key)

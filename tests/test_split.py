"""Splits: slot tables, monotonic ramp-up, sticky and random picks (pyproxyd/split.py)."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from itertools import pairwise

import pytest
from multidict import CIMultiDict

from pyproxyd.auth.identity import Consumer, Identity
from pyproxyd.split import SLOTS, Split, slot_bounds, slot_of, slot_table, stable_hash
from tests.reference import REFERENCE

KEYS = [f"client-{i}" for i in range(20_000)]


class Req:
    def __init__(
        self, headers: dict[str, str] | None = None, cookies: dict[str, str] | None = None
    ):
        self.headers = CIMultiDict(headers or {})
        self.cookies = cookies or {}


@pytest.mark.parametrize(
    ("weights", "bounds"),
    [
        ([1], (0,)),
        ([95, 5], (0, 9500)),
        ([90, 10], (0, 9000)),
        ([50, 50], (0, 5000)),
        ([19, 1], (0, 9500)),  # relative weights
        ([1, 1, 1], (0, 3333, 6667)),  # later sides fill from the top end
        ([80, 15, 5], (0, 8000, 9500)),
        ([100, 0], (0, 10_000)),  # weight 0: an empty range
        ([0, 100], (0, 0)),
        ([70, 0, 30], (0, 7000, 7000)),
    ],
)
def test_slot_bounds_table(weights: list[int], bounds: tuple[int, ...]) -> None:
    assert slot_bounds(weights) == bounds
    table = slot_table(weights)
    assert len(table) == SLOTS
    counts = Counter(table)
    ends = (*bounds[1:], SLOTS)
    for i, (lo, hi) in enumerate(zip(bounds, ends, strict=True)):
        assert counts.get(i, 0) == hi - lo
        assert all(table[s] == i for s in range(lo, hi))  # contiguous


@pytest.mark.parametrize("weights", [[], [0, 0], [1, -1]])
def test_bad_weights(weights: list[int]) -> None:
    with pytest.raises(ValueError):
        slot_bounds(weights)


def test_the_hash_is_stable_across_processes() -> None:
    # Python's hash() is salted per process; ours must not be.
    code = "from pyproxyd.split import slot_of, stable_hash; print(slot_of('x'), stable_hash('y'))"
    out = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    assert out[0].stdout == out[1].stdout == f"{slot_of('x')} {stable_hash('y')}\n"
    assert slot_of("10.0.0.1") == 6241  # pinned: a release must not reshuffle every client


def test_slots_are_uniform() -> None:
    counts = Counter(slot_of(k) * 10 // SLOTS for k in KEYS)  # ten deciles
    assert all(abs(c - len(KEYS) / 10) < len(KEYS) * 0.01 for c in counts.values())


@pytest.mark.parametrize(
    "steps",
    [
        [[95, 5], [90, 10], [75, 25], [50, 50], [0, 100]],
        [[19, 1], [9, 1], [3, 1], [1, 1]],  # the same ramp as relative weights
        [[90, 5, 5], [80, 10, 10], [50, 25, 25]],  # two canaries growing together
    ],
)
def test_ramp_up_is_monotonic_for_every_key(steps: list[list[int]]) -> None:
    """side(5%) = v2 implies side(10%) = v2, ... for every key: nobody moves back."""
    splits = [Split(list(range(len(w))), w) for w in steps]
    for key in KEYS:
        sides = [s.side_of(key) for s in splits]
        assert sides == sorted(sides), (key, sides)
    # and for every slot, not only the sampled keys
    tables = [slot_table(w) for w in steps]
    for slot in range(SLOTS):
        assert all(a[slot] <= b[slot] for a, b in pairwise(tables))


def test_ramp_up_moves_only_v1_clients_and_the_right_share() -> None:
    prev = Split(["v1", "v2"], [95, 5])
    for pct in (10, 25, 50):
        nxt = Split(["v1", "v2"], [100 - pct, pct])
        moved = [k for k in KEYS if prev.side_of(k) != nxt.side_of(k)]
        assert all(prev.side_of(k) == "v1" and nxt.side_of(k) == "v2" for k in moved)
        share = sum(nxt.side_of(k) == "v2" for k in KEYS) / len(KEYS)
        assert abs(share - pct / 100) < 0.015
        prev = nxt


def test_same_weights_same_assignment() -> None:
    """A reload that does not change the split changes no assignment."""
    a, b = Split(["v1", "v2", "v3"], [6, 3, 1]), Split(["v1", "v2", "v3"], [6, 3, 1])
    assert a.table == b.table
    assert all(a.side_of(k) == b.side_of(k) for k in KEYS[:2000])


def test_sticky_pick_by_key_and_first_present() -> None:
    split = Split(["v1", "v2"], [50, 50], key_specs=["header:X-User", "cookie:uid", "ip"])
    by_header = Req({"X-User": "alice"}, {"uid": "bob"})
    by_cookie = Req({}, {"uid": "bob"})
    for _ in range(20):
        assert split.pick(by_header, None, "1.2.3.4") == split.side_of("alice")
        assert split.pick(by_cookie, None, "1.2.3.4") == split.side_of("bob")
        assert split.pick(Req(), None, "1.2.3.4") == split.side_of("1.2.3.4")


def test_claim_and_consumer_keys() -> None:
    split = Split(["v1", "v2"], [50, 50], key_specs=["claim:sub", "consumer"])
    token = Identity(claims={"sub": "u-1"})
    consumer = Identity(consumer=Consumer("acme", "vip"))
    assert all(split.pick(Req(), token, "") == split.side_of("u-1") for _ in range(20))
    assert all(split.pick(Req(), consumer, "") == split.side_of("acme") for _ in range(20))


def test_absent_key_falls_back_to_random() -> None:
    split = Split(["v1", "v2"], [50, 50], key_specs=["header:X-User"], rng=random.Random(7))
    seen = Counter(split.pick(Req(), None, "1.2.3.4") for _ in range(2000))
    assert 900 < seen["v1"] < 1100
    words, slot, side = split.explain(Req(), None, "1.2.3.4")
    assert "absent" in words and "random" in words and slot is None and side is None
    words, slot, side = split.explain(Req({"X-User": "alice"}), None, "")
    assert slot == slot_of("alice") and side == split.side_of("alice")
    assert "header:X-User = 'alice'" in words


def test_random_split_honours_weights() -> None:
    split = Split(["v1", "v2", "v3"], [70, 20, 10], rng=random.Random(1))
    seen = Counter(split.choose() for _ in range(20_000))
    assert abs(seen["v2"] / 20_000 - 0.2) < 0.015
    assert abs(seen["v3"] / 20_000 - 0.1) < 0.01
    assert split.pick(Req({"X": "y"}), None, "1.1.1.1") in ("v1", "v2", "v3")  # no key: random
    assert split.shares() == [("v1", 70.0), ("v2", 20.0), ("v3", 10.0)]


def test_zero_weight_side_is_never_picked() -> None:
    split = Split(["v1", "v2"], [1, 0], key_specs=["ip"])
    assert {split.pick(Req(), None, f"10.0.0.{i}") for i in range(200)} == {"v1"}
    assert {split.choose() for _ in range(200)} == {"v1"}


def test_compiled_split_of_the_reference_config() -> None:
    from pyproxyd.compile import compile_snapshot, unsupported
    from pyproxyd.config_load import load

    loaded = load(REFERENCE)
    assert unsupported(loaded.config) == []  # hash_on and hashing balancers are enforced
    snap = compile_snapshot(loaded)
    route = next(r for r in snap.routes if r.id == "users")
    assert route.split is not None and route.split.key_specs == ("ip",)
    assert [u.name for u, _ in route.split.shares()] == ["user-v1", "user-v2"]
    for ip in ("10.0.0.1", "10.1.2.3"):
        assert route.pick_upstream(Req(), None, ip) is route.split.side_of(ip)
    again = compile_snapshot(load(REFERENCE), snap)  # a reload: same table
    route2 = next(r for r in again.routes if r.id == "users")
    assert route2.split is not None
    assert [u.name for u in route2.split.table] == [u.name for u in route.split.table]

"""Compiled by mypyc (pyproxyd/compiled.py).

Balancers: pick a target index by weight. Pure, no I/O, no clock.

Each has `choose(skip=()) -> int | None`; `skip` holds indexes already tried
for this request or ejected, and None means nothing is left. A weight of 0
never gets picked.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Sequence
from math import log

from ..split import TARGET, stable_hash

_NOTHING: tuple[int, ...] = ()


def _check(weights: Sequence[int]) -> list[int]:
    ws = [int(w) for w in weights]
    if any(w < 0 for w in ws):
        raise ValueError(f"weights must not be negative: {ws}")
    return ws


class SmoothRoundRobin:
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a.

    Every pick adds each candidate's weight to its `current`; the largest wins
    and pays back the sum. Heavy targets are spread out, not bunched.
    """

    __slots__ = ("current", "weights")

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = _check(weights)
        self.current = [0] * len(self.weights)

    def choose(self, skip: Container[int] = _NOTHING) -> int | None:
        weights = self.weights
        current = self.current
        best = -1
        total = 0
        for i, w in enumerate(weights):
            if w == 0 or i in skip:
                continue
            current[i] += w
            total += w
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= total
        return best


class LeastConn:
    """Fewest active requests per weight; ties go round-robin.

    `active(i)` is read at each pick (the pool's busy count), so the balancer
    holds no counts of its own that could drift.
    """

    __slots__ = ("active", "next", "weights")

    def __init__(self, weights: Sequence[int], active: Callable[[int], int]) -> None:
        self.weights = _check(weights)
        self.active = active
        self.next = 0  # where the tie-breaking scan starts

    def choose(self, skip: Container[int] = _NOTHING) -> int | None:
        weights = self.weights
        n = len(weights)
        best = -1
        best_active = 0
        best_weight = 1
        for k in range(n):
            i = (self.next + k) % n
            w = weights[i]
            if w == 0 or i in skip:
                continue
            a = self.active(i)
            # a/w < best_active/best_weight, without floats
            if best < 0 or a * best_weight < best_active * w:
                best, best_active, best_weight = i, a, w
        if best < 0:
            return None
        self.next = (best + 1) % n
        return best


class WeightedRandom:
    """Independent picks with probability weight / sum of candidate weights."""

    __slots__ = ("rng", "total", "weights")

    def __init__(self, weights: Sequence[int], rng: random.Random | None = None) -> None:
        self.weights = _check(weights)
        self.total = sum(self.weights)
        self.rng = rng if rng is not None else random.Random()

    def choose(self, skip: Container[int] = _NOTHING) -> int | None:
        weights = self.weights
        total = self.total
        if skip:
            total = sum(w for i, w in enumerate(weights) if i not in skip)
        if total <= 0:
            return None
        r = self.rng.randrange(total)
        for i, w in enumerate(weights):
            if w == 0 or (skip and i in skip):
                continue
            if r < w:
                return i
            r -= w
        return None  # unreachable: r < total


_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a 64-bit bijection with full avalanche."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class Rendezvous:
    """Weighted rendezvous (highest random weight) hashing, for ip_hash and hash:<key>.

    `choose_key(key, skip)` scores every candidate with -weight / ln(u), u a
    uniform draw in (0, 1) derived from (key, target id), and takes the best:
    a target gets a share of keys proportional to its weight, removing one
    target moves only the keys it had (each to its next best), and a skipped
    (tried or ejected) target hands its keys to their next best the same way.
    Target ids (their URLs) seed the draws, so the mapping is the same in
    every process and survives reloads and reordering. `key` is a 64-bit
    stable hash of the client key (`pyproxyd.split.stable_hash`).
    `choose(skip)` (no key: the key was absent) is a weighted random pick.
    """

    __slots__ = ("fallback", "seeds", "weights")

    def __init__(
        self, weights: Sequence[int], ids: Sequence[str], rng: random.Random | None = None
    ) -> None:
        self.weights = _check(weights)
        if len(ids) != len(self.weights):
            raise ValueError("one id per target is needed")
        seen: dict[str, int] = {}
        seeds = []
        for target_id in ids:  # a URL listed twice still gets its own draws
            n = seen[target_id] = seen.get(target_id, 0) + 1
            seeds.append(stable_hash(target_id if n == 1 else f"{target_id}#{n}", TARGET))
        self.seeds = tuple(seeds)
        self.fallback = WeightedRandom(self.weights, rng)

    def choose(self, skip: Container[int] = _NOTHING) -> int | None:
        return self.fallback.choose(skip)

    def choose_key(self, key: int, skip: Container[int] = _NOTHING) -> int | None:
        best = -1
        best_score = 0.0
        for i, (w, seed) in enumerate(zip(self.weights, self.seeds, strict=True)):
            if w == 0 or (skip and i in skip):
                continue
            u = ((_mix(key ^ seed) >> 11) + 0.5) * _2_53  # uniform in (0, 1)
            score = w / -log(u)
            if score > best_score:
                best, best_score = i, score
        return best if best >= 0 else None


_2_53 = 2.0**-53

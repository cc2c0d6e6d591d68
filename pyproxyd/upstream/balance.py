"""Compiled by mypyc (pyproxyd/compiled.py).

Balancers: pick a target index by weight. Pure, no I/O, no clock.

Each has `choose(skip=()) -> int | None`; `skip` holds indexes already tried
for this request or ejected, and None means nothing is left. A weight of 0
never gets picked.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_right
from collections.abc import Callable, Container, Sequence
from math import expm1, gcd, log, log1p
from typing import Protocol

from ..split import TARGET, stable_hash

_NOTHING: tuple[int, ...] = ()

# SmoothRoundRobin: nginx's exact schedule is worked out while targets x period
# stays under NGINX_WORK (cheap to build); a period up to SCHEDULE_MAX picks is
# kept as a list (8 bytes a pick), a longer one is run live from a heap.
NGINX_WORK = 1 << 15
SCHEDULE_MAX = 1 << 16
# How far a pick with a `skip` looks (schedule steps, random draws) before the
# O(n) scan over the rest decides.
WALK = 32
TRIES = 8
# LeastConn compares every candidate up to this many targets; beyond, two
# random choices (Envoy's least request).
EXACT = 16


def _check(weights: Sequence[int]) -> list[int]:
    ws = [int(w) for w in weights]
    if any(w < 0 for w in ws):
        raise ValueError(f"weights must not be negative: {ws}")
    return ws


class SmoothRoundRobin:
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a.

    Every pick adds each candidate's weight to its `current`; the largest wins
    and pays back the sum. Heavy targets are spread out, not bunched.

    That costs O(n) a pick, so the picks of one period (sum of the weights,
    divided by their gcd) are worked out once, here, and a pick reads the next
    one: O(1) for any n. The schedule is nginx's own sequence while
    n x period <= NGINX_WORK (equal weights: the targets in order, whatever
    n). Beyond that it is stride scheduling (Envoy's EDF weighted round
    robin): target i's j-th turn of a period falls at (j + 1/2) / w_i, ties
    in a fixed pseudo-random order. Just as smooth, not always nginx's exact order. A period longer
    than SCHEDULE_MAX keeps that stride order live in a heap instead: O(log n).

    With a non-empty `skip` (a retry, or a pick that found its target ejected)
    the schedule is walked on past skipped targets, at most WALK steps, then
    the targets are scanned from a rotating start: O(n) only when nearly all of
    them are skipped. None when every target is skipped or weighs 0.
    """

    __slots__ = ("heap", "pos", "scan", "schedule", "turns", "weights")

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = _check(weights)
        self.pos = 0
        self.scan = 0
        self.schedule: list[int] = []
        self.heap: list[tuple[float, int]] = []
        self.turns: list[int] = []
        live = [i for i, w in enumerate(self.weights) if w > 0]
        if not live:
            return
        g = 0
        for i in live:
            g = gcd(g, self.weights[i])
        reduced = [self.weights[i] // g for i in live]
        period = sum(reduced)
        if period == len(live):
            self.schedule = live
        elif period * len(live) <= NGINX_WORK:
            self.schedule = _nginx_schedule(live, reduced, period)
        elif period <= SCHEDULE_MAX:
            # Equal turn times: targets in a fixed pseudo-random order, not by
            # index, so that a run of skipped neighbours is not a run of the walk.
            turns = [
                ((2 * j + 1) / (2 * w), _mix(i), i) for i, w in zip(live, reduced, strict=True)
                for j in range(w)
            ]  # fmt: skip
            turns.sort()
            self.schedule = [i for _, _, i in turns]
        else:
            self.turns = [0] * len(self.weights)
            self.heap = [(0.5 / self.weights[i], i) for i in live]
            heapq.heapify(self.heap)

    def choose(self, skip: Container[int] = _NOTHING) -> int | None:
        schedule = self.schedule
        n = len(schedule)
        if n == 0:
            return self._live(skip) if self.heap else None
        p = self.pos
        if not skip:
            self.pos = p + 1 if p + 1 < n else 0
            return schedule[p]
        for _ in range(min(n, WALK)):
            i = schedule[p]
            p = p + 1 if p + 1 < n else 0
            if i not in skip:
                self.pos = p
                return i
        return self._scan(skip)

    def _live(self, skip: Container[int]) -> int | None:
        heap = self.heap
        held: list[tuple[float, int]] = []
        found = -1
        while heap and len(held) < WALK:
            entry = heapq.heappop(heap)
            if skip and entry[1] in skip:
                held.append(entry)
                continue
            found = i = entry[1]
            j = self.turns[i] = self.turns[i] + 1
            heapq.heappush(heap, ((2 * j + 1) / (2 * self.weights[i]), i))
            break
        for entry in held:
            heapq.heappush(heap, entry)
        return found if found >= 0 else self._scan(skip)

    def _scan(self, skip: Container[int]) -> int | None:
        return _scan(self, self.weights, skip)


def _nginx_schedule(live: list[int], weights: list[int], period: int) -> list[int]:
    """One period of nginx's picks (after it, every `current` is back to 0)."""
    current = [0] * len(live)
    out = []
    for _ in range(period):
        best = 0
        for k, w in enumerate(weights):
            current[k] += w
            if current[k] > current[best]:
                best = k
        current[best] -= period
        out.append(live[best])
    return out


class _Scanner(Protocol):
    scan: int


def _scan(owner: _Scanner, weights: list[int], skip: Container[int]) -> int | None:
    """The first target from a rotating start that weighs something and is not
    skipped: the O(n) last resort when sampling or walking found only skipped ones."""
    n = len(weights)
    start = owner.scan
    for k in range(n):
        i = start + k
        if i >= n:
            i -= n
        if weights[i] > 0 and i not in skip:
            owner.scan = i + 1 if i + 1 < n else 0
            return i
    return None


def _cumulative(weights: list[int]) -> list[int]:
    out = []
    total = 0
    for w in weights:
        total += w
        out.append(total)
    return out


class LeastConn:
    """Fewest active requests per weight.

    `active(i)` is read at each pick (the pool's busy count), so the balancer
    holds no counts of its own that could drift.

    Up to EXACT targets every candidate is compared (ties go round-robin).
    Beyond that, Envoy's least request: two targets drawn at random by weight
    (the "power of two choices"), the one with fewer active per weight wins,
    O(log n). Draws that land on skipped targets are drawn again, up to TRIES
    draws; when none was usable, the exact scan over the rest decides.
    """

    __slots__ = ("active", "cumulative", "next", "rng", "scan", "total", "weights")

    def __init__(
        self,
        weights: Sequence[int],
        active: Callable[[int], int],
        rng: random.Random | None = None,
    ) -> None:
        self.weights = _check(weights)
        self.active = active
        self.next = 0  # where the tie-breaking scan starts
        self.scan = 0
        self.cumulative = _cumulative(self.weights)
        self.total = self.cumulative[-1] if self.cumulative else 0
        self.rng = rng if rng is not None else random.Random()

    def choose(self, skip: Container[int] = _NOTHING) -> int | None:
        weights = self.weights
        if len(weights) <= EXACT or self.total <= 0:
            return self._exact(skip)
        cumulative = self.cumulative
        total = self.total
        rnd = self.rng.random
        best = -1
        best_active = 0
        best_weight = 1
        found = 0
        for _ in range(TRIES):
            i = bisect_right(cumulative, min(int(rnd() * total), total - 1))
            if skip and i in skip:
                continue
            w = weights[i]
            a = self.active(i)
            if best < 0 or a * best_weight < best_active * w:
                best, best_active, best_weight = i, a, w
            found += 1
            if found == 2:
                break
        return best if best >= 0 else self._exact(skip)

    def _exact(self, skip: Container[int]) -> int | None:
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
    """Independent picks with probability weight / sum of candidate weights.

    A pick bisects the cumulative weights: O(log n). With a `skip`, a draw
    that lands on a skipped target is drawn again (the rest keep their
    proportions), up to TRIES draws, then an O(n) pass over the rest decides.
    """

    __slots__ = ("cumulative", "rng", "total", "weights")

    def __init__(self, weights: Sequence[int], rng: random.Random | None = None) -> None:
        self.weights = _check(weights)
        self.cumulative = _cumulative(self.weights)
        self.total = self.cumulative[-1] if self.cumulative else 0
        self.rng = rng if rng is not None else random.Random()

    def choose(self, skip: Container[int] = _NOTHING) -> int | None:
        total = self.total
        if total <= 0:
            return None
        cumulative = self.cumulative
        rnd = self.rng.random
        if not skip:
            return bisect_right(cumulative, min(int(rnd() * total), total - 1))
        for _ in range(TRIES):
            i = bisect_right(cumulative, min(int(rnd() * total), total - 1))
            if i not in skip:
                return i
        weights = self.weights
        total = sum(w for i, w in enumerate(weights) if i not in skip)
        if total <= 0:
            return None
        r = int(rnd() * total)
        for i, w in enumerate(weights):
            if w == 0 or i in skip:
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
    """Consistent hashing for ip_hash and hash:<key>: weighted rendezvous
    (highest random weight) hashing over a table of M = 65,537 buckets.

    `choose_key(key, skip)` looks up the key's bucket (key mod M): O(1). The
    bucket's owner is the target that wins weighted rendezvous for it: each
    target i gives bucket b the score E_i(b) = -ln(1 - u_i(b)) / w_i, an
    exponential draw with rate w_i, and the lowest wins. So a target owns a
    share of buckets (and of keys) proportional to its weight; removing a
    target moves only the buckets it owned, each to its next best target; and
    a skipped (tried or ejected) target hands its keys on the same way: a
    bucket whose owner is in `skip` is scored again over the rest, O(n), as if
    the skipped targets had been removed. Target ids (their URLs) seed the
    draws, so the mapping is the same in every process and survives reloads
    and reordering. `key` is a 64-bit stable hash of the client key
    (`pyproxyd.split.stable_hash`). `choose(skip)` (no key: the key was
    absent) is a weighted random pick.

    Building the table without scoring every (bucket, target) pair, O(M n):
    u_i(b) = (pos_i(b) + phase_i) / M, with pos_i a permutation of the buckets
    (Maglev's: offset_i + j * step_i mod M, M prime), so target i reaches its
    buckets in the order of its scores. Every target walks its own order up to
    one common score horizon, where about one bucket is still unclaimed; a
    bucket reached by then is won by the lowest score seen (any other target's
    score there is past the horizon), the few left are scored in full. About
    M ln M steps in all, whatever n; the table holds M references (512 kB).
    Unlike Maglev's own turn-taking table, every bucket's owner is its
    rendezvous winner, so a removed target moves no one else's keys.
    """

    __slots__ = (
        "equal",
        "fallback",
        "inverses",
        "live",
        "offsets",
        "phases",
        "seeds",
        "table",
        "weights",
    )

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
        self.offsets = [_mix(seed ^ _SALT_OFFSET) % _M for seed in seeds]
        steps = [1 + _mix(seed ^ _SALT_STEP) % (_M - 1) for seed in seeds]
        self.inverses = [pow(step, _M - 2, _M) for step in steps]  # Fermat: M is prime
        self.phases = [((_mix(seed ^ _SALT_PHASE) >> 11) + 0.5) * _2_53 for seed in seeds]
        self.live = [i for i, w in enumerate(self.weights) if w > 0]
        # Equal weights: -ln(1 - u) / w orders the targets as u does; skip the log.
        self.equal = len({self.weights[i] for i in self.live}) <= 1
        # A few targets are scored per pick (cheaper than building the table on
        # every compile); the table gives the very same owner for each bucket.
        self.table: list[int] = self._build(steps) if len(self.live) > _DIRECT else []

    def choose(self, skip: Container[int] = _NOTHING) -> int | None:
        return self.fallback.choose(skip)

    def choose_key(self, key: int, skip: Container[int] = _NOTHING) -> int | None:
        table = self.table
        b = key % _M
        if not table:
            return self._score(b, skip)  # (None when no target has a weight)
        owner = table[b]
        if not skip or owner not in skip:
            return owner
        return self._score(b, skip)

    def _score(self, b: int, skip: Container[int]) -> int | None:
        """Bucket b's rendezvous winner among the targets not in `skip`: O(n)."""
        best = -1
        best_score = _INF
        weights = self.weights
        offsets = self.offsets
        inverses = self.inverses
        phases = self.phases
        equal = self.equal
        for i in self.live:
            if skip and i in skip:
                continue
            s = (b - offsets[i]) * inverses[i] % _M + phases[i]
            score = s if equal else -log1p(-s / _M) / weights[i]
            if score < best_score:
                best, best_score = i, score
        return best if best >= 0 else None

    def _build(self, steps: list[int]) -> list[int]:
        weights = self.weights
        live = self.live
        equal = self.equal
        table = [-1] * _M
        best = [_INF] * _M
        total = 0
        for i in live:
            total += weights[i]
        # Horizon: P(a bucket is still unclaimed) = exp(-total * horizon) = 1/M.
        horizon = log(_M) / total
        sure = horizon * (1 - 1e-9)  # below this a bucket's lowest score is final
        for i in live:
            w = weights[i]
            ph = self.phases[i]
            step = steps[i]
            b = self.offsets[i]
            # the j whose score -ln(1 - (j + ph) / M) / w is within the horizon
            last = min(int(-expm1(-w * horizon) * _M - ph), _M - 1)
            for j in range(last + 1):
                s = j + ph
                score = s if equal else -log1p(-s / _M) / w
                if score < best[b]:
                    best[b] = score
                    table[b] = i
                b += step
                if b >= _M:
                    b -= _M
        limit = sure
        if equal:  # scores are positions there: the horizon as one
            limit = -expm1(-weights[live[0]] * sure) * _M
        for b in range(_M):
            if best[b] > limit:
                owner = self._score(b, _NOTHING)
                assert owner is not None
                table[b] = owner
        return table


_DIRECT = 16  # up to this many targets, no table
_M = 65537  # buckets: a prime (a step is then a permutation), >> 1,000 targets
_INF = float("inf")
_SALT_OFFSET = 0x6F66667365742121
_SALT_STEP = 0x7374657073746570
_SALT_PHASE = 0x7068617365706861
_2_53 = 2.0**-53

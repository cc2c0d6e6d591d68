"""Compiled by mypyc (pyproxyd/compiled.py).

Per-key limiter state in this process, with bounded memory.

One `LocalStore` per policy: an LRU (`OrderedDict`, least recently used
first) from client key to the algorithm's state. Memory stays bounded two
ways, both O(1) per request:

- idle keys expire: every SWEEP_EVERY-th call looks at up to SWEEP_KEYS of
  the least recently used keys (two a call on average) and drops those whose
  state is back to "nothing counted" (an empty bucket, a window with no
  entry left), which is the same as having no state;
- a hard cap (`max_keys`): past it the least recently used key is evicted.
  An evicted client starts afresh, which errs on the side of letting a
  request through; it only happens under a scan of more distinct keys than
  the cap within one bucket period.

A key state is one float for the buckets and a list of floats for the
sliding window, so 1,000,000 distinct keys fit in a few hundred MiB at
most (scripts/bench/ratelimit_rss.py measures it).

`BucketPath` is the other store's request path: the shared zone's buckets
(pyproxyd/shm/limits.py), compiled here with the rest of the request path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, cast

from .algorithms import Algorithm, Decision, SlidingWindow, decide

DEFAULT_MAX_KEYS = 200_000
# Idle keys are looked for in batches: an iterator over the LRU end per call
# cost a fifth of a decision. (Final: compiled, constants, not globals looked
# up each call.)
SWEEP_EVERY: Final = 16
SWEEP_KEYS: Final = 32


class LocalStore:
    """Limiter state of one policy in this process."""

    __slots__ = ("_calls", "_states", "evicted", "max_keys")

    local = True

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._states: OrderedDict[str, Any] = OrderedDict()
        self.max_keys = max_keys
        self.evicted = 0
        self._calls = 0

    def __len__(self) -> int:
        return len(self._states)

    def __repr__(self) -> str:
        return f"<LocalStore [{len(self._states)} keys | {self.evicted} evicted]>"

    def take(self, key: str, algo: Algorithm, now: float) -> tuple[Decision, Any]:
        """Decide for one request under `key`; returns (decision, refund token)."""
        states = self._states
        decision, state = decide(algo, states.get(key), now)
        if state is None:
            states.pop(key, None)
        else:
            states[key] = state
            states.move_to_end(key)
        self._sweep(algo, now)
        return decision, now

    def give_back(self, key: str, algo: Algorithm, token: Any, now: float) -> None:
        """Undo an allowed `take` (token: what take returned)."""
        states = self._states
        state = states.get(key)
        if state is None:
            return
        if isinstance(algo, SlidingWindow):
            state = algo.refund(state, now, token)
        else:
            state = algo.refund(state, now)
        if state is None or not state:
            del states[key]
        else:
            states[key] = state

    def _sweep(self, algo: Algorithm, now: float) -> None:
        states = self._states
        self._calls += 1
        if self._calls % SWEEP_EVERY == 0:
            for _ in range(SWEEP_KEYS):
                if not states:
                    return
                oldest = next(iter(states))
                if not algo.idle(states[oldest], now):
                    break
                del states[oldest]
        while len(states) > self.max_keys:
            states.popitem(last=False)
            self.evicted += 1


Take = Callable[[str, Algorithm, float], tuple[Decision, Any]]


class BucketPath:
    """The request path of a shared store's buckets (pyproxyd/shm/limits.py),
    compiled here with the rest of the request path (the shm modules are not).

    For a key whose bucket sits where it sat last time: lock, one read, the
    decision, one write, unlock. The store hands in all it knows of the zone:
    `places` (key -> [fp, bucket, mutex, slot or -1]), the mapping, its slot
    calls (`read(mm, slot)` -> fp, touched, dirty, count, state; `write(mm,
    slot + write_at, touched, dirty, count, state)`; `free(slot)`), its lock
    calls, and `claim` for any other case, called under the lock (`miss` for
    a key not in `places`, without it).
    """

    __slots__ = (
        "claim", "free", "lock", "miss", "mm", "places", "read", "taken", "unlock", "write",
        "write_at",
    )  # fmt: skip

    def __init__(
        self,
        places: dict[str, list[Any]],
        mm: Any,
        slot: tuple[Callable[..., Any], Callable[..., Any], int, Callable[[int], None]],
        locks: tuple[Callable[[Any], int], Callable[[Any], None], Callable[[Any, int], None]],
        claim: Callable[[list[Any], Algorithm, float], tuple[Decision, Any]],
        miss: Take,
    ) -> None:
        self.places = places
        self.mm = mm
        self.read, self.write, self.write_at, self.free = slot
        self.lock, self.unlock, self.taken = locks
        self.claim = claim
        self.miss = miss

    def __call__(self, key: str, algo: Algorithm, now: float) -> tuple[Decision, Any]:
        return self.take(key, algo, now)

    def take(self, key: str, algo: Algorithm, now: float) -> tuple[Decision, Any]:
        where = self.places.get(key)
        if where is None:
            return self.miss(key, algo, now)
        mutex = where[2]
        slot: int = where[3]
        got = self.lock(mutex)
        if got:
            self.taken(mutex, got)
        try:
            if slot >= 0:
                mm = self.mm
                # Typed: unpacked by index, not through an iterator (compiled); the
                # fp stays an object, as the one it is compared with.
                row = cast(tuple[Any, float, int, int, float], self.read(mm, slot))
                count = row[3]
                if row[0] == where[0] and count and not row[2]:
                    touched = row[1]
                    if touched > now:
                        now = touched
                    decision, state = decide(algo, row[4], now)
                    if state is None:
                        self.free(slot)
                    else:  # dirty and count as they were
                        self.write(mm, slot + self.write_at, now, 0, count, state)
                    return decision, now
            return self.claim(where, algo, now)
        finally:
            self.unlock(mutex)

"""Compiled by mypyc (pyproxyd/compiled.py).

Per-key limiter state in this process, with bounded memory.

One `LocalStore` per policy: an LRU (`OrderedDict`, least recently used
first) from client key to the algorithm's state. Memory stays bounded two
ways, both O(1) per request:

- idle keys expire: every call looks at the two least recently used keys and
  drops those whose state is back to "nothing counted" (an empty bucket, a
  window with no entry left), which is the same as having no state;
- a hard cap (`max_keys`): past it the least recently used key is evicted.
  An evicted client starts afresh, which errs on the side of letting a
  request through; it only happens under a scan of more distinct keys than
  the cap within one bucket period.

A key state is one float for the buckets and a list of floats for the
sliding window, so 1,000,000 distinct keys fit in a few hundred MiB at
most (scripts/bench/ratelimit_rss.py measures it).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .algorithms import Algorithm, Decision, SlidingWindow

DEFAULT_MAX_KEYS = 200_000


class LocalStore:
    """Limiter state of one policy in this process."""

    __slots__ = ("_states", "evicted", "max_keys")

    local = True

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self._states: OrderedDict[str, Any] = OrderedDict()
        self.max_keys = max_keys
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._states)

    def __repr__(self) -> str:
        return f"<LocalStore [{len(self._states)} keys | {self.evicted} evicted]>"

    def take(self, key: str, algo: Algorithm, now: float) -> tuple[Decision, Any]:
        """Decide for one request under `key`; returns (decision, refund token)."""
        states = self._states
        decision, state = algo.decide(states.get(key), now)
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
        for _ in range(2):
            if not states:
                return
            oldest = next(iter(states))
            if not algo.idle(states[oldest], now):
                break
            del states[oldest]
        while len(states) > self.max_keys:
            states.popitem(last=False)
            self.evicted += 1

"""Compiled by mypyc (pyproxyd/compiled.py).

Weighted splits between upstreams: random per request, or sticky per client key.

Sticky assignment buckets a key into one of `SLOTS` (10,000) fixed slots by a
stable hash (BLAKE2b, the same in every process, worker and release; never
Python's salted `hash()`), and each side owns a contiguous range of slots,
precomputed at compile time into a slot -> side table.

The slot rule, which makes ramp-ups monotonic: the *first* side (in config
order) fills the slots from 0 upwards; every *later* side fills from the top
end, the last side owning the topmost slots, the one before it the slots just
below, and so on. With `tail(k)` = round(SLOTS * (w_k + ... + w_n) / total),
side k >= 1 owns [SLOTS - tail(k), SLOTS - tail(k+1)). A key's side is the
largest k whose lower bound is at or below its slot, so when no tail share
shrinks (raising the canary, the last side, from 5% to 10%, 25%, 50%), every
bound moves down or stays and no key moves to an earlier side: a client that
saw v2 at 5% still sees it at 10%. A reload that keeps the weights keeps the
table, so it changes no assignment.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from hashlib import blake2b
from typing import Generic, TypeVar

from .auth.identity import Identity
from .keys import KeyFn, KeyRequest, compile_key

SLOTS = 10_000
_SPLIT = b"pyproxyd-split"  # BLAKE2b personalisation: split slots and target hashing differ
TARGET = b"pyproxyd-target"

T = TypeVar("T")


def stable_hash(key: str, person: bytes = b"") -> int:
    """A 64-bit hash of `key`, equal in every process (BLAKE2b, 8-byte digest)."""
    data = key.encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8, person=person).digest(), "big")


def slot_of(key: str) -> int:
    """The key's slot in [0, SLOTS)."""
    return stable_hash(key, _SPLIT) % SLOTS


def slot_bounds(weights: Sequence[int]) -> tuple[int, ...]:
    """The first slot of each side: side i owns [bounds[i], bounds[i+1]) (the last up to SLOTS).

    Side 0 starts at 0; later sides are laid out from the top end (see the module
    docstring). A weight of 0 gives an empty range.
    """
    ws = [int(w) for w in weights]
    if not ws or any(w < 0 for w in ws) or sum(ws) <= 0:
        raise ValueError(f"split weights must be non-negative with a positive sum: {ws}")
    total = sum(ws)
    bounds = [0] * len(ws)
    tail = 0
    for i in range(len(ws) - 1, 0, -1):
        tail += ws[i]
        # round(SLOTS * tail / total), half up, in integers: monotonic in tail / total
        bounds[i] = SLOTS - (2 * SLOTS * tail + total) // (2 * total)
    return tuple(bounds)


def slot_table(weights: Sequence[int]) -> tuple[int, ...]:
    """slot -> side index, for every slot."""
    bounds = slot_bounds(weights)
    ends = (*bounds[1:], SLOTS)
    table: list[int] = []
    for i, (lo, hi) in enumerate(zip(bounds, ends, strict=True)):
        table.extend([i] * max(0, hi - lo))
    assert len(table) == SLOTS
    return tuple(table)


class Split(Generic[T]):
    """A route's weighted choice between sides (upstreams).

    `key` None: random per request. Otherwise the key's slot decides, and a
    request without the key falls back to random.
    """

    __slots__ = ("bounds", "key", "key_specs", "rng", "sides", "table", "weights")

    def __init__(
        self,
        sides: Sequence[T],
        weights: Sequence[int],
        key_specs: Sequence[str] = (),
        rng: random.Random | None = None,
    ) -> None:
        if len(sides) != len(weights):
            raise ValueError("a split needs one weight per side")
        self.sides = tuple(sides)
        self.weights = tuple(int(w) for w in weights)
        self.bounds = slot_bounds(self.weights)
        self.table: tuple[T, ...] = tuple(self.sides[i] for i in slot_table(self.weights))
        self.key_specs = tuple(key_specs)
        self.key: KeyFn | None = compile_key(self.key_specs) if self.key_specs else None
        self.rng = rng if rng is not None else random.Random()

    def choose(self) -> T:
        """A random side, by weight."""
        return self.table[int(self.rng.random() * SLOTS)]

    def side_of(self, key: str) -> T:
        """The side a key is pinned to."""
        return self.table[slot_of(key)]

    def pick(self, request: KeyRequest, identity: Identity | None, client_ip: str) -> T:
        """The request's side: by its key when the split is sticky and the key is present."""
        key = self.key
        if key is not None:
            value = key(request, identity, client_ip)
            if value is not None:
                return self.table[slot_of(value)]
        return self.table[int(self.rng.random() * SLOTS)]

    def shares(self) -> list[tuple[T, float]]:
        """(side, percent of slots), in config order."""
        ends = (*self.bounds[1:], SLOTS)
        return [
            (side, 100.0 * (hi - lo) / SLOTS)
            for side, lo, hi in zip(self.sides, self.bounds, ends, strict=True)
        ]

    def explain(
        self, request: KeyRequest, identity: Identity | None, client_ip: str
    ) -> tuple[str, int | None, T | None]:
        """How `pick` decides for this request: (words, slot or None, side or None)."""
        if not self.key_specs:
            return "random per request", None, None
        for spec in self.key_specs:
            value = compile_key(spec)(request, identity, client_ip)
            if value is not None:
                slot = slot_of(value)
                words = f"sticky: {spec} = {value!r} -> slot {slot} of {SLOTS}"
                return words, slot, self.table[slot]
        keys = ", ".join(self.key_specs)
        return f"sticky on {keys}, but the key is absent: random per request", None, None

"""Local rate limits one per instance: LocalStore's interface over the shared zone.

A policy's keys live in the zone under the policy's tag (its name and what
it counts, as the in-process carry-over keys it), so every worker, a worker
restarted after a crash, and the next config with the same policy find the
same buckets. Per decision: hash the key, lock its bucket, load the state,
run the pure algorithm (algorithms.py), store the state, unlock.

Time: each worker passes its own event loop's clock, the system-wide
CLOCK_MONOTONIC (uvloop's loop.time() reads it once per loop iteration, in
milliseconds). A worker whose loop read the clock a moment before another
decided could otherwise append an older timestamp after a newer one, so the
decision is made at max(now, the slot's last touch): time never runs
backwards for a key.

A sliding window keeps its log of timestamps in the log table of the
smallest class (zone.LOG_CAPS) that holds the policy's largest limit; the
log is exact (never more than `limit` entries).
"""

from __future__ import annotations

import struct
from typing import Any

from ..ratelimit.algorithms import Algorithm, Decision, SlidingWindow
from .zone import LIMITS, LOG_CAPS, MAX_LOG, PAYLOAD_AT, Table, Zone, key_hash, slot_struct

_ONE = struct.Struct("<d")
HASHED = 8192  # keys whose (fp, bucket) a store remembers: a hot key skips BLAKE2b
_ONE_SLOT = slot_struct("d")
_TOUCHED_AT = 8
_LOGS: dict[int, tuple[struct.Struct, struct.Struct]] = {}


def _log_struct(n: int) -> tuple[struct.Struct, struct.Struct]:
    """(n timestamps, a slot of them)."""
    fmts = _LOGS.get(n)
    if fmts is None:
        fmts = _LOGS[n] = (struct.Struct(f"<{n}d"), slot_struct(f"{n}d"))
    return fmts


def log_cap(limit: int) -> int:
    """The capacity of the smallest log class that holds `limit` timestamps."""
    for cap in LOG_CAPS:
        if limit <= cap:
            return cap
    raise ValueError(f"a shared sliding window holds at most {MAX_LOG} requests, not {limit}")


def log_table(zone: Zone, limit: int) -> Table:
    """The table whose slots hold `limit` timestamps."""
    return zone.tables[LIMITS + 2 + LOG_CAPS.index(log_cap(limit))]


class SharedStore:
    """Limiter state of one policy, one per instance (see LocalStore for the interface)."""

    __slots__ = ("_cap", "_hashed", "_table", "_tag", "_window", "_zone", "evicted")

    local = True  # decides synchronously, as LocalStore

    def __init__(self, zone: Zone, tag: str, log_limit: int | None = None) -> None:
        """`log_limit`: a sliding window's largest limit (any tier); None for the buckets."""
        self._zone = zone
        self._tag = tag.encode() + b"\0"
        self._window = log_limit is not None
        self._table = zone.tables[LIMITS] if log_limit is None else log_table(zone, log_limit)
        self._cap = self._table.payload // 8
        # key -> [fp, bucket offset, the slot it had last time (a hint; -1: none)]
        self._hashed: dict[str, list[int]] = {}
        self.evicted = 0  # by this process; the zone is full of hotter keys

    def __repr__(self) -> str:
        return f"<SharedStore {self._tag[:-1].decode()!r} {self._table!r}>"

    def _where(self, key: str) -> list[int]:
        """[fp, bucket offset, slot hint] of `key`."""
        where = self._hashed.get(key)
        if where is None:
            if len(self._hashed) >= HASHED:
                self._hashed.clear()  # cheaper than an LRU, and a miss costs one hash
            h = key_hash(self._tag + key.encode())
            where = self._hashed[key] = [h | 1, self._table.bucket(h), -1]
        return where

    def _load(self, off: int, count: int) -> Any:
        if not count:
            return None
        mm = self._zone.mm
        if self._window:
            return list(_log_struct(count)[0].unpack_from(mm, off + PAYLOAD_AT))
        return _ONE.unpack_from(mm, off + PAYLOAD_AT)[0]

    def _store(self, off: int, fp: int, state: Any, now: float) -> None:
        zone = self._zone
        if state is None or (self._window and not state):
            zone.free(off)
        elif self._window:
            if len(state) > self._cap:  # a limit above the class: never written past the slot
                del state[: len(state) - self._cap]
            zone.write(off, fp, now, _log_struct(len(state))[1], *state)
        else:
            zone.write(off, fp, now, _ONE_SLOT, state)

    def take(self, key: str, algo: Algorithm, now: float) -> tuple[Decision, Any]:
        """Decide for one request under `key`; returns (decision, refund token)."""
        zone = self._zone
        mm = zone.mm
        where = self._where(key)
        fp, base, hint = where
        zone.lock(base)
        try:
            if hint >= 0 and not self._window:
                # A bucket in the slot it had last time: one read, two aligned 8-byte
                # writes (each whole, and either order is a valid state).
                got, touched, dirty, count, tat = _ONE_SLOT.unpack_from(mm, hint)
                if got == fp and count and not dirty:
                    if touched > now:
                        now = touched
                    decision, state = algo.decide(tat, now)
                    if state is None:
                        zone.free(hint)
                    else:
                        _ONE.pack_into(mm, hint + _TOUCHED_AT, now)
                        _ONE.pack_into(mm, hint + PAYLOAD_AT, state)
                    return decision, now
            off, touched, count, evicted = self._table.claim(mm, base, fp, now)
            where[2] = off
            if touched > now:
                now = touched
            decision, state = algo.decide(self._load(off, count), now)
            self._store(off, fp, state, now)
        finally:
            zone.unlock(base)
        if evicted:
            self.evicted += 1
        return decision, now

    def give_back(self, key: str, algo: Algorithm, token: Any, now: float) -> None:
        """Undo an allowed `take` (token: what take returned)."""
        zone = self._zone
        table = self._table
        fp, base, _hint = self._where(key)
        zone.lock(base)
        try:
            off, touched, count = table.find(zone.mm, base, fp)
            if off < 0 or not count:
                return
            if touched > now:
                now = touched
            state = self._load(off, count)
            if isinstance(algo, SlidingWindow):
                state = algo.refund(state, now, token)
            else:
                state = algo.refund(state, now)
            self._store(off, fp, state, touched)
        finally:
            zone.unlock(base)

    def peek(self, key: str) -> Any:
        """The stored state of `key` (None when it has none), for tests and the operator."""
        zone = self._zone
        fp, base, _hint = self._where(key)
        zone.lock(base)
        try:
            off, _touched, count = self._table.find(zone.mm, base, fp)
            return None if off < 0 else self._load(off, count)
        finally:
            zone.unlock(base)

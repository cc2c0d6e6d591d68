"""Local rate limits one per instance: LocalStore's interface over the shared zone.

A policy's keys live in the zone under the policy's tag (its name and what
it counts, as the in-process carry-over keys it), so every worker, a worker
restarted after a crash, and the next config with the same policy find the
same buckets. Per decision: hash the key, lock its bucket, load the state,
run the pure algorithm (algorithms.py), store the state, unlock. A bucket's
key seen before skips the hash, and its request path is compiled
(ratelimit/local.py BucketPath: in the gateway an interpreted one cost about
0.5 us more a request); everything else is here.

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
from ..ratelimit.local import BucketPath, Take
from .zone import (
    LIMITS,
    LOG_CAPS,
    MAX_LOG,
    PAYLOAD_AT,
    Table,
    Zone,
    key_hash,
    lock_mutex,
    mutex_lock,
    mutex_unlock,
    native,
    slot_struct,
    taken,
)

_ONE = native("d")
HASHED = 8192  # keys whose (fp, bucket, mutex) a store remembers: a hot key skips BLAKE2b
_ONE_SLOT = slot_struct("d")
# A bucket's slot after its fp: touched, dirty, count, state. One pack rewrites
# it; dirty and count get the values they had, and each field is one whole
# store (zone.native), so a writer killed midway leaves a valid slot.
_AFTER_FP = native("dIId")
_AFTER_FP_AT = 8
_LOGS: dict[int, tuple[struct.Struct, struct.Struct]] = {}


def _log_struct(n: int) -> tuple[struct.Struct, struct.Struct]:
    """(n timestamps, a slot of them)."""
    fmts = _LOGS.get(n)
    if fmts is None:
        fmts = _LOGS[n] = (native(f"{n}d"), slot_struct(f"{n}d"))
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

    __slots__ = (
        "_cap", "_hashed", "_mm", "_table", "_tag", "_window", "_zone", "evicted", "path", "take",
    )  # fmt: skip

    local = True  # decides synchronously, as LocalStore

    def __init__(self, zone: Zone, tag: str, log_limit: int | None = None) -> None:
        """`log_limit`: a sliding window's largest limit (any tier); None for the buckets."""
        self._zone = zone
        self._mm = zone.mm
        self._tag = tag.encode() + b"\0"
        self._window = log_limit is not None
        self._table = zone.tables[LIMITS] if log_limit is None else log_table(zone, log_limit)
        self._cap = self._table.payload // 8
        # key -> [fp, bucket offset, its mutex (Zone.mutex), the slot the key had
        # last time (a bucket's, as a hint to check under the lock; -1: none)]
        self._hashed: dict[str, list[Any]] = {}
        self.evicted = 0  # by this process; the zone is full of hotter keys
        # take(key, algo, now) -> (decision, refund token): for the buckets, the
        # compiled request path (ratelimit/local.py), which calls back _claim
        # under the lock and _take for a key it has no place for.
        # `path`: the same BucketPath, for a compiled caller to call natively.
        self.take: Take = self._take
        self.path: BucketPath | None = None
        if not self._window:
            slot = (_ONE_SLOT.unpack_from, _AFTER_FP.pack_into, _AFTER_FP_AT, zone.free)
            locks = (mutex_lock, mutex_unlock, taken)
            path = BucketPath(self._hashed, self._mm, slot, locks, self._claim, self._take)
            self.take = self.path = path

    def __repr__(self) -> str:
        return f"<SharedStore {self._tag[:-1].decode()!r} {self._table!r}>"

    def _where(self, key: str) -> list[Any]:
        """[fp, bucket offset, mutex, slot hint] of `key`."""
        where = self._hashed.get(key)
        if where is None:
            if len(self._hashed) >= HASHED:
                self._hashed.clear()  # cheaper than an LRU, and a miss costs one hash
            h = key_hash(self._tag + key.encode())
            base = self._table.bucket(h)
            where = self._hashed[key] = [h | 1, base, self._zone.mutex(base), -1]
        return where

    def _load(self, off: int, count: int) -> Any:
        if not count:
            return None
        mm = self._mm
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

    def _take(self, key: str, algo: Algorithm, now: float) -> tuple[Decision, Any]:
        """take() in Python: a sliding window's, and a bucket's for a key new to this store."""
        where = self._where(key)
        mutex = where[2]
        got = mutex_lock(mutex)
        if got:
            taken(mutex, got)
        try:
            return self._claim(where, algo, now)
        finally:
            mutex_unlock(mutex)

    def _claim(self, where: list[Any], algo: Algorithm, now: float) -> tuple[Decision, Any]:
        """take() for a key not in its remembered slot (under its bucket's lock)."""
        fp, base = where[0], where[1]
        off, touched, count, evicted = self._table.claim(self._mm, base, fp, now)
        if not self._window:
            where[3] = off
        if evicted:
            self.evicted += 1
        if touched > now:
            now = touched
        decision, state = algo.decide(self._load(off, count), now)
        self._store(off, fp, state, now)
        return decision, now

    def give_back(self, key: str, algo: Algorithm, token: Any, now: float) -> None:
        """Undo an allowed `take` (token: what take returned)."""
        fp, base, mutex, _hint = self._where(key)
        lock_mutex(mutex)
        try:
            off, touched, count = self._table.find(self._mm, base, fp)
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
            mutex_unlock(mutex)

    def peek(self, key: str) -> Any:
        """The stored state of `key` (None when it has none), for tests and the operator."""
        fp, base, mutex, _hint = self._where(key)
        lock_mutex(mutex)
        try:
            off, _touched, count = self._table.find(self._mm, base, fp)
            return None if off < 0 else self._load(off, count)
        finally:
            mutex_unlock(mutex)

"""Circuit breakers and passive ejection one per instance: records in the zone.

A `Record` is one named slot of the zone's resilience table (a table of its
own, so no flood of client keys can evict an open circuit) holding a fixed
tuple of fields. The breaker and the target health stay pure state machines
(resilience/breaker.py, upstream/health.py): around each step they acquire
the record (lock, load), run, and release it (store, unlock).

A record is named by what the in-process carry-over keys the object by (the
upstream and its settings), so every worker, a restarted worker and the next
config with the same settings share one; another name starts afresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..resilience.breaker import Breaker
from ..upstream.health import TargetHealth
from .zone import (
    PAYLOAD_AT,
    RESILIENCE,
    Zone,
    key_hash,
    lock_mutex,
    mutex_unlock,
    native,
    slot_struct,
)

BREAKER = "qd6i"  # generation, expiry, state, five counts
PASSIVE = "qqd"  # fails, ejected, ejected_until


class Record:
    __slots__ = ("_base", "_fmt", "_fp", "_mutex", "_off", "_slot", "_table", "_zone", "tag")

    def __init__(self, zone: Zone, tag: str, fields: str) -> None:
        table = zone.tables[RESILIENCE]
        fmt = native(fields)
        assert fmt.size <= table.payload
        h = key_hash(tag.encode())
        self.tag = tag
        self._zone = zone
        self._table = table
        self._fmt = fmt
        self._slot = slot_struct(fields)
        self._fp = h | 1
        self._base = table.bucket(h)
        self._mutex = zone.mutex(self._base)
        self._off = -1

    def __repr__(self) -> str:
        return f"<Record {self.tag}>"

    def acquire(self) -> Any:
        zone = self._zone
        lock_mutex(self._mutex)
        try:
            off, _touched, count, _evicted = self._table.claim(zone.mm, self._base, self._fp, 0.0)
        except BaseException:
            mutex_unlock(self._mutex)
            raise
        self._off = off
        return self._fmt.unpack_from(zone.mm, off + PAYLOAD_AT) if count else None

    def release(self, fields: Any) -> None:
        zone = self._zone
        try:
            zone.write(self._off, self._fp, time.monotonic(), self._slot, *fields)
        finally:
            mutex_unlock(self._mutex)

    def read(self) -> Any:
        zone = self._zone
        lock_mutex(self._mutex)
        try:
            off, _touched, count = self._table.find(zone.mm, self._base, self._fp)
            if off < 0 or not count:
                return None
            return self._fmt.unpack_from(zone.mm, off + PAYLOAD_AT)
        finally:
            mutex_unlock(self._mutex)


def share_breaker(zone: Zone, make: Callable[[], Breaker]) -> Breaker:
    """A new breaker whose state is the instance's (named by its upstream and settings)."""
    breaker = make()
    s = breaker.settings
    tag = (
        f"breaker\0{breaker.name}\0{s.consecutive_failures}\0{s.failure_ratio!r}\0"
        f"{s.min_requests}\0{s.interval!r}\0{s.timeout!r}\0{s.max_requests}\0"
        f"{sorted(s.failure_statuses)}"
    )
    breaker.record = Record(zone, tag, BREAKER)
    return breaker


def share_health(zone: Zone, make: Callable[[], TargetHealth], url: str) -> TargetHealth:
    """A new target health whose passive state is the instance's."""
    health = make()
    s = health.settings
    tag = f"passive\0{health.upstream}\0{url}\0{s.max_fails}\0{s.eject_for!r}"
    health.record = Record(zone, tag, PASSIVE)
    return health

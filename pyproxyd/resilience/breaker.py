"""Compiled by mypyc (pyproxyd/compiled.py).

A circuit breaker per upstream: gobreaker's state machine, time as an argument.

    Closed --(consecutive_failures in a row, or failure_ratio once
              min_requests outcomes were counted)--> Open
    Open --(timeout passed)--> Half-Open
    Half-Open --(max_requests probes all succeed)--> Closed
    Half-Open --(any probe fails)--> Open

Two steps, as in gobreaker: `allow(now)` hands out a `Ticket` (or None: refuse
at once), and `ticket.done(ok, now)` reports the outcome. Every state change,
and every `interval` roll-over in Closed, starts a new generation; an outcome
from an older generation is ignored, so a slow request that began before the
breaker opened cannot close it again.

Only the outermost caller reads the clock. Nothing here awaits or does I/O;
state changes are reported to an optional listener (the compile step wires a
logger in). Counters stay on the object for metrics.

With workers, a breaker is one per instance: its `record` (pyproxyd/shm)
keeps the state, generation, counts and expiry in shared memory. Each step
then runs under the record's lock between a load and a store, so a circuit
one worker opens is open in every worker at their next request. The lifetime
totals (`refused`, `transitions`) stay each process's: a transition happens
in exactly one worker, so the workers' sums are the instance's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

CLOSED, HALF_OPEN, OPEN = 0, 1, 2  # the values of pyproxyd_circuit_state
STATE_NAMES = ("closed", "half-open", "open")
DEFAULT_TIMEOUT = 60.0  # gobreaker's: a zero timeout means this

Listener = Callable[[int, int], None]  # (from state, to state)
# generation, expiry, state, requests, successes, failures, consecutive s., consecutive f.
Fields = tuple[int, float, int, int, int, int, int, int]


class Record(Protocol):
    """Where a shared breaker's fields live (pyproxyd/shm/resilience.py)."""

    def acquire(self) -> Fields | None:
        """Lock, and the stored fields (None: nothing stored yet, ours go first)."""

    def release(self, fields: Fields) -> None:
        """Store the fields and unlock."""


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    consecutive_failures: int = 5
    failure_ratio: float = 0.5
    min_requests: int = 20
    interval: float = 10.0  # Closed: counts reset every interval; 0 = never
    timeout: float = 60.0  # Open: how long before Half-Open
    max_requests: int = 3  # Half-Open: probes let through
    failure_statuses: frozenset[int] = frozenset({502, 503, 504})


class Ticket:
    """Permission for one request; report its outcome exactly once."""

    __slots__ = ("breaker", "generation")

    def __init__(self, breaker: Breaker, generation: int) -> None:
        self.breaker: Breaker | None = breaker
        self.generation = generation

    def done(self, ok: bool, now: float) -> None:
        """The outcome: True for a success, False for a failure."""
        breaker = self.breaker
        if breaker is not None:
            self.breaker = None
            breaker._outcome(self.generation, ok, now)

    def answered(self, status: int, now: float) -> None:
        """The outcome from a response head: a failure when `status` is a failure status."""
        breaker = self.breaker
        if breaker is not None:
            self.breaker = None
            breaker._outcome(self.generation, status not in breaker.failure_statuses, now)

    def abandon(self) -> None:
        """No outcome (the client left, or its own body failed): free the slot."""
        breaker = self.breaker
        if breaker is not None:
            self.breaker = None
            breaker._abandon(self.generation)


class Breaker:
    __slots__ = (
        "_consecutive_failures",
        "_failure_ratio",
        "_interval",
        "_max_requests",
        "_min_requests",
        "_timeout",
        "consecutive_failures",
        "consecutive_successes",
        "expiry",
        "failure_statuses",
        "failures",
        "generation",
        "listener",
        "name",
        "record",
        "refused",
        "requests",
        "settings",
        "state",
        "successes",
        "transitions",
    )

    def __init__(
        self,
        settings: BreakerSettings,
        now: float = 0.0,
        *,
        name: str = "",
        listener: Listener | None = None,
    ) -> None:
        # Normalised once here, never on the hot path.
        self.settings = settings
        self.name = name
        self.listener = listener
        self._consecutive_failures = max(1, settings.consecutive_failures)
        self._failure_ratio = settings.failure_ratio
        self._min_requests = max(1, settings.min_requests)
        self._interval = max(0.0, settings.interval)
        self._timeout = settings.timeout if settings.timeout > 0 else DEFAULT_TIMEOUT
        self._max_requests = max(1, settings.max_requests)
        self.failure_statuses = frozenset(settings.failure_statuses)
        self.state = CLOSED
        self.generation = 0
        self.expiry = 0.0  # Closed: next roll-over (0 = never); Open: when Half-Open starts
        # Counts of the current generation.
        self.requests = 0  # tickets handed out
        self.successes = 0
        self.failures = 0
        self.consecutive_successes = 0
        self.consecutive_failures = 0
        # For the operator and for metrics: lifetime totals.
        self.refused = 0
        self.transitions: dict[tuple[int, int], int] = {}
        self.record: Record | None = None
        self._new_generation(now)

    def __repr__(self) -> str:
        return (
            f"<Breaker {self.name} {STATE_NAMES[self.state]} gen={self.generation} "
            f"requests={self.requests} failures={self.failures}"
            f" consecutive_failures={self.consecutive_failures}>"
        )

    # -- the two steps ---------------------------------------------------------

    def allow(self, now: float) -> Ticket | None:
        """A ticket for one request, or None: refuse it without touching the upstream."""
        record = self.record
        if record is None:
            return self._allow(now)
        self._load(record.acquire())
        try:
            return self._allow(now)
        finally:
            record.release(self._fields())

    def _allow(self, now: float) -> Ticket | None:
        state = self.state
        if state != CLOSED or (self.expiry and now >= self.expiry):
            state = self._current_state(now)  # under the record's lock already
            if state == OPEN or (state == HALF_OPEN and self.requests >= self._max_requests):
                self.refused += 1
                return None
        self.requests += 1
        return Ticket(self, self.generation)

    def current_state(self, now: float) -> int:
        """The state at `now`, after any time-driven change (roll-over, Open -> Half-Open)."""
        record = self.record
        if record is None:
            return self._current_state(now)
        self._load(record.acquire())
        try:
            return self._current_state(now)
        finally:
            record.release(self._fields())

    def _current_state(self, now: float) -> int:
        if self.state == CLOSED:
            if self.expiry and now >= self.expiry:
                self._new_generation(now)
        elif self.state == OPEN and now >= self.expiry:
            self._set_state(HALF_OPEN, now)
        return self.state

    def retry_after(self, now: float) -> int:
        """Whole seconds a refused client should wait: until Half-Open, at least 1."""
        if self.state == OPEN:
            return max(1, math.ceil(self.expiry - now))
        return 1

    # -- outcomes ---------------------------------------------------------------

    def _outcome(self, generation: int, ok: bool, now: float) -> None:
        record = self.record
        if record is None:
            self._decide(generation, ok, now)
            return
        self._load(record.acquire())
        try:
            self._decide(generation, ok, now)
        finally:
            record.release(self._fields())

    def _decide(self, generation: int, ok: bool, now: float) -> None:
        state = self.state
        if state != CLOSED or (self.expiry and now >= self.expiry):
            state = self._current_state(now)
        if generation != self.generation:
            return  # from before a state change or roll-over
        if ok:
            self.successes += 1
            self.consecutive_successes += 1
            self.consecutive_failures = 0
            if state == HALF_OPEN and self.consecutive_successes >= self._max_requests:
                self._set_state(CLOSED, now)
        else:
            self.failures += 1
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            if state == HALF_OPEN or (state == CLOSED and self._ready_to_trip()):
                self._set_state(OPEN, now)

    def _abandon(self, generation: int) -> None:
        record = self.record
        if record is not None:
            self._load(record.acquire())
        if generation == self.generation and self.requests > 0:
            self.requests -= 1
        if record is not None:
            record.release(self._fields())

    # -- shared: the fields a record keeps ---------------------------------------

    def _fields(self) -> Fields:
        return (
            self.generation,
            self.expiry,
            self.state,
            self.requests,
            self.successes,
            self.failures,
            self.consecutive_successes,
            self.consecutive_failures,
        )

    def _load(self, fields: Fields | None) -> None:
        if fields is None:
            return
        (
            self.generation,
            self.expiry,
            self.state,
            self.requests,
            self.successes,
            self.failures,
            self.consecutive_successes,
            self.consecutive_failures,
        ) = fields

    def _ready_to_trip(self) -> bool:
        if self.consecutive_failures >= self._consecutive_failures:
            return True
        counted = self.successes + self.failures
        return counted >= self._min_requests and self.failures >= self._failure_ratio * counted

    # -- transitions ------------------------------------------------------------

    def _set_state(self, to: int, now: float) -> None:
        before = self.state
        if before == to:
            return
        self.state = to
        self._new_generation(now)
        key = (before, to)
        self.transitions[key] = self.transitions.get(key, 0) + 1
        if self.listener is not None:
            self.listener(before, to)

    def _new_generation(self, now: float) -> None:
        self.generation += 1
        self.requests = self.successes = self.failures = 0
        self.consecutive_successes = self.consecutive_failures = 0
        if self.state == CLOSED:
            self.expiry = now + self._interval if self._interval else 0.0
        elif self.state == OPEN:
            self.expiry = now + self._timeout
        else:
            self.expiry = 0.0

    def snapshot(self, now: float) -> dict[str, object]:
        """What /admin/upstreams shows."""
        state = self.current_state(now)
        return {
            "state": STATE_NAMES[state],
            "generation": self.generation,
            "requests": self.requests,
            "successes": self.successes,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "retry_after": self.retry_after(now) if state == OPEN else None,
            "refused": self.refused,
            "transitions": {
                f"{STATE_NAMES[a]}->{STATE_NAMES[b]}": n for (a, b), n in self.transitions.items()
            },
        }


def transition_logger(upstream: str) -> Listener:
    """A listener that logs `circuit_state_changed` (from, to, upstream)."""
    from ..observe.logging import get_logger

    log = get_logger("pyproxyd.breaker")

    def changed(before: int, after: int) -> None:
        level = log.warning if after == OPEN else log.info
        level(
            "circuit_state_changed",
            upstream=upstream,
            **{"from": STATE_NAMES[before], "to": STATE_NAMES[after]},
        )

    return changed

"""Compiled by mypyc (pyproxyd/compiled.py).

Rate-limit algorithms: pure cores over `now` (seconds), table-tested.

Every algorithm is a small immutable object holding its normalised settings
and a `decide(state, now) -> (Decision, new_state)` method. The caller owns
the state (a float for the buckets, a list for the window log) and stores
the new state back; nothing here reads a clock. `refund(state, now)` gives a
slot back (a refused multi-policy request, a delayed client that left).

Token and leaky bucket are both written as GCRA (the "virtual scheduling"
form of the leaky bucket, as in redis-cell and golang.org/x/time/rate): the
state is one float, `tat`, the time at which the bucket would be empty
again. With emission interval T = 1/rate and capacity C:

- a token bucket holding `tokens` is the same thing as
  tat = now + (C - tokens) * T, so a request is allowed when
  max(tat, now) + T - now <= C * T, i.e. at least one token is left;
- a leaky bucket of queue depth B (nginx `limit_req burst=B`) lets a request
  in when at most B requests are ahead of it: max(tat, now) - now <= B * T.
  In delay mode it waits max(tat, now) - now before it leaves; in reject mode
  it passes at once but still fills the bucket (a meter).

The Redis scripts (`*.lua` beside this file) compute the same formulas in
integer microseconds; tests check both give the same decisions.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, NamedTuple

EPS = 1e-9  # float slack: n * T computed twice may differ in the last bit


class Decision:
    """One answer. Times are seconds from `now`.

    remaining: further requests that would be allowed right now;
    reset: until the limit is fully reset (bucket empty / oldest entry leaves);
    retry_after: when refused, until a retry would be allowed (else 0);
    delay: how long an allowed request must wait before it proceeds (leaky delay mode).

    A class, not a NamedTuple: compiled, it is one allocation holding its numbers
    unboxed (a NamedTuple was an argument tuple, the numbers' objects and a copy
    into the subclass's tuple, each request). Not to be changed once made.
    """

    __slots__ = ("allowed", "delay", "remaining", "reset", "retry_after")

    def __init__(
        self, allowed: bool, remaining: int, reset: float, retry_after: float, delay: float
    ) -> None:
        self.allowed = allowed
        self.remaining = remaining
        self.reset = reset
        self.retry_after = retry_after
        self.delay = delay

    def __repr__(self) -> str:
        return (
            f"Decision(allowed={self.allowed}, remaining={self.remaining}, reset={self.reset}, "
            f"retry_after={self.retry_after}, delay={self.delay})"
        )

    def __eq__(self, other: object) -> bool:  # by value, as the NamedTuple it was
        if not isinstance(other, Decision):
            return NotImplemented
        return (
            self.allowed == other.allowed
            and self.remaining == other.remaining
            and self.reset == other.reset
            and self.retry_after == other.retry_after
            and self.delay == other.delay
        )


class TokenBucket(NamedTuple):
    """`rate` tokens a second refill a bucket of `burst` tokens; a request takes one."""

    rate: float  # per second
    burst: float  # capacity, >= 1 (may be fractional when split between workers)

    @property
    def quota(self) -> int:
        return max(1, int(self.burst))

    @property
    def window(self) -> float:
        """Time to refill the whole bucket (the `w` of RateLimit-Policy)."""
        return self.burst / self.rate

    def decide(self, tat: float | None, now: float) -> tuple[Decision, float | None]:
        return _gcra(tat, now, 1.0 / self.rate, self.burst, False)

    def refund(self, tat: float | None, now: float) -> float | None:
        return _refund(tat, now, 1.0 / self.rate)

    def idle(self, tat: float | None, now: float) -> bool:
        return tat is None or tat <= now


class LeakyBucket(NamedTuple):
    """Requests leave at `rate`; at most `burst` may wait behind the one being served.

    delay=True: an allowed request waits its turn (Decision.delay), as nginx
    `limit_req` without `nodelay`; delay=False: beyond the queue is 429 at once.
    """

    rate: float
    burst: float  # queue depth, >= 0
    delay: bool = False

    @property
    def quota(self) -> int:
        return max(1, int(self.burst) + 1)

    @property
    def window(self) -> float:
        return (self.burst + 1) / self.rate

    def decide(self, tat: float | None, now: float) -> tuple[Decision, float | None]:
        return _gcra(tat, now, 1.0 / self.rate, self.burst + 1, self.delay)

    def refund(self, tat: float | None, now: float) -> float | None:
        return _refund(tat, now, 1.0 / self.rate)

    def idle(self, tat: float | None, now: float) -> bool:
        return tat is None or tat <= now


def _gcra(
    tat: float | None, now: float, t: float, capacity: float, delay: bool
) -> tuple[Decision, float | None]:
    start = now if tat is None or tat < now else tat  # when this request would leave
    new = start + t
    limit = capacity * t
    if new - now <= limit + EPS:
        # int() is floor() here: the quotient is above -1 (new - now <= limit + EPS)
        remaining = int((limit - (new - now)) / t + EPS)
        return Decision(True, remaining, new - now, 0.0, start - now if delay else 0.0), new
    return Decision(False, 0, start - now, new - now - limit, 0.0), tat


def _refund(tat: float | None, now: float, t: float) -> float | None:
    if tat is None:
        return None
    back = tat - t
    # (now + t) - t can land a bit above now: that is still "nothing counted"
    return back if back > now + EPS else None


class SlidingWindow(NamedTuple):
    """At most `limit` requests in any `window` seconds (a log of timestamps).

    The state is a list of the allowed requests' times, ascending; `decide`
    prunes it and appends in place (the list is also the returned state).
    """

    limit: int
    window: float

    @property
    def quota(self) -> int:
        return self.limit

    def decide(self, log: list[float] | None, now: float) -> tuple[Decision, list[float]]:
        if log is None:
            log = []
        else:
            _prune(log, now - self.window)
        count = len(log)
        if count < self.limit:
            log.append(now)
            return Decision(True, self.limit - count - 1, log[0] + self.window - now, 0.0, 0.0), log
        wait = log[0] + self.window - now
        return Decision(False, 0, wait, wait, 0.0), log

    def refund(self, log: list[float] | None, now: float, at: float | None = None) -> list[float]:
        """Remove the entry made at `at` (the newest one when None)."""
        if not log:
            return []
        if at is None:
            log.pop()
        else:
            i = bisect_right(log, at) - 1
            if i >= 0 and log[i] == at:
                del log[i]
        return log

    def idle(self, log: list[float] | None, now: float) -> bool:
        return not log or log[-1] <= now - self.window


def _prune(log: list[float], horizon: float) -> None:
    """Drop the entries at or before `horizon` (they left the window)."""
    if log and log[0] <= horizon:
        del log[: bisect_right(log, horizon)]


Algorithm = TokenBucket | LeakyBucket | SlidingWindow


def decide(algo: Algorithm, state: Any, now: float) -> tuple[Decision, Any]:
    """`algo.decide(state, now)`. Compiled, a bucket's is a native call: a method
    called on the union is looked up by name and its arguments boxed and parsed,
    which cost as much as the decision itself (the stores call this)."""
    if isinstance(algo, TokenBucket):
        return _gcra(state, now, 1.0 / algo.rate, algo.burst, False)
    if isinstance(algo, LeakyBucket):
        return _gcra(state, now, 1.0 / algo.rate, algo.burst + 1, algo.delay)
    return algo.decide(state, now)

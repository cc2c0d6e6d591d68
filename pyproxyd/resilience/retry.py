"""Compiled by mypyc (pyproxyd/compiled.py).

A retry budget per upstream, so that retries cannot multiply an outage.

Envoy's retry budget and Finagle's `RetryBudget` have the same idea: retries
may add at most a fixed share of the traffic (20%), plus a small floor so that
a quiet upstream can still retry a few requests a second. When every target
fails, requests then cost the upstream 1.2 tries each, not `retries + 1`.

The counts are kept per one-second slot over a sliding window (10 s), with
running totals, so `request()` and `retry()` are O(1) attribute work. Time is
an argument; only the caller reads the clock.
"""

from __future__ import annotations

RATIO = 0.2  # retries allowed per request seen in the window (Envoy's budget_percent 20%)
MIN_PER_SECOND = 3.0  # the floor, averaged over the window (Envoy's min_retry_concurrency 3)
WINDOW = 10.0  # seconds (Finagle's ttl)
SLOTS = 10


class RetryBudget:
    __slots__ = (
        "_floor",
        "_i",
        "_ratio",
        "_requests",
        "_retries",
        "_slot_end",
        "_width",
        "denied_total",
        "requests_total",
        "retries_total",
        "window",
        "window_requests",
        "window_retries",
    )

    def __init__(
        self,
        ratio: float = RATIO,
        min_per_second: float = MIN_PER_SECOND,
        window: float = WINDOW,
        slots: int = SLOTS,
    ) -> None:
        if window <= 0 or slots < 1:
            raise ValueError("window and slots must be positive")
        self.window = window
        self._ratio = ratio
        self._floor = min_per_second * window
        self._width = window / slots
        self._requests = [0] * slots
        self._retries = [0] * slots
        self._i = 0
        self._slot_end = float("-inf")  # the first call places the window
        self.window_requests = 0  # running totals over the slots
        self.window_retries = 0
        self.requests_total = 0  # lifetime, for metrics
        self.retries_total = 0
        self.denied_total = 0

    def __repr__(self) -> str:
        return (
            f"<RetryBudget window: {self.window_retries} retries / {self.window_requests} "
            f"requests | denied {self.denied_total}>"
        )

    def request(self, now: float) -> None:
        """Count one request (not a retry) at `now`."""
        if now >= self._slot_end:
            self._advance(now)
        self._requests[self._i] += 1
        self.window_requests += 1
        self.requests_total += 1

    def allowed(self, now: float) -> float:
        """How many retries the window allows at `now` (spent ones included)."""
        if now >= self._slot_end:
            self._advance(now)
        return max(self._floor, self._ratio * self.window_requests)

    def retry(self, now: float) -> bool:
        """Spend one retry if the budget has one; False means: do not retry."""
        if self.window_retries + 1 > self.allowed(now):
            self.denied_total += 1
            return False
        self._retries[self._i] += 1
        self.window_retries += 1
        self.retries_total += 1
        return True

    def _advance(self, now: float) -> None:
        """Move to the slot holding `now`, forgetting the slots that fell out."""
        width = self._width
        n = len(self._requests)
        k = int(now // width)  # absolute slot number of `now`
        if self._slot_end == float("-inf"):
            steps = n
        else:
            current = round(self._slot_end / width) - 1
            if k <= current:
                return  # the clock went backwards: stay in the current slot
            steps = min(k - current, n)
        requests, retries = self._requests, self._retries
        i = self._i
        for _ in range(steps):
            i = (i + 1) % n
            self.window_requests -= requests[i]
            self.window_retries -= retries[i]
            requests[i] = retries[i] = 0
        self._i = i
        self._slot_end = (k + 1) * width

    def snapshot(self, now: float) -> dict[str, float | int]:
        """What /admin/upstreams shows."""
        allowed = self.allowed(now)
        return {
            "window_requests": self.window_requests,
            "window_retries": self.window_retries,
            "window_allowed": round(allowed, 3),
            "retries_total": self.retries_total,
            "denied_total": self.denied_total,
        }

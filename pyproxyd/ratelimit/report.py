"""Compiled by mypyc (pyproxyd/compiled.py).

Rate-limit logs and counters: `rate_limited`, `rate_limit_summary`, metrics.

A flood must not flood the log: `rate_limited` is written at most once per
policy and key per second, and every `SUMMARY_EVERY` seconds one
`rate_limit_summary` per active policy gives the period's counts per route
and tier and for its busiest keys. The cumulative allowed/rejected/delayed
counts per (route, policy, tier) live on `PolicyStats`, carried over across
reloads by policy name, and feed `pyproxyd_ratelimit_decisions_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Final

import structlog

from ..observe.metrics import RATELIMIT

log = structlog.get_logger("pyproxyd.ratelimit")

# Final: compiled, a constant in the modules that import it, not a global looked up.
ALLOWED: Final = 0
REJECTED: Final = 1
DELAYED: Final = 2
RESULTS = ("allowed", "rejected", "delayed")
SUMMARY_EVERY = 10.0
MAX_KEYS = 10_000  # per policy and period, for the summary and the log throttle
TOP_KEYS = 10


class PolicyStats:
    """Decisions of one policy: cumulative per (route, tier), and per key this period.

    The request path counts through `counter(route, tier)` (a list it may keep:
    counts are only ever added to, never replaced) and `count_key`; a period's
    counts per (route, tier) are the cumulative ones less those at the last
    summary, so a request touches no per-period table but the keys'.
    """

    __slots__ = (
        "_children", "_exported", "_logged", "_summarised", "algorithm", "counts", "keys", "name",
    )  # fmt: skip

    def __init__(self, name: str, algorithm: str) -> None:
        self.name = name
        self.algorithm = algorithm
        self.counts: dict[tuple[str, str], list[int]] = {}  # (route, tier) -> per result
        self._summarised: dict[tuple[str, str], list[int]] = {}  # counts at the last summary
        self.keys: dict[str, list[int]] = {}  # key -> [allowed, rejected] this period
        self._logged: dict[str, int] = {}  # key -> the second it was last logged
        self._children: dict[tuple[str, str, int], Any] = {}
        self._exported: dict[tuple[str, str], list[int]] = {}  # counts already in prometheus

    def counter(self, route: str, tier: str) -> list[int]:
        """The cumulative counts of (route, tier), per result: add to them."""
        rt = (route, tier)
        c = self.counts.get(rt)
        if c is None:
            c = self.counts[rt] = [0, 0, 0]
        return c

    def count_key(self, key: str, result: int) -> None:
        k = self.keys.get(key)
        if k is None:
            if len(self.keys) >= MAX_KEYS:
                key = "(other)"
                k = self.keys.get(key)
            if k is None:
                k = self.keys[key] = [0, 0]
        k[result == REJECTED] += 1

    def count(self, route: str, tier: str, key: str, result: int) -> None:
        self.counter(route, tier)[result] += 1
        self.count_key(key, result)

    def export(self) -> None:
        """Add what `counts` gained since the last call to the prometheus counter
        (the sampler calls it once a second and before each scrape: an inc per
        request would take prometheus-client's lock per request)."""
        exported = self._exported
        for rt, counts in self.counts.items():
            last = exported.get(rt)
            if last is None:
                last = exported[rt] = [0, 0, 0]
            for result, n in enumerate(counts):
                if n != last[result]:
                    child = self._children.get((*rt, result))
                    if child is None:
                        child = self._children[(*rt, result)] = RATELIMIT.labels(
                            rt[0], self.name, rt[1], RESULTS[result]
                        )
                    child.inc(n - last[result])
                    last[result] = n

    def rejected(self, route: str, tier: str, key: str, client_ip: str, path: str) -> None:
        """The `rate_limited` event, at most once per key per second."""
        sec = int(time.monotonic())
        logged = self._logged
        if logged.get(key) == sec:
            return
        if len(logged) >= MAX_KEYS:
            logged.clear()
        logged[key] = sec
        log.info(
            "rate_limited",
            route=route,
            policy=self.name,
            algorithm=self.algorithm,
            key=key,
            tier=tier,
            client_ip=client_ip,
            path=path,
        )

    def summary(self) -> dict[str, Any] | None:
        """The period's counts (and start the next period); None when there were none."""
        period = {}
        for rt, counts in self.counts.items():
            last = self._summarised.get(rt)
            if last is None:
                last = self._summarised[rt] = [0, 0, 0]
            if counts != last:
                period[rt] = [n - was for n, was in zip(counts, last, strict=True)]
                last[:] = counts
        if not period:
            return None
        routes = [
            {"route": r, "tier": t, **dict(zip(RESULTS, c, strict=True))}
            for (r, t), c in sorted(period.items())
        ]
        top = sorted(self.keys.items(), key=lambda kv: (-kv[1][1], -kv[1][0]))[:TOP_KEYS]
        out = {
            "policy": self.name,
            "algorithm": self.algorithm,
            "routes": routes,
            "keys": len(self.keys),
            "top_keys": [{"key": k, "allowed": a, "rejected": r} for k, (a, r) in top],
        }
        self.keys = {}
        return out


class Reporter:
    """Writes the periodic `rate_limit_summary`; one per process (carried in state)."""

    def __init__(self) -> None:
        self.stats: dict[str, PolicyStats] = {}
        self._task: asyncio.Task[None] | None = None

    def activate(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def export(self) -> None:
        for stats in list(self.stats.values()):
            stats.export()

    def flush(self) -> None:
        for stats in list(self.stats.values()):
            entry = stats.summary()
            if entry is not None:
                log.info("rate_limit_summary", period_s=SUMMARY_EVERY, **entry)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(SUMMARY_EVERY)
            self.flush()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()

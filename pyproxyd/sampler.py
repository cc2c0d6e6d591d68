"""Copies the serving snapshot's live state (pools, breakers, health, rate
limit tallies) into the Prometheus gauges of observe/metrics.py.

It lives above observe/ because it reads the snapshot: metrics.py itself
knows nothing of the gateway's objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from .observe import metrics
from .resilience.breaker import STATE_NAMES

if TYPE_CHECKING:
    from .snapshot import Snapshot


class PoolSampler:
    """Copies pool state into gauges once a second (and before each scrape)."""

    def __init__(self) -> None:
        self._opened: dict[int, int] = {}
        self._transitions: dict[tuple[int, int, int], int] = {}
        self._spent: dict[int, float] = {}  # id(chain) -> its seconds at the last sample
        self._task: asyncio.Task[None] | None = None
        self.flushers: list[Callable[[], None]] = []  # batched per-request tallies

    def sample(self, snap: Snapshot) -> None:
        for flush in self.flushers:
            flush()
        for obj in snap.state.values():  # rate-limit decisions, tallied per request
            export = getattr(obj, "export", None)
            if export is not None:
                export()
        spent: dict[int, float] = {}
        for route in snap.routes:  # time in middlewares, summed on each route's chain
            chain = route.chain
            if chain is not None:
                total = spent[id(chain)] = chain.spent
                delta = total - self._spent.get(id(chain), 0.0)
                if delta > 0:
                    metrics.MIDDLEWARE_TIME.labels(route.id).inc(delta)
        self._spent = spent  # chains of older snapshots are forgotten
        now = asyncio.get_running_loop().time()  # the clock breakers and health use
        for up in snap.upstreams.values():
            breaker = up.breaker
            if breaker is not None:
                metrics.CIRCUIT_STATE.labels(up.name).set(breaker.current_state(now))
                for (old, new), count in list(breaker.transitions.items()):
                    key = (id(breaker), old, new)  # a reload may bring a new breaker
                    delta = count - self._transitions.get(key, 0)
                    if delta > 0:
                        metrics.CIRCUIT_TRANSITIONS.labels(
                            up.name, STATE_NAMES[old], STATE_NAMES[new]
                        ).inc(delta)
                    self._transitions[key] = count
            for t in up.targets:
                if t.health is not None:
                    metrics.TARGET_EJECTED.labels(up.name, t.label).set(
                        0 if t.health.available(now) else 1
                    )
            for t in up.targets:
                pool = t.pool
                metrics.CONNECTIONS.labels(up.name, t.label, "busy").set(pool.busy)
                metrics.CONNECTIONS.labels(up.name, t.label, "idle").set(pool.idle)
                metrics.POOL_QUEUED.labels(up.name, t.label).set(pool.queued)
                pool_key = id(pool)  # a reload may bring a new pool, counting from 0
                delta = pool.opened_total - self._opened.get(pool_key, 0)
                if delta > 0:
                    metrics.OPENED.labels(up.name, t.label).inc(delta)
                self._opened[pool_key] = pool.opened_total

    def start(self, current: Callable[[], Snapshot]) -> None:
        async def loop() -> None:
            while True:
                self.sample(current())
                await asyncio.sleep(1.0)

        self._task = asyncio.get_running_loop().create_task(loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

"""One discovered upstream at run time: its source runs in a task, and each
set it finds becomes the upstream's targets without a reload.

`Discovered` is a state object of the snapshot (carried over by upstream
name and source, like pools and breakers): every compile attaches the new
Upstream and the function that turns instances into its targets
(compile.py knows the pool, health and balancing settings). A change is
applied to the upstreams still attached (the serving one and, during a
reload, the one about to serve). Targets keep their pools, health and
checkers by URL; a target that leaves is drained: it gets no new request,
and its pool closes its idle connections now and each busy one as its
request finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..observe.logging import get_logger
from ..observe.metrics import discovery_targets, discovery_update
from . import Found, Source

if TYPE_CHECKING:
    from ..snapshot import Target, Upstream

log = get_logger("pyproxyd.discovery")

# instances -> (targets, balancer, keyed balancer), for one upstream's settings;
# `Cache` keeps what a target carries from one set to the next (pools, health).
Build = Callable[[list[Found], "Cache"], tuple[tuple["Target", ...], Any, Any]]
KEEP = 2  # upstreams kept attached: the serving one and the one a reload compiles


class Cache:
    """Objects per target URL (and settings) that outlive one target set."""

    def __init__(self) -> None:
        self.objects: dict[tuple[Any, ...], Any] = {}
        self.used: set[tuple[Any, ...]] = set()  # keys the build under way asked for

    def get(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        obj = self.objects.get(key)
        if obj is None:
            obj = self.objects[key] = make()
            activate = getattr(obj, "activate", None)
            if activate is not None and _loop_running():
                activate()
        self.used.add(key)
        return obj

    def forget(self, keep: set[tuple[Any, ...]]) -> list[Any]:
        """Forget and return the objects not in `keep` (to close)."""
        gone = [k for k in self.objects if k not in keep]
        return [self.objects.pop(k) for k in gone]


class Feed:
    """What one upstream's source reported (discovery.Report): the last set,
    whether it is failing, and the log events and metrics of each answer.

    `announce=False` for a worker's relayed copy (relay.py): the supervisor's
    feed already logged and counted each answer once for the instance.
    """

    def __init__(self, upstream: str, source: Source, wait: float, *, announce: bool = True):
        self.upstream = upstream
        self.source = source
        self.wait = wait  # /readyz waits this long for a first answer
        self.announce = announce
        self.instances: list[Found] | None = None  # None until the source answers
        self.changed_at: float | None = None  # wall clock of the last applied change
        self.failing = False
        self._started = time.monotonic()

    def ready(self) -> bool:
        """Whether /readyz may say so: answered once, or waited long enough."""
        return self.instances is not None or time.monotonic() - self._started >= self.wait

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source.name,
            "answered": self.instances is not None,
            "reachable": not self.failing,
            "changed_at": self.changed_at,
            "instances": len(self.instances or ()),
        }

    # -- what the source reports (discovery.Report) ----------------------------------

    def found(self, instances: list[Found]) -> None:
        if self.failing:
            self.failing = False
            self._restored()
            if self.announce:
                log.info("discovery_restored", upstream=self.upstream, source=self.source.name)
        new = sorted(set(instances), key=lambda f: f.url)
        if self.instances is not None and new == self.instances:
            return
        before = {f.url for f in self.instances or ()}
        after = {f.url for f in new}
        first = self.instances is None
        self.instances = new
        self.changed_at = time.time()
        self._changed()
        if not self.announce:
            return
        discovery_update(self.upstream, "applied", len(new))
        log.info(
            "discovery_changed",
            upstream=self.upstream,
            source=self.source.name,
            added=sorted(after - before),
            removed=sorted(before - after),
            targets=len(new),
        )
        if not new:
            log.warning("discovery_empty", upstream=self.upstream, source=self.source.name,
                        first=first)  # fmt: skip

    def failed(self, reason: str) -> None:
        if self.announce:
            discovery_update(self.upstream, "error", None)
        if self.failing:
            return  # once per outage
        self.failing = True
        self._failed(reason)
        if self.announce:
            log.warning("discovery_unavailable", upstream=self.upstream,
                        source=self.source.name, reason=reason,
                        kept=len(self.instances or ()))  # fmt: skip

    def skipped(self, key: str, reason: str) -> None:
        if self.announce:
            log.warning("discovery_entry_skipped", upstream=self.upstream,
                        source=self.source.name, key=key, reason=reason)  # fmt: skip

    # -- what a subclass does with it -------------------------------------------------

    def _changed(self) -> None:
        """A new set is in `instances`."""

    def _failed(self, reason: str) -> None:
        """The source started failing; the last set stays."""

    def _restored(self) -> None:
        """The source answers again."""


class Discovered(Feed):
    """Runs one upstream's source and applies what it finds."""

    def __init__(self, upstream: str, source: Source, wait: float, *, announce: bool = True):
        super().__init__(upstream, source, wait, announce=announce)
        # (upstream, its build, the cache keys its targets use)
        self._attached: list[tuple[Upstream, Build, set[tuple[Any, ...]]]] = []
        self._cache = Cache()
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    # -- compile and the snapshot's life -------------------------------------------

    def attach(self, upstream: Upstream, build: Build) -> None:
        """A compile's upstream of this name (in the compile's thread): it
        starts with the last set found. The serving one is not touched."""
        keys = self._apply(upstream, build)
        self._attached = [*self._attached[-(KEEP - 1) :], (upstream, build, keys)]

    def activate(self) -> None:
        """At every swap (SnapshotHolder.activate), on the loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        for obj in self._cache.objects.values():
            activate = getattr(obj, "activate", None)
            if activate is not None:
                activate()  # (idempotent) health checkers of targets a compile made
        self._collect()

    async def aclose(self) -> None:
        """Retired by a reload (the upstream is gone or found elsewhere now)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for obj in self._cache.forget(set()):
            await _close(obj)

    def preset(self, instances: list[Found] | None, failed: str | None = None) -> None:
        """The set to start with (a worker's, from its supervisor), before attach."""
        if instances is not None:
            self.instances = sorted(set(instances), key=lambda f: f.url)
            self.changed_at = time.time()
        self.failing = bool(failed)

    async def _run(self) -> None:
        try:
            await self.source.run(self)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a source must not die silently
            log.error("discovery_failed", upstream=self.upstream, source=self.source.name,
                      error=repr(e))  # fmt: skip

    # -- applying a set ---------------------------------------------------------------

    def _apply(self, upstream: Upstream, build: Build) -> set[tuple[Any, ...]]:
        self._cache.used = set()
        targets, balancer, keyed = build(self.instances or [], self._cache)
        upstream.set_targets(targets, balancer, keyed)
        return self._cache.used

    def _changed(self) -> None:
        self._attached = [(u, b, self._apply(u, b)) for u, b, _ in self._attached]
        if self.announce:
            discovery_targets(self.upstream, len(self.instances or ()))
        self._collect()

    def _collect(self) -> None:
        """Close what no attached upstream's targets use any more."""
        keep: set[tuple[Any, ...]] = set()
        for _, _, keys in self._attached:
            keep |= keys
        gone = self._cache.forget(keep)
        if gone:
            task = asyncio.get_running_loop().create_task(_close_all(gone))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)


async def _close_all(objects: list[Any]) -> None:
    for obj in objects:
        await _close(obj)


async def _close(obj: Any) -> None:
    # A pool closes its idle connections now and busy ones as they are released,
    # so a request in flight to a target that left finishes normally.
    close = getattr(obj, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False  # a compile thread, or `validate`
    return True

"""Target health: passive ejection and active checks.

* `TargetHealth` is the state of one target, pure over `now`:
  - passive (nginx `max_fails` / `fail_timeout`): `max_fails` connect errors or
    timeouts in a row eject the target for `eject_for`. When that time is up
    the target is tried again; one more failure ejects it again at once, a
    response restores it.
  - active: `unhealthy_threshold` failed checks in a row take it out of
    rotation, `healthy_threshold` passes in a row bring it back. A target
    starts healthy, and its first check runs as soon as the gateway starts.
* `HealthChecker` runs the active checks of one target in a background task,
  on a connection of its own (never one of the request pool). It starts when
  its snapshot is installed (`activate`) and stops when a reload drops it
  (`aclose`, called by `SnapshotHolder.swap`).
* `UpstreamHealth` counts, and logs at most once a second, the requests that
  found every target of the upstream out of rotation.

Transitions are logged (`target_ejected`, `target_restored`) with a `reason`
of "passive" or "health_check"; counters stay on the objects for metrics.

With workers, passive ejection is one per instance: a target's `record`
(pyproxyd/shm) keeps `fails`, `ejected` and `ejected_until` in shared memory,
so failures count across the workers and an ejection in one is seen by all
at their next pick. Active checks stay each worker's own (each checks on its
own connection), as do the lifetime totals (each ejection is counted by the
worker that made it, so the workers' sums are the instance's).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from dataclasses import dataclass
from typing import Protocol

from ..errors import GatewayError
from ..observe.logging import get_logger
from .h2exchange import send as h2_send
from .h2pool import H2Pool
from .http1 import UpstreamResponse, exchange
from .pool import PoolSettings, TargetPool

log = get_logger("pyproxyd.health")

CHECK_BODY_LIMIT = 64 * 1024  # a check reads at most this much body, then hangs up

Passive = tuple[int, int, float]  # fails, ejected, ejected_until


class Record(Protocol):
    """Where a shared target's passive state lives (pyproxyd/shm/resilience.py)."""

    def acquire(self) -> Passive | None:
        """Lock, and the stored fields (None: nothing stored yet)."""

    def release(self, fields: Passive) -> None:
        """Store the fields and unlock."""

    def read(self) -> Passive | None:
        """The stored fields, read under the lock."""


@dataclass(frozen=True, slots=True)
class HealthSettings:
    max_fails: int = 3  # 0 = no passive ejection
    eject_for: float = 10.0
    path: str | None = None  # active checks when set
    interval: float = 5.0
    timeout: float = 1.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    expected_statuses: frozenset[int] = frozenset({200})


class TargetHealth:
    __slots__ = (
        "_eject_for",
        "_healthy_threshold",
        "_max_fails",
        "_unhealthy_threshold",
        "active_down",
        "check_fails",
        "check_passes",
        "checks_failed_total",
        "checks_total",
        "ejected",
        "ejected_until",
        "ejections_total",
        "fails",
        "last_check_error",
        "record",
        "settings",
        "target",
        "upstream",
    )

    def __init__(self, settings: HealthSettings, upstream: str = "", target: str = "") -> None:
        self.settings = settings
        self.upstream = upstream
        self.target = target  # "host:port"
        self._max_fails = max(0, settings.max_fails)
        self._eject_for = max(0.0, settings.eject_for)
        self._healthy_threshold = max(1, settings.healthy_threshold)
        self._unhealthy_threshold = max(1, settings.unhealthy_threshold)
        # passive
        self.fails = 0  # connect errors / timeouts in a row
        self.ejected = False  # ejected, and no response since
        self.ejected_until = 0.0  # skipped by the balancer before this time
        self.ejections_total = 0
        self.record: Record | None = None  # shared with the other workers
        # active
        self.active_down = False
        self.check_passes = 0  # in a row
        self.check_fails = 0  # in a row
        self.checks_total = 0
        self.checks_failed_total = 0
        self.last_check_error: str | None = None

    def __repr__(self) -> str:
        return (
            f"<TargetHealth {self.upstream}/{self.target} fails={self.fails} "
            f"ejected={self.ejected} active_down={self.active_down}>"
        )

    def available(self, now: float) -> bool:
        """In rotation: not ejected at `now`, and not failing its active checks."""
        if self.record is not None:
            self._load(self.record.read())  # also refreshes `fails`, which the proxy reads
        return self.ejected_until <= now and not self.active_down

    def _load(self, fields: Passive | None) -> None:
        if fields is not None:
            self.fails, ejected, self.ejected_until = fields
            self.ejected = bool(ejected)

    def _fields(self) -> Passive:
        return self.fails, int(self.ejected), self.ejected_until

    # -- passive ----------------------------------------------------------------

    def failed(self, now: float, error: str = "") -> None:
        """A connect error or a timeout of a request to this target."""
        if not self._max_fails:
            return
        record = self.record
        if record is None:
            self._failed(now, error)
            return
        self._load(record.acquire())
        try:
            self._failed(now, error)
        finally:
            record.release(self._fields())

    def _failed(self, now: float, error: str) -> None:
        self.fails += 1
        if self.fails >= self._max_fails and self.ejected_until <= now:
            first = not self.ejected
            self.ejected = True
            self.ejected_until = now + self._eject_for
            self.ejections_total += 1
            log.warning(
                "target_ejected",
                upstream=self.upstream,
                target=self.target,
                reason="passive",
                fails=self.fails,
                eject_for=self._eject_for,
                again=not first,
                error=error or None,
            )

    def succeeded(self) -> None:
        """A response head arrived from this target (any status)."""
        record = self.record
        if record is None:
            self._succeeded()
            return
        self._load(record.acquire())
        try:
            self._succeeded()
        finally:
            record.release(self._fields())

    def _succeeded(self) -> None:
        self.fails = 0
        if self.ejected:
            self.ejected = False
            self.ejected_until = 0.0
            log.info(
                "target_restored", upstream=self.upstream, target=self.target, reason="passive"
            )

    # -- active -----------------------------------------------------------------

    def check_passed(self) -> None:
        self.checks_total += 1
        self.check_fails = 0
        self.check_passes += 1
        self.last_check_error = None
        if self.active_down and self.check_passes >= self._healthy_threshold:
            self.active_down = False
            log.info(
                "target_restored",
                upstream=self.upstream,
                target=self.target,
                reason="health_check",
                passes=self.check_passes,
            )

    def check_failed(self, error: str) -> None:
        self.checks_total += 1
        self.checks_failed_total += 1
        self.check_passes = 0
        self.check_fails += 1
        self.last_check_error = error
        if not self.active_down and self.check_fails >= self._unhealthy_threshold:
            self.active_down = True
            log.warning(
                "target_ejected",
                upstream=self.upstream,
                target=self.target,
                reason="health_check",
                fails=self.check_fails,
                error=error,
            )

    def snapshot(self, now: float) -> dict[str, object]:
        """What /admin/upstreams shows."""
        active = self.settings.path is not None
        return {
            "available": self.available(now),
            "ejected": self.ejected_until > now,
            "ejected_for": round(max(0.0, self.ejected_until - now), 3),
            "consecutive_fails": self.fails,
            "ejections_total": self.ejections_total,
            "healthy": (not self.active_down) if active else None,
            "last_check_error": self.last_check_error if active else None,
        }


class UpstreamHealth:
    """Requests that found no target in rotation, counted and logged sparingly."""

    __slots__ = ("_logged_at", "name", "no_healthy_total")

    LOG_EVERY = 1.0

    def __init__(self, name: str) -> None:
        self.name = name
        self.no_healthy_total = 0
        self._logged_at = float("-inf")

    def no_healthy(self, now: float) -> None:
        self.no_healthy_total += 1
        if now - self._logged_at >= self.LOG_EVERY:
            self._logged_at = now
            log.warning("no_healthy_target", upstream=self.name, total=self.no_healthy_total)


class HealthChecker:
    """GET `path` on one target every `interval`, on a connection of its own."""

    __slots__ = ("_closed", "_head", "_task", "health", "pool", "settings")

    def __init__(
        self,
        health: TargetHealth,
        host: str,
        port: int,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        label: str = "",
        protocol: str = "http1",
    ) -> None:
        settings = health.settings
        assert settings.path is not None
        self.health = health
        self.settings = settings
        self.pool = TargetPool(
            host,
            port,
            PoolSettings(
                max_connections=1,
                keepalive=1,
                keepalive_requests=1000,
                keepalive_timeout=max(60.0, 2 * settings.interval),
                keepalive_time=3600.0,
                connect_timeout=settings.timeout,
                read_timeout=settings.timeout,
                protocol=protocol,
            ),
            ssl=ssl,
            server_hostname=server_hostname,
            label=label,
        )
        if protocol != "http1":  # an h2c/h2 target is checked over HTTP/2 as it is used
            self.pool.h2 = H2Pool(
                self.pool, self.pool.settings, ssl=ssl, server_hostname=server_hostname
            )
        host_header = label or self.pool.label
        self._head = (
            f"GET {settings.path} HTTP/1.1\r\nHost: {host_header}\r\n"
            "User-Agent: pyproxyd-health-check\r\nAccept: */*\r\n\r\n"
        ).encode("latin-1")
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        running = self._task is not None and not self._task.done()
        return f"<HealthChecker {self.health.upstream}/{self.pool.label} running={running}>"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def activate(self) -> None:
        """Start checking (idempotent); needs the running loop."""
        if self._closed or self.running:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"health-check {self.health.upstream}/{self.pool.label}"
        )

    async def aclose(self) -> None:
        """Stop checking and close the check connection."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.pool.aclose()

    async def _run(self) -> None:
        health = self.health
        interval = self.settings.interval
        while True:
            error = await self.check()
            if error is None:
                health.check_passed()
            else:
                health.check_failed(error)
            await asyncio.sleep(interval)

    async def check(self) -> str | None:
        """One check: None when it passed, else why it failed."""
        settings = self.settings
        try:
            async with asyncio.timeout(settings.timeout):
                h2 = self.pool.h2
                up: UpstreamResponse
                if h2 is None:
                    up = await exchange(self.pool, self._head, None, read_timeout=settings.timeout)
                else:
                    up = await h2_send(
                        h2,
                        self._head,
                        None,
                        te_trailers=False,
                        grpc_deadline=None,
                        read_timeout=settings.timeout,
                    )
                try:
                    read = 0
                    while chunk := await up.read():
                        read += len(chunk)
                        if read > CHECK_BODY_LIMIT:
                            up.abort()
                            break
                    up.release()
                except BaseException:
                    up.abort()
                    raise
        except TimeoutError:
            return f"no answer within {settings.timeout:g}s"
        except GatewayError as err:
            return err.message
        except Exception as err:  # anything else fails the check, never the checker
            return f"{type(err).__name__}: {err}"
        if up.status not in settings.expected_statuses:
            return f"status {up.status}"
        return None

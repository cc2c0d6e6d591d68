"""Compiled by mypyc (pyproxyd/compiled.py).

Prometheus metrics, named as docs/behaviour.md lists them.

With `server.workers > 1` every worker writes its samples to the files of
prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the
supervisor before anything imports prometheus_client) and the supervisor's
/metrics adds them up. Label values are bounded: route ids, upstream names,
target labels, status codes, policy and tier names; never paths or client keys.

The per-request path only tallies in plain dicts (RequestMetrics); the
tallies reach prometheus-client once a second and before every scrape.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as mp

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "pyproxyd_requests", "Requests answered, by route, upstream and status",
    ["route", "upstream", "status"],
)  # fmt: skip
DURATION = Histogram(
    "pyproxyd_request_duration_seconds", "Time from request to response end",
    ["route", "upstream"], buckets=BUCKETS,
)  # fmt: skip
UPSTREAM_TIME = Histogram(
    "pyproxyd_upstream_response_seconds",
    "Time from sending to the upstream until its response head arrived",
    ["upstream"], buckets=BUCKETS,
)  # fmt: skip
IN_FLIGHT = Gauge(
    "pyproxyd_requests_in_flight", "Requests being handled", multiprocess_mode="livesum"
)
CONNECTIONS = Gauge(
    "pyproxyd_upstream_connections", "Upstream connections by state (busy|idle)",
    ["upstream", "target", "state"], multiprocess_mode="livesum",
)  # fmt: skip
POOL_QUEUED = Gauge(
    "pyproxyd_upstream_pool_waiting", "Requests waiting for a free upstream connection slot",
    ["upstream", "target"], multiprocess_mode="livesum",
)  # fmt: skip
OPENED = Counter(
    "pyproxyd_upstream_connections_opened", "Upstream connections opened",
    ["upstream", "target"],
)  # fmt: skip
BYTES_IN = Counter("pyproxyd_request_body_bytes", "Request body bytes read from clients", ["route"])
BYTES_OUT = Counter(
    "pyproxyd_response_body_bytes", "Response body bytes sent to clients", ["route"]
)
RELOADS = Counter("pyproxyd_config_reloads", "Config reloads by result", ["result"])
CIRCUIT_STATE = Gauge(
    "pyproxyd_circuit_state", "Circuit state (0 closed, 1 half-open, 2 open)",
    ["upstream"], multiprocess_mode="max",
)  # fmt: skip
CIRCUIT_TRANSITIONS = Counter(
    "pyproxyd_circuit_transitions", "Circuit state changes",
    ["upstream", "from", "to"],
)  # fmt: skip
RATELIMIT = Counter(
    "pyproxyd_ratelimit_decisions", "Rate-limit decisions (allowed|rejected|delayed)",
    ["route", "policy", "tier", "result"],
)  # fmt: skip
TARGET_EJECTED = Gauge(
    "pyproxyd_upstream_target_ejected", "1 while a target is out of rotation",
    ["upstream", "target"], multiprocess_mode="max",
)  # fmt: skip


MIDDLEWARE_TIME = Counter(
    "pyproxyd_middleware_seconds", "Time spent in the route's middlewares", ["route"]
)
MIDDLEWARE_ERRORS = Counter(
    "pyproxyd_middleware_errors",
    "Requests a middleware failed (raised, timed out or returned something not a response)",
    ["route", "middleware"],
)


DISCOVERY_TARGETS = Gauge(
    "pyproxyd_discovery_targets", "Targets a discovered upstream has now",
    ["upstream"], multiprocess_mode="max",
)  # fmt: skip
DISCOVERY_UPDATES = Counter(
    "pyproxyd_discovery_updates", "Answers of a discovery source (applied|error)",
    ["upstream", "result"],
)  # fmt: skip


CONFIG_REVISION = Gauge(
    "pyproxyd_config_revision",
    "The etcd revision of the shared config document serving",
    multiprocess_mode="max",
)


def config_revision(revision: int) -> None:
    CONFIG_REVISION.set(revision)


def discovery_targets(upstream: str, count: int) -> None:
    DISCOVERY_TARGETS.labels(upstream).set(count)


def discovery_update(upstream: str, result: str, count: int | None) -> None:
    DISCOVERY_UPDATES.labels(upstream, result).inc()
    if count is not None:
        DISCOVERY_TARGETS.labels(upstream).set(count)


class RequestMetrics:
    """The per-request metrics, tallied in plain dicts and flushed into the
    prometheus metrics by `flush()`: once a second by the sampler, and before
    every scrape.

    prometheus-client takes a lock and walks the buckets on every increment;
    seven of those a request cost about 7 us, a tenth of a small request's
    budget. A tally costs a dict update. Histogram tallies are bucket counts
    and a sum, added to the child's own bucket and sum values (the same
    values `observe()` increments; tests/observe/test_metrics.py checks that
    the two agree).
    """

    __slots__ = ("_bytes", "_routes", "_upstream", "in_flight")

    def __init__(self) -> None:
        self.in_flight = 0
        # One entry per (route, upstream): its counts by status and its durations.
        self._routes: dict[tuple[str, str], RouteTally] = {}
        self._upstream: dict[str, Tally] = {}
        self._bytes: dict[str, list[int]] = {}

    def bytes(self, route: str, received: int, sent: int) -> None:
        pair = self._bytes.get(route)
        if pair is None:
            pair = self._bytes[route] = [0, 0]
        pair[0] += received
        pair[1] += sent

    def upstream_answered(self, upstream: str, seconds: float) -> None:
        tally = self._upstream.get(upstream)
        if tally is None:
            tally = self._upstream[upstream] = Tally()
        tally.add(seconds)

    def middleware_failed(self, route: str, middleware: str) -> None:
        MIDDLEWARE_ERRORS.labels(route, middleware).inc()  # rare: straight to the counter

    def observe(self, route: str, upstream: str, status: int, seconds: float) -> None:
        key = (route, upstream)
        entry = self._routes.get(key)
        if entry is None:
            entry = self._routes[key] = RouteTally()
        statuses = entry.statuses
        statuses[status] = statuses.get(status, 0) + 1
        entry.durations.add(seconds)

    def flush(self) -> None:
        IN_FLIGHT.set(self.in_flight)
        routes, self._routes = self._routes, {}
        for (route, upstream), entry in routes.items():
            for status, n in entry.statuses.items():
                REQUESTS.labels(route, upstream, str(status)).inc(n)
            entry.durations.flush_into(DURATION.labels(route, upstream))
        times, self._upstream = self._upstream, {}
        for name, tally in times.items():
            tally.flush_into(UPSTREAM_TIME.labels(name))
        sizes, self._bytes = self._bytes, {}
        for route, (received, sent) in sizes.items():
            if received:
                BYTES_IN.labels(route).inc(received)
            if sent:
                BYTES_OUT.labels(route).inc(sent)


class Tally:
    """A histogram's sum and bucket counts since the last flush. The sum is
    a native float in the compiled build, and the bucket is found by a
    scan of the bounds: no float object or call per observation."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.sum = 0.0
        self.counts = [0] * (len(BUCKETS) + 1)  # one per bound, +Inf last

    def add(self, seconds: float) -> None:
        self.sum += seconds
        i = 0
        for bound in BUCKETS:  # le: the first bound not below the value, as observe()
            if seconds <= bound:
                break
            i += 1
        self.counts[i] += 1

    def flush_into(self, child: Any) -> None:
        """Add to a prometheus Histogram child the values its observe() would have."""
        child._sum.inc(self.sum)
        buckets = child._buckets
        for i, count in enumerate(self.counts):
            if count:
                buckets[i].inc(count)


class RouteTally:
    __slots__ = ("durations", "statuses")

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.durations = Tally()


def render() -> tuple[bytes, str]:
    """The /metrics body: this process's registry, or every worker's files."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (multiprocess mode)."""
    if os.environ.get(MULTIPROC_ENV):
        mp.mark_process_dead(pid)


def reloads(result: str) -> None:
    RELOADS.labels(result).inc()

"""Target health: passive ejection and active thresholds over injected time;
the balancer skipping targets out of rotation; one checker against real backends."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from harness.backends import Backend, wait_for
from harness.gateway import free_port
from pyproxyd.snapshot import Target, Upstream
from pyproxyd.upstream.balance import SmoothRoundRobin
from pyproxyd.upstream.health import HealthChecker, HealthSettings, TargetHealth, UpstreamHealth
from pyproxyd.upstream.pool import PoolSettings, TargetPool

BASE = HealthSettings(
    max_fails=3,
    eject_for=10.0,
    path="/healthz",
    interval=1.0,
    timeout=0.5,
    healthy_threshold=2,
    unhealthy_threshold=3,
    expected_statuses=frozenset({200}),
)


def health(**changes: Any) -> TargetHealth:
    return TargetHealth(replace(BASE, **changes), "up", "10.0.0.1:80")


# -- passive -------------------------------------------------------------------

# (time, event, available afterwards at that time); events: "fail" (connect error or
# timeout), "ok" (a response head), "-" (nothing: just look)
PASSIVE = {
    "max_fails in a row eject for eject_for": [
        (0.0, "fail", True),
        (0.1, "fail", True),
        (0.2, "fail", False),  # ejected until 10.2
        (5.0, "-", False),
        (10.19, "-", False),
        (10.2, "-", True),  # tried again
    ],
    "a response in between resets the run": [
        (0.0, "fail", True),
        (0.1, "fail", True),
        (0.2, "ok", True),
        (0.3, "fail", True),
        (0.4, "fail", True),
        (0.5, "fail", False),
    ],
    "after eject_for one more failure ejects again at once": [
        (0.0, "fail", True),
        (0.0, "fail", True),
        (0.0, "fail", False),
        (10.0, "-", True),
        (10.5, "fail", False),  # until 20.5
        (20.4, "-", False),
        (20.5, "-", True),
        (20.6, "ok", True),  # restored: a fresh run of max_fails needed again
        (20.7, "fail", True),
        (20.8, "fail", True),
    ],
    "failures while ejected do not extend the ejection": [
        (0.0, "fail", True),
        (0.0, "fail", True),
        (0.0, "fail", False),
        (5.0, "fail", False),  # a request that was already in flight
        (10.0, "-", True),
    ],
}


@pytest.mark.parametrize("name", list(PASSIVE))
def test_passive(name: str) -> None:
    h = health()
    for i, (t, event, want) in enumerate(PASSIVE[name]):
        if event == "fail":
            h.failed(t, "connect refused")
        elif event == "ok":
            h.succeeded()
        assert h.available(t) == want, f"step {i} at t={t}"


def test_max_fails_zero_never_ejects() -> None:
    h = health(max_fails=0)
    for t in range(100):
        h.failed(float(t))
    assert h.available(100.0) and h.ejections_total == 0


def test_ejection_and_restore_are_logged_once() -> None:
    h = health()
    with capture_logs() as logs:
        for _ in range(3):
            h.failed(0.0, "connect refused")
        h.failed(1.0, "connect refused")  # already ejected: no second event
        h.succeeded()
        h.succeeded()
    events = [(e["event"], e["reason"]) for e in logs]
    assert events == [("target_ejected", "passive"), ("target_restored", "passive")]
    assert logs[0]["upstream"] == "up" and logs[0]["target"] == "10.0.0.1:80"
    assert logs[0]["error"] == "connect refused"
    assert h.ejections_total == 1


# -- active --------------------------------------------------------------------

ACTIVE = {
    "unhealthy_threshold failures take it out": ["F", "F", "F-"],
    "a pass in between resets the failures": ["F", "F", "P", "F", "F", "F-"],
    "healthy_threshold passes bring it back": ["F", "F", "F-", "P-", "P"],
    "a failure in between resets the passes": ["F", "F", "F-", "P-", "F-", "P-", "P"],
}


@pytest.mark.parametrize("name", list(ACTIVE))
def test_active(name: str) -> None:
    """F/P: a failed/passed check; a trailing '-' means out of rotation afterwards."""
    h = health()
    for i, step in enumerate(ACTIVE[name]):
        if step[0] == "F":
            h.check_failed("status 503")
        else:
            h.check_passed()
        assert h.available(0.0) == (not step.endswith("-")), f"step {i}"


def test_active_transitions_are_logged() -> None:
    h = health()
    with capture_logs() as logs:
        for _ in range(4):
            h.check_failed("status 503")
        for _ in range(3):
            h.check_passed()
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("target_ejected", "health_check"),
        ("target_restored", "health_check"),
    ]
    assert logs[0]["error"] == "status 503"
    assert h.checks_total == 7 and h.checks_failed_total == 4


def test_passive_and_active_are_independent() -> None:
    h = health()
    for _ in range(3):
        h.check_failed("x")
    h.succeeded()  # a response does not override failing checks
    assert not h.available(0.0)
    h.check_passed()
    h.check_passed()
    for _ in range(3):
        h.failed(1.0)
    assert not h.available(1.0)  # passing checks do not cancel an ejection
    assert h.available(11.0)


def test_snapshot_for_the_admin_view() -> None:
    h = health()
    for _ in range(3):
        h.failed(0.0)
    assert h.snapshot(4.0) == {
        "available": False,
        "ejected": True,
        "ejected_for": 6.0,
        "consecutive_fails": 3,
        "ejections_total": 1,
        "healthy": True,
        "last_check_error": None,
    }
    assert health(path=None).snapshot(0.0)["healthy"] is None


def test_no_healthy_target_is_counted_and_logged_at_most_once_a_second() -> None:
    u = UpstreamHealth("up")
    with capture_logs() as logs:
        for t in (0.0, 0.1, 0.5, 1.0, 1.2, 2.5):
            u.no_healthy(t)
    assert u.no_healthy_total == 6
    assert [e["total"] for e in logs] == [1, 4, 6]


# -- the balancer skips targets out of rotation ------------------------------------

POOL = PoolSettings(10, 1, 100, 60.0, 3600.0, 1.0, 1.0)


def upstream(n: int) -> Upstream:
    targets = tuple(
        Target(f"http://h{i}", f"h{i}:80", b"", 1, TargetPool(f"h{i}", 80, POOL), health())
        for i in range(n)
    )
    return Upstream("up", targets, SmoothRoundRobin([1] * n), 1, 1.0)


def picks(up: Upstream, now: float, n: int) -> list[int | None]:
    return [up.pick(set(), now) for _ in range(n)]


def test_pick_skips_ejected_and_unhealthy_targets() -> None:
    up = upstream(3)
    assert set(picks(up, 0.0, 3)) == {0, 1, 2}
    for _ in range(3):
        up.targets[1].health.failed(0.0)  # type: ignore[union-attr]
    assert set(picks(up, 1.0, 6)) == {0, 2}
    for _ in range(3):
        up.targets[0].health.check_failed("down")  # type: ignore[union-attr]
    assert picks(up, 1.0, 3) == [2, 2, 2]
    for _ in range(3):
        up.targets[2].health.failed(1.0)  # type: ignore[union-attr]
    assert picks(up, 1.0, 2) == [None, None]
    assert set(picks(up, 10.0, 4)) == {1}  # 1's ejection ended; 2's has not
    assert set(picks(up, 11.0, 4)) == {1, 2}


def test_pick_adds_every_target_it_looked_at_to_skip() -> None:
    up = upstream(3)
    for _ in range(3):
        up.targets[0].health.failed(0.0)  # type: ignore[union-attr]
        up.targets[1].health.failed(0.0)  # type: ignore[union-attr]
    skip: set[int] = set()
    assert up.pick(skip, 1.0) == 2
    assert up.pick(skip, 1.0) is None
    assert skip == {0, 1, 2}


# -- one checker, real backends ----------------------------------------------------


def checker(url_port: int, **changes: Any) -> HealthChecker:
    h = TargetHealth(replace(BASE, **changes), "up", f"127.0.0.1:{url_port}")
    return HealthChecker(h, "127.0.0.1", url_port, label=f"127.0.0.1:{url_port}")


async def test_check_passes_and_fails() -> None:
    state = {"status": 200, "delay": 0.0, "size": 2}

    async def healthz(request: web.Request) -> web.Response:
        await asyncio.sleep(state["delay"])
        return web.Response(status=int(state["status"]), text="x" * int(state["size"]))

    async with Backend([web.get("/healthz", healthz)]) as b:
        c = checker(b.port, timeout=0.3)
        try:
            assert await c.check() is None
            assert await c.check() is None
            assert b.connections_opened == 1  # its own connection, kept alive
            assert b.log[0][:2] == ("GET", "/healthz")
            state["size"] = 1_000_000
            assert await c.check() is None  # a big body: enough is read, then hung up
            await wait_for(lambda: b.open_connections == 0)
            state["size"] = 2
            state["status"] = 503
            assert await c.check() == "status 503"
            state["status"], state["delay"] = 200, 1.0
            assert await c.check() == "no answer within 0.3s"
        finally:
            await c.aclose()
    refused = checker(free_port())
    assert "connect" in (await refused.check() or "")
    await refused.aclose()


async def test_checker_runs_until_closed() -> None:
    async with Backend() as b:
        c = checker(b.port, path="/status/503", interval=0.05, unhealthy_threshold=2)
        c.activate()
        c.activate()  # idempotent
        try:
            await wait_for(lambda: not c.health.available(0.0))
            assert c.running
        finally:
            await c.aclose()
        assert not c.running
        hits = b.hits
        c.activate()  # closed: stays stopped
        await asyncio.sleep(0.15)
        assert b.hits == hits
        assert b.open_connections == 0

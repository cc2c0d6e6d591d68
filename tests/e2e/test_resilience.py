"""Circuit breakers, target health and retries: the real gateway, real backends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from structlog.testing import capture_logs

from harness.backends import Backend, RawBackend, read_request, wait_for
from harness.gateway import config, fetch, free_port, gateway, url
from pyproxyd.resilience.retry import MIN_PER_SECOND, RATIO, WINDOW
from pyproxyd.server import Gateway
from pyproxyd.upstream.health import HealthChecker

ROUTE = """
[[routes]]
id = "r"
path = "/r/**"
upstream = "app"
strip_prefix = 1
"""


def upstream(targets: list[str], extra: str = "", **settings: object) -> str:
    lines = ", ".join(f'{{ url = "{t}" }}' for t in targets)
    body = "".join(
        f"{k} = {json.dumps(v)}\n" if not isinstance(v, str) else f'{k} = "{v}"\n'
        for k, v in settings.items()
    )
    return config(f"[upstreams.app]\ntargets = [{lines}]\n{body}{extra}{ROUTE}")


BREAKER = """
[upstreams.app.circuit_breaker]
consecutive_failures = 3
min_requests = 100
interval = "10s"
timeout = "{timeout}"
max_requests = 2
"""


async def view(gw: Gateway) -> dict[str, Any]:
    _, _, body = await fetch(f"http://127.0.0.1:{gw.admin_port}/admin/upstreams")
    result: dict[str, Any] = json.loads(body)["upstreams"]["app"]
    return result


def in_rotation(gw: Gateway, index: int) -> bool:
    health = gw.snapshot.upstreams["app"].targets[index].health
    assert health is not None
    return health.available(asyncio.get_running_loop().time())


class Switch:
    """A backend route whose status and delay the test changes as it goes."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay
        self.hits = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text=f"status {self.status}")


# ---------------------------------------------------------------- circuit breaker


async def test_breaker_trips_probes_and_recovers(tmp_path: Path) -> None:
    app = Switch(503)
    toml = upstream(["{url}"], BREAKER.format(timeout="300ms"))
    async with Backend([web.get("/x", app.handle)]) as b:
        with capture_logs() as logs:
            async with (
                gateway(tmp_path, toml.replace("{url}", b.url)) as gw,
                aiohttp.ClientSession() as s,
            ):
                # Closed: the upstream's own 503s reach the client, and count.
                for _ in range(3):
                    async with s.get(url(gw, "/r/x")) as r:
                        assert (r.status, await r.text()) == (503, "status 503")
                assert app.hits == 3
                # Open: answered at once, the upstream is not touched.
                for _ in range(5):
                    async with s.get(url(gw, "/r/x")) as r:
                        assert r.status == 503
                        assert (await r.json())["error"] == "circuit_open"
                        assert r.headers["Retry-After"] == "1"
                assert app.hits == 3
                assert (await view(gw))["circuit"]["state"] == "open"

                # After the timeout: exactly max_requests probes reach it.
                await asyncio.sleep(0.35)
                app.status, app.delay = 200, 0.4  # the probes are in flight together

                async def one() -> tuple[int, str]:
                    async with s.get(url(gw, "/r/x")) as r:
                        return r.status, await r.text()

                results = await asyncio.gather(*(one() for _ in range(5)))
                assert app.hits == 3 + 2
                assert sorted(st for st, _ in results) == [200, 200, 503, 503, 503]
                assert (await view(gw))["circuit"]["state"] == "closed"
                # Recovered: traffic flows again.
                app.delay = 0.0
                for _ in range(5):
                    async with s.get(url(gw, "/r/x")) as r:
                        assert r.status == 200
                assert app.hits == 10
    changes = [(e["from"], e["to"]) for e in logs if e["event"] == "circuit_state_changed"]
    assert changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    assert all(e["upstream"] == "app" for e in logs if e["event"] == "circuit_state_changed")


async def test_a_failing_probe_reopens_the_circuit(tmp_path: Path) -> None:
    app = Switch(502)
    toml = upstream(["{url}"], BREAKER.format(timeout="200ms"))
    async with (
        Backend([web.get("/x", app.handle)]) as b,
        gateway(tmp_path, toml.replace("{url}", b.url)) as gw,
    ):
        for _ in range(3):
            assert (await fetch(url(gw, "/r/x")))[0] == 502
        await asyncio.sleep(0.25)
        assert (await fetch(url(gw, "/r/x")))[0] == 502  # the probe, and it failed
        assert app.hits == 4
        status, _, body = await fetch(url(gw, "/r/x"))
        assert (status, json.loads(body)["error"]) == (503, "circuit_open")
        assert app.hits == 4
        circuit = (await view(gw))["circuit"]
        assert circuit["state"] == "open"
        assert circuit["transitions"] == {
            "closed->open": 1,
            "open->half-open": 1,
            "half-open->open": 1,
        }


async def test_connect_errors_and_route_timeouts_count_a_leaving_client_does_not(
    tmp_path: Path,
) -> None:
    async with Backend() as b:
        toml = upstream(["{url}"], BREAKER.format(timeout="10s"), retries=0).replace(
            "strip_prefix = 1\n", 'strip_prefix = 1\ntimeout = "400ms"\n'
        )
        async with gateway(tmp_path, toml.replace("{url}", b.url)) as gw:
            # Three clients give up before the upstream answers: not the upstream's fault.
            async with aiohttp.ClientSession() as s:
                for _ in range(3):
                    try:
                        async with s.get(
                            url(gw, "/r/sleep?s=1"), timeout=aiohttp.ClientTimeout(total=0.05)
                        ) as r:
                            await r.read()
                    except TimeoutError:
                        pass
            await asyncio.sleep(0.05)
            circuit = (await view(gw))["circuit"]
            assert (circuit["state"], circuit["failures"]) == ("closed", 0)
            # The route's own timeout is.
            for _ in range(3):
                assert (await fetch(url(gw, "/r/sleep?s=1")))[0] == 504
            assert (await view(gw))["circuit"]["state"] == "open"

    port = free_port()
    toml = upstream([f"http://127.0.0.1:{port}"], BREAKER.format(timeout="10s"), retries=0)
    async with gateway(tmp_path, toml) as gw:
        statuses = [(await fetch(url(gw, "/r/x")))[0] for _ in range(4)]
        assert statuses == [502, 502, 502, 503]


# ------------------------------------------------------------------ target health


async def test_one_of_two_targets_down_every_request_still_succeeds(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    extra = '[upstreams.app.health]\nmax_fails = 2\neject_for = "10s"\n'
    async with Backend() as b:
        toml = upstream([down, b.url], extra, connect_timeout="300ms")
        with capture_logs() as logs:
            async with gateway(tmp_path, toml) as gw, aiohttp.ClientSession() as s:
                for _ in range(20):
                    async with s.get(url(gw, "/r/echo")) as r:
                        assert r.status == 200
                assert b.hits == 20
                down_row, up_row = (await view(gw))["targets"]
                assert down_row["ejected"] and not down_row["available"]
                assert down_row["ejections_total"] == 1
                assert up_row["available"] and not up_row["ejected"]
                assert (up_row["busy"], up_row["idle"]) == (0, 1)
                budget = (await view(gw))["retry_budget"]
                assert budget["retries_total"] == 2  # one per connect error, then ejected
    ejected = [e for e in logs if e["event"] == "target_ejected"]
    assert len(ejected) == 1
    assert ejected[0]["target"] == down.removeprefix("http://")
    assert ejected[0]["reason"] == "passive"


async def test_every_target_ejected_is_503_no_healthy_target(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    extra = '[upstreams.app.health]\nmax_fails = 1\neject_for = "300ms"\n'
    async with gateway(tmp_path, upstream([down], extra, retries=0)) as gw:
        status, _, body = await fetch(url(gw, "/r/x"))
        assert (status, json.loads(body)["error"]) == (502, "bad_gateway")
        for _ in range(3):
            status, _, body = await fetch(url(gw, "/r/x"))
            assert (status, json.loads(body)["error"]) == (503, "no_healthy_target")
        assert (await view(gw))["no_healthy_total"] == 3
        await asyncio.sleep(0.35)  # eject_for is over: tried again (and refused again)
        assert (await fetch(url(gw, "/r/x")))[0] == 502
        assert (await fetch(url(gw, "/r/x")))[0] == 503


async def test_active_checks_take_a_failing_target_out_and_bring_it_back(tmp_path: Path) -> None:
    check, steady_check = Switch(200), Switch(200)
    extra = """[upstreams.app.health]
path = "/healthz"
interval = "50ms"
timeout = "200ms"
unhealthy_threshold = 2
healthy_threshold = 2
"""
    async with (
        Backend([web.get("/healthz", check.handle)], name="flaky") as flaky,
        Backend([web.get("/healthz", steady_check.handle)], name="steady") as steady,
    ):
        with capture_logs() as logs:
            async with gateway(tmp_path, upstream([flaky.url, steady.url], extra)) as gw:
                await wait_for(lambda: check.hits >= 2)
                # The checks have their own connection: the request pool is untouched.
                pool = gw.snapshot.upstreams["app"].targets[0].pool
                assert (pool.opened_total, pool.busy, pool.idle) == (0, 0, 0)

                check.status = 503
                await wait_for(lambda: not in_rotation(gw, 0))
                before = flaky.hits - check.hits
                for _ in range(10):
                    status, headers, body = await fetch(url(gw, "/r/echo"))
                    assert (status, headers.get("X-Backend")) == (200, "steady"), body
                assert flaky.hits - check.hits == before
                row = (await view(gw))["targets"][0]
                assert row["healthy"] is False and row["last_check_error"] == "status 503"

                check.status = 200
                await wait_for(lambda: in_rotation(gw, 0))
                backends = set()
                for _ in range(4):
                    _, headers, _ = await fetch(url(gw, "/r/echo"))
                    backends.add(headers["X-Backend"])
                assert backends == {"flaky", "steady"}
            checks_at_stop = check.hits
            await asyncio.sleep(0.15)
            assert check.hits == checks_at_stop  # the checker stopped with the gateway
    events = [(e["event"], e["reason"]) for e in logs if e["event"].startswith("target_")]
    assert events == [("target_ejected", "health_check"), ("target_restored", "health_check")]


# ------------------------------------------------------------------------ retries


async def test_post_that_reached_the_upstream_is_not_retried(tmp_path: Path) -> None:
    async def reset_after_body(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await read_request(reader)
        writer.transport.abort()  # read it all, then reset: no response byte

    async with (
        RawBackend(reset_after_body) as raw,
        Backend() as b,
        gateway(tmp_path, upstream([raw.url, b.url])) as gw,
    ):
        # Smooth round robin starts with the first target: the resetting one.
        status, _, body = await fetch(url(gw, "/r/echo"), "POST", data=b"pay once")
        assert (status, json.loads(body)["error"]) == (502, "bad_gateway")
        assert raw.connections_opened == 1
        assert b.hits == 0  # not retried on the healthy target
        # A GET to the same target is idempotent: retried on the other one.
        assert (await fetch(url(gw, "/r/echo")))[0] == 200  # b's turn
        assert (await fetch(url(gw, "/r/echo")))[0] == 200  # raw's turn, then b
        assert raw.connections_opened == 2
        assert b.hits == 2


async def test_a_retry_storm_is_capped_by_the_budget(tmp_path: Path) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.transport.abort()

    n = 150
    async with (
        RawBackend(reset) as r1,
        RawBackend(reset) as r2,
        gateway(tmp_path, upstream([r1.url, r2.url], retries=1)) as gw,
    ):
        async with aiohttp.ClientSession() as s:
            for _ in range(n):
                async with s.get(url(gw, "/r/x")) as resp:
                    assert resp.status == 502
        budget = (await view(gw))["retry_budget"]
    allowed = int(max(MIN_PER_SECOND * WINDOW, RATIO * n))  # 45: 20% of 150, over the floor
    assert r1.connections_opened + r2.connections_opened == n + allowed  # not 2 * n
    assert budget["retries_total"] == allowed
    assert budget["denied_total"] == n - allowed


# ------------------------------------------------------------------------ reloads


async def test_breaker_and_health_survive_a_reload_that_does_not_touch_them(
    tmp_path: Path,
) -> None:
    check = Switch(200)
    extra = BREAKER.format(timeout="10s") + (
        '[upstreams.app.health]\npath = "/healthz"\ninterval = "50ms"\n'
        "max_fails = 1\nunhealthy_threshold = 1\n"
    )
    async with Backend([web.get("/healthz", check.handle)]) as b:
        toml = upstream([b.url], extra)
        async with gateway(tmp_path, toml) as gw:
            reloader = gw.reloader
            for _ in range(3):
                await fetch(url(gw, "/r/status/503"))
            old = gw.snapshot.upstreams["app"]
            assert old.breaker is not None and old.breaker.state == 2
            old_health = old.targets[0].health
            checker = next(v for v in gw.snapshot.state.values() if isinstance(v, HealthChecker))

            # A new route: the breaker stays open, the checker keeps running.
            (tmp_path / "gateway.toml").write_text(
                toml + ROUTE.replace('"r"', '"r2"').replace("/r/", "/r2/")
            )
            assert await reloader.reload()
            new = gw.snapshot.upstreams["app"]
            assert new is not old
            assert new.breaker is old.breaker and new.targets[0].health is old_health
            assert (await fetch(url(gw, "/r2/echo")))[0] == 503
            assert checker.running
            hits = check.hits
            await wait_for(lambda: check.hits > hits)

            # Changed health settings: the checker is replaced, the old one stops.
            (tmp_path / "gateway.toml").write_text(
                toml.replace('interval = "50ms"', 'interval = "60ms"')
            )
            assert await reloader.reload()
            replaced = next(v for v in gw.snapshot.state.values() if isinstance(v, HealthChecker))
            assert replaced is not checker and replaced.running
            assert gw.snapshot.upstreams["app"].breaker is old.breaker
            await wait_for(lambda: not checker.running)
            checker = replaced

            # New breaker settings: a fresh, closed breaker. No health table: checks stop.
            changed = upstream([b.url], BREAKER.format(timeout="5s"))
            (tmp_path / "gateway.toml").write_text(changed)
            assert await reloader.reload()
            assert gw.snapshot.upstreams["app"].breaker is not old.breaker
            assert (await fetch(url(gw, "/r/echo")))[0] == 200
            await wait_for(lambda: not checker.running)
            hits = check.hits
            await asyncio.sleep(0.15)
            assert check.hits == hits


async def test_admin_upstreams_lists_every_target(tmp_path: Path) -> None:
    async with Backend() as b:
        down = f"http://127.0.0.1:{free_port()}"
        toml = upstream([b.url, down], BREAKER.format(timeout="10s"))
        async with gateway(tmp_path, toml) as gw:
            await fetch(url(gw, "/r/echo"))
            app = await view(gw)
    assert app["circuit"]["state"] == "closed"
    assert [t["url"] for t in app["targets"]] == [b.url, down]
    first = app["targets"][0]
    assert (first["available"], first["ejected"], first["healthy"]) == (True, False, None)
    assert (first["busy"], first["idle"]) == (0, 1)

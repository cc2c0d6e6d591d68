"""Rate limits through the whole gateway: local and Redis, tiers, lists, delay, outages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.backends import Backend
from harness.gateway import GatewayProcess, config, fetch, free_port, gateway, url
from harness.redis_server import RedisServer
from pyproxyd.ratelimit import redis as rl_redis
from pyproxyd.server import Gateway


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def toml(backend: Backend, limits: str, rate_limit: str = '"rl"', redis: str = "") -> str:
    return config(
        f"""
[upstreams.b]
targets = [{{ url = "{backend.url}" }}]
[[routes]]
id = "r"
path = "/**"
upstream = "b"
rate_limit = {rate_limit}
[[routes]]
id = "free"
path = "/free/**"
upstream = "b"
{redis}
{limits}
"""
    )


async def statuses(target: str, n: int, headers: dict[str, str] | None = None) -> list[int]:
    async with aiohttp.ClientSession() as s:
        out = []
        for _ in range(n):
            async with s.get(target, headers=headers or {}) as r:
                await r.read()
                out.append(r.status)
        return out


async def decisions(gw: Gateway) -> dict[str, float]:
    """pyproxyd_ratelimit_decisions_total of route r, policy rl, by result."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r,
    ):
        text = await r.text()
    return {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "pyproxyd_ratelimit_decisions_total"
        and sample.labels["route"] == "r"
        and sample.labels["policy"] == "rl"
    }


async def test_token_bucket_headers_429_and_anonymous(tmp_path: Path) -> None:
    limits = """
[rate_limits.rl]
algorithm = "token_bucket"
key = "header:X-Client-ID"
rate = "1/m"
burst = 3
"""
    async with Backend() as b, gateway(tmp_path, toml(b, limits)) as gw:
        before = await decisions(gw)
        status, h, _ = await fetch(url(gw, "/echo"), headers={"X-Client-ID": "a"})
        assert status == 200
        assert h["X-RateLimit-Limit"] == "3" and h["X-RateLimit-Remaining"] == "2"
        assert h["X-RateLimit-Reset"] == "60"
        assert h["RateLimit-Policy"] == '"rl";q=3;w=180'
        assert h["RateLimit"] == '"rl";r=2;t=60'
        assert await statuses(url(gw, "/echo"), 2, {"X-Client-ID": "a"}) == [200, 200]
        status, h, body = await fetch(url(gw, "/echo"), headers={"X-Client-ID": "a"})
        assert status == 429
        assert json.loads(body)["error"] == "rate_limited"
        assert h["Retry-After"] == "60"
        assert h["X-RateLimit-Remaining"] == "0" and h["RateLimit"].startswith('"rl";r=0;')
        assert (await fetch(url(gw, "/echo"), headers={"X-Client-ID": "b"}))[0] == 200
        # No key at all: limited together, under "anonymous", not let through.
        assert await statuses(url(gw, "/echo"), 4) == [200, 200, 200, 429]
        assert (await fetch(url(gw, "/free/echo")))[1].get("X-RateLimit-Limit") is None
        after = await decisions(gw)  # on /metrics: exported before each scrape
        assert after["allowed"] - before.get("allowed", 0) == 7
        assert after["rejected"] - before.get("rejected", 0) == 2


async def test_tiers_and_unknown_tier(tmp_path: Path) -> None:
    limits = """
[rate_limits.rl]
algorithm = "token_bucket"
key = "header:X-Client-ID"
tier_key = "header:X-Tier"
rate = "1/m"
burst = 1
[rate_limits.rl.tiers]
vip = { burst = 4 }
"""
    async with Backend() as b, gateway(tmp_path, toml(b, limits)) as gw:
        vip = {"X-Client-ID": "v", "X-Tier": "vip"}
        assert await statuses(url(gw, "/echo"), 5, vip) == [200] * 4 + [429]
        odd = {"X-Client-ID": "o", "X-Tier": "platinum"}  # unknown tier: the defaults
        assert await statuses(url(gw, "/echo"), 2, odd) == [200, 429]


async def test_a_list_refuses_when_any_refuses_and_consumes_nothing(tmp_path: Path) -> None:
    limits = """
[rate_limits.per-client]
algorithm = "token_bucket"
key = "header:X-Client-ID"
rate = "1/m"
burst = 2
[rate_limits.global]
algorithm = "sliding_window"
key = "header:X-Nothing"
limit = 4
window = "60s"
"""
    async with Backend() as b, gateway(tmp_path, toml(b, limits, '["per-client", "global"]')) as gw:
        target = url(gw, "/echo")
        assert await statuses(target, 3, {"X-Client-ID": "a"}) == [200, 200, 429]
        # a's refusal (per-client) consumed nothing of "global": b and c get the last slots
        assert await statuses(target, 1, {"X-Client-ID": "b"}) == [200]
        _, h, _ = await fetch(target, headers={"X-Client-ID": "c"})
        assert h["RateLimit-Policy"] == '"per-client";q=2;w=120, "global";q=4;w=60'
        assert h["X-RateLimit-Remaining"] == "0"  # the most restrictive: global
        assert await statuses(target, 1, {"X-Client-ID": "d"}) == [429]  # global refuses...
        assert await statuses(target, 2, {"X-Client-ID": "d"}) == [429, 429]
        # ...and d's refused requests did not use up d's own bucket
        policy = gw.snapshot.routes[0].limits.policies[0]  # type: ignore[union-attr]
        assert len(policy.store) == 3  # a, b, c have buckets; d none


async def test_leaky_bucket_delay_mode_and_a_client_that_leaves(tmp_path: Path) -> None:
    limits = """
[rate_limits.rl]
algorithm = "leaky_bucket"
mode = "delay"
key = "ip"
rate = "10/s"
burst = 2
"""
    async with Backend() as b, gateway(tmp_path, toml(b, limits)) as gw:
        loop = asyncio.get_running_loop()
        target = url(gw, "/echo")

        async def timed() -> tuple[int, float]:
            t0 = loop.time()
            status = (await fetch(target))[0]
            return status, loop.time() - t0

        results = await asyncio.gather(*(timed() for _ in range(4)))
        assert sorted(s for s, _ in results) == [200, 200, 200, 429]
        waits = sorted(t for s, t in results if s == 200)
        assert waits[0] < 0.08 and 0.08 <= waits[1] < 0.2 and 0.18 <= waits[2] < 0.35
        await asyncio.sleep(0.35)
        # A queued client that disconnects gives its slot back.
        assert (await fetch(target))[0] == 200
        async with aiohttp.ClientSession() as s:
            waiting = [asyncio.ensure_future(s.get(target)) for _ in range(2)]
            await asyncio.sleep(0.03)
            for w in waiting:
                w.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        await asyncio.sleep(0.03)
        tat = next(iter(gw.snapshot.routes[0].limits.policies[0].store._states.values()))  # type: ignore[union-attr]
        assert tat - loop.time() < 0.1  # only the served request is left in the bucket


async def test_redis_sliding_window_exact_and_again_after_window(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    limits = """
[rate_limits.rl]
algorithm = "sliding_window"
backend = "redis"
key = "ip"
limit = 3
window = "500ms"
"""
    redis = f'[redis]\nurl = "{redis_server.url}"\ntimeout = "200ms"'
    async with Backend() as b, gateway(tmp_path, toml(b, limits, redis=redis)) as gw:
        target = url(gw, "/echo")
        assert await statuses(target, 5) == [200, 200, 200, 429, 429]
        _, h, _ = await fetch(target)
        assert 1 <= int(h["Retry-After"]) <= 1 and h["RateLimit-Policy"] == '"rl";q=3;w=1'
        await asyncio.sleep(0.55)
        assert await statuses(target, 4) == [200, 200, 200, 429]


@pytest.mark.parametrize("on_error", ["local", "allow", "deny"])
async def test_redis_killed_then_restarted(
    tmp_path: Path, redis_server: RedisServer, on_error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rl_redis, "PROBE_EVERY", 0.05)
    limits = """
[rate_limits.rl]
algorithm = "token_bucket"
backend = "redis"
key = "header:X-Client-ID"
rate = "1/m"
burst = 2
"""
    redis = f'[redis]\nurl = "{redis_server.url}"\ntimeout = "50ms"\non_error = "{on_error}"'
    async with Backend() as b, gateway(tmp_path, toml(b, limits, redis=redis)) as gw:
        target = url(gw, "/echo")
        assert await statuses(target, 3, {"X-Client-ID": "a"}) == [200, 200, 429]
        redis_server.stop()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        got = await statuses(target, 6, {"X-Client-ID": "k"})
        assert loop.time() - t0 < 1.5  # no 5 s redis-py default per request
        if on_error == "local":
            assert got == [200, 200, 429, 429, 429, 429]  # the same settings, locally
        elif on_error == "allow":
            assert got == [200] * 6
        else:
            assert got == [503] * 6
            _, _, body = await fetch(target, headers={"X-Client-ID": "k"})
            assert json.loads(body)["error"] == "rate_limiter_unavailable"
        backend = next(
            v for v in gw.snapshot.state.values() if isinstance(v, rl_redis.RedisBackend)
        )
        assert backend.degraded
        redis_server.start()  # same port, empty: recovery without a gateway restart
        for _ in range(100):
            if not backend.degraded:
                break
            await asyncio.sleep(0.02)
        assert not backend.degraded
        assert await statuses(target, 3, {"X-Client-ID": "z"}) == [200, 200, 429]
        client = backend.client()
        assert await client.exists("pyproxyd:{rl:z}:token_bucket")


async def test_two_gateway_processes_share_one_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    burst = 10
    async with Backend() as b:
        procs = []
        ports = []
        for i in range(2):
            port, admin = free_port(), free_port()
            body = toml(
                b,
                f"""
[rate_limits.rl]
algorithm = "token_bucket"
backend = "redis"
key = "header:X-Client-ID"
rate = "1/s"
burst = {burst}
""",
                redis=f'[redis]\nurl = "{redis_server.url}"\ntimeout = "200ms"',
            ).replace('"127.0.0.1:0"]', f'"127.0.0.1:{port}"]', 1)
            body = body.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{admin}"')
            path = tmp_path / f"gw{i}.toml"
            path.write_text(body)
            procs.append(GatewayProcess(path))
            ports.append((port, admin))
        async with procs[0] as p0, procs[1] as p1:
            await asyncio.gather(p0.wait_ready(ports[0][1]), p1.wait_ready(ports[1][1]))
            async with aiohttp.ClientSession() as s:

                async def one(i: int) -> int:
                    port = ports[i % 2][0]
                    async with s.get(
                        f"http://127.0.0.1:{port}/echo", headers={"X-Client-ID": "shared"}
                    ) as r:
                        await r.read()
                        return r.status

                got = await asyncio.gather(*(one(i) for i in range(3 * burst)))
            allowed = got.count(200)
            assert burst - 2 <= allowed <= burst + 2, got
            assert got.count(429) == 3 * burst - allowed
            await p0.stop()
            await p1.stop()


async def test_reload_keeps_buckets_and_applies_a_new_tier_rate(tmp_path: Path) -> None:
    limits = """
[rate_limits.rl]
algorithm = "token_bucket"
key = "header:X-Client-ID"
tier_key = "header:X-Tier"
rate = "1/m"
burst = 2
[rate_limits.rl.tiers]
gold = {{ burst = {gold} }}
"""
    async with Backend() as b, gateway(tmp_path, toml(b, limits.format(gold=3))) as gw:
        target = url(gw, "/echo")
        plain, gold = {"X-Client-ID": "p"}, {"X-Client-ID": "g", "X-Tier": "gold"}
        assert await statuses(target, 3, plain) == [200, 200, 429]
        assert await statuses(target, 3, gold) == [200, 200, 200]
        (tmp_path / "gateway.toml").write_text(toml(b, limits.format(gold=5)))
        assert await gw.reloader.reload()
        assert await statuses(target, 1, plain) == [429]  # its bucket was kept
        assert await statuses(target, 3, gold) == [200, 200, 429]  # 5 now, 3 used


async def test_decisions_of_every_policy_reach_metrics(tmp_path: Path) -> None:
    """Each policy of a config with several has its samples (one was left without them)."""
    body = """
[rate_limits.multi-a]
algorithm = "token_bucket"
key = "header:X-Client-ID"
rate = "1/m"
burst = 1
[rate_limits.multi-b]
algorithm = "sliding_window"
key = "ip"
limit = 100
window = "60s"
[rate_limits.multi-c]
algorithm = "token_bucket"
key = "ip"
rate = "1/m"
burst = 2
"""
    async with Backend() as b:
        routes = f"""
[upstreams.b]
targets = [{{ url = "{b.url}" }}]
[[routes]]
id = "multi-ab"
path = "/ab/**"
upstream = "b"
strip_prefix = 1
rate_limit = ["multi-a", "multi-b"]
[[routes]]
id = "multi-c"
path = "/c/**"
upstream = "b"
strip_prefix = 1
rate_limit = "multi-c"
"""
        async with gateway(tmp_path, config(routes + body)) as gw:
            assert await statuses(url(gw, "/ab/echo"), 2, {"X-Client-ID": "x"}) == [200, 429]
            assert await statuses(url(gw, "/c/echo"), 3) == [200, 200, 429]
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r,
            ):
                text = await r.text()
    got = {
        (x.labels["route"], x.labels["policy"], x.labels["result"]): x.value
        for family in text_string_to_metric_families(text)
        for x in family.samples
        if x.name == "pyproxyd_ratelimit_decisions_total"
        and x.labels["policy"].startswith("multi-")
    }
    assert got[("multi-ab", "multi-a", "allowed")] == 1
    assert got[("multi-ab", "multi-a", "rejected")] == 1
    # multi-b allowed the first request; the second was refused by multi-a first
    assert got[("multi-ab", "multi-b", "allowed")] == 1
    assert got[("multi-c", "multi-c", "allowed")] == 2
    assert got[("multi-c", "multi-c", "rejected")] == 1

"""The Lua scripts against a real redis-server: same decisions as the pure cores."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from harness.redis_server import RedisServer, cluster_create, cluster_port
from pyproxyd.ratelimit import redis as rl_redis
from pyproxyd.ratelimit.algorithms import LeakyBucket, SlidingWindow, TokenBucket
from pyproxyd.ratelimit.redis import (
    RedisBackend,
    RedisStore,
    Unavailable,
    decision,
    redis_key,
    script_call,
)

# Offsets (s) from a base time; bursts, gaps and exact boundaries.
TIMES = [0, 0, 0, 0, 0.01, 0.05, 0.1, 0.1, 0.1, 0.15, 0.2, 0.3, 0.31, 0.5, 0.95, 1.0, 1.0, 1.05,
         1.2, 2.0, 2.0, 2.0, 2.0, 2.1]  # fmt: skip
ALGOS = [
    TokenBucket(10.0, 3),
    TokenBucket(4.0, 1.5),
    LeakyBucket(20.0, 2, delay=True),
    LeakyBucket(8.0, 1),
    SlidingWindow(3, 1.0),
    SlidingWindow(5, 0.25),
]


async def redis_decisions(backend: RedisBackend, key: str, algo: Any, base_us: int) -> list[Any]:
    out = []
    for t in TIMES:
        name, args, _ = script_call(algo, backend)
        args[3] = base_us + round(t * 1_000_000)  # ARGV[4]: now, instead of TIME
        out.append(decision(await backend.run(name, key, args)))
    return out


@pytest.mark.parametrize("algo", ALGOS, ids=repr)
async def test_scripts_match_the_pure_cores(redis_server: RedisServer, algo: Any) -> None:
    backend = RedisBackend(redis_server.url, 0.5, "test:")
    try:
        base = 1_700_000_000
        got = await redis_decisions(backend, redis_key("test:", "p", "k", "x"), algo, base * 10**6)
        state: Any = None
        for t, remote in zip(TIMES, got, strict=True):
            local, state = algo.decide(state, base + t)
            assert (remote.allowed, remote.remaining) == (local.allowed, local.remaining), t
            for field in ("reset", "retry_after", "delay"):
                assert getattr(remote, field) == pytest.approx(getattr(local, field), abs=2e-6)
    finally:
        await backend.aclose()


async def test_store_uses_redis_time_expires_keys_and_refunds(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, 0.5, "pfx:")
    store = RedisStore(backend, "pol", "sliding_window")
    try:
        sw = SlidingWindow(2, 0.3)
        d1, t1 = await store.take("1.2.3.4", sw)
        d2, _ = await store.take("1.2.3.4", sw)
        d3, _ = await store.take("1.2.3.4", sw)
        assert [d1.allowed, d2.allowed, d3.allowed] == [True, True, False]
        assert 0 < d3.retry_after <= 0.3
        await store.give_back("1.2.3.4", sw, t1)
        assert (await store.take("1.2.3.4", sw))[0].allowed
        client = backend.client()
        key = "pfx:{pol:1.2.3.4}:sliding_window"
        assert await client.exists(key)
        ttl = await client.pttl(key)
        assert 0 < ttl <= 301
        bucket = RedisStore(backend, "pol", "token_bucket")
        await bucket.take("k", TokenBucket(100.0, 5))
        assert 0 < await client.pttl("pfx:{pol:k}:token_bucket") <= 51
        await asyncio.sleep(0.35)
        assert not await client.exists(key)  # idle keys vanish
    finally:
        await backend.aclose()


def test_keys_carry_one_hash_tag() -> None:
    assert redis_key("p:", "pol", "1.2.3.4", "token_bucket") == "p:{pol:1.2.3.4}:token_bucket"
    odd = redis_key("p:", "pol", "a}b{c", "token_bucket")
    assert odd.count("{") == 1 and odd.count("}") == 1 and "sha1:" in odd
    assert len(redis_key("p:", "pol", "x" * 5000, "sliding_window")) < 100


async def test_degrades_fast_then_recovers_by_itself(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rl_redis, "PROBE_EVERY", 0.05)
    backend = RedisBackend(redis_server.url, 0.05, "t:")
    store = RedisStore(backend, "p", "token_bucket")
    tb = TokenBucket(100.0, 10)
    try:
        assert (await store.take("k", tb))[0].allowed
        redis_server.stop()
        for _ in range(rl_redis.FAIL_AFTER):
            with pytest.raises(Unavailable):
                await store.take("k", tb)
        assert backend.degraded
        calls = backend.calls
        started = time.monotonic()
        for _ in range(100):
            with pytest.raises(Unavailable):
                await store.take("k", tb)
        assert time.monotonic() - started < 0.05  # no timeout paid while degraded
        assert backend.calls == calls  # and Redis not asked
        redis_server.start()
        for _ in range(100):
            if not backend.degraded:
                break
            await asyncio.sleep(0.02)
        assert not backend.degraded
        assert (await store.take("k", tb))[0].allowed
    finally:
        await backend.aclose()


async def test_hung_redis_costs_the_timeout_not_five_seconds(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        backend = RedisBackend(f"redis://127.0.0.1:{s.getsockname()[1]}/0", 0.05, "t:")
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await RedisStore(backend, "p", "token_bucket").take("k", TokenBucket(1.0, 1))
        assert time.monotonic() - started < 0.5
        await backend.aclose()


async def test_scripts_on_a_three_node_cluster(tmp_path: Path) -> None:
    nodes = [
        RedisServer(tmp_path / f"node{i}", cluster_port(), "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf").start()
        for i in range(3)
    ]  # fmt: skip
    try:
        cluster_create([n.port for n in nodes])
        backend = RedisBackend(f"redis+cluster://127.0.0.1:{nodes[0].port}", 1.0, "c:")
        try:
            algos: list[tuple[str, Any]] = [
                ("token_bucket", TokenBucket(1.0, 2)),
                ("leaky_bucket", LeakyBucket(1.0, 1)),
                ("sliding_window", SlidingWindow(2, 10.0)),
            ]
            for name, algo in algos:
                store = RedisStore(backend, "pol", name)
                for client_key in ("1.1.1.1", "2.2.2.2", "consumer-x", "{odd}"):
                    got = [(await store.take(client_key, algo))[0].allowed for _ in range(3)]
                    assert got == [True, True, False], (name, client_key)
            slots = {await backend.client().cluster_keyslot(f"c:{{pol:k{i}}}:x") for i in range(40)}
            assert len(slots) > 1  # keys spread over the nodes; each call has one slot
        finally:
            await backend.aclose()
    finally:
        for n in nodes:
            n.stop()

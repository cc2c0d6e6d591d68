"""Limiter state in Redis, shared by every gateway instance.

The maths lives in the `.lua` files beside this module (gcra.lua for both
buckets, sliding_window.lua), loaded once per client with `register_script` (EVALSHA, and the script
itself on NOSCRIPT). Every call touches one key, named
`<key_prefix>{<policy>:<client key>}:<algorithm>`: the braces are the Cluster
hash tag, so a call's keys always sit in one slot, and a client key with
braces of its own (or a long one) is replaced by its SHA-1 first. Scripts
read the time with Redis `TIME` and set PEXPIRE, so idle keys vanish.

Redis trouble (redis-py 8 defaults to 5 s timeouts and 10
retries): every call has `timeout` as its deadline, at most one retry and a
pool wait as short as the call. After `FAIL_AFTER` failures in a row the
backend is *degraded*: calls fail at once without touching the network, a
background task pings every `PROBE_EVERY` seconds, and the first answer
ends it. `rate_limiter_degraded` / `rate_limiter_recovered` are logged once
each way. What a policy does meanwhile is its `on_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
from importlib.resources import files
from typing import Any

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .algorithms import Algorithm, Decision, LeakyBucket, SlidingWindow

log = structlog.get_logger("pyproxyd.ratelimit")

SCRIPTS = ("gcra", "sliding_window")
FAIL_AFTER = 3
PROBE_EVERY = 0.5
US = 1_000_000


def script_text(name: str) -> str:
    return files(__package__).joinpath(f"{name}.lua").read_text()


def redis_key(prefix: str, policy: str, client_key: str, algorithm: str) -> str:
    """`prefix{policy:client}:algorithm`; odd or long client keys are hashed."""
    if len(client_key) > 128 or "{" in client_key or "}" in client_key:
        client_key = "sha1:" + hashlib.sha1(client_key.encode()).hexdigest()
    return f"{prefix}{{{policy}:{client_key}}}:{algorithm}"


class Unavailable(Exception):
    """Redis did not answer (or the backend is degraded)."""


class RedisBackend:
    """One Redis client for every policy with `backend = "redis"`.

    Built at compile time without I/O; the client and its pool are created
    on first use, on the running loop. Carried over across reloads while the
    url, timeout and prefix stay the same.
    """

    def __init__(self, url: str, timeout: float, key_prefix: str) -> None:
        self.url = url
        self.timeout = timeout
        self.key_prefix = key_prefix
        self.cluster = url.startswith("redis+cluster://")
        self.failures = 0
        self.degraded = False
        self.calls = 0
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._probe: asyncio.Task[None] | None = None
        self._ids = itertools.count()
        self._id_prefix = os.urandom(6).hex()

    def __repr__(self) -> str:
        state = "degraded" if self.degraded else "ok"
        return f"<RedisBackend {self.url} [{state} | {self.failures} failures]>"

    def member(self) -> str:
        """A request id unique across processes (a sliding-window entry)."""
        return f"{self._id_prefix}{next(self._ids):x}"

    def client(self) -> Any:
        if self._client is None:
            t = self.timeout
            opts: dict[str, Any] = {
                "socket_timeout": t,
                "socket_connect_timeout": t,
                "retry": Retry(NoBackoff(), 1),
            }
            if self.cluster:
                url = "redis://" + self.url.removeprefix("redis+cluster://")
                self._client = RedisCluster.from_url(url, **opts)
            else:
                pool = BlockingConnectionPool.from_url(
                    self.url, max_connections=64, timeout=t, **opts
                )
                self._client = Redis(connection_pool=pool, retry=opts["retry"])
            self._scripts = {n: self._client.register_script(script_text(n)) for n in SCRIPTS}
        return self._client

    async def run(self, script: str, key: str, args: list[Any]) -> list[int]:
        """Run one script; raises Unavailable on any Redis trouble."""
        if self.degraded:
            raise Unavailable("redis degraded")
        if self._client is None:
            self.client()
        self.calls += 1
        try:
            # One retry inside redis-py at most; this deadline bounds both tries.
            async with asyncio.timeout(self.timeout * 2):
                result: list[int] = await self._scripts[script](keys=[key], args=args)
        except (RedisError, OSError, TimeoutError) as err:
            self._failed(err)
            raise Unavailable(str(err) or type(err).__name__) from None
        self.failures = 0
        return result

    def _failed(self, err: BaseException) -> None:
        self.failures += 1
        if self.failures >= FAIL_AFTER and not self.degraded:
            self.degraded = True
            log.warning(
                "rate_limiter_degraded",
                redis=self.url,
                error=str(err) or type(err).__name__,
                failures=self.failures,
            )
            self._probe = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while self.degraded:
            await asyncio.sleep(PROBE_EVERY)
            try:
                async with asyncio.timeout(self.timeout * 2):
                    await self.client().ping()
            except (RedisError, OSError, TimeoutError):
                continue
            self.degraded = False
            self.failures = 0
            log.info("rate_limiter_recovered", redis=self.url)

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()


def script_call(algo: Algorithm, backend: RedisBackend) -> tuple[str, list[Any], Any]:
    """(script name, ARGV, refund token) for one take; ARGV[3] is the cost, ARGV[4] now."""
    if isinstance(algo, SlidingWindow):
        member = backend.member()
        return "sliding_window", [algo.limit, algo.window * US, 1, "", member], member
    interval = US / algo.rate
    if isinstance(algo, LeakyBucket):
        return "gcra", [interval, algo.burst + 1, 1, "", int(algo.delay)], None
    return "gcra", [interval, algo.burst, 1, "", 0], None


def decision(result: list[int]) -> Decision:
    allowed, remaining, reset, retry, delay = result
    return Decision(bool(allowed), int(remaining), reset / US, retry / US, delay / US)


class RedisStore:
    """Limiter state of one policy in Redis."""

    __slots__ = ("algorithm", "backend", "policy")

    local = False

    def __init__(self, backend: RedisBackend, policy: str, algorithm: str) -> None:
        self.backend = backend
        self.policy = policy
        self.algorithm = algorithm

    def key(self, client_key: str) -> str:
        return redis_key(self.backend.key_prefix, self.policy, client_key, self.algorithm)

    async def take(self, key: str, algo: Algorithm) -> tuple[Decision, Any]:
        name, args, token = script_call(algo, self.backend)
        return decision(await self.backend.run(name, self.key(key), args)), token

    async def give_back(self, key: str, algo: Algorithm, token: Any) -> None:
        name, args, _ = script_call(algo, self.backend)
        args[2] = -1
        if token is not None:
            args[4] = token
        with contextlib.suppress(Unavailable):
            await self.backend.run(name, self.key(key), args)

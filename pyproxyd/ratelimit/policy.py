"""Compiled by mypyc (pyproxyd/compiled.py).

Compiled rate-limit policies and the per-route limiter the proxy calls.

Everything is resolved at compile time (`build_policy`): the key function,
the tier function, one algorithm object per tier, the store (carried over
across reloads), the header fragments. Per request `RouteLimiter.admit`
finds the key (`anonymous` when none of the keys is present) and the tier
(an unknown tier gets the policy's defaults), asks each policy of the route
in turn, and when one refuses gives back what the earlier ones granted, so a
refused request consumes nothing. Delay mode (leaky bucket) waits here; a
client that leaves while waiting gives its slot back.

`workers > 1` with local state: the store is a SharedStore in the
supervisor's shared-memory zone (pyproxyd/shm), so the numbers mean the same
as with one process: one bucket per key for the whole instance. `redis` is
one per fleet; `on_error = "local"` falls back to the same local store.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, NamedTuple, cast

from ..auth.identity import Identity
from ..errors import RateLimited, RateLimiterUnavailable
from ..keys import KeyFn, KeyRequest, compile_key
from ..shm.limits import SharedStore, log_cap
from ..shm.zone import Zone
from .algorithms import Algorithm, Decision, LeakyBucket, SlidingWindow, TokenBucket
from .local import BucketPath, LocalStore
from .redis import RedisBackend, RedisStore, Unavailable
from .report import ALLOWED, DELAYED, REJECTED, PolicyStats, Reporter

ANONYMOUS = "anonymous"
DEFAULT_TIER = "default"


class Limits(NamedTuple):
    """A policy's (or a tier's) numbers, as plain values: rate per second etc."""

    rate: float | None = None
    burst: int | None = None
    limit: int | None = None
    window: float | None = None


class PolicySpec(NamedTuple):
    """What compile.py reads out of a [rate_limits.*] table."""

    name: str
    algorithm: str  # token_bucket | leaky_bucket | sliding_window
    backend: str  # local | redis
    key: tuple[str, ...]
    tier_key: tuple[str, ...] | None
    mode: str  # delay | reject
    limits: Limits
    tiers: Mapping[str, Limits]


Local = LocalStore | SharedStore  # decide synchronously: in this process or this instance


def make_algorithm(algorithm: str, lim: Limits, mode: str) -> Algorithm:
    """The algorithm object for these numbers."""
    if algorithm == "sliding_window":
        assert lim.limit is not None and lim.window is not None
        return SlidingWindow(lim.limit, lim.window)
    assert lim.rate is not None
    if algorithm == "leaky_bucket":
        return LeakyBucket(lim.rate, float(lim.burst or 0), delay=mode == "delay")
    # token bucket: burst defaults to one second's worth of the rate
    burst = lim.burst if lim.burst else max(1, math.ceil(lim.rate))
    return TokenBucket(lim.rate, float(burst))


def _take(store: Local, key: str, algo: Algorithm, now: float) -> tuple[Decision, Any]:
    # One branch keeps the in-process store's call native when compiled (mypyc).
    if isinstance(store, LocalStore):
        return store.take(key, algo, now)
    return store.take(key, algo, now)


class Tier(NamedTuple):
    label: str  # the tier name, or "default": a bounded metrics label
    algo: Algorithm  # what the store enforces
    fallback: Algorithm | None  # the local limit when Redis is down (on_error = "local")
    policy_field_b: bytes  # '"name";q=..;w=..' of RateLimit-Policy
    quota_b: bytes  # X-RateLimit-Limit
    # The five header lines of an allowed request, cut where (remaining,
    # reset, remaining, reset) go: one str join and one encode a request,
    # native when compiled (bytes pieces joined cost a fifth more, chained +
    # a third, a bytes %-format twice).
    block_parts: tuple[str, str, str, str, str]


def _tier_fn(spec: Sequence[str]) -> KeyFn:
    """Like keys.compile_key, except that "consumer" yields the consumer's tier."""

    def consumer_tier(request: KeyRequest, identity: Identity | None, ip: str) -> str | None:
        if identity is None or identity.consumer is None:
            return None
        return identity.consumer.tier

    fns = tuple(consumer_tier if s == "consumer" else compile_key(s) for s in spec)

    def first(request: KeyRequest, identity: Identity | None, ip: str) -> str | None:
        for fn in fns:
            value = fn(request, identity, ip)
            if value is not None:
                return value
        return None

    return fns[0] if len(fns) == 1 else first


class Policy:
    __slots__ = (
        "algorithm", "by_ip", "default", "fallback", "key_fn", "name", "name_b", "on_error",
        "path", "stats", "store", "tier_fn", "tiers",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        algorithm: str,
        key_fn: KeyFn,
        tier_fn: KeyFn | None,
        default: Tier,
        tiers: dict[str, Tier],
        store: Local | RedisStore,
        stats: PolicyStats,
        *,
        on_error: str = "local",
        fallback: Local | None = None,
    ) -> None:
        self.name = name
        self.name_b = name.encode()
        self.algorithm = algorithm
        self.key_fn = key_fn
        self.by_ip = key_fn is compile_key("ip")  # the usual key: no call a request
        self.tier_fn = tier_fn
        self.default = default
        self.tiers = tiers
        self.store = store
        self.stats = stats
        self.on_error = on_error
        self.fallback = fallback
        # A shared store's buckets: their compiled request path, called natively
        # (through store.take it is a Python-level call of an attribute).
        self.path: BucketPath | None = store.path if isinstance(store, SharedStore) else None

    def __repr__(self) -> str:
        return f"<Policy {self.name} {self.algorithm} {self.store!r}>"

    def take_local(self, key: str, algo: Algorithm, now: float) -> tuple[Decision, Any]:
        """take() of a local store (LocalStore or SharedStore)."""
        path = self.path
        if path is not None:
            return path.take(key, algo, now)
        return _take(cast(Local, self.store), key, algo, now)

    def resolve(self, request: KeyRequest, identity: Identity | None, ip: str) -> tuple[str, Tier]:
        key = (ip if self.by_ip else self.key_fn(request, identity, ip)) or ANONYMOUS
        if self.tier_fn is None:
            return key, self.default
        name = self.tier_fn(request, identity, ip)
        return key, self.default if name is None else self.tiers.get(name, self.default)

    async def take(self, key: str, tier: Tier, now: float) -> tuple[Decision, Any]:
        """(decision, undo) where undo is (store, algo, token) or None."""
        store = self.store
        if not isinstance(store, RedisStore):
            decision, token = self.take_local(key, tier.algo, now)
            return decision, (store, tier.algo, token)
        try:
            decision, token = await store.take(key, tier.algo)
            return decision, (store, tier.algo, token)
        except Unavailable:
            if self.on_error == "deny":
                raise RateLimiterUnavailable(
                    f"rate limit {self.name!r}: Redis is unavailable"
                ) from None
            if self.on_error == "allow" or self.fallback is None or tier.fallback is None:
                return Decision(True, tier.algo.quota, 0.0, 0.0, 0.0), None
            decision, token = _take(self.fallback, key, tier.fallback, now)
            return decision, (self.fallback, tier.fallback, token)


_pending: set[asyncio.Task[None]] = set()


def give_back(key: str, undo: Any, now: float) -> None:
    """Return a granted slot: at once for local state, in the background for Redis."""
    if undo is None:
        return
    store, algo, token = undo
    if isinstance(store, LocalStore):
        store.give_back(key, algo, token, now)
        return
    if isinstance(store, SharedStore):
        store.give_back(key, algo, token, now)
        return
    task = asyncio.get_running_loop().create_task(store.give_back(key, algo, token))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


def _seconds(value: float) -> int:
    return max(0, math.ceil(value - 1e-9))


Headers = bytes  # an allowed request's rate-limit header lines, rendered ("Name: value\r\n"...)
_Granted = list[tuple["Policy", str, Tier, Decision, Any]]


class RouteLimiter:
    """The rate limits of one route, in the order the route lists them."""

    __slots__ = ("counters", "instant", "policies", "route")

    def __init__(self, route: str, policies: Sequence[Policy]) -> None:
        self.route = route
        self.policies = tuple(policies)
        # One policy's counts of this route by tier (PolicyStats.counter): one
        # lookup by a string a request instead of two by a (route, tier) tuple.
        self.counters: dict[str, list[int]] = {}
        # Local stores decide synchronously: no coroutine on the request path.
        self.instant = all(not isinstance(p.store, RedisStore) for p in self.policies)

    def admit(
        self,
        request: KeyRequest,
        identity: Identity | None,
        client_ip: str,
        path: str,
        now: float,
    ) -> Headers | Coroutine[Any, Any, Headers]:
        """Admit one request or raise RateLimited / RateLimiterUnavailable.

        `now` is the request's arrival (event loop time). Gives the rate-limit
        response headers; a coroutine to await instead when a store is remote
        (Redis) or the request must wait its turn (delay mode).
        """
        if not self.instant:
            return self._admit(request, identity, client_ip, path, now)
        if len(self.policies) == 1:  # the common case, without the lists
            policy = self.policies[0]
            key, tier = policy.resolve(request, identity, client_ip)
            decision, token = policy.take_local(key, tier.algo, now)
            if decision.allowed and not decision.delay:
                counts = self.counters.get(tier.label)
                if counts is None:
                    counts = self.counters[tier.label] = policy.stats.counter(
                        self.route, tier.label
                    )
                counts[ALLOWED] += 1
                policy.stats.count_key(key, ALLOWED)
                return _block(tier, decision)
            one: _Granted = []
            undo = (policy.store, tier.algo, token)
            self._grant(policy, key, tier, decision, undo, one, client_ip, path, now)
            return self._allowed(one)
        granted: _Granted = []
        for policy in self.policies:
            key, tier = policy.resolve(request, identity, client_ip)
            decision, token = policy.take_local(key, tier.algo, now)  # every store is local here
            undo = (policy.store, tier.algo, token)
            self._grant(policy, key, tier, decision, undo, granted, client_ip, path, now)
        return self._allowed(granted)

    async def _admit(
        self, request: KeyRequest, identity: Identity | None, client_ip: str, path: str, now: float
    ) -> Headers:
        granted: _Granted = []
        for policy in self.policies:
            key, tier = policy.resolve(request, identity, client_ip)
            try:
                decision, undo = await policy.take(key, tier, now)
            except BaseException:
                for _p, k, _t, _d, u in granted:
                    give_back(k, u, now)
                raise
            self._grant(policy, key, tier, decision, undo, granted, client_ip, path, now)
        allowed = self._allowed(granted)
        return allowed if isinstance(allowed, bytes) else await allowed

    def _grant(
        self,
        policy: Policy,
        key: str,
        tier: Tier,
        decision: Decision,
        undo: Any,
        granted: _Granted,
        client_ip: str,
        path: str,
        now: float,
    ) -> None:
        if decision.allowed:
            granted.append((policy, key, tier, decision, undo))
            return
        for _p, k, _t, _d, u in granted:
            give_back(k, u, now)
        policy.stats.count(self.route, tier.label, key, REJECTED)
        policy.stats.rejected(self.route, tier.label, key, client_ip, path)
        headers = _headers([(policy, tier, decision)])
        headers.append((b"Retry-After", b"%d" % max(1, _seconds(decision.retry_after))))
        raise RateLimited(
            f"rate limit {policy.name!r} exceeded",
            headers={n.decode(): v.decode() for n, v in headers},
        )

    def _allowed(self, granted: _Granted) -> Headers | Coroutine[Any, Any, Headers]:
        delay = max(g[3].delay for g in granted)
        result = DELAYED if delay > 0 else ALLOWED
        for policy, key, tier, _d, _u in granted:
            policy.stats.count(self.route, tier.label, key, result)
        headers = _render(_headers([(p, t, d) for p, _k, t, d, _u in granted]))
        if delay > 0:
            return _wait_turn(headers, delay, granted)
        return headers


async def _wait_turn(headers: Headers, delay: float, granted: _Granted) -> Headers:
    try:
        await asyncio.sleep(delay)
    except asyncio.CancelledError:  # the client left while waiting its turn
        later = asyncio.get_running_loop().time()
        for _p, k, _t, _d, u in granted:
            give_back(k, u, later)
        raise
    return headers


def _render(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join([b"%s: %s\r\n" % hv for hv in pairs])


# A reset in seconds, and a small bucket's remaining, rendered once.
_NUMBERS: Final = tuple(str(n) for n in range(1024))


def _number(n: int) -> str:
    return _NUMBERS[n] if 0 <= n < 1024 else str(n)


def _block(tier: Tier, d: Decision) -> bytes:
    """One policy's five header lines (Tier.block_parts filled in)."""
    p = tier.block_parts
    left = _number(d.remaining)
    reset = _number(_seconds(d.reset))
    return "".join((p[0], left, p[1], reset, p[2], left, p[3], reset, p[4])).encode()


def _headers(decided: Sequence[tuple[Policy, Tier, Decision]]) -> list[tuple[bytes, bytes]]:
    # X-RateLimit-* follow the most restrictive policy; the IETF fields list them all.
    if len(decided) == 1:
        _p, tier, d = decided[0]
        lines = _block(tier, d).split(b"\r\n")
        return [(n, v) for n, _, v in (line.partition(b": ") for line in lines if line)]
    else:
        _p, tier, d = min(decided, key=lambda ptd: ptd[2].remaining)
        reset = _seconds(d.reset)
        policy_field = b", ".join(t.policy_field_b for _p, t, _d in decided)
        ratelimit = b", ".join(
            b'"%s";r=%d;t=%d' % (p.name_b, d.remaining, _seconds(d.reset)) for p, _t, d in decided
        )
    return [
        (b"X-RateLimit-Limit", tier.quota_b),
        (b"X-RateLimit-Remaining", b"%d" % d.remaining),
        (b"X-RateLimit-Reset", b"%d" % reset),
        (b"RateLimit-Policy", policy_field),
        (b"RateLimit", ratelimit),
    ]


def _tier(spec: PolicySpec, label: str, lim: Limits) -> Tier:
    algo = make_algorithm(spec.algorithm, lim, spec.mode)
    fallback = algo if spec.backend == "redis" else None
    field = f'"{spec.name}";q={algo.quota};w={max(1, _seconds(algo.window))}'
    quota = str(algo.quota)
    parts = (
        f"X-RateLimit-Limit: {quota}\r\nX-RateLimit-Remaining: ",
        "\r\nX-RateLimit-Reset: ",
        f'\r\nRateLimit-Policy: {field}\r\nRateLimit: "{spec.name}";r=',
        ";t=",
        "\r\n",
    )
    return Tier(label, algo, fallback, field.encode(), quota.encode(), parts)


def build_policy(
    spec: PolicySpec,
    *,
    old: Mapping[Any, Any],
    state: dict[Any, Any],
    redis: RedisBackend | None = None,
    on_error: str = "local",
    zone: Zone | None = None,
) -> Policy:
    """Compile one policy; its state is carried over from `old` when the same
    things are counted (name, algorithm, mode, backend, key): a change of
    rate, burst, limit or tiers applies to the existing buckets. With a
    shared `zone` (workers > 1) the state is there, under a tag made of the
    same things, so every worker finds it, and so does the next config."""

    def carry(key: Any, make: Callable[[], Any]) -> Any:
        # Shared by the policies of one compile (the reporter): the first policy's
        # object, not one per policy with only the last kept in `state`, which
        # left the others' stats unexported, unsummarised and lost on reload.
        if key in state:
            return state[key]
        obj = old[key] if key in old else make()
        state[key] = obj
        return obj

    ident = (spec.name, spec.algorithm, spec.mode, spec.backend, spec.key)
    default = _tier(spec, DEFAULT_TIER, spec.limits)
    tiers = {}
    for name, lim in spec.tiers.items():
        # A tier's unset numbers are the policy's. (Field by field: iterating
        # the tuple would type each item float, and mypyc would store 4 as 4.0.)
        merged = spec.limits._replace(**{k: v for k, v in lim._asdict().items() if v is not None})
        tiers[name] = _tier(spec, name, merged)

    # A shared window's log lives in the size class of its largest limit: a
    # reload that moves it to another class starts those logs afresh.
    windows = [
        t.algo.limit for t in (default, *tiers.values()) if isinstance(t.algo, SlidingWindow)
    ]
    log_class = log_cap(max(windows)) if zone is not None and windows else None

    def local() -> Local:
        if zone is None:
            return LocalStore()
        return SharedStore(zone, repr(ident), log_class)

    local_key = ("ratelimit_local", *ident, zone is not None, log_class)
    store: Local | RedisStore
    fallback = None
    if spec.backend == "redis":
        assert redis is not None
        store = RedisStore(redis, spec.name, spec.algorithm)
        if on_error == "local":
            fallback = carry(local_key, local)
    else:
        store = carry(local_key, local)
    reporter: Reporter = carry(("ratelimit_reporter",), Reporter)
    stats = reporter.stats.get(spec.name)
    if stats is None or stats.algorithm != spec.algorithm:
        stats = PolicyStats(spec.name, spec.algorithm)
    reporter.stats[spec.name] = stats
    return Policy(
        spec.name,
        spec.algorithm,
        compile_key(spec.key),
        _tier_fn(spec.tier_key) if spec.tier_key else None,
        default,
        tiers,
        store,
        stats,
        on_error=on_error,
        fallback=fallback,
    )

"""Compiled by mypyc (pyproxyd/compiled.py).

The immutable runtime objects a request sees, and the holder that swaps them.

A snapshot is built whole by `compile.py`, then installed with one
assignment. Stateful parts (pools, breakers, retry budgets, target health and
its checkers; limiter buckets later) live in `Snapshot.state`, keyed by name
plus settings, so the next compile can carry the very same objects over when
their settings did not change. Installing a snapshot calls `activate()` on
those that have background work; dropping one calls its `aclose()`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Container, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .auth.identity import Identity
from .auth.route import NO_AUTH, Authenticator, AuthRuntime
from .forwarding import TrustedProxies
from .keys import KeyFn, KeyRequest
from .middleware.chain import Chain
from .ratelimit.policy import RouteLimiter
from .resilience.breaker import Breaker
from .resilience.retry import RetryBudget
from .routing import Router
from .split import TARGET, Split, stable_hash
from .upstream.health import TargetHealth, UpstreamHealth
from .upstream.pool import TargetPool


class Balancer(Protocol):
    def choose(self, skip: Container[int] = ()) -> int | None: ...


class KeyedBalancer(Balancer, Protocol):
    def choose_key(self, key: int, skip: Container[int] = ()) -> int | None: ...


@dataclass(slots=True, eq=False)
class Target:
    url: str
    label: str  # "host:port", as in metrics and logs
    host_header: bytes  # b"Host: host:port\r\n", prebuilt
    weight: int
    pool: TargetPool
    health: TargetHealth | None = None  # passive/active health; None: always in rotation


@dataclass(slots=True, eq=False)
class Upstream:
    name: str
    targets: tuple[Target, ...]
    balancer: Balancer
    retries: int
    read_timeout: float
    breaker: Breaker | None = None
    budget: RetryBudget | None = None
    health: UpstreamHealth | None = None  # set when the targets have health settings
    key: KeyFn | None = None  # balance = "ip_hash" / "hash:<key>": the client key
    keyed: KeyedBalancer | None = None  # ... and its consistent-hash balancer
    http2: bool = False  # protocol h2c or h2: the only kind a gRPC call can go to

    def choose(self, skip: Container[int] = ()) -> int | None:
        return self.balancer.choose(skip)

    def set_targets(
        self, targets: tuple[Target, ...], balancer: Balancer, keyed: KeyedBalancer | None
    ) -> None:
        """A discovered set (discovery/runner.py). A request holds the Target
        it picked, never an index across an await, so a swap between two of
        its steps cannot send it elsewhere."""
        self.targets = targets
        self.balancer = balancer
        self.keyed = keyed

    def target_key(
        self, request: KeyRequest, identity: Identity | None, client_ip: str
    ) -> int | None:
        """The request's hashed client key for a hashing balancer; None: no key (random)."""
        if self.key is None:
            return None
        value = self.key(request, identity, client_ip)
        return None if value is None else stable_hash(value, TARGET)

    def pick(self, skip: set[int], now: float, key: int | None = None) -> int | None:
        """choose() among the targets in rotation at `now`; adds every pick to `skip`.

        Ejected or unhealthy targets are found lazily, one O(1) check per pick:
        with every target healthy this costs one choose() and one comparison.
        With a hashed client `key` (see `target_key`) the hashing balancer picks,
        and a skipped target hands the key to its next best target.
        """
        targets = self.targets
        keyed = self.keyed if key is not None else None
        while (
            index := self.balancer.choose(skip)
            if keyed is None or key is None
            else keyed.choose_key(key, skip)
        ) is not None:
            skip.add(index)
            health = targets[index].health
            if health is None or health.available(now):
                return index
        return None


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    id: str
    upstream: Upstream | None
    split: Split[Upstream] | None  # pyproxyd/split.py: random or sticky per client key
    path_fn: Callable[[str, dict[str, str]], str]  # normalised path, captures -> upstream path
    preserve_host: bool
    timeout: float | None
    auth: Authenticator | None = None  # (headers, token memo) -> identity; raises 401/403
    limits: RouteLimiter | None = None  # the route's rate limits; raises 429/503
    chain: Chain | None = None  # its middlewares (server's first); None when it has none

    def pick_upstream(
        self,
        request: KeyRequest | None = None,
        identity: Identity | None = None,
        client_ip: str = "",
    ) -> Upstream:
        if self.upstream is not None:
            return self.upstream
        assert self.split is not None
        if request is None:
            return self.split.choose()
        return self.split.pick(request, identity, client_ip)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: tuple[str, ...]
    workers: int
    trusted: TrustedProxies
    client_max_body_size: int
    client_header_timeout: float
    client_body_timeout: float
    keepalive_timeout: float
    graceful_timeout: float
    max_header_size: int
    tls: ssl.SSLContext | None  # the certificate loaded by this compile


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: str
    level: str
    access_log: bool
    file: str | None


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    router: Router
    routes: tuple[Route, ...]
    upstreams: dict[str, Upstream]
    server: ServerSettings
    admin_listen: str
    admin_token_env: str | None
    logging: LogSettings
    drop_request_headers: frozenset[bytes]  # lowered names never passed upstream
    state: dict[Hashable, Any]  # carried-over stateful objects, by name + settings
    digest: str
    file: str
    loaded_at: float
    auth: AuthRuntime = NO_AUTH  # the JWT verifier, for the claims route predicate
    # The shared document merged in from etcd.config_key: its key and revision.
    config_key: str | None = None
    revision: int | None = None

    def pools(self) -> Iterator[TargetPool]:
        for up in self.upstreams.values():
            for t in up.targets:
                yield t.pool


class SnapshotHolder:
    """The only mutable global: the current snapshot."""

    __slots__ = ("_listeners", "_retire_tasks", "current")

    def __init__(self, snapshot: Snapshot):
        self.current = snapshot
        self._retire_tasks: set[asyncio.Task[None]] = set()
        # Told of each new snapshot: what reads settings once (a listener's
        # timeouts) follows a reload without the reloader knowing it.
        self._listeners: list[Callable[[Snapshot], None]] = []

    def subscribe(self, listener: Callable[[Snapshot], None]) -> None:
        self._listeners.append(listener)

    def activate(self) -> None:
        """Start the background work of the current snapshot's state objects (those
        with `activate()`, e.g. health checkers). Idempotent; needs the running loop."""
        for obj in self.current.state.values():
            start = getattr(obj, "activate", None)
            if start is not None:
                start()

    def swap(self, new: Snapshot) -> Snapshot:
        """Install `new` and activate it; retire the state objects it did not carry over."""
        old, self.current = self.current, new
        self.activate()
        for listener in self._listeners:
            listener(new)
        kept = {id(v) for v in new.state.values()}
        retired = [v for v in old.state.values() if id(v) not in kept]
        if retired:
            task = asyncio.get_running_loop().create_task(_retire(retired))
            self._retire_tasks.add(task)
            task.add_done_callback(self._retire_tasks.discard)
        return old


async def _retire(objects: list[Any]) -> None:
    # Pools close their idle connections now and busy ones as they are released,
    # so requests in flight on the old snapshot finish normally.
    for obj in objects:
        close = getattr(obj, "aclose", None)
        if close is not None:
            await close()

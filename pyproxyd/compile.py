"""Config -> Snapshot: the only reader of the config models.

Everything the hot path needs is computed here once: header sets, parsed
networks, path functions, balancers, and the pools, breakers, retry budgets
and target health (carried over from the previous snapshot when their
settings did not change).
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable, Hashable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .auth import (
    APIKeyAuth,
    Authenticator,
    AuthRuntime,
    ClientIdAuth,
    Consumers,
    JWTAuth,
    JWTVerifier,
    RemoteKeys,
    StaticKeys,
)
from .auth.jwks import hs_secret_keys, parse_jwks
from .auth.jwks import merge as merge_keys
from .config import Config, JWTConfig, RouteConfig, UpstreamConfig, key_list
from .config_load import Loaded, Problem
from .discovery import Found
from .discovery.build import SourceMaker, source_maker
from .discovery.runner import Build, Cache, Discovered
from .forwarding import HOP_BY_HOP_B, REPLACED_B, TrustedProxies
from .keys import KeyFn, compile_key
from .middleware.build import Builder
from .ratelimit.policy import Limits, Policy, PolicySpec, RouteLimiter, build_policy
from .ratelimit.redis import RedisBackend
from .resilience.breaker import Breaker, BreakerSettings, transition_logger
from .resilience.retry import RetryBudget
from .routing import Router, RouteRule, upstream_path
from .shm.resilience import share_breaker, share_health
from .shm.zone import MAX_LOG, Zone
from .snapshot import LogSettings, Route, ServerSettings, Snapshot, Split, Target, Upstream
from .upstream.balance import LeastConn, Rendezvous, SmoothRoundRobin, WeightedRandom
from .upstream.h2pool import H2Pool
from .upstream.health import HealthChecker, HealthSettings, TargetHealth, UpstreamHealth
from .upstream.pool import PoolSettings, TargetPool


def unsupported(cfg: Config) -> list[Problem]:
    """Settings this build validates but cannot enforce yet.

    `run` refuses them rather than ignoring them: an ignored rate limit is
    an outage waiting to happen.
    """
    out: list[Problem] = []
    if (cfg.server.workers or os.cpu_count() or 1) > 1:
        for name, rl in cfg.rate_limits.items():
            if rl.backend != "local" or rl.algorithm != "sliding_window":
                continue
            limits = [rl.limit or 0, *(t.limit or 0 for t in rl.tiers.values())]
            if max(limits) > MAX_LOG:
                out.append(
                    Problem(
                        f"rate_limits.{name}.limit",
                        f"with workers > 1 a local sliding window counts at most {MAX_LOG} "
                        "requests (the shared zone keeps every timestamp); use a token "
                        "bucket or backend = 'redis'",
                    )
                )
    return out


def pool_settings(
    up: UpstreamConfig, max_header_size: int, base: Path | None = None
) -> PoolSettings:
    tls = up.tls
    ca = None
    if tls is not None and tls.ca is not None:
        ca = str(base / tls.ca) if base is not None else tls.ca
    return PoolSettings(
        max_connections=up.max_connections,
        keepalive=up.keepalive,
        keepalive_requests=up.keepalive_requests,
        keepalive_timeout=up.keepalive_timeout,
        keepalive_time=up.keepalive_time,
        connect_timeout=up.connect_timeout,
        read_timeout=up.read_timeout,
        max_head=max_header_size,
        protocol=up.protocol,
        max_streams=up.max_streams_per_connection,
        tls_ca=ca,
        tls_server_name=tls.server_name if tls is not None else None,
        tls_verify=tls.verify if tls is not None else True,
    )


def _client_tls(settings: PoolSettings) -> ssl.SSLContext:
    """An https:// target's TLS context; ALPN offers h2 alone for protocol = "h2"."""
    try:
        context = ssl.create_default_context(cafile=settings.tls_ca)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"tls.ca: cannot load {settings.tls_ca}: {e}") from None
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.protocol == "h2":
        context.set_alpn_protocols(["h2"])
    return context


def _pool(url: str, settings: PoolSettings) -> TargetPool:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    context = _client_tls(settings) if tls else None
    server_name = (settings.tls_server_name or host) if tls else None
    pool = TargetPool(host, port, settings, ssl=context, server_hostname=server_name, label=label)
    if settings.protocol != "http1":
        pool.h2 = H2Pool(pool, settings, ssl=context, server_hostname=server_name)
    return pool


def _target(
    upstream: str,
    url: str,
    weight: int,
    settings: PoolSettings,
    old: dict[Hashable, Any],
    state: dict[Hashable, Any],
) -> Target:
    key = ("pool", upstream, url, settings)
    pool = old.get(key)
    if not isinstance(pool, TargetPool):
        pool = _pool(url, settings)
    state[key] = pool
    return Target(url, pool.label, f"Host: {pool.label}\r\n".encode(), weight, pool)


def _upstream(
    name: str,
    up: UpstreamConfig,
    max_head: int,
    old: dict[Hashable, Any],
    state: dict[Hashable, Any],
    zone: Zone | None = None,
    sources: SourceMaker | None = None,
    base: Path | None = None,
) -> Upstream:
    settings = pool_settings(up, max_head, base)
    targets = tuple(_target(name, t.url, t.weight, settings, old, state) for t in up.targets)
    balancer, key, keyed = _balancer(up.balance, targets)
    upstream = Upstream(
        name,
        targets,
        balancer,
        up.retries,
        up.read_timeout,
        breaker=_breaker(name, up, old, state, zone),
        budget=_carry(old, state, ("retry_budget", name), RetryBudget) if up.retries else None,
        health=_health(name, up, targets, old, state, zone),
        key=key,
        keyed=keyed,
        http2=up.protocol != "http1",
    )
    if up.discovery is not None:
        assert sources is not None
        spec = up.discovery.model_dump(exclude_none=True)
        discovered: Discovered = _carry(
            old, state, ("discovery", name, tuple(spec.items())), lambda: sources(name, up)
        )
        discovered.attach(upstream, _discovered(name, up, settings, zone))
    return upstream


def _balancer(balance: str, targets: tuple[Target, ...]) -> tuple[Any, KeyFn | None, Any]:
    """(balancer, client key, keyed balancer) of a set of targets."""
    weights = [t.weight for t in targets]
    if balance == "least_conn":
        return LeastConn(weights, lambda i: targets[i].pool.busy), None, None
    if balance == "random":
        return WeightedRandom(weights), None, None
    if balance == "ip_hash" or balance.startswith("hash:"):
        # Consistent (rendezvous) hashing on the client key; an absent key: weighted
        # random. A target that leaves remaps only its own keys.
        key = compile_key("ip" if balance == "ip_hash" else balance[5:])
        keyed = Rendezvous(weights, [t.url for t in targets])
        return keyed, key, keyed
    return SmoothRoundRobin(weights), None, None


def _discovered(name: str, up: UpstreamConfig, settings: PoolSettings, zone: Zone | None) -> Build:
    """How a discovered set becomes this upstream's targets: each keeps its
    pool and health by URL and settings (discovery/runner.py's Cache)."""
    checks = _health_settings(up)

    def build(found: list[Found], cache: Cache) -> tuple[tuple[Target, ...], Any, Any]:
        targets = []
        for f in found:
            pool: TargetPool = cache.get(("pool", f.url, settings), partial(_pool, f.url, settings))
            t = Target(f.url, pool.label, f"Host: {pool.label}\r\n".encode(), f.weight, pool)
            if checks is not None:
                t.health = cache.get(
                    ("health", f.url, checks, zone is not None),
                    _health_maker(name, t, checks, zone),
                )
                if checks.path is not None:
                    cache.get(("health_check", f.url, checks), _checker_maker(t, checks))
            targets.append(t)
        balancer, _, keyed = _balancer(up.balance, tuple(targets))
        return tuple(targets), balancer, keyed

    return build


# -- resilience: breakers, retry budgets and target health, carried over by name + settings


def _carry(
    old: dict[Hashable, Any], state: dict[Hashable, Any], key: Hashable, make: Callable[[], Any]
) -> Any:
    obj = old[key] if key in old else make()
    state[key] = obj
    return obj


def _breaker(
    name: str,
    up: UpstreamConfig,
    old: dict[Hashable, Any],
    state: dict[Hashable, Any],
    zone: Zone | None,
) -> Breaker | None:
    cb = up.circuit_breaker
    if cb is None:
        return None
    settings = BreakerSettings(
        consecutive_failures=cb.consecutive_failures,
        failure_ratio=cb.failure_ratio,
        min_requests=cb.min_requests,
        interval=cb.interval,
        timeout=cb.timeout,
        max_requests=cb.max_requests,
        failure_statuses=frozenset(cb.failure_statuses),
    )
    make = partial(Breaker, settings, name=name, listener=transition_logger(name))
    if zone is not None:  # one per instance: the state is in the zone, tagged as the key
        make = partial(share_breaker, zone, make)
    breaker: Breaker = _carry(old, state, ("breaker", name, settings, zone is not None), make)
    return breaker


def _health_settings(up: UpstreamConfig) -> HealthSettings | None:
    h = up.health
    if h is None:
        return None
    return HealthSettings(
        max_fails=h.max_fails,
        eject_for=h.eject_for,
        path=h.path,
        interval=h.interval,
        timeout=h.timeout,
        healthy_threshold=h.healthy_threshold,
        unhealthy_threshold=h.unhealthy_threshold,
        expected_statuses=frozenset(h.expected_statuses),
    )


def _health_maker(
    name: str, t: Target, settings: HealthSettings, zone: Zone | None
) -> Callable[[], TargetHealth]:
    make = partial(TargetHealth, settings, name, t.label)
    if zone is not None:
        make = partial(share_health, zone, make, t.url)
    return make


def _checker_maker(t: Target, settings: HealthSettings) -> Callable[[], HealthChecker]:
    assert t.health is not None
    pool = t.pool
    return partial(
        HealthChecker,
        t.health,
        pool.host,
        pool.port,
        ssl=pool.ssl,
        server_hostname=pool.server_hostname,
        label=pool.label,
        protocol=pool.settings.protocol,
    )


def _health(
    name: str,
    up: UpstreamConfig,
    targets: tuple[Target, ...],
    old: dict[Hashable, Any],
    state: dict[Hashable, Any],
    zone: Zone | None,
) -> UpstreamHealth | None:
    settings = _health_settings(up)
    if settings is None:
        return None
    for t in targets:
        key = ("health", name, t.url, settings, zone is not None)
        health: TargetHealth = _carry(old, state, key, _health_maker(name, t, settings, zone))
        t.health = health
        if settings.path is not None:
            _carry(old, state, ("health_check", name, t.url, settings), _checker_maker(t, settings))
    upstream_health: UpstreamHealth = _carry(
        old, state, ("upstream_health", name), lambda: UpstreamHealth(name)
    )
    return upstream_health


# -- auth: the key source, the verifier and the consumers; one authenticator a route


class _Auth(NamedTuple):
    verifier: JWTVerifier | None
    consumers: Consumers
    api_key_header: str


def _auth(
    loaded: Loaded, cfg: Config, old: dict[Hashable, Any], state: dict[Hashable, Any]
) -> _Auth:
    consumers = Consumers(
        (name, c.tier, c.api_key_sha256, c.client_ids) for name, c in cfg.consumers.items()
    )
    j = cfg.auth.jwt
    verifier = None
    if j is not None:
        verifier = JWTVerifier(
            _key_source(loaded, j, old, state),
            algorithms=j.algorithms,
            issuer=j.issuer,
            audience=j.audience,
            leeway=j.leeway,
            roles_claim=j.roles_claim,
            forward_claims=j.forward_claims,
            consumers=consumers,
        )
    header = cfg.auth.api_key.header if cfg.auth.api_key is not None else "X-API-Key"
    return _Auth(verifier, consumers, header)


def _key_source(
    loaded: Loaded, j: JWTConfig, old: dict[Hashable, Any], state: dict[Hashable, Any]
) -> StaticKeys | RemoteKeys:
    if j.jwks_url:
        # Carried over while the URL and algorithms stay: a reload does not refetch.
        key = ("jwks_url", j.jwks_url, tuple(j.algorithms))
        remote = old.get(key)
        if not isinstance(remote, RemoteKeys):
            remote = RemoteKeys(j.jwks_url, j.algorithms)
        state[key] = remote
        return remote
    sets = []
    if j.jwks_file:  # re-read by every compile, so a reload picks up a rotated file
        path = loaded.path.parent / j.jwks_file
        try:
            sets.append(parse_jwks(path.read_bytes(), j.algorithms, strict=True))
        except OSError as e:
            raise ValueError(f"auth.jwt.jwks_file: cannot read {path}: {e.strerror}") from None
        except ValueError as e:
            raise ValueError(f"auth.jwt.jwks_file: {path}: {e}") from None
    if j.hs_secret_env:
        secret = os.environ.get(j.hs_secret_env, "")
        if not secret:
            raise ValueError(
                f"auth.jwt.hs_secret_env: environment variable {j.hs_secret_env} is not set"
            )
        try:
            sets.append(hs_secret_keys(secret.encode(), j.algorithms))
        except ValueError as e:
            raise ValueError(f"auth.jwt.hs_secret_env: {e}") from None
    keys = merge_keys(*sets)
    if not len(keys):
        raise ValueError(f"auth.jwt: no key fits the algorithms {', '.join(j.algorithms)}")
    return StaticKeys(keys)


def _route_auth(r: RouteConfig, a: _Auth) -> Authenticator | None:
    if r.auth in ("jwt", "optional_jwt"):
        if a.verifier is None:
            raise ValueError(f"route {r.id!r}: auth = {r.auth!r} needs an [auth.jwt] table")
        return JWTAuth(
            a.verifier,
            optional=r.auth == "optional_jwt",
            roles=frozenset(r.require_roles),
            consumers=a.consumers,
        )
    if r.auth == "api_key":
        return APIKeyAuth(a.api_key_header, a.consumers)
    # auth = "none": only an X-Client-ID lookup, when some consumer has client_ids
    return ClientIdAuth(a.consumers) if a.consumers.by_client_id else None


def warnings(cfg: Config) -> list[Problem]:
    """Valid settings worth a word from `validate`."""
    out: list[Problem] = []
    for name, up in cfg.upstreams.items():
        if up.tls is not None and not up.tls.verify:
            out.append(
                Problem(
                    f"upstreams.{name}.tls.verify",
                    "certificate checking is off: anyone on the path can pose as the upstream",
                )
            )
    for i, route in enumerate(cfg.routes):
        # A gRPC method is a path /package.Service/Method: a route whose
        # pattern starts that way is meant for gRPC calls, which an HTTP/1.1
        # upstream cannot carry (they are answered 14 UNAVAILABLE).
        first = route.path.lstrip("/").split("/", 1)[0]
        names = [route.upstream] if route.upstream else [s.upstream for s in route.split or ()]
        http1 = [n for n in names if n in cfg.upstreams and cfg.upstreams[n].protocol == "http1"]
        if "." in first and "{" not in first and "*" not in first and http1:
            out.append(
                Problem(
                    f"routes[{i}].upstream",
                    f"{route.path!r} looks like a gRPC service, but upstream {http1[0]!r} speaks "
                    "HTTP/1.1: gRPC calls to it are answered 14 UNAVAILABLE "
                    '(set protocol = "h2c" or "h2" on the upstream)',
                )
            )
    return out


# -- rate limits: policies compiled once, their state carried over (pyproxyd/ratelimit)


def _policies(
    cfg: Config, old: dict[Hashable, Any], state: dict[Hashable, Any], zone: Zone | None
) -> dict[str, Policy]:
    redis = None
    on_error = "local"
    if cfg.redis is not None:
        rc = cfg.redis
        on_error = rc.on_error
        if any(rl.backend == "redis" for rl in cfg.rate_limits.values()):
            make = partial(RedisBackend, rc.url, rc.timeout, rc.key_prefix)
            redis = _carry(old, state, ("redis", rc.url, rc.timeout, rc.key_prefix), make)

    def limits(x: Any) -> Limits:
        return Limits(x.rate.per_second if x.rate else None, x.burst, x.limit, x.window)

    out = {}
    for name, rl in cfg.rate_limits.items():
        spec = PolicySpec(
            name=name,
            algorithm=rl.algorithm,
            backend=rl.backend,
            key=key_list(rl.key),
            tier_key=key_list(rl.tier_key) if rl.tier_key else None,
            mode=rl.mode,
            limits=limits(rl),
            tiers={t: limits(tc) for t, tc in rl.tiers.items()},
        )
        out[name] = build_policy(
            spec, old=old, state=state, redis=redis, on_error=on_error, zone=zone
        )
    return out


def _route_limits(r: RouteConfig, policies: dict[str, Policy]) -> RouteLimiter | None:
    if not r.rate_limit:
        return None
    names = [r.rate_limit] if isinstance(r.rate_limit, str) else r.rate_limit
    return RouteLimiter(r.id, [policies[n] for n in names])


def _route(
    r: RouteConfig,
    upstreams: dict[str, Upstream],
    auth: _Auth,
    policies: dict[str, Policy] | None = None,
    chains: Builder | None = None,
    outer: list[str] | None = None,
) -> Route:
    split = None
    if r.split is not None:
        # The slot table (pyproxyd/split.py) is built here, once; zero weights own no slots.
        split = Split(
            [upstreams[s.upstream] for s in r.split],
            [s.weight for s in r.split],
            key_specs=() if r.hash_on == "random" else key_list(r.hash_on),
        )
    return Route(
        id=r.id,
        upstream=upstreams[r.upstream] if r.upstream is not None else None,
        split=split,
        path_fn=upstream_path(r.rewrite, r.strip_prefix),
        preserve_host=r.preserve_host,
        timeout=r.timeout,
        auth=_route_auth(r, auth),
        limits=_route_limits(r, policies or {}),
        chain=chains.chain([*(outer or ()), *r.middlewares], r.timeout) if chains else None,
    )


def _rule(r: RouteConfig, route: Route) -> RouteRule:
    return RouteRule(
        id=r.id,
        pattern=r.path,
        methods=frozenset(r.methods) if r.methods else None,
        headers=tuple((k.lower(), None if v == "*" else v) for k, v in r.headers.items()),
        query=tuple((k, None if v == "*" else v) for k, v in r.query.items()),
        claims=tuple(r.claims.items()),
        target=route,
    )


def _tls(cert: str, key: str, http2: bool = False) -> ssl.SSLContext:
    """The listener's TLS context, loaded by every compile: a reload serves a renewed
    certificate, and a pair that does not load is refused before it is swapped in."""
    for field, path in (("cert", cert), ("key", key)):
        try:
            open(path, "rb").close()  # load_cert_chain does not say which file is missing
        except OSError as e:
            raise ValueError(f"server.tls.{field}: cannot read {path}: {e.strerror}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise ValueError(f"server.tls: {cert} and {key} do not load: {e.reason or e}") from None
    if http2:  # (a reload's new context is the one a handshake picks in: see Gateway)
        context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def _rel(loaded: Loaded, path: str) -> str:
    # Relative paths in the config are relative to the config file's folder.
    return str(loaded.path.parent / path)


def _folder(loaded: Loaded, path: str) -> Path:
    return (loaded.path.parent / path).resolve()


ZONE = ("shm_zone",)  # the worker's shared zone, carried in the state from compile to compile


def compile_snapshot(
    loaded: Loaded, previous: Snapshot | None = None, zone: Zone | None = None
) -> Snapshot:
    """`zone`: the instance's shared zone (a worker's first compile; later ones
    find it in `previous`). Without one, all state is this process's."""
    cfg = loaded.config
    old: dict[Hashable, Any] = previous.state if previous is not None else {}
    state: dict[Hashable, Any] = {}
    if zone is None:
        zone = old.get(ZONE)
    if zone is not None:
        state[ZONE] = zone
    sources = source_maker(cfg, loaded.path.parent)
    upstreams = {
        name: _upstream(
            name, up, cfg.server.max_header_size, old, state, zone, sources, loaded.path.parent
        )
        for name, up in cfg.upstreams.items()
    }
    auth = _auth(loaded, cfg, old, state)
    policies = _policies(cfg, old, state, zone)
    forwarded_claims = frozenset(
        h.lower().encode() for h in (cfg.auth.jwt.forward_claims.values() if cfg.auth.jwt else ())
    )
    drop = HOP_BY_HOP_B | REPLACED_B | forwarded_claims
    chains = Builder(
        cfg.middlewares,
        [_folder(loaded, p) for p in cfg.server.python_path],
        drop | {b"content-length"},
    )
    outer = cfg.server.middlewares
    routes = tuple(_route(r, upstreams, auth, policies, chains, outer) for r in cfg.routes)
    router = Router([_rule(r, route) for r, route in zip(cfg.routes, routes, strict=True)])
    s = cfg.server
    return Snapshot(
        router=router,
        routes=routes,
        upstreams=upstreams,
        server=ServerSettings(
            listen=tuple(s.listen),
            workers=s.workers,
            trusted=TrustedProxies.parse(s.trusted_proxies),
            client_max_body_size=s.client_max_body_size,
            client_header_timeout=s.client_header_timeout,
            client_body_timeout=s.client_body_timeout,
            keepalive_timeout=s.keepalive_timeout,
            graceful_timeout=s.graceful_timeout,
            max_header_size=s.max_header_size,
            tls=_tls(_rel(loaded, s.tls.cert), _rel(loaded, s.tls.key), s.http2) if s.tls else None,
            http2=s.http2,
            max_concurrent_streams=s.max_concurrent_streams,
        ),
        admin_listen=cfg.admin.listen,
        admin_token_env=cfg.admin.token_env,
        logging=LogSettings(
            cfg.logging.format, cfg.logging.level, cfg.logging.access_log, cfg.logging.file
        ),
        drop_request_headers=drop,
        state=state,
        digest=loaded.digest,
        file=str(loaded.path),
        loaded_at=time.time(),
        auth=AuthRuntime(auth.verifier, claim_routes=any(r.claims for r in cfg.routes)),
        config_key=cfg.etcd.config_key if cfg.etcd is not None else None,
        revision=loaded.document.revision if loaded.document is not None else None,
    )

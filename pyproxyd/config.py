"""Pydantic models of gateway.toml: inert data, nothing else.

Every table is frozen and refuses unknown keys. Cross-references (a route
naming an unknown upstream, ...) are checked here too, so that `validate`
reports every problem with its dotted path. Only `compile.py` reads these
models; the hot path never imports them.
"""

from __future__ import annotations

import ipaddress
import re
import string
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .discovery.models import DiscoveryConfig, DnsConfig, EtcdConfig
from .middleware.models import ANSWERING, Middleware
from .routing import check_pattern
from .units import Duration, RateValue, Size

KEY_RE = re.compile(r"^(ip|consumer|(header|cookie|claim):[A-Za-z0-9_\-.]+)$")
BALANCE_RE = re.compile(r"^(round_robin|least_conn|random|ip_hash|hash:.+)$")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token
# Headers a forward_claims entry may not take over: the gateway sets, strips or
# reads them itself (framing, hop-by-hop, forwarding, credentials).
RESERVED_HEADERS = frozenset(
    {
        "host", "content-length", "transfer-encoding", "connection", "keep-alive",
        "proxy-connection", "te", "trailer", "upgrade", "proxy-authenticate",
        "proxy-authorization", "authorization", "cookie", "x-forwarded-for",
        "x-forwarded-proto", "x-forwarded-host", "x-request-id", "traceparent", "tracestate",
    }
)  # fmt: skip
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def check_key(value: str) -> str:
    if not KEY_RE.match(value):
        raise ValueError(
            f"invalid key {value!r}: expected 'ip', 'consumer', 'header:<Name>', "
            "'cookie:<name>' or 'claim:<name>'"
        )
    return value


def key_list(value: str | list[str]) -> tuple[str, ...]:
    keys = [value] if isinstance(value, str) else list(value)
    if not keys:
        raise ValueError("a key list cannot be empty")
    return tuple(check_key(k) for k in keys)


def check_host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid address {value!r}: expected 'host:port' or '[::]:port'")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"invalid address {value!r}: unclosed '['")
        ipaddress.IPv6Address(host[1:-1])
    elif not host:
        raise ValueError(f"invalid address {value!r}: missing host")
    return value


# ------------------------------------------------------------------ server


class TLSConfig(Model):
    """TLS for the client listener."""

    cert: str = Field(
        description="PEM certificate chain file (relative to the config file's folder)"
    )
    key: str = Field(description="PEM private key file (relative to the config file's folder)")


class ServerConfig(Model):
    """The client-facing listener."""

    listen: list[str] = Field(
        default_factory=lambda: ["0.0.0.0:8080"],
        min_length=1,
        description='addresses to listen on, "host:port" ("[::]:8080" for IPv6)',
    )
    workers: int = Field(
        1, ge=0, le=256, description="processes sharing the port (SO_REUSEPORT); 0 = one per CPU"
    )
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32"],
        description="addresses or CIDRs whose X-Forwarded-For is believed",
    )
    client_max_body_size: Size = Field(
        10 * 1024 * 1024, description="largest request body accepted; a larger one gets 413"
    )
    client_header_timeout: Duration = Field(
        10.0, description="a client that has not sent its headers by then is closed"
    )
    client_body_timeout: Duration = Field(
        60.0,
        description="a client that sends no byte of its request body for this long gets 408 "
        "and the upstream request is aborted",
    )
    keepalive_timeout: Duration = Field(
        75.0, description="idle client connections are closed after this"
    )
    graceful_timeout: Duration = Field(
        30.0, description="on SIGTERM/SIGINT, how long in-flight requests may take to finish"
    )
    max_header_size: Size = Field(
        8190,
        description="longest request line or header line accepted (a longer one gets 431); "
        "also the largest upstream response head (a larger one is a 502)",
    )
    tls: TLSConfig | None = Field(
        None,
        description="serve HTTPS with this certificate and key; plain HTTP when absent. "
        "The files are watched: a renewed pair is served without a restart",
    )
    middlewares: list[str] = Field(
        default_factory=list,
        description="names of [middlewares.*] run on every route, outside the route's own",
    )
    python_path: list[str] = Field(
        default_factory=list,
        description="folders searched for `python` middleware modules (relative to the "
        "config file's folder); their .py files are watched like the config",
    )
    shared_zone_size: Size = Field(
        16 * 1024 * 1024,
        ge=1024 * 1024,
        description="with workers > 1: the shared memory that keeps local rate limits, "
        "circuit breakers and passive ejection one per instance (as nginx's limit_req_zone); "
        "16MiB holds 112,000 keys of token or leaky buckets. When full, the key used least "
        "recently in its bucket is forgotten (that client starts afresh). Read at start; a "
        "change needs a restart",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: list[str]) -> list[str]:
        return [check_host_port(a) for a in v]

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"invalid address or CIDR {net!r}") from None
        return v


class AdminConfig(Model):
    """The operator listener: /healthz, /readyz and /admin/*."""

    listen: str = Field(
        "127.0.0.1:9901",
        description='"host:port" of the operator listener; keep it on loopback',
    )
    token_env: str | None = Field(
        None, description="environment variable holding the bearer token required by /admin/*"
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return check_host_port(v)


class LoggingConfig(Model):
    """Logs: structured events, one a line."""

    format: Literal["json", "console"] = Field(
        "json", description='"json" (one object a line) or "console" (for humans)'
    )
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="least severe level written"
    )
    access_log: bool = Field(True, description="log a `request` event for every request")
    file: str | None = Field(
        None, description="append the logs to this file instead of writing them to stdout"
    )


# --------------------------------------------------------------- upstreams


class TargetConfig(Model):
    """One backend server of an upstream."""

    url: str = Field(description='"http://host:port" or "https://host:port" of the backend')
    weight: int = Field(
        1, ge=1, le=10000, description="relative share of the requests this target gets"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        m = re.match(r"^(http|https)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(:(\d+))?/?$", v)
        if not m:
            raise ValueError(f"invalid target url {v!r}: expected 'http://host:port'")
        if m.group(4) and not 0 < int(m.group(4)) <= 65535:
            raise ValueError(f"invalid port in {v!r}")
        return v


class UpstreamTLSConfig(Model):
    """How an https:// upstream is checked (HTTP/1.1 or h2)."""

    ca: str | None = Field(
        None,
        description="PEM bundle of the CAs to trust (relative to the config file's folder); "
        "default: the system's trust store",
    )
    server_name: str | None = Field(
        None, description="SNI and the name checked in the certificate; default: the target's host"
    )
    verify: bool = Field(
        True, description="false turns certificate checking off (validate warns about it)"
    )


class CircuitBreakerConfig(Model):
    """A circuit breaker in front of an upstream (Closed -> Open -> Half-Open -> Closed)."""

    consecutive_failures: int = Field(
        5, ge=1, description="trip when this many failures happen in a row"
    )
    failure_ratio: float = Field(
        0.5,
        gt=0,
        le=1,
        description="... or when failures / requests reaches this (after `min_requests`)",
    )
    min_requests: int = Field(
        20, ge=1, description="requests counted in the interval before `failure_ratio` applies"
    )
    interval: Duration = Field(
        10.0, description='Closed: the counts are reset every interval ("0s" = never)'
    )
    timeout: Duration = Field(
        60.0, description="Open: requests get 503 at once for this long, then Half-Open"
    )
    max_requests: int = Field(
        3,
        ge=1,
        description="Half-Open: probes let through; all succeed -> Closed, one fails -> Open",
    )
    failure_statuses: list[int] = Field(
        default_factory=lambda: [502, 503, 504],
        description="upstream statuses that count as failures (errors and timeouts always do)",
    )


class HealthConfig(Model):
    """Passive health checks of an upstream's targets, and active ones when `path` is set."""

    max_fails: int = Field(
        3, ge=0, description="connect errors or timeouts in a row that eject a target"
    )
    eject_for: Duration = Field(10.0, description="how long the balancer skips an ejected target")
    path: str | None = Field(
        None,
        description="active checks: GET this path on every target; no active checks when unset",
    )
    interval: Duration = Field(
        5.0, description="active checks: time between two checks of a target"
    )
    timeout: Duration = Field(1.0, description="active checks: a check that takes longer fails")
    healthy_threshold: int = Field(
        2, ge=1, description="active checks: passes in a row that bring a target back"
    )
    unhealthy_threshold: int = Field(
        3, ge=1, description="active checks: failures in a row that take a target out"
    )
    expected_statuses: list[int] = Field(
        default_factory=lambda: [200], description="active checks: statuses that count as a pass"
    )


class UpstreamConfig(Model):
    """A named pool of targets; routes refer to it by name."""

    targets: list[TargetConfig] = Field(
        default_factory=list, description="the backend servers (set this or `discovery`)"
    )
    discovery: DiscoveryConfig | None = Field(
        None,
        description="take the targets from etcd or DNS instead, following changes "
        "without a reload (set this or `targets`)",
    )
    balance: str = Field(
        "round_robin", description="round_robin | least_conn | random | ip_hash | hash:<key>"
    )
    connect_timeout: Duration = Field(
        2.0, description="deadline to get a connection (pool wait + TCP/TLS connect); past it, 502"
    )
    read_timeout: Duration = Field(
        30.0, description="504 when the upstream sends nothing for this long"
    )
    max_connections: int = Field(
        1024, ge=1, description="connections per target, busy + idle; further requests wait"
    )
    keepalive: int = Field(
        32,
        ge=0,
        description="idle connections kept per target (nginx keepalive); extra ones are "
        "closed, least recently used first, once they stay surplus for 20 ms",
    )
    keepalive_requests: int = Field(
        1000, ge=1, description="a connection is closed after serving this many requests"
    )
    keepalive_timeout: Duration = Field(
        60.0, description="an idle connection is closed after this long"
    )
    keepalive_time: Duration = Field(
        3600.0, description="a connection is not reused once it has been open this long"
    )
    retries: int = Field(
        1,
        ge=0,
        le=10,
        description="extra tries on another target, for requests never sent or idempotent ones",
    )
    protocol: Literal["http1", "h2c", "h2"] = Field(
        "http1",
        description="http1 | h2c (HTTP/2 without TLS, as gRPC servers speak) | h2 (HTTP/2 "
        "over TLS by ALPN; needs https:// targets). gRPC routes need h2c or h2",
    )
    max_streams_per_connection: int = Field(
        100,
        ge=1,
        le=10000,
        description="h2c/h2: streams on one connection (or fewer, as the upstream's "
        "SETTINGS_MAX_CONCURRENT_STREAMS says) before another connection opens",
    )
    tls: UpstreamTLSConfig | None = Field(
        None, description="for https:// targets: ca, server_name, verify"
    )
    circuit_breaker: CircuitBreakerConfig | None = Field(
        None, description="a circuit breaker for this upstream; none when absent"
    )
    health: HealthConfig | None = Field(
        None, description="health checks of the targets; none when absent"
    )

    @field_validator("balance")
    @classmethod
    def _balance(cls, v: str) -> str:
        if not BALANCE_RE.match(v):
            raise ValueError(
                f"invalid balance {v!r}: expected round_robin, least_conn, random, "
                "ip_hash or hash:<key>"
            )
        if v.startswith("hash:"):
            check_key(v[5:])
        return v

    @model_validator(mode="after")
    def _source(self) -> UpstreamConfig:
        if bool(self.targets) == (self.discovery is not None):
            raise ValueError("an upstream needs either 'targets' (at least one) or 'discovery'")
        if self.protocol == "h2":
            plain = [t.url for t in self.targets if not t.url.startswith("https://")]
            if plain:
                raise ValueError(
                    f"protocol 'h2' is HTTP/2 over TLS and needs https:// targets, not {plain[0]!r}"
                    " (use protocol = 'h2c' for HTTP/2 without TLS)"
                )
        return self


# ------------------------------------------------------------------ routes


class SplitEntry(Model):
    """One side of a route's weighted split."""

    upstream: str = Field(description="name of an [upstreams.*] table")
    weight: int = Field(ge=0, description="relative weight of this side; 0 takes it out")


KeySpec = str | list[str]


class RouteConfig(Model):
    """A route: the predicates that select requests, and where those requests go."""

    id: str = Field(
        min_length=1, description="unique name of the route, used in logs, metrics and `explain`"
    )
    path: str = Field(
        description='pattern: literal segments, "{name}" or "*" (one segment), "**" (the rest)'
    )
    methods: list[str] | None = Field(
        None, description="HTTP methods the route takes (every method when unset)"
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description='request headers that must have these values ("*" = present)',
    )
    query: dict[str, str] = Field(
        default_factory=dict,
        description='query parameters that must have these values ("*" = present)',
    )
    claims: dict[str, str] = Field(
        default_factory=dict,
        description="claims of the verified JWT that must equal (or contain) these values",
    )
    upstream: str | None = Field(
        None,
        description="the upstream that serves the route (set this or `split`; neither when "
        "a respond or redirect middleware of the route always answers)",
    )
    split: list[SplitEntry] | None = Field(
        None, description="a weighted choice of upstreams, e.g. a canary (set this or `upstream`)"
    )
    hash_on: KeySpec = Field(
        "random",
        description='"random" (per request) or a key (or keys) that makes the split sticky',
    )
    strip_prefix: int = Field(
        0, ge=0, description="leading path segments removed: 1 turns /api/users/7 into /users/7"
    )
    rewrite: str | None = Field(
        None, description='path sent upstream, with captured variables, e.g. "/users/{id}"'
    )
    preserve_host: bool = Field(
        False, description="send the client's Host header instead of the target's host:port"
    )
    auth: Literal["none", "jwt", "optional_jwt", "api_key"] = Field(
        "none", description="credential required: none, a JWT, an optional JWT or an API key"
    )
    require_roles: list[str] = Field(
        default_factory=list,
        description="the token's roles claim must contain one of these, else 403",
    )
    rate_limit: str | list[str] | None = Field(
        None, description="name of a [rate_limits.*] policy, or a list of names that must all allow"
    )
    timeout: Duration | None = Field(
        None, description="deadline of the whole request; past it, 504"
    )
    middlewares: list[str] = Field(
        default_factory=list,
        description="names of [middlewares.*], outermost first: on_request in this order, "
        "on_response in reverse (inside server.middlewares)",
    )

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        try:
            check_pattern(v)
        except ValueError as e:
            raise ValueError(str(e).replace("route '': ", "")) from None
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("methods cannot be empty (leave it out to allow every method)")
        out = []
        for m in v:
            if m.upper() not in HTTP_METHODS:
                raise ValueError(f"unknown HTTP method {m!r}")
            out.append(m.upper())
        return out

    @field_validator("hash_on")
    @classmethod
    def _hash_on(cls, v: KeySpec) -> KeySpec:
        if v != "random":
            key_list(v)
        return v

    @field_validator("split")
    @classmethod
    def _split(cls, v: list[SplitEntry] | None) -> list[SplitEntry] | None:
        if v is not None:
            if not v:
                raise ValueError("split cannot be empty")
            if sum(s.weight for s in v) <= 0:
                raise ValueError("split weights sum to 0: at least one must be positive")
        return v

    @field_validator("rewrite")
    @classmethod
    def _rewrite(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        if not v.startswith("/"):
            raise ValueError(f"rewrite {v!r} must start with '/'")
        path = info.data.get("path")
        if path is None:
            return v
        captured = {seg[1:-1] for seg in path[1:].split("/") if seg.startswith("{")}
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(v) if f is not None]
        except ValueError as e:
            raise ValueError(f"invalid rewrite template {v!r}: {e}") from None
        for field in fields:
            if field not in captured:
                raise ValueError(
                    f"rewrite uses {{{field}}}, which the path {path!r} does not capture"
                )
        return v

    @field_validator("require_roles")
    @classmethod
    def _roles(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if v and info.data.get("auth") not in ("jwt", "optional_jwt"):
            raise ValueError("require_roles needs auth = 'jwt' or 'optional_jwt'")
        return v

    @model_validator(mode="after")
    def _consistency(self) -> RouteConfig:
        if self.upstream is not None and self.split is not None:
            raise ValueError("a route takes either 'upstream' or 'split', not both")
        if self.rewrite is not None and self.strip_prefix:
            raise ValueError("use either rewrite or strip_prefix, not both")
        return self


# -------------------------------------------------------------------- auth


class JWTConfig(Model):
    """Verification of JSON Web Tokens."""

    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256"],
        min_length=1,
        description='accepted signature algorithms; never "none", HS* not mixed with the others',
    )
    jwks_file: str | None = Field(
        None, description="JWKS file of public keys (relative to the config file's folder)"
    )
    jwks_url: str | None = Field(None, description="URL of the identity provider's JWKS")
    hs_secret_env: str | None = Field(
        None, description="environment variable holding the HS* shared secret"
    )
    issuer: str | None = Field(None, description="the `iss` claim a token must have")
    audience: str | list[str] | None = Field(
        None, description="the `aud` a token must name (or one of a list)"
    )
    leeway: Duration = Field(30.0, description="clock skew allowed when checking exp, nbf and iat")
    roles_claim: str = Field(
        "roles", description="claim holding the roles that `require_roles` checks"
    )
    forward_claims: dict[str, str] = Field(
        default_factory=dict,
        description="claim -> header sent upstream; removed from every incoming request first",
    )

    @field_validator("algorithms")
    @classmethod
    def _algs(cls, v: list[str]) -> list[str]:
        allowed = {
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
            "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512",
        }  # fmt: skip
        for a in v:
            if a.lower() == "none":
                raise ValueError("algorithm 'none' is never allowed")
            if a not in allowed:
                raise ValueError(f"unsupported algorithm {a!r}")
        hs = [a for a in v if a.startswith("HS")]
        if hs and len(hs) != len(v):
            raise ValueError("HS* and RS*/PS*/ES*/EdDSA algorithms cannot be mixed")
        return v

    @model_validator(mode="after")
    def _keys(self) -> JWTConfig:
        sources = [s for s in (self.jwks_file, self.jwks_url) if s]
        hs = [a for a in self.algorithms if a.startswith("HS")]
        if hs and not self.hs_secret_env:
            raise ValueError("HS* algorithms need hs_secret_env")
        if not hs and len(sources) != 1:
            raise ValueError("set exactly one of jwks_file or jwks_url")
        if hs and self.jwks_url:
            raise ValueError("HS* shared secrets come from hs_secret_env, not from jwks_url")
        return self

    @field_validator("forward_claims")
    @classmethod
    def _forward(cls, v: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for claim, header in v.items():
            if not HEADER_NAME_RE.match(header):
                raise ValueError(f"{claim}: {header!r} is not a valid header name")
            lowered = header.lower()
            if lowered in RESERVED_HEADERS:
                raise ValueError(f"{claim}: {header!r} is a header the gateway manages itself")
            if lowered in seen:
                raise ValueError(f"claims {seen[lowered]!r} and {claim!r} both go to {header!r}")
            seen[lowered] = claim
        return v


class APIKeyConfig(Model):
    """API keys, matched against the consumers' `api_key_sha256`."""

    header: str = Field("X-API-Key", description="request header carrying the API key")


class AuthConfig(Model):
    """How clients authenticate."""

    jwt: JWTConfig | None = Field(
        None, description='JWT verification, for routes with auth = "jwt" or "optional_jwt"'
    )
    api_key: APIKeyConfig | None = Field(
        None, description='API key lookup, for routes with auth = "api_key"'
    )


class ConsumerConfig(Model):
    """A known client: its tier and how it is recognised."""

    tier: str | None = Field(None, description="the consumer's tier, for rate-limit tiers")
    api_key_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 (hex) of the consumer's API key, as `pyproxyd hash-key` prints it",
    )
    client_ids: list[str] = Field(
        default_factory=list, description="X-Client-ID values that identify this consumer"
    )


# -------------------------------------------------------------- rate limits


class RedisConfig(Model):
    """The Redis server shared by `backend = "redis"` rate limits."""

    url: str = Field(
        "redis://127.0.0.1:6379/0", description="redis://, rediss:// or redis+cluster:// URL"
    )
    timeout: Duration = Field(0.05, description="deadline of one rate-limit call")
    on_error: Literal["local", "allow", "deny"] = Field(
        "local", description='Redis down: "local" (per-instance limiter), "allow" or "deny" (503)'
    )
    key_prefix: str = Field("pyproxyd:", description="prefix of every Redis key written")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^(redis|rediss|redis\+cluster)://", v):
            raise ValueError("expected a redis://, rediss:// or redis+cluster:// url")
        return v


class TierConfig(Model):
    """A tier's own limits, replacing the policy's."""

    rate: RateValue | None = Field(None, description="the tier's rate (token_bucket, leaky_bucket)")
    burst: int | None = Field(
        None, ge=0, description="the tier's burst (token_bucket, leaky_bucket)"
    )
    limit: int | None = Field(None, ge=1, description="the tier's limit (sliding_window)")
    window: Duration | None = Field(None, description="the tier's window (sliding_window)")


class RateLimitConfig(Model):
    """A named rate-limit policy."""

    algorithm: Literal["token_bucket", "leaky_bucket", "sliding_window"] = Field(
        description="token_bucket, leaky_bucket (rate, burst) or sliding_window (limit, window)"
    )
    backend: Literal["local", "redis"] = Field(
        "local", description='"local" (per instance) or "redis" (shared by every instance)'
    )
    key: KeySpec = Field(
        "ip",
        description="what is counted: a key, or a list of keys of which the first present is used",
    )
    rate: RateValue | None = Field(
        None,
        description="token_bucket, leaky_bucket: the sustained rate (for clients with no tier)",
    )
    burst: int | None = Field(
        None, ge=0, description="token_bucket: bucket capacity; leaky_bucket: queue depth"
    )
    limit: int | None = Field(
        None, ge=1, description="sliding_window: requests allowed in any `window`"
    )
    window: Duration | None = Field(None, description="sliding_window: the window length")
    mode: Literal["delay", "reject"] = Field(
        "reject",
        description='leaky_bucket: "delay" queues excess requests (up to `burst`); "reject": 429',
    )
    tier_key: KeySpec | None = Field(
        None,
        description='how a request\'s tier is found: "consumer", "claim:<name>" or "header:<Name>"',
    )
    tiers: dict[str, TierConfig] = Field(
        default_factory=dict,
        description="limits per tier name, replacing `rate`/`burst`/`limit`/`window`",
    )

    @field_validator("key", "tier_key")
    @classmethod
    def _keys(cls, v: KeySpec | None) -> KeySpec | None:
        if v is not None:
            key_list(v)
        return v

    @model_validator(mode="after")
    def _params(self) -> RateLimitConfig:
        if self.algorithm == "sliding_window":
            if self.limit is None or self.window is None:
                raise ValueError("sliding_window needs 'limit' and 'window'")
            if self.window <= 0:
                raise ValueError("window must be positive")
        elif self.rate is None:
            raise ValueError(f"{self.algorithm} needs 'rate'")
        if self.mode == "delay" and self.algorithm != "leaky_bucket":
            raise ValueError("mode = 'delay' applies to leaky_bucket only")
        if self.tiers and self.tier_key is None:
            raise ValueError("tiers need a tier_key")
        return self


# -------------------------------------------------------------------- root


Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$")]


class Config(Model):
    """The whole configuration file."""

    server: ServerConfig = Field(
        default_factory=ServerConfig, description="the client-facing listener"
    )
    admin: AdminConfig = Field(default_factory=AdminConfig, description="the operator listener")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="logs")
    upstreams: dict[Name, UpstreamConfig] = Field(
        default_factory=dict, description="upstreams by name"
    )
    routes: list[RouteConfig] = Field(
        default_factory=list,
        description="the routes; among equal path patterns the first whose predicates hold wins",
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="authentication")
    consumers: dict[Name, ConsumerConfig] = Field(
        default_factory=dict, description="known clients by name"
    )
    redis: RedisConfig | None = Field(
        None, description='the Redis server, needed by rate limits with backend = "redis"'
    )
    rate_limits: dict[Name, RateLimitConfig] = Field(
        default_factory=dict, description="rate-limit policies by name"
    )
    middlewares: dict[Name, Middleware] = Field(
        default_factory=dict,
        description="middlewares by name, of type headers, cors, redirect, respond or python",
    )
    dns: DnsConfig = Field(
        default_factory=DnsConfig, description="the resolver of dns and dns_srv discovery"
    )
    etcd: EtcdConfig | None = Field(None, description="the etcd cluster of etcd discovery")


Problem = tuple[tuple[Any, ...], str]


def cross_check(data: dict[str, Any]) -> list[Problem]:
    """References between tables, reported with the dotted path of the bad key.

    Reads the raw TOML data rather than a validated `Config`, so that these
    problems are listed together with any validation errors elsewhere in the
    file. Values of the wrong type are skipped here: validation reports them.
    """

    def table(key: str) -> dict[str, Any] | None:
        value = data.get(key, {})
        return value if isinstance(value, dict) else None

    upstreams, rate_limits, auth = table("upstreams"), table("rate_limits"), table("auth")
    middlewares = table("middlewares")
    server = table("server") or {}
    outer = server.get("middlewares", [])
    outer = outer if isinstance(outer, list) else []
    problems: list[Problem] = _chain_names(("server", "middlewares"), outer, middlewares, [])
    consumers = table("consumers")
    keyed = any(isinstance(c, dict) and c.get("api_key_sha256") for c in (consumers or {}).values())
    has_jwt = auth is not None and "jwt" in auth
    routes = data.get("routes", [])
    seen: dict[str, int] = {}
    for i, r in enumerate(routes if isinstance(routes, list) else []):
        if not isinstance(r, dict):
            continue
        here: tuple[Any, ...] = ("routes", i)
        rid = r.get("id")
        if isinstance(rid, str):
            if rid in seen:
                problems.append(
                    ((*here, "id"), f"duplicate route id {rid!r} (first at routes[{seen[rid]}])")
                )
            seen.setdefault(rid, i)
        upstream = r.get("upstream")
        own = r.get("middlewares", [])
        own = own if isinstance(own, list) else []
        problems += _chain_names((*here, "middlewares"), own, middlewares, outer)
        if upstream is None and r.get("split") is None:
            kinds = {
                m.get("type")
                for n in [*outer, *own]
                if isinstance(n, str) and isinstance(m := (middlewares or {}).get(n), dict)
            }
            if not kinds & ANSWERING:
                problems.append(
                    (
                        (*here, "upstream"),
                        "a route needs 'upstream' or 'split', unless one of its middlewares "
                        "always answers (type respond or redirect)",
                    )
                )
        if upstreams is not None and isinstance(upstream, str) and upstream not in upstreams:
            problems.append(((*here, "upstream"), f"unknown upstream {upstream!r}"))
        split = r.get("split")
        for j, s in enumerate(split if isinstance(split, list) else []):
            name = s.get("upstream") if isinstance(s, dict) else None
            if upstreams is not None and isinstance(name, str) and name not in upstreams:
                problems.append(((*here, "split", j, "upstream"), f"unknown upstream {name!r}"))
        limit = r.get("rate_limit")
        names = [limit] if isinstance(limit, str) else limit if isinstance(limit, list) else []
        for name in names:
            if rate_limits is not None and isinstance(name, str) and name not in rate_limits:
                problems.append(((*here, "rate_limit"), f"unknown rate limit {name!r}"))
        kind = r.get("auth", "none")
        if kind in ("jwt", "optional_jwt") and auth is not None and not has_jwt:
            problems.append(((*here, "auth"), f"auth = {kind!r} needs an [auth.jwt] table"))
        if r.get("claims") and kind not in ("jwt", "optional_jwt"):
            problems.append(((*here, "claims"), "claims need auth = 'jwt' or 'optional_jwt'"))
        if kind == "api_key" and consumers is not None and not keyed:
            problems.append(
                ((*here, "auth"), "auth = 'api_key' needs a consumer with api_key_sha256")
            )
    for name, up in (upstreams or {}).items():
        disc = up.get("discovery") if isinstance(up, dict) else None
        if isinstance(disc, dict) and "etcd" in disc and "etcd" not in data:
            problems.append(
                (("upstreams", name, "discovery", "etcd"), "etcd discovery needs an [etcd] table")
            )
    for name, rl in (rate_limits or {}).items():
        if isinstance(rl, dict) and rl.get("backend") == "redis" and "redis" not in data:
            problems.append(
                (("rate_limits", name, "backend"), "backend = 'redis' needs a [redis] table")
            )
    return problems


def _chain_names(
    where: tuple[Any, ...], names: list[Any], tables: dict[str, Any] | None, outer: list[Any]
) -> list[Problem]:
    problems: list[Problem] = []
    for j, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if tables is not None and name not in tables:
            problems.append(((*where, j), f"unknown middleware {name!r}"))
        elif name in names[:j]:
            problems.append(((*where, j), f"middleware {name!r} is listed twice"))
        elif name in outer:
            problems.append(
                ((*where, j), f"middleware {name!r} already runs from server.middlewares")
            )
    return problems

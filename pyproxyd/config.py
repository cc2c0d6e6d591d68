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

from .units import Duration, RateValue, Size

KEY_RE = re.compile(r"^(ip|consumer|(header|cookie|claim):[A-Za-z0-9_\-.]+)$")
BALANCE_RE = re.compile(r"^(round_robin|least_conn|random|ip_hash|hash:.+)$")
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)
PATTERN_SEGMENT_RE = re.compile(r"^(\{[A-Za-z_][A-Za-z0-9_]*\}|\*\*?|[^{}*]*)$")


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
    cert: str
    key: str


class ServerConfig(Model):
    listen: list[str] = Field(default_factory=lambda: ["0.0.0.0:8080"], min_length=1)
    workers: int = Field(1, ge=0, le=256)
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1/32"])
    client_max_body_size: Size = 10 * 1024 * 1024
    client_header_timeout: Duration = 10.0
    keepalive_timeout: Duration = 75.0
    graceful_timeout: Duration = 30.0
    max_header_size: Size = Field(8190, description="largest request line or header line; 431")
    tls: TLSConfig | None = None

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
    listen: str = "127.0.0.1:9901"
    token_env: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return check_host_port(v)


class LoggingConfig(Model):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    file: str | None = Field(None, description="write logs here instead of stdout")


# --------------------------------------------------------------- upstreams


class TargetConfig(Model):
    url: str
    weight: int = Field(1, ge=1, le=10000)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        m = re.match(r"^(http|https)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(:(\d+))?/?$", v)
        if not m:
            raise ValueError(f"invalid target url {v!r}: expected 'http://host:port'")
        if m.group(4) and not 0 < int(m.group(4)) <= 65535:
            raise ValueError(f"invalid port in {v!r}")
        return v


class CircuitBreakerConfig(Model):
    consecutive_failures: int = Field(5, ge=1)
    failure_ratio: float = Field(0.5, gt=0, le=1)
    min_requests: int = Field(20, ge=1)
    interval: Duration = 10.0
    timeout: Duration = 60.0
    max_requests: int = Field(3, ge=1)
    failure_statuses: list[int] = Field(default_factory=lambda: [502, 503, 504])


class HealthConfig(Model):
    max_fails: int = Field(3, ge=0)
    eject_for: Duration = 10.0
    path: str | None = None
    interval: Duration = 5.0
    timeout: Duration = 1.0
    healthy_threshold: int = Field(2, ge=1)
    unhealthy_threshold: int = Field(3, ge=1)
    expected_statuses: list[int] = Field(default_factory=lambda: [200])


class UpstreamConfig(Model):
    targets: list[TargetConfig] = Field(min_length=1)
    balance: str = "round_robin"
    connect_timeout: Duration = 2.0
    read_timeout: Duration = 30.0
    max_connections: int = Field(1024, ge=1)
    keepalive: int = Field(32, ge=0)
    keepalive_requests: int = Field(1000, ge=1)
    keepalive_timeout: Duration = 60.0
    keepalive_time: Duration = 3600.0
    retries: int = Field(1, ge=0, le=10)
    circuit_breaker: CircuitBreakerConfig | None = None
    health: HealthConfig | None = None

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


# ------------------------------------------------------------------ routes


class SplitEntry(Model):
    upstream: str
    weight: int = Field(ge=0)


KeySpec = str | list[str]


class RouteConfig(Model):
    id: str = Field(min_length=1)
    path: str
    methods: list[str] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    claims: dict[str, str] = Field(default_factory=dict)
    upstream: str | None = None
    split: list[SplitEntry] | None = None
    hash_on: KeySpec = "random"
    strip_prefix: int = Field(0, ge=0)
    rewrite: str | None = None
    preserve_host: bool = False
    auth: Literal["none", "jwt", "optional_jwt", "api_key"] = "none"
    require_roles: list[str] = Field(default_factory=list)
    rate_limit: str | list[str] | None = None
    timeout: Duration | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"path pattern {v!r} must start with '/'")
        segments = v[1:].split("/")
        names: set[str] = set()
        for i, seg in enumerate(segments):
            if not PATTERN_SEGMENT_RE.match(seg):
                raise ValueError(
                    f"invalid segment {seg!r} in {v!r}: a segment is literal text, "
                    "'{name}', '*' or '**'"
                )
            if seg == "**" and i != len(segments) - 1:
                raise ValueError(f"'**' must be the last segment of {v!r}")
            if seg.startswith("{"):
                if seg in names:
                    raise ValueError(f"variable {seg} appears twice in {v!r}")
                names.add(seg)
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
        if (self.upstream is None) == (self.split is None):
            raise ValueError("a route needs exactly one of 'upstream' or 'split'")
        if self.rewrite is not None and self.strip_prefix:
            raise ValueError("use either rewrite or strip_prefix, not both")
        return self


# -------------------------------------------------------------------- auth


class JWTConfig(Model):
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"], min_length=1)
    jwks_file: str | None = None
    jwks_url: str | None = None
    hs_secret_env: str | None = None
    issuer: str | None = None
    audience: str | list[str] | None = None
    leeway: Duration = 30.0
    roles_claim: str = "roles"
    forward_claims: dict[str, str] = Field(default_factory=dict)

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
        return self


class APIKeyConfig(Model):
    header: str = "X-API-Key"


class AuthConfig(Model):
    jwt: JWTConfig | None = None
    api_key: APIKeyConfig | None = None


class ConsumerConfig(Model):
    tier: str | None = None
    api_key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    client_ids: list[str] = Field(default_factory=list)


# -------------------------------------------------------------- rate limits


class RedisConfig(Model):
    url: str = "redis://127.0.0.1:6379/0"
    timeout: Duration = 0.05
    on_error: Literal["local", "allow", "deny"] = "local"
    key_prefix: str = "pyproxyd:"

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^(redis|rediss|redis\+cluster)://", v):
            raise ValueError("expected a redis://, rediss:// or redis+cluster:// url")
        return v


class TierConfig(Model):
    rate: RateValue | None = None
    burst: int | None = Field(None, ge=0)
    limit: int | None = Field(None, ge=1)
    window: Duration | None = None


class RateLimitConfig(Model):
    algorithm: Literal["token_bucket", "leaky_bucket", "sliding_window"]
    backend: Literal["local", "redis"] = "local"
    key: KeySpec = "ip"
    rate: RateValue | None = None
    burst: int | None = Field(None, ge=0)
    limit: int | None = Field(None, ge=1)
    window: Duration | None = None
    mode: Literal["delay", "reject"] = "reject"
    tier_key: KeySpec | None = None
    tiers: dict[str, TierConfig] = Field(default_factory=dict)

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
    server: ServerConfig = Field(default_factory=ServerConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    upstreams: dict[Name, UpstreamConfig] = Field(default_factory=dict)
    routes: list[RouteConfig] = Field(default_factory=list)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    consumers: dict[Name, ConsumerConfig] = Field(default_factory=dict)
    redis: RedisConfig | None = None
    rate_limits: dict[Name, RateLimitConfig] = Field(default_factory=dict)


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
    has_jwt = auth is not None and "jwt" in auth
    routes = data.get("routes", [])
    problems: list[Problem] = []
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
    for name, rl in (rate_limits or {}).items():
        if isinstance(rl, dict) and rl.get("backend") == "redis" and "redis" not in data:
            problems.append(
                (("rate_limits", name, "backend"), "backend = 'redis' needs a [redis] table")
            )
    return problems

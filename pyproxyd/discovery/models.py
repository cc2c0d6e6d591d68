"""Pydantic models of `discovery`, `[dns]` and `[etcd]`: inert data, read by
compile.py (through discovery/build.py) only."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..units import Duration

_HOST_PORT = re.compile(r"^(https?://)?[A-Za-z0-9.\-]+:[0-9]{1,5}$")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class DiscoveryConfig(_Model):
    """Where an upstream's targets come from instead of `targets` (exactly one key)."""

    etcd: str | None = Field(
        None, description="a key prefix in etcd: every key under it is one instance"
    )
    dns: str | None = Field(
        None,
        description='"name:port" (or "https://name:port"): every A/AAAA address is a target, '
        "asked again when the TTL runs out (1 s .. 5 min)",
    )
    dns_srv: str | None = Field(
        None, description='an SRV name, e.g. "_http._tcp.catalog.service.consul"'
    )

    @field_validator("etcd")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("the etcd prefix cannot be empty")
        return v

    @field_validator("dns")
    @classmethod
    def _dns(cls, v: str | None) -> str | None:
        if v is not None:
            port = v.rpartition(":")[2]
            if not _HOST_PORT.match(v) or not 0 < int(port) < 65536:
                raise ValueError(f"invalid dns target {v!r}: expected 'name:port'")
        return v

    @field_validator("dns_srv")
    @classmethod
    def _srv(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z0-9_.\-]+$", v):
            raise ValueError(f"invalid SRV name {v!r}")
        return v

    @model_validator(mode="after")
    def _one(self) -> DiscoveryConfig:
        if sum(x is not None for x in (self.etcd, self.dns, self.dns_srv)) != 1:
            raise ValueError("set exactly one of etcd, dns or dns_srv")
        return self


class DnsConfig(_Model):
    """The resolver of `dns` and `dns_srv` discovery."""

    nameservers: list[str] = Field(
        default_factory=list,
        description='"host" or "host:port"; default: those of /etc/resolv.conf',
    )

    @field_validator("nameservers")
    @classmethod
    def _servers(cls, v: list[str]) -> list[str]:
        for s in v:
            host, sep, port = s.rpartition(":") if s.count(":") == 1 else (s, "", "")
            if sep and (not port.isdigit() or not 0 < int(port) < 65536):
                raise ValueError(f"invalid nameserver {s!r}: expected 'host' or 'host:port'")
            if not (host if sep else s):
                raise ValueError(f"invalid nameserver {s!r}")
        return v


class EtcdTLSConfig(_Model):
    """TLS to the etcd members."""

    ca: str | None = Field(None, description="CA bundle (PEM) the members' certificates chain to")
    cert: str | None = Field(None, description="client certificate (PEM), with `key`")
    key: str | None = Field(None, description="client private key (PEM)")


class EtcdConfig(_Model):
    """The etcd cluster of `discovery = { etcd = ... }`."""

    endpoints: list[str] = Field(
        min_length=1, description="the members' client URLs (v3 API), tried in turn"
    )
    timeout: Duration = Field(
        2.0, description="per call; also how long /readyz waits for a first answer"
    )
    username: str | None = Field(None, description="etcd user, with password_env")
    password_env: str | None = Field(
        None, description="environment variable holding the etcd user's password"
    )
    tls: EtcdTLSConfig | None = Field(None, description="TLS to the members")
    config_key: str | None = Field(
        None,
        description="a key holding a TOML document whose tables replace the file's tables "
        "of the same names; every instance watches it and reloads on a change",
    )

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        for e in v:
            if not re.match(r"^https?://[^/\s]+$", e):
                raise ValueError(f"invalid endpoint {e!r}: expected http(s)://host:port")
        return v

    @model_validator(mode="after")
    def _auth(self) -> EtcdConfig:
        if (self.username is None) != (self.password_env is None):
            raise ValueError("username and password_env go together")
        return self

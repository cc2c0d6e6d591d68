"""Compiled by mypyc (pyproxyd/compiled.py).

Client keys ("ip", "header:X", "cookie:x", "claim:x", "consumer", or a list).

`compile_key(spec)` turns a key spec into a function of
(request, identity, client_ip) -> str | None, once, at compile time. Sticky
splits, `balance = "hash:<key>"` and rate limits call that function per
request. A list of keys means the first one present; an empty value counts
as absent (it would lump every such client into one key).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .auth.identity import Identity


class KeyRequest(Protocol):
    """What a key reads from a request (aiohttp's request has both)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def cookies(self) -> Mapping[str, str]: ...


KeyFn = Callable[[KeyRequest, Identity | None, str], str | None]


def claim_text(value: Any) -> str | None:
    """A claim as key text: strings as they are, everything else as compact JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _ip(request: KeyRequest, identity: Identity | None, client_ip: str) -> str | None:
    return client_ip or None


def _consumer(request: KeyRequest, identity: Identity | None, client_ip: str) -> str | None:
    if identity is None or identity.consumer is None:
        return None
    return identity.consumer.name


def _header(name: str) -> KeyFn:
    def key(request: KeyRequest, identity: Identity | None, client_ip: str) -> str | None:
        return request.headers.get(name) or None

    return key


def _cookie(name: str) -> KeyFn:
    def key(request: KeyRequest, identity: Identity | None, client_ip: str) -> str | None:
        return request.cookies.get(name) or None

    return key


def _claim(name: str) -> KeyFn:
    def key(request: KeyRequest, identity: Identity | None, client_ip: str) -> str | None:
        if identity is None or identity.claims is None:
            return None
        return claim_text(identity.claims.get(name)) or None

    return key


def _one(spec: str) -> KeyFn:
    if spec == "ip":
        return _ip
    if spec == "consumer":
        return _consumer
    kind, sep, name = spec.partition(":")
    if sep and name:
        if kind == "header":
            return _header(name)
        if kind == "cookie":
            return _cookie(name)
        if kind == "claim":
            return _claim(name)
    raise ValueError(
        f"invalid key {spec!r}: expected 'ip', 'consumer', 'header:<Name>', "
        "'cookie:<name>' or 'claim:<name>'"
    )


def compile_key(spec: str | Sequence[str]) -> KeyFn:
    """A key spec -> its function; a list -> the first key that is present."""
    if isinstance(spec, str):
        return _one(spec)
    fns = tuple(_one(s) for s in spec)
    if not fns:
        raise ValueError("a key list cannot be empty")
    if len(fns) == 1:
        return fns[0]

    def first(request: KeyRequest, identity: Identity | None, client_ip: str) -> str | None:
        for fn in fns:
            value = fn(request, identity, client_ip)
            if value is not None:
                return value
        return None

    return first

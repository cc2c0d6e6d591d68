"""Compiled by mypyc (pyproxyd/compiled.py).

Who a request is: the verified claims, and the consumer it belongs to.

An `Identity` is immutable and shared: one per verified token (cached with
it) and one per consumer (built at compile time), so the hot path hands out
existing objects rather than building one per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

CLIENT_ID_HEADER = "X-Client-ID"


class Consumer(NamedTuple):
    name: str
    tier: str | None


class Identity:
    """The per-request identity: claims of a verified JWT and/or a consumer.

    `forward` holds the prebuilt `Name: value\\r\\n` lines of forward_claims;
    `expires` is when a cached token identity stops being valid (exp + leeway).
    """

    __slots__ = ("claims", "consumer", "expires", "forward", "roles")

    def __init__(
        self,
        claims: Mapping[str, Any] | None = None,
        consumer: Consumer | None = None,
        *,
        roles: frozenset[str] = frozenset(),
        forward: bytes = b"",
        expires: float = float("inf"),
    ) -> None:
        self.claims = claims
        self.consumer = consumer
        self.roles = roles
        self.forward = forward
        self.expires = expires

    def with_consumer(self, consumer: Consumer) -> Identity:
        return Identity(
            self.claims, consumer, roles=self.roles, forward=self.forward, expires=self.expires
        )

    def __repr__(self) -> str:
        sub = self.claims.get("sub") if self.claims is not None else None
        return f"<Identity sub={sub!r} consumer={self.consumer!r}>"


class Consumers:
    """The [consumers.*] tables, as lookups built once per snapshot.

    API keys are looked up by the SHA-256 digest of what the client sent:
    the dict lookup sees only a hash the client cannot steer byte by byte,
    and the final comparison is constant-time (`auth.apikey`).
    """

    __slots__ = ("by_client_id", "by_key_digest", "by_name")

    def __init__(
        self, entries: Iterable[tuple[str, str | None, str | None, Iterable[str]]] = ()
    ) -> None:
        """entries: (name, tier, api_key_sha256 hex or None, client_ids)."""
        self.by_name: dict[str, Identity] = {}
        self.by_key_digest: dict[bytes, tuple[bytes, Identity]] = {}
        self.by_client_id: dict[str, Identity] = {}
        for name, tier, key_hex, client_ids in entries:
            identity = Identity(consumer=Consumer(name, tier))
            self.by_name[name] = identity
            if key_hex:
                digest = bytes.fromhex(key_hex)
                if digest in self.by_key_digest:
                    other = self.by_key_digest[digest][1].consumer
                    assert other is not None
                    raise ValueError(f"consumers {other.name!r} and {name!r} have the same API key")
                self.by_key_digest[digest] = (digest, identity)
            for cid in client_ids:
                if cid in self.by_client_id:
                    other = self.by_client_id[cid].consumer
                    assert other is not None
                    raise ValueError(
                        f"client id {cid!r} belongs to both {other.name!r} and {name!r}"
                    )
                self.by_client_id[cid] = identity

    def from_client_id(self, headers: Mapping[str, str]) -> Identity | None:
        """The consumer an X-Client-ID header names (an identifier, not a credential)."""
        if not self.by_client_id:
            return None
        value = headers.get(CLIENT_ID_HEADER)
        return None if value is None else self.by_client_id.get(value)

"""Compiled by mypyc (pyproxyd/compiled.py).

Bearer tokens: verify a JWT once, then serve it from a cache until it expires.

`JWTVerifier.verify(token)` returns a shared `Identity` (claims, roles, the
prebuilt forward_claims header lines, the consumer) or raises InvalidToken
with one of a few fixed descriptions. PyJWT checks the signature, `iss` and
`aud`; the time claims are checked here against an injectable clock, so the
token cache and the tests agree on what "now" is.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jwt as pyjwt
from jwt import exceptions as jwt_errors

from ..errors import InvalidToken, UnknownKey
from .identity import Consumers, Identity
from .jwks import KeySource

# A token longer than this is refused before any parsing: it is no IdP's.
MAX_TOKEN_LENGTH = 16 * 1024
# Tokens longer than this are verified every time rather than cached, which
# bounds the cache's memory (CACHE_SIZE x CACHEABLE_LENGTH, per worker).
CACHEABLE_LENGTH = 4096
CACHE_SIZE = 4096


def bearer_token(value: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` value; None for other schemes."""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def _number(v: Any) -> bool:
    # json.loads reads NaN and Infinity: an exp of Infinity never expires, and
    # every comparison with NaN is false, so neither would ever be refused.
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def header_value(value: Any, joiner: str = ", ") -> bytes:
    """A claim as a header value: strings as they are, lists joined, the rest as JSON.

    A string with a control character (CR, LF, ...) goes as a JSON string, so
    no claim can split the upstream request's headers.
    """
    if isinstance(value, str):
        if any(c < " " or c == "\x7f" for c in value):
            return json.dumps(value).encode()
        return value.encode("utf-8")
    if isinstance(value, list | tuple):
        return joiner.encode().join(header_value(v, joiner) for v in value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def roles_of(value: Any) -> frozenset[str]:
    """A roles claim: a list, or a string of space-separated roles (as OAuth's scope)."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


class TokenCache:
    """Verified tokens by their exact text, least recently used first out."""

    __slots__ = ("_entries", "size")

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[str, Identity] = OrderedDict()

    def get(self, token: str) -> Identity | None:
        identity = self._entries.get(token)
        if identity is not None:
            self._entries.move_to_end(token)
        return identity

    def put(self, token: str, identity: Identity) -> None:
        if len(token) > CACHEABLE_LENGTH or self.size <= 0:
            return
        self._entries[token] = identity
        self._entries.move_to_end(token)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def discard(self, token: str) -> None:
        self._entries.pop(token, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class JWTVerifier:
    """[auth.jwt], compiled: verifies bearer tokens for every JWT route of a snapshot."""

    def __init__(
        self,
        source: KeySource,
        *,
        algorithms: Iterable[str],
        issuer: str | None = None,
        audience: str | list[str] | None = None,
        leeway: float = 30.0,
        roles_claim: str = "roles",
        forward_claims: Mapping[str, str] | None = None,
        consumers: Consumers | None = None,
        cache_size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.time,
        refresh_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.algorithms = frozenset(algorithms)
        if not self.algorithms or "none" in {a.lower() for a in self.algorithms}:
            raise ValueError("algorithms must be a non-empty list without 'none'")
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.roles_claim = roles_claim
        # (claim, b"Name: ") in config order
        self.forward = tuple((c, f"{h}: ".encode()) for c, h in (forward_claims or {}).items())
        self.consumers = consumers or Consumers()
        self.cache = TokenCache(cache_size)
        self.clock = clock
        self.refresh_clock = refresh_clock
        self._removals = source.removals
        self._jwt = pyjwt.PyJWT(
            options={
                "verify_signature": True,
                "verify_exp": False,  # the time claims are checked in _check_times
                "verify_nbf": False,
                "verify_iat": False,
                "verify_iss": issuer is not None,
                "verify_aud": audience is not None,
                "enforce_minimum_key_length": True,
            }
        )

    def verify(self, token: str) -> Identity:
        """The identity of a valid token; InvalidToken (401) otherwise."""
        now = self.clock()
        if self._removals != self.source.removals:  # a key was withdrawn: check again
            self._removals = self.source.removals
            self.cache.clear()
        identity = self.cache.get(token)
        if identity is not None:
            if identity.expires > now:
                return identity
            self.cache.discard(token)
            raise InvalidToken("token expired")
        identity = self._verify(token, now)
        self.cache.put(token, identity)
        return identity

    def claims_or_none(self, token: str) -> Mapping[str, Any] | None:
        try:
            return self.verify(token).claims
        except InvalidToken:
            return None

    def knows_key_of(self, token: str) -> bool:
        """False when the token is well-formed but names a key we do not have."""
        if self.cache.get(token) is not None:
            return True
        try:
            header = pyjwt.get_unverified_header(token)
        except jwt_errors.PyJWTError:
            return True  # malformed: a refetch would not help
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms or (kid is not None and not isinstance(kid, str)):
            return True
        return bool(self.source.keys.lookup(kid, alg))

    def _verify(self, token: str, now: float) -> Identity:
        if not token:
            raise InvalidToken("malformed token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token too long")
        try:
            header = pyjwt.get_unverified_header(token)
        except jwt_errors.PyJWTError:
            raise InvalidToken("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken("algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("malformed token")
        keys = self.source.keys.lookup(kid, alg)
        if not keys:
            raise UnknownKey(self.source.refetch_for_unknown_kid(self.refresh_clock()))
        claims = None
        for key in keys:
            try:
                claims = self._jwt.decode(
                    token, key=key, algorithms=[alg], audience=self.audience, issuer=self.issuer
                )
                break
            except jwt_errors.InvalidSignatureError:
                continue  # several keys share this kid/alg: try the next
            except jwt_errors.InvalidAudienceError:
                raise InvalidToken("wrong audience") from None
            except jwt_errors.InvalidIssuerError:
                raise InvalidToken("wrong issuer") from None
            except jwt_errors.MissingRequiredClaimError as e:
                raise InvalidToken(f"{e.claim} claim missing") from None
            except jwt_errors.InvalidKeyError:
                raise InvalidToken("signing key too weak") from None
            except jwt_errors.PyJWTError:
                raise InvalidToken("malformed token") from None
        if claims is None:
            raise InvalidToken("invalid signature")
        expires = self._check_times(claims, now)
        return self._identity(claims, expires)

    def _check_times(self, claims: Mapping[str, Any], now: float) -> float:
        leeway = self.leeway
        exp = claims.get("exp")
        if exp is None:
            raise InvalidToken("exp claim missing")
        if not _number(exp):
            raise InvalidToken("exp claim is not a number")
        if exp + leeway <= now:
            raise InvalidToken("token expired")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not _number(nbf):
                raise InvalidToken("nbf claim is not a number")
            if nbf - leeway > now:
                raise InvalidToken("token not yet valid")
        iat = claims.get("iat")
        if iat is not None:
            if not _number(iat):
                raise InvalidToken("iat claim is not a number")
            if iat - leeway > now:
                raise InvalidToken("token issued in the future")
        return float(exp + leeway)

    def _identity(self, claims: dict[str, Any], expires: float) -> Identity:
        lines = []
        for claim, prefix in self.forward:
            value = claims.get(claim)
            if value is not None:
                lines.append(prefix + header_value(value) + b"\r\n")
        sub = claims.get("sub")
        named = self.consumers.by_name.get(sub) if isinstance(sub, str) else None
        return Identity(
            claims,
            named.consumer if named is not None else None,
            roles=roles_of(claims.get(self.roles_claim)),
            forward=b"".join(lines),
            expires=expires,
        )

"""Compiled by mypyc (pyproxyd/compiled.py). Per-route authentication, composed at compile time.

A route's `auth` is one callable, `(headers, memo) -> Identity | None`,
that raises a GatewayError (401, 403) to refuse the request:

    JWTAuth        auth = "jwt" / "optional_jwt" (+ require_roles)
    APIKeyAuth     auth = "api_key" (auth/apikey.py)
    ClientIdAuth   auth = "none" when consumers have client_ids

A route with no auth and no consumer lookup has `auth = None`: it pays nothing.
`memo` carries a token already verified for the `claims` route predicate,
so that matching and the matched route's check verify it once between them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ..errors import InsufficientRole, InvalidToken, MissingCredentials
from .identity import Consumers, Identity
from .jwks import Refresh
from .jwt import JWTVerifier, bearer_token

REALM = "pyproxyd"


class TokenMemo:
    """The request's bearer token, verified at most once per request.

    Called with no argument it is the Router's lazy `claims()`: the verified
    claims, or None when the token is bad (the predicate then fails, and a
    later route decides what to answer).
    """

    __slots__ = ("_error", "_identity", "refresh", "token", "verifier")

    def __init__(self, token: str, verifier: JWTVerifier) -> None:
        self.token = token
        self.verifier = verifier
        self._identity: Identity | None = None
        self._error: InvalidToken | None = None
        # Set by AuthRuntime.memo when the token's kid is unknown and a refetch may help.
        self.refresh: Refresh | None = None

    def resolve(self) -> Identity:
        if self._identity is not None:
            return self._identity
        if self._error is None:
            try:
                self._identity = self.verifier.verify(self.token)
                return self._identity
            except InvalidToken as e:
                self._error = e
        raise self._error

    def __call__(self) -> Mapping[str, Any] | None:
        try:
            return self.resolve().claims
        except InvalidToken:
            return None


class Authenticator(Protocol):
    """A route's auth step: the identity, or a GatewayError (401, 403)."""

    def __call__(
        self, headers: Mapping[str, str], memo: TokenMemo | None, /
    ) -> Identity | None: ...

    def describe(self) -> str: ...


class JWTAuth:
    __slots__ = ("consumers", "optional", "roles", "verifier")

    def __init__(
        self,
        verifier: JWTVerifier,
        *,
        optional: bool = False,
        roles: frozenset[str] = frozenset(),
        consumers: Consumers | None = None,
    ) -> None:
        self.verifier = verifier
        self.optional = optional
        self.roles = roles
        self.consumers = consumers if consumers is not None and consumers.by_client_id else None

    def describe(self) -> str:
        mode = "optional_jwt (anonymous without a token)" if self.optional else "jwt"
        return mode + (f", require_roles any of {sorted(self.roles)}" if self.roles else "")

    def __call__(self, headers: Mapping[str, str], memo: TokenMemo | None) -> Identity | None:
        value = headers.get("Authorization")
        token = bearer_token(value) if value is not None else None
        if token is None:  # absent, or another scheme (Basic, ...)
            if self.optional and not self.roles:
                return self.consumers.from_client_id(headers) if self.consumers else None
            raise MissingCredentials("a bearer token is required", realm=REALM)
        if memo is not None and memo.token == token:
            identity = memo.resolve()
        else:
            identity = self.verifier.verify(token)
        if self.roles and self.roles.isdisjoint(identity.roles):
            raise InsufficientRole()
        if identity.consumer is None and self.consumers is not None:
            named = self.consumers.from_client_id(headers)
            if named is not None and named.consumer is not None:
                return identity.with_consumer(named.consumer)
        return identity


class ClientIdAuth:
    """auth = "none": no credential, but X-Client-ID may name a consumer."""

    __slots__ = ("consumers",)

    def __init__(self, consumers: Consumers) -> None:
        self.consumers = consumers

    def describe(self) -> str:
        return "none (X-Client-ID names a consumer)"

    def __call__(self, headers: Mapping[str, str], memo: TokenMemo | None) -> Identity | None:
        return self.consumers.from_client_id(headers)


class AuthRuntime:
    """The snapshot's auth: what the proxy needs before a route is chosen."""

    __slots__ = ("claim_routes", "verifier")

    def __init__(self, verifier: JWTVerifier | None = None, *, claim_routes: bool = False):
        self.verifier = verifier
        # Only when some route has a `claims` predicate does matching need the token.
        self.claim_routes = claim_routes and verifier is not None

    def memo(self, headers: Mapping[str, str]) -> TokenMemo | None:
        """The bearer token for the claims predicate, or None without one.

        Matching is synchronous, so a token naming a kid we do not know yet
        comes back with `refresh` set: await it (one refetch of the key set,
        throttled) before matching.
        """
        value = headers.get("Authorization")
        token = bearer_token(value) if value is not None else None
        verifier = self.verifier
        if not token or verifier is None:
            return None
        memo = TokenMemo(token, verifier)
        if not verifier.knows_key_of(token):
            memo.refresh = verifier.source.refetch_for_unknown_kid(verifier.refresh_clock())
        return memo


NO_AUTH = AuthRuntime()

"""Per-route authenticators: modes, roles, API keys, consumers, the token memo."""

from __future__ import annotations

import hashlib

import pytest
from multidict import CIMultiDict

from harness.tokens import T0, JWKSServer, claims, jwks, public_jwk, rsa_key, sign, tamper
from pyproxyd.auth import (
    APIKeyAuth,
    AuthRuntime,
    ClientIdAuth,
    Consumers,
    JWTAuth,
    JWTVerifier,
    RemoteKeys,
    StaticKeys,
    TokenMemo,
)
from pyproxyd.auth.jwks import parse_jwks
from pyproxyd.errors import (
    Forbidden,
    InvalidAPIKey,
    InvalidToken,
    MissingCredentials,
    Unauthorized,
    UnknownKey,
)

KEY = "s3cret-key-of-acme"
CONSUMERS = Consumers(
    [
        ("acme", "vip", hashlib.sha256(KEY.encode()).hexdigest(), ()),
        ("hobbyist", "free", None, ("hobby-1", "hobby-2")),
        ("alice", "normal", None, ()),
    ]
)


def verifier(**kw: object) -> JWTVerifier:
    keys = parse_jwks(jwks(public_jwk(rsa_key(), "rsa-1")), ["RS256"], strict=True)
    return JWTVerifier(
        StaticKeys(keys),
        algorithms=["RS256"],
        clock=lambda: T0,
        consumers=CONSUMERS,
        **kw,  # type: ignore[arg-type]
    )


def token(**extra: object) -> str:
    return sign(rsa_key(), "RS256", claims(**extra), "rsa-1")


def h(**headers: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})


def bearer(t: str) -> CIMultiDict[str]:
    return h(Authorization=f"Bearer {t}")


# ------------------------------------------------------------------- jwt


def test_jwt_route_accepts_a_valid_token() -> None:
    identity = JWTAuth(verifier())(bearer(token()), None)
    assert identity is not None and identity.claims is not None
    assert identity.claims["sub"] == "alice"


def test_jwt_route_without_a_token_is_401_with_a_bare_challenge() -> None:
    with pytest.raises(MissingCredentials) as e:
        JWTAuth(verifier())(h(), None)
    assert e.value.status == 401
    assert e.value.headers["WWW-Authenticate"] == 'Bearer realm="pyproxyd"'


def test_jwt_route_with_another_scheme_is_401() -> None:
    with pytest.raises(MissingCredentials):
        JWTAuth(verifier())(h(Authorization="Basic YWxhZGRpbjpvcGVuc2VzYW1l"), None)


def test_the_bearer_scheme_is_case_insensitive() -> None:
    assert JWTAuth(verifier())(h(Authorization=f"bearer {token()}"), None) is not None


def test_an_empty_bearer_token_is_invalid_not_missing() -> None:
    with pytest.raises(InvalidToken):
        JWTAuth(verifier())(h(Authorization="Bearer "), None)


def test_optional_jwt_without_a_token_is_anonymous() -> None:
    assert JWTAuth(verifier(), optional=True)(h(), None) is None


def test_optional_jwt_with_a_bad_token_is_401() -> None:
    with pytest.raises(InvalidToken):
        JWTAuth(verifier(), optional=True)(bearer(tamper(token())), None)


def test_optional_jwt_with_a_good_token_is_verified() -> None:
    identity = JWTAuth(verifier(), optional=True)(bearer(token()), None)
    assert identity is not None and identity.claims is not None


def test_require_roles_any_of() -> None:
    auth = JWTAuth(verifier(), roles=frozenset({"admin", "ops"}))
    assert auth(bearer(token(roles=["user", "ops"])), None) is not None
    assert auth(bearer(token(roles="ops")), None) is not None  # a string claim


def test_require_roles_missing_is_403_insufficient_scope() -> None:
    auth = JWTAuth(verifier(), roles=frozenset({"admin"}))
    with pytest.raises(Forbidden) as e:
        auth(bearer(token(roles=["user"])), None)
    assert e.value.status == 403 and e.value.code == "forbidden"
    assert 'error="insufficient_scope"' in e.value.headers["WWW-Authenticate"]


def test_require_roles_with_no_roles_claim_is_403() -> None:
    with pytest.raises(Forbidden):
        JWTAuth(verifier(), roles=frozenset({"user"}))(bearer(token(roles=None)), None)


def test_roles_come_from_the_configured_claim() -> None:
    auth = JWTAuth(verifier(roles_claim="groups"), roles=frozenset({"staff"}))
    assert auth(bearer(token(groups=["staff"], roles=None)), None) is not None


def test_optional_jwt_with_require_roles_and_no_token_is_401() -> None:
    with pytest.raises(MissingCredentials):
        JWTAuth(verifier(), optional=True, roles=frozenset({"user"}))(h(), None)


def test_the_memo_is_used_for_the_same_token() -> None:
    v = verifier()
    t = token()
    memo = TokenMemo(t, v)
    assert memo() is not None  # what the claims predicate sees
    identity = JWTAuth(v)(bearer(t), memo)
    assert identity is memo.resolve()


def test_the_memo_remembers_a_failure() -> None:
    v = verifier()
    memo = TokenMemo(tamper(token()), v)
    assert memo() is None  # the predicate just fails
    with pytest.raises(InvalidToken):
        memo.resolve()
    with pytest.raises(InvalidToken):
        JWTAuth(v)(bearer(memo.token), memo)


# ------------------------------------------------------- consumers by jwt


def test_a_jwt_sub_that_names_a_consumer_identifies_it() -> None:
    identity = JWTAuth(verifier(), consumers=CONSUMERS)(bearer(token()), None)
    assert identity is not None and identity.consumer == ("alice", "normal")


def test_a_jwt_of_an_unknown_sub_falls_back_to_the_client_id() -> None:
    headers = bearer(token(sub="zed"))
    headers["X-Client-ID"] = "hobby-1"
    identity = JWTAuth(verifier(), consumers=CONSUMERS)(headers, None)
    assert identity is not None and identity.consumer == ("hobbyist", "free")
    assert identity.claims is not None and identity.claims["sub"] == "zed"


# --------------------------------------------------------------- api keys


def test_api_key_good() -> None:
    identity = APIKeyAuth("X-API-Key", CONSUMERS)(h(X_API_Key=KEY))
    assert identity.consumer == ("acme", "vip")
    assert identity.claims is None


def test_api_key_bad() -> None:
    with pytest.raises(InvalidAPIKey) as e:
        APIKeyAuth("X-API-Key", CONSUMERS)(h(X_API_Key=KEY + "x"))
    assert e.value.status == 401 and e.value.message == "invalid API key"
    assert e.value.headers["WWW-Authenticate"] == 'ApiKey header="X-API-Key"'


def test_api_key_missing() -> None:
    with pytest.raises(Unauthorized, match="API key is required"):
        APIKeyAuth("X-API-Key", CONSUMERS)(h())


def test_api_key_empty() -> None:
    with pytest.raises(InvalidAPIKey):
        APIKeyAuth("X-API-Key", CONSUMERS)(h(X_API_Key=""))


def test_api_key_in_a_custom_header() -> None:
    auth = APIKeyAuth("Apikey", CONSUMERS)
    assert auth(h(apikey=KEY)).consumer == ("acme", "vip")
    with pytest.raises(InvalidAPIKey):
        auth(h(X_API_Key=KEY))


def test_api_key_is_not_its_hash() -> None:
    with pytest.raises(InvalidAPIKey):
        APIKeyAuth("X-API-Key", CONSUMERS)(h(X_API_Key=hashlib.sha256(KEY.encode()).hexdigest()))


def test_the_consumer_identity_is_built_once() -> None:
    auth = APIKeyAuth("X-API-Key", CONSUMERS)
    assert auth(h(X_API_Key=KEY)) is auth(h(X_API_Key=KEY))


# -------------------------------------------------------------- client ids


def test_client_ids_name_consumers() -> None:
    auth = ClientIdAuth(CONSUMERS)
    for cid in ("hobby-1", "hobby-2"):
        identity = auth(h(X_Client_ID=cid), None)
        assert identity is not None and identity.consumer == ("hobbyist", "free")
    assert auth(h(X_Client_ID="nobody"), None) is None
    assert auth(h(), None) is None


def test_a_client_id_of_two_consumers_is_an_error() -> None:
    with pytest.raises(ValueError, match="belongs to both"):
        Consumers([("a", None, None, ("x",)), ("b", None, None, ("x",))])


def test_an_api_key_of_two_consumers_is_an_error() -> None:
    digest = hashlib.sha256(b"k").hexdigest()
    with pytest.raises(ValueError, match="same API key"):
        Consumers([("a", None, digest, ()), ("b", None, digest, ())])


# ------------------------------------------------- the claims memo + refetch


async def test_the_memo_waits_for_a_refetch_when_the_kid_is_new() -> None:
    async with JWKSServer(public_jwk(rsa_key(), "rsa-1")) as s:
        source = RemoteKeys(s.url, ["RS256"])
        try:
            await source.fetch()
            v = JWTVerifier(source, algorithms=["RS256"], clock=lambda: T0)
            runtime = AuthRuntime(v, claim_routes=True)
            s.keys.append(public_jwk(rsa_key("next"), "rsa-2"))
            t = sign(rsa_key("next"), "RS256", claims(groups=["employees"]), "rsa-2")
            memo = runtime.memo(bearer(t))
            assert memo is not None and memo.refresh is not None
            await memo.refresh()
            assert memo() == claims(groups=["employees"])
            assert s.hits == 2
        finally:
            await source.aclose()


async def test_an_unknown_kid_offers_one_refresh_then_none() -> None:
    async with JWKSServer(public_jwk(rsa_key(), "rsa-1")) as s:
        source = RemoteKeys(s.url, ["RS256"])
        try:
            await source.fetch()
            v = JWTVerifier(source, algorithms=["RS256"], clock=lambda: T0)
            t = sign(rsa_key("ghost"), "RS256", claims(), "ghost")
            with pytest.raises(UnknownKey) as e:
                v.verify(t)
            assert e.value.refresh is not None
            await e.value.refresh()
            with pytest.raises(UnknownKey) as again:
                v.verify(t)
            assert again.value.refresh is None  # throttled: the IdP is not hammered
            assert s.hits == 2
        finally:
            await source.aclose()


def test_no_memo_without_a_bearer_token() -> None:
    assert AuthRuntime(verifier(), claim_routes=True).memo(h()) is None


def test_a_memo_of_a_known_key_needs_no_refresh() -> None:
    memo = AuthRuntime(verifier(), claim_routes=True).memo(bearer(token()))
    assert memo is not None and memo.refresh is None

"""JWTVerifier: one test per way a token can be wrong, and the verified-token cache.

The verifier's clock is injected (T0), so expiry is a table of timestamps.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.tokens import (
    AUDIENCE,
    ISSUER,
    T0,
    claims,
    ec_key,
    ed_key,
    hs256_with_public_key,
    jwks,
    public_jwk,
    rs256_with_header,
    rsa_key,
    sign,
    tamper,
    unsigned,
)
from pyproxyd.auth.identity import Consumers
from pyproxyd.auth.jwks import StaticKeys, hs_secret_keys, parse_jwks
from pyproxyd.auth.jwt import MAX_TOKEN_LENGTH, JWTVerifier, header_value, roles_of
from pyproxyd.errors import InvalidToken, UnknownKey

ALL_ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(
    clock: Clock | None = None, algorithms: list[str] | None = None, **kw: Any
) -> JWTVerifier:
    keys = jwks(
        public_jwk(rsa_key(), "rsa-1"),
        public_jwk(ec_key(), "ec-1"),
        public_jwk(ec_key("ec384", "P-384"), "ec384-1"),
        public_jwk(ed_key(), "ed-1"),
    )
    algs = algorithms or ALL_ASYMMETRIC
    settings: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "leeway": 30.0}
    settings.update(kw)
    return JWTVerifier(
        StaticKeys(parse_jwks(keys, algs, strict=True)),
        algorithms=algs,
        clock=clock or Clock(),
        **settings,
    )


def reason(v: JWTVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as e:
        v.verify(token)
    assert e.value.status == 401
    assert e.value.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    return e.value.description


# ------------------------------------------------------------ what verifies


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
def test_rsa_algorithms_verify_with_the_rsa_key(alg: str) -> None:
    identity = verifier().verify(sign(rsa_key(), alg, claims(), "rsa-1"))
    assert identity.claims is not None and identity.claims["sub"] == "alice"


def test_es256_verifies_with_the_p256_key() -> None:
    assert verifier().verify(sign(ec_key(), "ES256", claims(), "ec-1")).claims is not None


def test_es384_verifies_with_the_p384_key() -> None:
    key = ec_key("ec384", "P-384")
    assert verifier().verify(sign(key, "ES384", claims(), "ec384-1")).claims is not None


def test_eddsa_verifies_with_the_ed25519_key() -> None:
    assert verifier().verify(sign(ed_key(), "EdDSA", claims(), "ed-1")).claims is not None


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hs_algorithms_verify_with_the_shared_secret(alg: str) -> None:
    secret = b"s" * 64
    v = JWTVerifier(
        StaticKeys(hs_secret_keys(secret, [alg])), algorithms=[alg], clock=Clock(), leeway=0
    )
    assert v.verify(sign(secret, alg, claims(), None)).claims is not None
    assert v.verify(sign(secret, alg, claims(sub="bob"), "any-kid")).claims is not None
    assert reason(v, sign(b"x" * 64, alg, claims(), None)) == "invalid signature"


def test_a_token_without_kid_is_tried_against_the_keys_of_its_algorithm() -> None:
    assert verifier().verify(sign(rsa_key(), "RS256", claims(), None)).claims is not None


# ---------------------------------------------------------- security cases


def test_malformed_token() -> None:
    assert reason(verifier(), "not-a-jwt") == "malformed token"
    assert reason(verifier(), "a.b.c") == "malformed token"


def test_empty_token() -> None:
    assert reason(verifier(), "") == "malformed token"


def test_expired_token() -> None:
    token = sign(rsa_key(), "RS256", claims(T0 - 3600), "rsa-1")  # exp = T0 - 3000
    assert reason(verifier(), token) == "token expired"


def test_expiry_allows_the_leeway_and_no_more() -> None:
    token = sign(rsa_key(), "RS256", claims(exp=T0 - 10), "rsa-1")
    assert verifier(leeway=30.0).verify(token).claims is not None
    assert reason(verifier(leeway=5.0), token) == "token expired"


def test_not_yet_valid_token() -> None:
    token = sign(rsa_key(), "RS256", claims(nbf=T0 + 120, iat=T0), "rsa-1")
    assert reason(verifier(), token) == "token not yet valid"


def test_token_issued_in_the_future() -> None:
    token = sign(rsa_key(), "RS256", claims(iat=T0 + 120, nbf=None), "rsa-1")
    assert reason(verifier(), token) == "token issued in the future"


def test_token_without_exp_is_refused() -> None:
    token = sign(rsa_key(), "RS256", claims(exp=None), "rsa-1")
    assert reason(verifier(), token) == "exp claim missing"


def test_non_numeric_exp_is_refused() -> None:
    token = sign(rsa_key(), "RS256", claims(exp="tomorrow"), "rsa-1")
    assert reason(verifier(), token) == "exp claim is not a number"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_time_claims_are_refused(claim: str, value: float) -> None:
    # PyJWT writes these as the JSON extensions Infinity / NaN, which json.loads
    # reads back: an exp of Infinity would never expire, a NaN never compare.
    token = sign(rsa_key(), "RS256", claims(**{claim: value}), "rsa-1")
    assert reason(verifier(), token) == f"{claim} claim is not a number"


def test_wrong_issuer() -> None:
    token = sign(rsa_key(), "RS256", claims(iss="https://evil.test"), "rsa-1")
    assert reason(verifier(), token) == "wrong issuer"


def test_missing_issuer() -> None:
    token = sign(rsa_key(), "RS256", claims(iss=None), "rsa-1")
    assert reason(verifier(), token) == "iss claim missing"


def test_wrong_audience() -> None:
    token = sign(rsa_key(), "RS256", claims(aud="someone-else"), "rsa-1")
    assert reason(verifier(), token) == "wrong audience"


def test_audience_list_needs_one_match() -> None:
    token = sign(rsa_key(), "RS256", claims(aud=["other", AUDIENCE]), "rsa-1")
    assert verifier().verify(token).claims is not None
    assert verifier(audience=["x", "other"]).verify(token).claims is not None
    assert reason(verifier(audience=["x", "y"]), token) == "wrong audience"


def test_no_configured_audience_accepts_any_aud() -> None:
    token = sign(rsa_key(), "RS256", claims(aud="whatever"), "rsa-1")
    assert verifier(audience=None).verify(token).claims is not None


def test_bad_signature() -> None:
    token = tamper(sign(rsa_key(), "RS256", claims(), "rsa-1"))
    assert reason(verifier(), token) == "invalid signature"


def test_signed_by_another_key_with_the_same_kid() -> None:
    token = sign(rsa_key("attacker"), "RS256", claims(), "rsa-1")
    assert reason(verifier(), token) == "invalid signature"


def test_alg_none_is_refused() -> None:
    assert reason(verifier(), unsigned(claims())) == "algorithm not allowed"


def test_alg_none_is_refused_whatever_its_spelling() -> None:
    for alg in ("None", "NONE", "nOnE", ""):
        assert reason(verifier(), unsigned(claims(), alg=alg)) == "algorithm not allowed"
    assert reason(verifier(), unsigned(claims(), kid=None)) == "algorithm not allowed"


def test_algorithm_outside_the_allow_list_is_refused() -> None:
    token = sign(rsa_key(), "RS512", claims(), "rsa-1")
    assert reason(verifier(algorithms=["RS256"]), token) == "algorithm not allowed"


def test_hs256_signed_with_the_rsa_public_key_is_refused() -> None:
    token = hs256_with_public_key(rsa_key(), claims(), "rsa-1")
    assert reason(verifier(), token) == "algorithm not allowed"


def test_hs256_with_the_rsa_public_key_finds_no_key_even_when_hs256_is_allowed() -> None:
    # The config never allows mixing, but the key set alone must hold the line:
    # an RSA key is never bound to an HMAC algorithm.
    token = hs256_with_public_key(rsa_key(), claims(), "rsa-1")
    with pytest.raises(UnknownKey):
        verifier(algorithms=["RS256", "HS256"]).verify(token)


def test_es256_token_against_an_rsa_kid_finds_no_key() -> None:
    token = sign(ec_key(), "ES256", claims(), "rsa-1")
    with pytest.raises(UnknownKey):
        verifier().verify(token)


def test_unknown_kid() -> None:
    token = sign(rsa_key(), "RS256", claims(), "rsa-999")
    with pytest.raises(UnknownKey) as e:
        verifier().verify(token)
    assert e.value.description == "unknown signing key"
    assert e.value.refresh is None  # static keys: nothing to refetch


def test_oversized_token_is_refused_before_parsing() -> None:
    token = "a" * (1024 * 1024)
    assert reason(verifier(), token) == "token too long"
    assert reason(verifier(), "e" * (MAX_TOKEN_LENGTH + 1)) == "token too long"


def test_non_string_kid_is_malformed() -> None:
    token = rs256_with_header(rsa_key(), {"alg": "RS256", "kid": 7}, claims())
    assert reason(verifier(), token) == "malformed token"


def test_a_payload_that_is_not_an_object_is_malformed() -> None:
    token = rs256_with_header(rsa_key(), {"alg": "RS256", "kid": "rsa-1"}, ["sub"])
    assert reason(verifier(), token) == "malformed token"


def test_a_correctly_signed_token_with_a_bad_exp_type_for_bools() -> None:
    token = sign(rsa_key(), "RS256", claims(exp=True), "rsa-1")
    assert reason(verifier(), token) == "exp claim is not a number"


def test_errors_never_carry_key_material_or_the_token() -> None:
    token = tamper(sign(rsa_key(), "RS256", claims(), "rsa-1"))
    with pytest.raises(InvalidToken) as e:
        verifier().verify(token)
    text = e.value.message + e.value.headers["WWW-Authenticate"]
    n = public_jwk(rsa_key(), "rsa-1")["n"]
    assert n[:16] not in text and token.split(".")[2][:16] not in text
    assert "rsa-1" not in text


# ------------------------------------------------------------------- cache


def test_a_verified_token_is_served_from_the_cache() -> None:
    v = verifier()
    token = sign(rsa_key(), "RS256", claims(), "rsa-1")
    first = v.verify(token)
    assert v.verify(token) is first  # the same identity object: no second signature check
    assert len(v.cache) == 1


def test_a_cached_token_expires_at_exp_plus_leeway() -> None:
    clock = Clock()
    v = verifier(clock, leeway=30.0)
    token = sign(rsa_key(), "RS256", claims(exp=T0 + 60), "rsa-1")
    for now, ok in [(T0, True), (T0 + 60, True), (T0 + 89, True), (T0 + 90, False)]:
        clock.now = now
        if ok:
            assert v.verify(token).claims is not None, now
        else:
            assert reason(v, token) == "token expired"
    assert len(v.cache) == 0


def test_the_cache_is_a_bounded_lru() -> None:
    v = verifier(cache_size=2)
    a, b, c = (sign(rsa_key(), "RS256", claims(sub=s), "rsa-1") for s in "abc")
    v.verify(a)
    v.verify(b)
    v.verify(a)  # a is now the most recently used
    v.verify(c)  # evicts b
    assert len(v.cache) == 2
    assert v.cache.get(a) is not None and v.cache.get(c) is not None
    assert v.cache.get(b) is None


def test_bad_tokens_are_not_cached() -> None:
    v = verifier()
    reason(v, tamper(sign(rsa_key(), "RS256", claims(), "rsa-1")))
    assert len(v.cache) == 0


def test_withdrawing_a_key_empties_the_cache() -> None:
    source = StaticKeys(parse_jwks(jwks(public_jwk(rsa_key(), "rsa-1")), ["RS256"], strict=True))
    v = JWTVerifier(source, algorithms=["RS256"], clock=Clock())
    token = sign(rsa_key(), "RS256", claims(), "rsa-1")
    v.verify(token)
    source.keys = parse_jwks(jwks(public_jwk(rsa_key("new"), "rsa-2")), ["RS256"], strict=True)
    source.removals += 1
    with pytest.raises(UnknownKey):
        v.verify(token)


# --------------------------------------------------- what the identity holds


def test_forward_claims_are_prebuilt_header_lines() -> None:
    v = verifier(forward_claims={"sub": "X-User-ID", "roles": "X-User-Roles", "n": "X-N"})
    token = sign(rsa_key(), "RS256", claims(roles=["user", "admin"], n=3), "rsa-1")
    assert v.verify(token).forward == (
        b"X-User-ID: alice\r\nX-User-Roles: user, admin\r\nX-N: 3\r\n"
    )


def test_absent_claims_send_no_header() -> None:
    v = verifier(forward_claims={"tenant": "X-Tenant-ID"})
    assert v.verify(sign(rsa_key(), "RS256", claims(), "rsa-1")).forward == b""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice", b"alice"),
        (["a", "b"], b"a, b"),
        ([1, "b", True], b"1, b, true"),
        (42, b"42"),
        (True, b"true"),
        ({"b": 1, "a": [2]}, b'{"a":[2],"b":1}'),
        ("evil\r\nX-Admin: 1", b'"evil\\r\\nX-Admin: 1"'),  # never a header split
        ("caf\u00e9", "caf\u00e9".encode()),
    ],
)
def test_header_value(value: Any, expected: bytes) -> None:
    assert header_value(value) == expected


def test_header_value_with_the_compact_joiner() -> None:
    assert header_value(["a", "b"], ",") == b"a,b"


@pytest.mark.parametrize(
    ("claim", "roles"),
    [
        (["user", "admin"], {"user", "admin"}),
        ("user admin", {"user", "admin"}),
        ("user", {"user"}),
        (None, set()),
        (7, set()),
        (["user", 7], {"user"}),
    ],
)
def test_roles_of(claim: Any, roles: set[str]) -> None:
    assert roles_of(claim) == roles


def test_the_sub_names_a_consumer() -> None:
    consumers = Consumers([("alice", "vip", None, ())])
    v = verifier(consumers=consumers)
    identity = v.verify(sign(rsa_key(), "RS256", claims(), "rsa-1"))
    assert identity.consumer is not None and identity.consumer == ("alice", "vip")
    other = v.verify(sign(rsa_key(), "RS256", claims(sub="bob"), "rsa-1"))
    assert other.consumer is None


def test_none_can_never_be_allowed() -> None:
    with pytest.raises(ValueError):
        verifier(algorithms=["none"])

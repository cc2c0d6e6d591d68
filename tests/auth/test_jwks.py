"""Key sets: which key verifies which algorithm, and the IdP's cached JWKS.

The RemoteKeys decisions are tables over an injected clock; its I/O runs
against a real JWKS server on 127.0.0.1:0.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.tokens import JWKSServer, ec_key, ed_key, jwks, public_jwk, rsa_key
from pyproxyd.auth.jwks import KeySet, RemoteKeys, cache_ttl, hs_secret_keys, parse_jwks

ALL = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256"]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def algs_of(keys: KeySet, kid: str) -> set[str]:
    return {alg for (k, alg) in keys.by_kid if k == kid}


# ------------------------------------------------------------ key families


def test_each_key_is_bound_only_to_algorithms_of_its_family() -> None:
    keys = parse_jwks(
        jwks(
            public_jwk(rsa_key(), "rsa"),
            public_jwk(ec_key(), "p256"),
            public_jwk(ec_key("ec384", "P-384"), "p384"),
            public_jwk(ed_key(), "ed"),
        ),
        ALL,
        strict=True,
    )
    assert algs_of(keys, "rsa") == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert algs_of(keys, "p256") == {"ES256"}
    assert algs_of(keys, "p384") == {"ES384"}
    assert algs_of(keys, "ed") == {"EdDSA"}
    assert keys.lookup("rsa", "HS256") == ()  # no HMAC with an RSA public key
    assert keys.lookup("p256", "ES384") == ()


def test_a_stated_alg_narrows_the_key_to_that_algorithm() -> None:
    keys = parse_jwks(jwks(public_jwk(rsa_key(), "rsa", alg="PS256")), ALL, strict=True)
    assert algs_of(keys, "rsa") == {"PS256"}


def test_only_allowed_algorithms_get_keys() -> None:
    keys = parse_jwks(jwks(public_jwk(rsa_key(), "rsa")), ["RS256"], strict=True)
    assert algs_of(keys, "rsa") == {"RS256"}


def test_a_stated_alg_of_another_family_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        parse_jwks(jwks(public_jwk(rsa_key(), "rsa", alg="ES256")), ALL, strict=True)


def test_private_key_material_is_refused() -> None:
    from jwt.algorithms import RSAAlgorithm

    private = RSAAlgorithm.to_jwk(rsa_key(), as_dict=True)
    with pytest.raises(ValueError, match="private key"):
        parse_jwks(jwks({**private, "kid": "oops"}), ALL, strict=True)


def test_encryption_keys_and_non_verify_keys_are_skipped() -> None:
    enc = {**public_jwk(rsa_key(), "enc"), "use": "enc"}
    sign_only = {**public_jwk(ec_key(), "ops"), "key_ops": ["sign"]}
    verify = {**public_jwk(ed_key(), "ed"), "key_ops": ["verify"]}
    keys = parse_jwks(jwks(enc, sign_only, verify), ALL, strict=True)
    assert set(keys.by_kid) == {("ed", "EdDSA")}


def test_strict_parsing_names_the_bad_key_lenient_parsing_skips_it() -> None:
    doc = jwks(public_jwk(rsa_key(), "good"), {"kty": "RSA", "kid": "bad", "n": "!!", "e": "x"})
    with pytest.raises(ValueError, match="JWKS key 1"):
        parse_jwks(doc, ALL, strict=True)
    keys = parse_jwks(doc, ALL, strict=False)
    assert algs_of(keys, "good") and not algs_of(keys, "bad")


@pytest.mark.parametrize("doc", [b"not json", b"[]", b'{"keys": 3}', b"{}"])
def test_a_document_that_is_no_jwks_is_an_error(doc: bytes) -> None:
    with pytest.raises(ValueError):
        parse_jwks(doc, ALL, strict=False)


def test_keys_without_kid_match_any_kid_tokens_without_kid_try_all() -> None:
    keys = parse_jwks(
        jwks(public_jwk(rsa_key(), None), public_jwk(rsa_key("b"), "b")), ["RS256"], strict=True
    )
    assert len(keys.lookup("whatever", "RS256")) == 1  # the kid-less key
    assert len(keys.lookup("b", "RS256")) == 1
    assert len(keys.lookup(None, "RS256")) == 2


def test_hs_secret_too_short_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        hs_secret_keys(b"short", ["HS256"])
    with pytest.raises(ValueError, match="at least 64 bytes"):
        hs_secret_keys(b"x" * 48, ["HS512"])
    assert len(hs_secret_keys(b"x" * 64, ["HS256", "HS512"]).lookup("k", "HS512")) == 1


# ----------------------------------------------------------- cache control


@pytest.mark.parametrize(
    ("header", "ttl"),
    [
        (None, 300),  # default
        ("max-age=600", 600),
        ("public, max-age=3600", 3600),
        ("max-age=5", 60),  # floor
        ("max-age=999999999", 86400),  # ceiling
        ("no-store", 60),
        ("no-cache", 60),
        ("s-maxage=900, max-age=100", 900),
        ('max-age="120"', 120),
        ("private", 300),
    ],
)
def test_cache_ttl(header: str | None, ttl: float) -> None:
    assert cache_ttl(header, floor=60, ceiling=86400, default=300) == ttl


# --------------------------------------------- RemoteKeys: decisions over now


def test_refresh_is_due_at_once_then_after_the_ttl() -> None:
    r = RemoteKeys("http://x", ["RS256"])
    assert r.refresh_due(0)
    r.install(KeySet(), ttl=300, now=1000)
    for now, due in [(1000, False), (1299, False), (1300, True)]:
        assert r.refresh_due(now) is due


def test_a_failed_fetch_keeps_the_keys_and_retries_soon() -> None:
    r = RemoteKeys("http://x", ["RS256"], retry_after=10)
    good = parse_jwks(jwks(public_jwk(rsa_key(), "a")), ["RS256"], strict=True)
    r.install(good, ttl=300, now=1000)
    r.failed(1300)
    assert r.keys is good
    assert not r.refresh_due(1309) and r.refresh_due(1310)


def test_unknown_kid_refetches_are_throttled() -> None:
    r = RemoteKeys("http://x", ["RS256"], refetch_interval=5)
    table = [(100.0, True), (101.0, False), (104.9, False), (105.0, True), (105.1, False)]
    for now, allowed in table:
        assert (r.refetch_for_unknown_kid(now) is not None) is allowed, now


def test_withdrawing_a_key_counts_as_a_removal_adding_one_does_not() -> None:
    r = RemoteKeys("http://x", ["RS256"])
    a = public_jwk(rsa_key(), "a")
    b = public_jwk(rsa_key("b"), "b")
    r.install(parse_jwks(jwks(a), ["RS256"], strict=True), 300, 0)
    r.install(parse_jwks(jwks(a, b), ["RS256"], strict=True), 300, 1)
    assert r.removals == 0
    r.install(parse_jwks(jwks(b), ["RS256"], strict=True), 300, 2)
    assert r.removals == 1


# ------------------------------------------------- RemoteKeys: real HTTP


async def remote(server: JWKSServer, clock: Clock | None = None, **kw: Any) -> RemoteKeys:
    return RemoteKeys(server.url, ["RS256", "ES256"], clock=clock or Clock(), **kw)


async def test_fetch_installs_the_keys_with_the_servers_max_age() -> None:
    clock = Clock(1000)
    async with JWKSServer(public_jwk(rsa_key(), "a"), cache_control="max-age=120") as s:
        r = await remote(s, clock)
        try:
            assert await r.fetch()
            assert r.keys.lookup("a", "RS256")
            assert r.next_refresh == 1120
        finally:
            await r.aclose()


async def test_a_new_kid_is_found_by_a_refetch() -> None:
    clock = Clock(1000)
    async with JWKSServer(public_jwk(rsa_key(), "a")) as s:
        r = await remote(s, clock)
        try:
            await r.fetch()
            s.keys.append(public_jwk(ec_key(), "b"))
            assert not r.keys.lookup("b", "ES256")
            refresh = r.refetch_for_unknown_kid(clock())
            assert refresh is not None
            await refresh()
            assert r.keys.lookup("b", "ES256")
            assert s.hits == 2
        finally:
            await r.aclose()


async def test_concurrent_unknown_kids_share_one_fetch() -> None:
    import asyncio

    clock = Clock(1000)
    async with JWKSServer(public_jwk(rsa_key(), "a")) as s:
        r = await remote(s, clock)
        try:
            first = r.refetch_for_unknown_kid(clock())
            assert first is not None
            task = asyncio.ensure_future(first())
            await asyncio.sleep(0)  # the fetch is in flight now
            second = r.refetch_for_unknown_kid(clock())
            assert second is not None  # joins the fetch in flight, no new request
            await asyncio.gather(task, second())
            assert s.hits == 1
        finally:
            await r.aclose()


async def test_the_last_good_keys_stay_while_the_idp_is_down() -> None:
    clock = Clock(1000)
    s = await JWKSServer(public_jwk(rsa_key(), "a")).start()
    r = await remote(s, clock, retry_after=10)
    try:
        assert await r.fetch()
        await s.stop()
        clock.now = 2000
        assert not await r.fetch()  # connection refused
        assert r.keys.lookup("a", "RS256")  # still there
        assert r.failures == 1 and r.next_refresh == 2010
    finally:
        await r.aclose()


async def test_a_broken_document_keeps_the_last_good_keys() -> None:
    clock = Clock(1000)
    async with JWKSServer(public_jwk(rsa_key(), "a")) as s:
        r = await remote(s, clock)
        try:
            await r.fetch()
            s.keys = [{"kty": "RSA", "kid": "broken"}]  # nothing usable
            assert not await r.fetch()
            assert r.keys.lookup("a", "RS256")
        finally:
            await r.aclose()


async def test_an_oversized_document_is_refused_and_the_keys_kept() -> None:
    async with JWKSServer(public_jwk(rsa_key(), "a")) as s:
        r = await remote(s, max_bytes=100_000)
        try:
            assert await r.fetch()
            r.max_bytes = 100  # the same document is now too big
            assert not await r.fetch()
            assert r.keys.lookup("a", "RS256") and r.failures == 1
        finally:
            await r.aclose()


async def test_an_error_status_keeps_the_last_good_keys() -> None:
    async with JWKSServer(public_jwk(rsa_key(), "a")) as s:
        r = await remote(s)
        try:
            assert await r.fetch()
            r.url = s.url.replace("jwks.json", "missing.json")  # 404
            assert not await r.fetch()
            assert r.keys.lookup("a", "RS256")
        finally:
            await r.aclose()


async def test_activate_fetches_and_aclose_stops_the_loop() -> None:
    async with JWKSServer(public_jwk(rsa_key(), "a")) as s:
        r = await remote(s)
        r.activate()
        r.activate()  # idempotent
        await r.ready()
        assert r.keys.lookup("a", "RS256") and s.hits == 1
        await r.aclose()
        assert r._loop_task is None

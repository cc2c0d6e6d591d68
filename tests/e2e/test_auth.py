"""Identity at the edge, end to end: the real gateway in front of a real echo backend.

Every security case is its own test. Tokens are signed with keys made here
(RSA 2048, EC P-256); the gateway reads their public halves from a
jwks.json beside its config, or from a real JWKS server on 127.0.0.1:0.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from harness.backends import Backend, wait_for
from harness.gateway import access_lines, config, fetch, gateway, url
from harness.tokens import (
    AUDIENCE,
    ISSUER,
    JWKSServer,
    claims,
    ec_key,
    hs256_with_public_key,
    jwks,
    public_jwk,
    rsa_key,
    sign,
    tamper,
    unsigned,
)
from pyproxyd.server import Gateway

API_KEY = "acme-secret-key-0123456789"

ROUTES = """
[upstreams.v1]
targets = [{{ url = "{v1}" }}]
[upstreams.v2]
targets = [{{ url = "{v2}" }}]

[[routes]]
id = "public"
path = "/public/**"
upstream = "v1"
strip_prefix = 1

[[routes]]
id = "internal"
path = "/api/**"
auth = "jwt"
claims = {{ groups = "employees" }}
upstream = "v2"
strip_prefix = 1

[[routes]]
id = "users"
path = "/api/**"
auth = "jwt"
require_roles = ["user"]
upstream = "v1"
strip_prefix = 1

[[routes]]
id = "maybe"
path = "/maybe/**"
auth = "optional_jwt"
upstream = "v1"
strip_prefix = 1

[[routes]]
id = "keyed"
path = "/keyed/**"
auth = "api_key"
upstream = "v1"
strip_prefix = 1

[auth.jwt]
algorithms = ["RS256", "ES256"]
{keys}
issuer = "{issuer}"
audience = "{audience}"
leeway = "5s"
forward_claims = {{ sub = "X-User-ID", roles = "X-User-Roles", tenant = "X-Tenant-ID" }}

[auth.api_key]
header = "X-API-Key"

[consumers.acme]
tier = "vip"
api_key_sha256 = "{key_hash}"

[consumers.hobbyist]
tier = "free"
client_ids = ["hobby-1"]
"""


def setup(
    tmp_path: Path, v1: Backend, v2: Backend, *, server: str = "", jwks_url: str | None = None
) -> str:
    if jwks_url is None:
        doc = jwks(public_jwk(rsa_key(), "rsa-1"), public_jwk(ec_key(), "ec-1"))
        (tmp_path / "jwks.json").write_text(json.dumps(doc))
        keys = 'jwks_file = "jwks.json"'
    else:
        keys = f'jwks_url = "{jwks_url}"'
    body = ROUTES.format(
        v1=v1.url,
        v2=v2.url,
        keys=keys,
        issuer=ISSUER,
        audience=AUDIENCE,
        key_hash=hashlib.sha256(API_KEY.encode()).hexdigest(),
    )
    return config(body, server=server)


@asynccontextmanager
async def started(
    tmp_path: Path, *, server: str = "", jwks_url: str | None = None
) -> AsyncIterator[tuple[Gateway, Backend, Backend]]:
    async with (
        Backend(name="v1") as v1,
        Backend(name="v2") as v2,
        gateway(tmp_path, setup(tmp_path, v1, v2, server=server, jwks_url=jwks_url)) as gw,
    ):
        yield gw, v1, v2


def now_claims(**extra: Any) -> dict[str, Any]:
    return claims(time.time(), **extra)


def good(**extra: Any) -> str:
    return sign(rsa_key(), "RS256", now_claims(**extra), "rsa-1")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def echoed(body: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in json.loads(body)["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


async def refused(gw: Gateway, token: str, path: str = "/api/echo") -> str:
    """The request is a 401 JSON error with an RFC 6750 challenge; returns its description."""
    status, headers, body = await fetch(url(gw, path), headers=auth(token))
    assert status == 401, body
    err = json.loads(body)
    assert err["error"] == "unauthorized" and err["status"] == 401
    assert err["request_id"] == headers["X-Request-ID"]
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    description = challenge.split('error_description="', 1)[1].rstrip('"')
    assert err["message"] == f"invalid token: {description}"
    return description


# ------------------------------------------------------------------ the good path


async def test_a_valid_token_reaches_the_upstream_with_the_claim_headers(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        token = good(roles=["user", "admin"], tenant="t-9")
        status, headers, body = await fetch(url(gw, "/api/echo"), headers=auth(token))
        assert status == 200 and headers["X-Backend"] == "v1"
        seen = echoed(body)
        assert seen["x-user-id"] == ["alice"]
        assert seen["x-user-roles"] == ["user, admin"]
        assert seen["x-tenant-id"] == ["t-9"]
        assert seen["authorization"] == [f"Bearer {token}"]  # passed on, as Kong does


async def test_an_es256_token_verifies_too(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        token = sign(ec_key(), "ES256", now_claims(), "ec-1")
        status, _, _ = await fetch(url(gw, "/api/echo"), headers=auth(token))
        assert status == 200


# --------------------------------------------------------------- security cases


async def test_missing_token_is_401_with_a_bearer_challenge(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, v1, _):
        status, headers, body = await fetch(url(gw, "/api/echo"))
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Bearer realm="pyproxyd"'
        assert json.loads(body)["error"] == "unauthorized"
        assert v1.hits == 0


async def test_malformed_token(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        assert await refused(gw, "this.is-not.a-jwt") == "malformed token"


async def test_expired_token(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        token = sign(rsa_key(), "RS256", claims(time.time() - 3600), "rsa-1")
        assert await refused(gw, token) == "token expired"


async def test_not_yet_valid_token(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        token = good(nbf=int(time.time()) + 300)
        assert await refused(gw, token) == "token not yet valid"


async def test_wrong_issuer(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        assert await refused(gw, good(iss="https://evil.test")) == "wrong issuer"


async def test_wrong_audience(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        assert await refused(gw, good(aud="another-api")) == "wrong audience"


async def test_bad_signature(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, v1, _):
        assert await refused(gw, tamper(good())) == "invalid signature"
        assert v1.hits == 0


async def test_alg_none_is_refused(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        assert await refused(gw, unsigned(now_claims())) == "algorithm not allowed"


async def test_hs256_signed_with_the_rsa_public_key_is_refused(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        token = hs256_with_public_key(rsa_key(), now_claims(), "rsa-1")
        assert await refused(gw, token) == "algorithm not allowed"


async def test_unknown_kid(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        token = sign(rsa_key("stranger"), "RS256", now_claims(), "rsa-404")
        assert await refused(gw, token) == "unknown signing key"


async def test_a_1mb_token_is_a_clean_431_at_the_default_header_limit(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, v1, _):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        status, _, body = await fetch(url(gw, "/api/echo"), headers=auth("a" * 1024 * 1024))
        assert status == 431
        assert json.loads(body)["error"] == "request_header_fields_too_large"
        assert loop.time() - t0 < 5 and v1.hits == 0


async def test_a_1mb_token_is_a_quick_401_when_headers_may_be_that_big(tmp_path: Path) -> None:
    async with started(tmp_path, server='max_header_size = "2MiB"') as (gw, v1, _):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await refused(gw, "a" * 1024 * 1024) == "token too long"
        assert loop.time() - t0 < 5 and v1.hits == 0


async def test_the_401_never_leaks_key_material(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        token = tamper(good())
        status, headers, body = await fetch(url(gw, "/api/echo"), headers=auth(token))
        text = body.decode() + headers["WWW-Authenticate"]
        assert status == 401
        assert public_jwk(rsa_key(), "rsa-1")["n"][:20] not in text
        assert token.split(".")[2][:20] not in text and "rsa-1" not in text


# ------------------------------------------------------------ forged headers


async def test_a_spoofed_user_id_never_reaches_an_unauthenticated_route(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        spoof = {"X-User-ID": "admin", "x-user-roles": "admin", "X-Tenant-ID": "all"}
        status, _, body = await fetch(url(gw, "/public/echo"), headers=spoof)
        assert status == 200
        seen = echoed(body)
        assert "x-user-id" not in seen and "x-user-roles" not in seen
        assert "x-tenant-id" not in seen


async def test_a_spoofed_user_id_is_replaced_on_a_jwt_route(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        headers = {**auth(good()), "X-User-ID": "admin", "X-Tenant-ID": "all"}
        status, _, body = await fetch(url(gw, "/api/echo"), headers=headers)
        assert status == 200
        seen = echoed(body)
        assert seen["x-user-id"] == ["alice"]
        assert "x-tenant-id" not in seen  # the token has no tenant claim


async def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored(
    tmp_path: Path, log_file: Path
) -> None:
    async with (
        Backend(name="v1") as v1,
        Backend(name="v2") as v2,
    ):
        toml = setup(tmp_path, v1, v2, server='trusted_proxies = ["10.0.0.0/8"]')
        toml = toml.replace("access_log = false", "access_log = true")
        async with gateway(tmp_path, toml) as gw:
            spoof = {"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Host": "evil.test"}
            status, _, body = await fetch(url(gw, "/public/echo"), headers=spoof)
            assert status == 200
            seen = echoed(body)
            assert seen["x-forwarded-for"] == ["127.0.0.1"]
            assert seen["x-forwarded-host"] != ["evil.test"]
    line = access_lines(log_file)[-1]
    assert line["client_ip"] == "127.0.0.1"


# -------------------------------------------------------------- roles, claims


async def test_require_roles_refuses_a_token_without_the_role(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, v1, _):
        status, headers, body = await fetch(
            url(gw, "/api/echo"), headers=auth(good(roles=["guest"]))
        )
        assert status == 403
        assert json.loads(body)["error"] == "forbidden"
        assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
        assert v1.hits == 0


async def test_the_claims_predicate_routes_employees_to_v2(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, v1, v2):
        staff = good(groups=["staff", "employees"], roles=[])
        status, headers, body = await fetch(url(gw, "/api/echo"), headers=auth(staff))
        assert status == 200 and headers["X-Backend"] == "v2"
        assert echoed(body)["x-user-id"] == ["alice"]
        status, headers, _ = await fetch(url(gw, "/api/echo"), headers=auth(good()))
        assert status == 200 and headers["X-Backend"] == "v1"  # not an employee
        assert (v1.hits, v2.hits) == (1, 1)


async def test_a_string_claim_matches_the_claims_predicate(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        token = good(groups="employees", roles=[])
        status, headers, _ = await fetch(url(gw, "/api/echo"), headers=auth(token))
        assert status == 200 and headers["X-Backend"] == "v2"


async def test_without_a_token_the_claims_route_steps_aside_and_the_next_route_answers(
    tmp_path: Path, log_file: Path
) -> None:
    async with (
        Backend(name="v1") as v1,
        Backend(name="v2") as v2,
    ):
        toml = setup(tmp_path, v1, v2).replace("access_log = false", "access_log = true")
        async with gateway(tmp_path, toml) as gw:
            status, _, _ = await fetch(url(gw, "/api/echo"))
            assert status == 401
            bad = tamper(good(groups=["employees"]))
            assert await refused(gw, bad) == "invalid signature"
    lines = access_lines(log_file)
    assert [line["route"] for line in lines] == ["users", "users"]  # the route that matched


# ------------------------------------------------------------------ optional


async def test_optional_jwt_without_a_token_is_anonymous(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        status, _, body = await fetch(url(gw, "/maybe/echo"), headers={"X-User-ID": "forged"})
        assert status == 200
        assert "x-user-id" not in echoed(body)


async def test_optional_jwt_with_a_good_token_forwards_the_claims(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        status, _, body = await fetch(url(gw, "/maybe/echo"), headers=auth(good(sub="bob")))
        assert status == 200
        assert echoed(body)["x-user-id"] == ["bob"]


async def test_optional_jwt_with_a_bad_token_is_401(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        assert await refused(gw, tamper(good()), "/maybe/echo") == "invalid signature"


# ------------------------------------------------------ API keys, consumers


@asynccontextmanager
async def logged(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with Backend(name="v1") as v1, Backend(name="v2") as v2:
        toml = setup(tmp_path, v1, v2).replace("access_log = false", "access_log = true")
        async with gateway(tmp_path, toml) as gw:
            yield gw


async def test_api_key_good_identifies_the_consumer(tmp_path: Path, log_file: Path) -> None:
    async with logged(tmp_path) as gw:
        status, _, body = await fetch(url(gw, "/keyed/echo"), headers={"X-API-Key": API_KEY})
        assert status == 200
        assert echoed(body)["x-api-key"] == [API_KEY]
    assert access_lines(log_file)[-1]["consumer"] == "acme"


async def test_api_key_bad(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, v1, _):
        status, headers, body = await fetch(
            url(gw, "/keyed/echo"), headers={"X-API-Key": API_KEY + "x"}
        )
        assert status == 401
        assert json.loads(body)["message"] == "invalid API key"
        assert headers["WWW-Authenticate"] == 'ApiKey header="X-API-Key"'
        assert v1.hits == 0


async def test_api_key_missing(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        status, _, body = await fetch(url(gw, "/keyed/echo"))
        assert status == 401
        assert json.loads(body)["error"] == "unauthorized"


async def test_an_api_key_is_not_a_bearer_token(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        status, _, _ = await fetch(url(gw, "/keyed/echo"), headers=auth(good()))
        assert status == 401


async def test_client_ids_name_the_consumer(tmp_path: Path, log_file: Path) -> None:
    async with logged(tmp_path) as gw:
        for cid in ("hobby-1", "unknown"):
            status, _, body = await fetch(url(gw, "/public/echo"), headers={"X-Client-ID": cid})
            assert status == 200
            assert echoed(body)["x-client-id"] == [cid]  # an identifier, passed on
    assert [line["consumer"] for line in access_lines(log_file)] == ["hobbyist", None]


async def test_a_jwt_sub_naming_a_consumer_identifies_it(tmp_path: Path, log_file: Path) -> None:
    async with logged(tmp_path) as gw:
        status, _, _ = await fetch(url(gw, "/api/echo"), headers=auth(good(sub="acme")))
        assert status == 200
    assert access_lines(log_file)[-1]["consumer"] == "acme"


# ------------------------------------------------------- key rotation, reload


async def test_a_rotated_jwks_file_is_read_on_reload(tmp_path: Path) -> None:
    async with started(tmp_path) as (gw, _, _):
        token = sign(rsa_key("next"), "RS256", now_claims(), "rsa-2")
        assert await refused(gw, token) == "unknown signing key"
        doc = jwks(public_jwk(rsa_key(), "rsa-1"), public_jwk(rsa_key("next"), "rsa-2"))
        (tmp_path / "jwks.json").write_text(json.dumps(doc))
        assert await gw.reloader.reload()  # only jwks.json changed: still a reload
        status, _, _ = await fetch(url(gw, "/api/echo"), headers=auth(token))
        assert status == 200


async def test_key_rotation_a_new_kid_verifies_without_a_restart(tmp_path: Path) -> None:
    async with (
        JWKSServer(public_jwk(rsa_key(), "rsa-1")) as idp,
        started(tmp_path, jwks_url=idp.url) as (gw, _, _),
    ):
        status, _, _ = await fetch(url(gw, "/api/echo"), headers=auth(good()))
        assert status == 200
        idp.keys.append(public_jwk(rsa_key("next"), "rsa-2"))  # the IdP rotates
        rotated = sign(rsa_key("next"), "RS256", now_claims(), "rsa-2")
        status, _, _ = await fetch(url(gw, "/api/echo"), headers=auth(rotated))
        assert status == 200
        assert idp.hits == 2  # the start, then one refetch for the new kid


async def test_key_rotation_through_the_claims_predicate(tmp_path: Path) -> None:
    async with (
        JWKSServer(public_jwk(rsa_key(), "rsa-1")) as idp,
        started(tmp_path, jwks_url=idp.url) as (gw, _, _),
    ):
        await fetch(url(gw, "/public/echo"))
        idp.keys.append(public_jwk(rsa_key("next"), "rsa-2"))
        staff = sign(rsa_key("next"), "RS256", now_claims(groups=["employees"]), "rsa-2")
        status, headers, _ = await fetch(url(gw, "/api/echo"), headers=auth(staff))
        assert status == 200 and headers["X-Backend"] == "v2"


async def test_idp_down_known_keys_keep_working(tmp_path: Path) -> None:
    idp = await JWKSServer(public_jwk(rsa_key(), "rsa-1")).start()
    try:
        async with started(tmp_path, jwks_url=idp.url) as (gw, _, _):
            status, _, _ = await fetch(url(gw, "/api/echo"), headers=auth(good()))
            assert status == 200
            await idp.stop()
            # A token never seen before (not in the verified-token cache), known kid:
            status, _, _ = await fetch(url(gw, "/api/echo"), headers=auth(good(sub="new")))
            assert status == 200
            # An unknown kid tries the IdP once, fails, and is refused ...
            stranger = sign(rsa_key("stranger"), "RS256", now_claims(), "rsa-9")
            assert await refused(gw, stranger) == "unknown signing key"
            # ... without costing the known keys anything.
            status, _, _ = await fetch(url(gw, "/api/echo"), headers=auth(good(sub="later")))
            assert status == 200
    finally:
        await idp.stop()


async def test_a_flood_of_random_kids_costs_the_idp_one_fetch(tmp_path: Path) -> None:
    async with (
        JWKSServer(public_jwk(rsa_key(), "rsa-1")) as idp,
        started(tmp_path, jwks_url=idp.url) as (gw, _, _),
    ):
        await fetch(url(gw, "/public/echo"))
        before = idp.hits
        for i in range(20):
            token = sign(rsa_key("stranger"), "RS256", now_claims(), f"random-{i}")
            assert await refused(gw, token) == "unknown signing key"
        assert idp.hits - before == 1


# ---------------------------------------------------------------- websocket


async def ws_whoami(request: web.Request) -> web.WebSocketResponse:
    """Sends the X-User-ID header it was opened with, then closes."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(",".join(request.headers.getall("X-User-ID", [])) or "-")
    await ws.close()
    return ws


@asynccontextmanager
async def ws_gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with (
        Backend([web.get("/ws", ws_whoami)], name="v1") as v1,
        Backend(name="v2") as v2,
        gateway(tmp_path, setup(tmp_path, v1, v2)) as gw,
    ):
        yield gw


async def test_a_websocket_on_a_jwt_route_needs_a_token(tmp_path: Path) -> None:
    async with ws_gateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(f"ws://127.0.0.1:{gw.ports[0]}/api/ws")
        assert e.value.status == 401


async def test_a_websocket_gets_the_claim_headers_not_the_forged_ones(tmp_path: Path) -> None:
    async with (
        ws_gateway(tmp_path) as gw,
        aiohttp.ClientSession() as s,
        s.ws_connect(
            f"ws://127.0.0.1:{gw.ports[0]}/api/ws", headers={**auth(good()), "X-User-ID": "root"}
        ) as ws,
    ):
        assert (await ws.receive()).data == "alice"


async def test_the_jwks_is_refreshed_in_the_background_and_survives_the_idp_going_down() -> None:
    from pyproxyd.auth import RemoteKeys

    idp = await JWKSServer(public_jwk(rsa_key(), "rsa-1"), cache_control="max-age=0").start()
    keys = RemoteKeys(idp.url, ["RS256"], floor=0.1, retry_after=0.1)
    try:
        keys.activate()
        await keys.ready()
        idp.keys.append(public_jwk(rsa_key("next"), "rsa-2"))  # no token asks for it
        await wait_for(lambda: bool(keys.keys.lookup("rsa-2", "RS256")), timeout=5)
        await idp.stop()
        failures = keys.failures
        await wait_for(lambda: keys.failures >= failures + 2, timeout=5)
        assert keys.keys.lookup("rsa-1", "RS256") and keys.keys.lookup("rsa-2", "RS256")
    finally:
        await keys.aclose()
        await idp.stop()

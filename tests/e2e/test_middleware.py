"""Middlewares through the whole gateway: the built-in `headers`, `redirect`,
`respond` and `cors` types, against a real echo backend.

The backend's /echo answers with the headers it received, so a test sees
what reached the upstream; CORS is checked from the HTTP side of a browser
(preflight, Origin, credentials). test_middleware_python.py has the
`python` middlewares.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDictProxy

from harness.backends import Backend
from harness.gateway import config, fetch, gateway, url
from harness.tokens import AUDIENCE, ISSUER, claims, jwks, public_jwk, rsa_key, sign


def jwt_auth(tmp_path: Path, forward: str = '{ sub = "X-User-ID" }') -> str:
    """An [auth.jwt] table reading the test key from a jwks.json beside the config."""
    (tmp_path / "jwks.json").write_text(json.dumps(jwks(public_jwk(rsa_key(), "rsa-1"))))
    return f"""
[auth.jwt]
algorithms = ["RS256"]
jwks_file = "jwks.json"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
forward_claims = {forward}
"""


def bearer(**extra: Any) -> dict[str, str]:
    token = sign(rsa_key(), "RS256", claims(time.time(), **extra), "rsa-1")
    return {"Authorization": f"Bearer {token}"}


def echoed(body: bytes) -> dict[str, list[str]]:
    """The headers the echo backend received, by lower-case name."""
    out: dict[str, list[str]] = {}
    for k, v in json.loads(body)["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def route(rid: str, prefix: str, middlewares: str, extra: str = "") -> str:
    return f"""
[[routes]]
id = "{rid}"
path = "{prefix}/**"
strip_prefix = 1
middlewares = {middlewares}
{extra}
"""


def upstream(b: Backend) -> str:
    return f'[upstreams.app]\ntargets = [{{ url = "{b.url}" }}]\n'


# -- headers ------------------------------------------------------------------------

HEADERS = """
[middlewares.edit]
type = "headers"
[middlewares.edit.request]
set = { "X-Gateway" = "pyproxyd" }
add = { "Via" = "1.1 pyproxyd" }
remove = ["X-Debug"]
[middlewares.edit.response]
set = { "X-Conn-Id" = "hidden", "X-Frame-Options" = "DENY" }
add = { "Cache-Control" = "no-store" }
remove = ["X-Backend", "Server"]
"""


async def test_headers_set_add_and_remove_in_both_directions(tmp_path: Path) -> None:
    async with Backend(name="b1") as b:
        body = upstream(b) + HEADERS + route("edited", "/e", '["edit"]', 'upstream = "app"')
        body += route("plain", "/p", "[]", 'upstream = "app"')
        async with gateway(tmp_path, config(body)) as gw:
            sent = {"X-Gateway": "forged", "Via": "1.0 client-proxy", "X-Debug": "1"}
            status, headers, data = await fetch(url(gw, "/e/echo"), headers=sent)
            _, plain, _ = await fetch(url(gw, "/p/echo"))
    assert status == 200
    seen = echoed(data)
    assert seen["x-gateway"] == ["pyproxyd"]  # set replaces the client's value
    assert seen["via"] == ["1.0 client-proxy", "1.1 pyproxyd"]  # add keeps it
    assert "x-debug" not in seen
    # Headers the upstream sends: replaced by set, dropped by remove.
    assert plain["X-Backend"] == "b1" and "Server" in plain
    assert headers.getall("X-Conn-Id") == ["hidden"]
    assert "X-Backend" not in headers and "Server" not in headers
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Cache-Control"] == "no-store"


async def test_response_headers_added_follow_the_request_id_and_rate_limit_ones(
    tmp_path: Path,
) -> None:
    limit = '[rate_limits.rl]\nalgorithm = "token_bucket"\nrate = "100/m"\nburst = 10\n'
    async with Backend() as b:
        body = upstream(b) + HEADERS + limit
        body += route("edited", "/e", '["edit"]', 'upstream = "app"\nrate_limit = "rl"')
        async with gateway(tmp_path, config(body)) as gw:
            status, headers, _ = await fetch(url(gw, "/e/echo"))
    assert status == 200
    added = ("x-conn-id", "x-frame-options", "cache-control")
    ours = [k.lower() for k in headers if k.lower() in ("x-request-id", *added)]
    limits = [k.lower() for k in headers if "ratelimit" in k.lower()]
    assert ours == ["x-request-id", *added] and limits
    names = [k.lower() for k in headers]
    # In one block, in this order: the gateway's lines, then the step's.
    at = names.index("x-request-id")
    assert names[at : at + 1 + len(limits) + 3] == ["x-request-id", *limits, *added]


TEMPLATES = """
[middlewares.tmpl]
type = "headers"
[middlewares.tmpl.request.set]
"X-Route" = "{route}"
"X-Rid" = "{request_id}"
"X-Ip" = "{client_ip}"
"X-Path" = "{path}"
"X-Sub" = "sub={claim:sub}"
"X-Roles" = "{claim:roles}"
"X-Tenant" = "{claim:tenant}"
"X-No-Claim" = "[{claim:nope}]"
"X-Client" = "{header:X-Client}"
"X-No-Header" = "[{header:X-Nope}]"
[middlewares.tmpl.response.set]
"X-Seen-Path" = "{path}"
"X-Seen-Route" = "{route}"
"""


async def test_templates_render_the_request_route_and_claims(tmp_path: Path) -> None:
    async with Backend() as b:
        extra = 'upstream = "app"\nauth = "jwt"'
        body = upstream(b) + TEMPLATES + route("tpl", "/t", '["tmpl"]', extra) + jwt_auth(tmp_path)
        async with gateway(tmp_path, config(body)) as gw:
            sent = {**bearer(roles=["user", "admin"]), "X-Client": "web-7"}
            status, headers, data = await fetch(url(gw, "/t/echo/a?q=1"), headers=sent)
    assert status == 200
    seen = echoed(data)
    assert json.loads(data)["path_qs"] == "/echo/a?q=1"
    assert seen["x-route"] == ["tpl"]
    assert seen["x-rid"] == [headers["X-Request-ID"]]
    assert seen["x-ip"] == ["127.0.0.1"]
    assert seen["x-path"] == ["/echo/a"]  # after strip_prefix, without the query
    assert seen["x-sub"] == ["sub=alice"]
    assert seen["x-roles"] == ["user,admin"]  # a list claim, joined with commas
    assert seen["x-tenant"] == [""]  # a missing claim renders empty
    assert seen["x-no-claim"] == ["[]"]
    assert seen["x-client"] == ["web-7"]
    assert seen["x-no-header"] == ["[]"]  # a missing header too
    assert headers["X-Seen-Path"] == "/echo/a" and headers["X-Seen-Route"] == "tpl"


async def test_a_claim_with_cr_lf_cannot_inject_a_header(tmp_path: Path) -> None:
    async with Backend() as b:
        extra = 'upstream = "app"\nauth = "jwt"'
        body = upstream(b) + TEMPLATES + route("tpl", "/t", '["tmpl"]', extra) + jwt_auth(tmp_path)
        async with gateway(tmp_path, config(body)) as gw:
            evil = bearer(tenant="t1\r\nX-Injected: yes", sub="bob\nX-Admin: 1")
            status, _, data = await fetch(url(gw, "/t/echo"), headers=evil)
    assert status == 200
    seen = echoed(data)
    assert "x-injected" not in seen and "x-admin" not in seen
    assert seen["x-tenant"] == ["t1  X-Injected: yes"]  # control characters became spaces
    assert seen["x-sub"] == ["sub=bob X-Admin: 1"]


async def test_server_middlewares_run_outside_the_routes_and_on_every_route(
    tmp_path: Path,
) -> None:
    mws = """
[middlewares.outer]
type = "headers"
request = { add = { "X-Trail" = "outer" } }
response = { add = { "X-Trail" = "outer" } }
[middlewares.inner]
type = "headers"
request = { add = { "X-Trail" = "inner" } }
response = { add = { "X-Trail" = "inner" } }
[middlewares.canned]
type = "respond"
body = "canned"
"""
    async with Backend() as b:
        body = upstream(b) + mws + route("own", "/own", '["inner"]', 'upstream = "app"')
        body += route("bare", "/bare", "[]", 'upstream = "app"')
        body += route("answered", "/answered", '["canned"]')
        toml = config(body, server='middlewares = ["outer"]')
        async with gateway(tmp_path, toml) as gw:
            _, own_h, own = await fetch(url(gw, "/own/echo"))
            _, bare_h, bare = await fetch(url(gw, "/bare/echo"))
            status, answered_h, text = await fetch(url(gw, "/answered/x"))
    # on_request outermost first; on_response innermost first.
    assert echoed(own)["x-trail"] == ["outer", "inner"]
    assert own_h.getall("X-Trail") == ["inner", "outer"]
    assert echoed(bare)["x-trail"] == ["outer"]
    assert bare_h.getall("X-Trail") == ["outer"]
    assert (status, text) == (200, b"canned")
    assert answered_h.getall("X-Trail") == ["outer"]


# -- redirect and respond --------------------------------------------------------------

ANSWERS = """
[middlewares.moved]
type = "redirect"
to = "https://docs.example.com{path}"
status = 308
[middlewares.login]
type = "redirect"
to = "https://login.example.com/start?next={path}"
[middlewares.maintenance]
type = "respond"
status = 503
body = '{"error":"maintenance","message":"back soon"}'
content_type = "application/json"
headers = { "Retry-After" = "600", "X-Maintenance" = "yes" }
[middlewares.r301]
type = "redirect"
to = "/elsewhere{path}"
status = 301
[middlewares.r303]
type = "redirect"
to = "/elsewhere{path}"
status = 303
[middlewares.r307]
type = "redirect"
to = "/elsewhere{path}"
status = 307
[middlewares.empty]
type = "respond"
status = 204
"""


def answers(tmp_path: Path) -> str:
    body = ANSWERS + route("old", "/old", '["moved"]') + route("in", "/in", '["login"]')
    body += route("down", "/down", '["maintenance"]') + route("gone", "/gone", '["empty"]')
    for code in (301, 303, 307):
        body += route(f"r{code}", f"/r{code}", f'["r{code}"]')
    return config(body)  # no [upstreams] at all: every route answers by itself


async def test_redirect_uses_the_stripped_path_and_appends_the_query(tmp_path: Path) -> None:
    async with gateway(tmp_path, answers(tmp_path)) as gw:
        status, headers, _ = await fetch(url(gw, "/old/guide/intro?lang=en&v=2"),
                                         allow_redirects=False)  # fmt: skip
        bare_status, bare, _ = await fetch(url(gw, "/old/guide"), allow_redirects=False)
        login_status, login, _ = await fetch(url(gw, "/in/account?tab=keys"),
                                             allow_redirects=False)  # fmt: skip
        others = {}
        for code in (301, 303, 307):
            got, h, _ = await fetch(url(gw, f"/r{code}/x"), "POST", allow_redirects=False)
            others[code] = (got, h["Location"])
    assert status == 308
    assert headers["Location"] == "https://docs.example.com/guide/intro?lang=en&v=2"
    assert headers["X-Request-ID"]
    assert (bare_status, bare["Location"]) == (308, "https://docs.example.com/guide")
    assert login_status == 302  # the default status
    assert login["Location"] == "https://login.example.com/start?next=/account&tab=keys"
    assert others == {code: (code, "/elsewhere/x") for code in (301, 303, 307)}


async def test_respond_answers_without_an_upstream(tmp_path: Path) -> None:
    async with gateway(tmp_path, answers(tmp_path)) as gw:
        status, headers, body = await fetch(url(gw, "/down/api/users"), "POST", data=b"x" * 100)
        empty_status, empty, empty_body = await fetch(url(gw, "/gone/x"))
    assert status == 503
    assert json.loads(body) == {"error": "maintenance", "message": "back soon"}
    assert headers["Content-Type"] == "application/json"
    assert headers["Retry-After"] == "600" and headers["X-Maintenance"] == "yes"
    assert headers["X-Request-ID"]
    assert (empty_status, empty_body) == (204, b"")
    assert "Content-Type" not in empty


# -- CORS ---------------------------------------------------------------------------

CORS = """
[middlewares.cors]
type = "cors"
allow_origins = ["https://app.example.com", "https://*.example.org"]
allow_methods = ["GET", "POST", "PUT"]
allow_headers = ["Authorization", "Content-Type"]
expose_headers = ["X-Request-ID", "RateLimit"]
allow_credentials = true
max_age = "10m"
[middlewares.cors-any]
type = "cors"
allow_origins = ["*"]
[middlewares.cors-any-credentials]
type = "cors"
allow_origins = ["*"]
allow_credentials = true
[rate_limits.rl]
algorithm = "token_bucket"
rate = "1/m"
burst = 2
"""

APP = "https://app.example.com"


def cors_config(tmp_path: Path, b: Backend) -> str:
    body = upstream(b) + CORS + jwt_auth(tmp_path)
    body += route("secure", "/secure", '["cors"]', 'upstream = "app"\nauth = "jwt"')
    body += route("limited", "/limited", '["cors"]', 'upstream = "app"\nrate_limit = "rl"')
    body += route("open", "/open", '["cors"]', 'upstream = "app"')
    body += route("any", "/any", '["cors-any"]', 'upstream = "app"')
    body += route("anycred", "/anycred", '["cors-any-credentials"]', 'upstream = "app"')
    return config(body)


def preflight(origin: str, method: str = "PUT") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type",
    }


def cors_of(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("access-control-")}


def varies_on_origin(headers: CIMultiDictProxy[str]) -> bool:
    return any("origin" in [v.strip().lower() for v in h.split(",")]
               for h in headers.getall("Vary", []))  # fmt: skip


async def test_a_preflight_is_answered_before_auth_and_never_reaches_the_upstream(
    tmp_path: Path,
) -> None:
    async with Backend() as b, gateway(tmp_path, cors_config(tmp_path, b)) as gw:
        status, headers, body = await fetch(url(gw, "/secure/echo"), "OPTIONS",
                                            headers=preflight(APP))  # fmt: skip
        assert (status, body) == (204, b"")
        assert cors_of(headers) == {
            "access-control-allow-origin": APP,
            "access-control-allow-credentials": "true",
            "access-control-allow-methods": "GET, POST, PUT",
            "access-control-allow-headers": "Authorization, Content-Type",
            "access-control-max-age": "600",
        }
        assert varies_on_origin(headers)
        # The actual request still needs its token.
        assert (await fetch(url(gw, "/secure/echo"), headers={"Origin": APP}))[0] == 401
        assert (await fetch(url(gw, "/secure/echo"), headers=bearer()))[0] == 200
        assert b.hits == 1


async def test_a_preflight_from_a_foreign_origin_gets_204_without_cors_headers(
    tmp_path: Path,
) -> None:
    async with Backend() as b, gateway(tmp_path, cors_config(tmp_path, b)) as gw:
        for origin in ("https://evil.test", "https://example.org", "http://app.example.com"):
            status, headers, _ = await fetch(url(gw, "/secure/echo"), "OPTIONS",
                                             headers=preflight(origin))  # fmt: skip
            assert status == 204, origin
            assert cors_of(headers) == {}, origin
        # An OPTIONS that is not a preflight is an ordinary request.
        status, _, _ = await fetch(url(gw, "/open/echo"), "OPTIONS", headers={"Origin": APP})
        assert status == 200
        assert b.hits == 1


async def test_a_wildcard_origin_matches_subdomains_at_any_depth_but_not_the_apex(
    tmp_path: Path,
) -> None:
    allowed = ["https://a.example.org", "https://a.b.c.example.org", "https://APP.Example.org"]
    refused = [
        "https://example.org",  # the apex
        "https://evilexample.org",
        "https://a.example.org.evil.test",
        "http://a.example.org",  # another scheme
        "https://a.example.org:8443",  # another port
        "https://app.example.com.evil.test",
    ]
    async with Backend() as b, gateway(tmp_path, cors_config(tmp_path, b)) as gw:
        deep = "https://x.y.z.example.org"
        status, headers, _ = await fetch(url(gw, "/secure/echo"), "OPTIONS",
                                         headers=preflight(deep))  # fmt: skip
        assert (status, headers.get("Access-Control-Allow-Origin")) == (204, deep)
        for origin in allowed:
            _, headers, _ = await fetch(url(gw, "/open/echo"), headers={"Origin": origin})
            assert headers.get("Access-Control-Allow-Origin") == origin, origin
            assert headers["Access-Control-Expose-Headers"] == "X-Request-ID, RateLimit"
        for origin in refused:
            status, headers, _ = await fetch(url(gw, "/open/echo"), headers={"Origin": origin})
            assert status == 200  # served: it is the browser that keeps it from the script
            assert cors_of(headers) == {}, origin
            assert varies_on_origin(headers)


async def test_credentials_echo_the_origin_never_a_star(tmp_path: Path) -> None:
    origin = "https://anything.test"
    async with Backend() as b, gateway(tmp_path, cors_config(tmp_path, b)) as gw:
        _, cred, _ = await fetch(url(gw, "/anycred/echo"), headers={"Origin": origin})
        _, cred_pre, _ = await fetch(url(gw, "/anycred/echo"), "OPTIONS",
                                     headers=preflight(origin, "GET"))  # fmt: skip
        _, star, _ = await fetch(url(gw, "/any/echo"), headers={"Origin": origin})
        _, exact, _ = await fetch(url(gw, "/open/echo"), headers={"Origin": APP})
    for headers in (cred, cred_pre):
        assert headers["Access-Control-Allow-Origin"] == origin
        assert headers["Access-Control-Allow-Credentials"] == "true"
        assert varies_on_origin(headers)
    assert exact["Access-Control-Allow-Origin"] == APP and varies_on_origin(exact)
    assert exact["Access-Control-Allow-Credentials"] == "true"
    # Without credentials, "*" is the same answer for every origin.
    assert star["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in star


async def test_an_upstreams_own_cors_headers_are_replaced(tmp_path: Path) -> None:
    async def cors_too(request: web.Request) -> web.Response:
        return web.Response(text="x", headers={"Access-Control-Allow-Origin": "*"})

    async with (
        Backend([web.get("/own", cors_too)]) as b,
        gateway(tmp_path, cors_config(tmp_path, b)) as gw,
    ):
        _, headers, _ = await fetch(url(gw, "/open/own"), headers={"Origin": APP})
    assert headers.getall("Access-Control-Allow-Origin") == [APP]


async def test_cors_headers_on_the_gateways_own_401_and_429(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, cors_config(tmp_path, b)) as gw:
        status, headers, body = await fetch(url(gw, "/secure/echo"), headers={"Origin": APP})
        assert status == 401 and json.loads(body)["error"] == "unauthorized"
        assert headers["Access-Control-Allow-Origin"] == APP
        assert headers["Access-Control-Allow-Credentials"] == "true"
        statuses = []
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.get(url(gw, "/limited/echo"), headers={"Origin": APP}) as r:
                    await r.read()
                    statuses.append(r.status)
                    last = r.headers
        assert statuses == [200, 200, 429]
        assert last["Access-Control-Allow-Origin"] == APP
        assert last["Access-Control-Expose-Headers"] == "X-Request-ID, RateLimit"
        assert last["Retry-After"] and varies_on_origin(last)


async def test_preflights_carry_no_rate_limit_headers_and_do_not_count(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, cors_config(tmp_path, b)) as gw:
        async with aiohttp.ClientSession() as s:
            for _ in range(5):
                async with s.options(url(gw, "/limited/echo"), headers=preflight(APP)) as r:
                    assert r.status == 204
                    assert not [h for h in r.headers if "ratelimit" in h.lower()]
                    assert r.headers["Access-Control-Allow-Origin"] == APP
            statuses = []
            for _ in range(3):
                async with s.get(url(gw, "/limited/echo")) as r:
                    await r.read()
                    statuses.append((r.status, r.headers.get("X-RateLimit-Remaining")))
        assert statuses == [(200, "1"), (200, "0"), (429, "0")]
        assert b.hits == 2


async def test_a_websocket_handshake_passes_the_request_middlewares(tmp_path: Path) -> None:
    seen: list[str | None] = []

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        seen.append(request.headers.get("X-Gateway"))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str("echo:" + msg.data)
        return ws

    async with Backend([web.get("/ws", ws_echo)]) as b:
        toml = config(
            f"""
[upstreams.app]
targets = [{{ url = "{b.url}" }}]
[middlewares.tag]
type = "headers"
request = {{ set = {{ "X-Gateway" = "r={{route}}" }} }}
[[routes]]
id = "ws"
path = "/ws"
upstream = "app"
middlewares = ["tag"]
"""
        )
        async with (
            gateway(tmp_path, toml) as gw,
            aiohttp.ClientSession() as s,
            s.ws_connect(f"ws://127.0.0.1:{gw.ports[0]}/ws") as ws,
        ):
            await ws.send_str("hi")
            assert (await ws.receive()).data == "echo:hi"
    assert seen == ["r=ws"]

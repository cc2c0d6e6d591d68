"""The gateway's own errors on a gRPC call are trailers-only gRPC answers
(docs/behaviour.md, "HTTP/2 and gRPC"): HTTP 200, grpc-status mapped from the
JSON status, grpc-message with the JSON message; the access log carries the
call's grpc_status. Driven over HTTP/1.1 here: the rendering is the
pipeline's, whichever protocol the call came in on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web

from harness.backends import Backend
from harness.gateway import access_lines, config, fetch, free_port, gateway, url
from harness.h2backend import H2Backend

GRPC = {"content-type": "application/grpc", "te": "trailers"}
MESSAGE = b"\x00\x00\x00\x00\x00"  # one empty gRPC message (uncompressed, length 0)

ROUTES = """
[auth.api_key]
header = "X-API-Key"
[consumers.acme]
tier = "free"
api_key_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
[rate_limits.one]
algorithm = "token_bucket"
backend = "local"
key = "ip"
rate = "1/m"
burst = 1
[upstreams.dead]
targets = [{{ url = "http://127.0.0.1:{dead}" }}]
protocol = "h2c"
retries = 0
[upstreams.app]
targets = [{{ url = "{app}" }}]
protocol = "h2c"
[upstreams.web]
targets = [{{ url = "{web}" }}]
[[routes]]
id = "keyed"
path = "/keyed.Service/**"
upstream = "app"
auth = "api_key"
[[routes]]
id = "limited"
path = "/limited.Service/**"
upstream = "app"
rate_limit = "one"
rewrite = "/echo"
[[routes]]
id = "dead"
path = "/dead.Service/**"
upstream = "dead"
[[routes]]
id = "relayed"
path = "/relayed.Service/**"
upstream = "app"
rewrite = "/trailers"
[[routes]]
id = "head"
path = "/head.Service/**"
upstream = "app"
rewrite = "/grpc-status?code=9"
[[routes]]
id = "web"
path = "/web.Service/**"
upstream = "web"
"""


async def _grpc_answer(request: web.Request) -> web.Response:
    """What an HTTP/1.1 service would answer: it must never be asked."""
    return web.Response(status=200, headers={"content-type": "application/grpc"})


async def _call(gw_url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    status, h, body = await fetch(gw_url, "POST", data=MESSAGE, headers={**GRPC, **headers})
    return status, dict(h), body


async def test_gateway_errors_become_grpc_statuses(tmp_path: Path, log_file: Path) -> None:
    toml = ROUTES.format(dead=free_port(), app="{app}", web="{web}")
    async with (
        H2Backend() as app,
        Backend([web.post("/web.Service/Get", _grpc_answer)]) as http1,
    ):
        toml = toml.replace("{app}", app.url).replace("{web}", http1.url)
        async with gateway(tmp_path, config(toml, access_log=True)) as gw:
            cases = {
                "/nothing.Service/Get": (12, "no route for POST /nothing.Service/Get"),  # 404
                "/keyed.Service/Get": (16, None),  # 401: no key
                "/dead.Service/Get": (14, "could not connect to upstream"),  # 502
                "/web.Service/Get": (14, None),  # an HTTP/1.1 upstream cannot carry it
            }
            for path, (code, message) in cases.items():
                status, headers, body = await _call(url(gw, path))
                assert status == 200, path
                assert body == b"", path  # trailers-only: no message
                assert headers["grpc-status"] == str(code), path
                assert headers["Content-Type"] == "application/grpc"
                assert headers["X-Request-ID"]
                if message is not None:
                    assert unquote(headers["grpc-message"]) == message
            assert http1.hits == 0  # never sent a gRPC call
            # The 429 of a rate limit is RESOURCE_EXHAUSTED, its RateLimit headers kept.
            first = await _call(url(gw, "/limited.Service/Get"))
            assert first[0] == 200
            status, headers, _ = await _call(url(gw, "/limited.Service/Get"))
            assert (status, headers["grpc-status"]) == (200, "8")
            assert "Retry-After" in headers
            # Statuses the upstream answers are relayed, and logged: in its
            # trailers, or in the head of a trailers-only answer.
            status, _, body = await _call(url(gw, "/relayed.Service/Get"))
            assert (status, body) == (200, b"body")
            status, headers, _ = await _call(url(gw, "/head.Service/Get"))
            assert (status, headers["grpc-status"]) == (200, "9")
    await asyncio.sleep(0.1)  # the access log is written every 50 ms
    logged = {(line["route"], line.get("grpc_status")) for line in access_lines(log_file)}
    expected = {(None, 12), ("keyed", 16), ("dead", 14), ("web", 14), ("limited", 8),
                ("relayed", 0), ("head", 9)}  # fmt: skip
    assert expected <= logged
    assert all(line["protocol"] == "HTTP/1.1" for line in access_lines(log_file))


async def test_a_request_that_is_not_grpc_keeps_json_errors(tmp_path: Path) -> None:
    toml = config(
        ROUTES.format(dead=free_port(), app="http://127.0.0.1:1", web="http://127.0.0.1:1")
    )
    async with gateway(tmp_path, toml) as gw:
        for content_type in ("application/json", "application/grpc-web"):
            status, headers, body = await fetch(
                url(gw, "/nothing.Service/Get"), "POST", data=b"{}",
                headers={"content-type": content_type},
            )  # fmt: skip
            assert status == 404
            assert "grpc-status" not in headers
            assert json.loads(body)["error"] == "no_route"

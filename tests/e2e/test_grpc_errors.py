"""The gateway's own errors on a gRPC call are trailers-only gRPC answers
(docs/behaviour.md, "HTTP/2 and gRPC"): HTTP 200, grpc-status mapped from the
JSON status, grpc-message with the JSON message; the access log carries the
call's grpc_status. Driven over HTTP/1.1 here: the rendering is the
pipeline's, whichever protocol the call came in on."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web

from harness.backends import Backend
from harness.gateway import access_lines, config, fetch, free_port, gateway, url

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
retries = 0
[upstreams.app]
targets = [{{ url = "{app}" }}]
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
[[routes]]
id = "dead"
path = "/dead.Service/**"
upstream = "dead"
[[routes]]
id = "relayed"
path = "/relayed.Service/**"
upstream = "app"
"""


async def _trailers_only(request: web.Request) -> web.Response:
    """An upstream's own trailers-only answer: NOT_FOUND, in the head."""
    headers = {"content-type": "application/grpc", "grpc-status": "5", "grpc-message": "nobody"}
    return web.Response(status=200, headers=headers)


async def _call(gw_url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    status, h, body = await fetch(gw_url, "POST", data=MESSAGE, headers={**GRPC, **headers})
    return status, dict(h), body


async def test_gateway_errors_become_grpc_statuses(tmp_path: Path, log_file: Path) -> None:
    routes = [web.post("/relayed.Service/Get", _trailers_only)]
    async with (
        Backend(routes) as app,
        gateway(
            tmp_path, config(ROUTES.format(dead=free_port(), app=app.url), access_log=True)
        ) as gw,
    ):
        cases = {
            "/nothing.Service/Get": (12, "no route for POST /nothing.Service/Get"),  # 404
            "/keyed.Service/Get": (16, None),  # 401: no key
            "/dead.Service/Get": (14, "could not connect to upstream"),  # 502
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
        # The 429 of a rate limit is RESOURCE_EXHAUSTED, its RateLimit headers kept.
        first = await _call(url(gw, "/limited.Service/Get"))
        assert first[0] == 404  # admitted: the aiohttp app has no such method
        status, headers, _ = await _call(url(gw, "/limited.Service/Get"))
        assert (status, headers["grpc-status"]) == (200, "8")
        assert "Retry-After" in headers
        # A status the upstream answers itself is relayed, and logged.
        status, headers, _ = await _call(url(gw, "/relayed.Service/Get"))
        assert (status, headers["grpc-status"]) == (200, "5")
    logged = {(line["route"], line.get("grpc_status")) for line in access_lines(log_file)}
    assert {(None, 12), ("keyed", 16), ("dead", 14), ("limited", 8), ("relayed", 5)} <= logged
    assert all(line["protocol"] == "HTTP/1.1" for line in access_lines(log_file))


async def test_a_request_that_is_not_grpc_keeps_json_errors(tmp_path: Path) -> None:
    toml = config(ROUTES.format(dead=free_port(), app="http://127.0.0.1:1"))
    async with gateway(tmp_path, toml) as gw:
        for content_type in ("application/json", "application/grpc-web"):
            status, headers, body = await fetch(
                url(gw, "/nothing.Service/Get"), "POST", data=b"{}",
                headers={"content-type": content_type},
            )  # fmt: skip
            assert status == 404
            assert "grpc-status" not in headers
            assert json.loads(body)["error"] == "no_route"

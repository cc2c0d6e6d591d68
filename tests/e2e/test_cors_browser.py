"""CORS from a browser's point of view: a real headless Chromium runs fetch()
from pages on two other origins against the real gateway.

Two small page servers serve the same page; one's origin is in the `cors`
middleware's allow_origins, the other's is not. The page's script makes
fetches that need a preflight (a PUT, a custom header, an Authorization
header), all with `credentials: 'include'`, and writes what it could read
(status, an exposed and a non-exposed header, the body) or the error's name
into the DOM, which Chromium dumps. Everything listens on 127.0.0.1, so
Chromium's Private/Local Network Access checks (public -> private requests)
do not apply: page and gateway are in the same (loopback) address space.
The dumped DOMs are kept in test-artifacts/.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from harness.backends import Backend
from harness.gateway import access_lines, config, gateway
from harness.tokens import claims, public_jwk, rsa_key, sign
from harness.tokens import jwks as jwks_doc
from tests.e2e.test_status_page import ARTIFACTS, chromium, chromium_binary

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>cors</title></head>
<body data-done="0"><pre id="out"></pre>
<script>
const GATEWAY = %(gateway)s;
const CASES = %(cases)s;
(async () => {
  const results = {};
  for (const [name, path, init] of CASES) {
    try {
      const r = await fetch(GATEWAY + path, {...init, credentials: "include"});
      results[name] = {
        status: r.status,
        exposed: r.headers.get("X-Backend"),
        hidden: r.headers.get("X-Conn-Id"),
        body: await r.text(),
      };
    } catch (e) {
      results[name] = {error: e.name, message: String(e.message)};
    }
  }
  document.getElementById("out").textContent = JSON.stringify(results);
  document.body.dataset.done = "1";
})();
</script></body></html>
"""

CLIENT_ID = "web-42"


def cases(token: str) -> list[list[Any]]:
    """[name, path, fetch init]: each one needs a preflight, and each has its own
    URL so that no answer comes from Chromium's preflight cache."""
    return [
        # PUT is not a CORS-safelisted method, X-Client-ID not a safelisted header
        ["put", "/api/items/7", {"method": "PUT", "headers": {"X-Client-ID": CLIENT_ID},
                                 "body": "hello"}],
        # No token: the gateway's own 401, readable only if it carries the CORS headers;
        # the preflight before it (no credentials, as browsers send it) must not be a 401.
        ["unauthorized", "/private/anonymous", {"headers": {"X-Client-ID": CLIENT_ID}}],
        ["token", "/private/with-token", {"headers": {"Authorization": f"Bearer {token}"}}],
    ]  # fmt: skip


@dataclass
class Seen:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes


class PageServer:
    """An aiohttp server on 127.0.0.1:0 serving `html` at / with a session cookie.

    The cookie is for host 127.0.0.1 (cookies ignore ports), so the browser sends it
    to the gateway too when a fetch says `credentials: 'include'`."""

    def __init__(self, cookie: str) -> None:
        self.cookie = cookie
        self.html = ""
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _page(self, request: web.Request) -> web.Response:
        resp = web.Response(text=self.html, content_type="text/html")
        resp.headers["Set-Cookie"] = f"session={self.cookie}; Path=/; SameSite=Lax"
        return resp

    async def __aenter__(self) -> PageServer:
        app = web.Application()
        app.router.add_get("/", self._page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def toml(app: Backend, allowed: str) -> str:
    return config(
        f"""
[upstreams.app]
targets = [{{ url = "{app.url}" }}]

[middlewares.cors]
type = "cors"
allow_origins = ["{allowed}"]
allow_methods = ["GET", "PUT"]
allow_headers = ["Authorization", "Content-Type", "X-Client-ID"]
expose_headers = ["X-Backend"]
allow_credentials = true
max_age = "10m"

[[routes]]
id = "api"
path = "/api/**"
upstream = "app"
strip_prefix = 1
middlewares = ["cors"]

[[routes]]
id = "private"
path = "/private/**"
auth = "jwt"
upstream = "app"
strip_prefix = 1
middlewares = ["cors"]

[auth.jwt]
algorithms = ["RS256"]
jwks_file = "jwks.json"
issuer = "https://idp.test"
audience = "api-gateway"
""",
        access_log=True,
    )


@asynccontextmanager
async def recording_backend() -> AsyncIterator[tuple[Backend, list[Seen]]]:
    seen: list[Seen] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(Seen(request.method, request.path, request.headers.copy(), body))
        return web.json_response({"ok": True})

    async with Backend(record, name="app") as app:
        yield app, seen


def results(dom: str) -> dict[str, dict[str, Any]]:
    assert 'data-done="1"' in dom, "the page's script did not finish:\n" + dom[-2000:]
    match = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    assert match is not None, dom[-2000:]
    out: dict[str, dict[str, Any]] = json.loads(html.unescape(match.group(1)))
    return out


@dataclass
class Run:
    results: dict[str, dict[str, Any]]  # what the page's script could read, per case
    seen: list[Seen]  # what the backend received
    preflights: list[dict[str, Any]]  # the access log's OPTIONS lines
    origin: str  # the page's origin
    token: str


async def browse(tmp_path: Path, log_file: Path, *, allowed_origin: bool) -> Run:
    """Chromium opens the page from the allowed origin or from the foreign one; the
    gateway allows only the first. The dumped DOM goes to test-artifacts/."""
    chromium_binary()
    (tmp_path / "jwks.json").write_text(json.dumps(jwks_doc(public_jwk(rsa_key(), "rsa-1"))))
    token = sign(rsa_key(), "RS256", claims(time.time()), "rsa-1")
    async with (
        recording_backend() as (app, seen),
        PageServer("allowed-cookie") as allowed,
        PageServer("foreign-cookie") as foreign,
        gateway(tmp_path, toml(app, allowed.origin)) as gw,
    ):
        page = allowed if allowed_origin else foreign
        page.html = PAGE % {
            "gateway": json.dumps(f"http://127.0.0.1:{gw.ports[0]}"),
            "cases": json.dumps(cases(token)),
        }
        dom = await chromium(tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom",
                             page.origin + "/")  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    name = "allowed" if allowed_origin else "foreign"
    (ARTIFACTS / f"cors-{name}-origin.html").write_text(dom)
    preflights = [line for line in access_lines(log_file) if line["method"] == "OPTIONS"]
    return Run(results(dom), seen, preflights, page.origin, token)


PREFLIGHTED = ["/api/items/7", "/private/anonymous", "/private/with-token"]


async def test_a_browser_fetch_with_credentials_from_the_allowed_origin_succeeds(
    tmp_path: Path, log_file: Path
) -> None:
    run = await browse(tmp_path, log_file, allowed_origin=True)
    put = run.results["put"]
    # The PUT went through with its header and the page's cookie; the exposed
    # header is readable and the other one is not.
    assert put.get("status") == 200, put
    assert json.loads(put["body"]) == {"ok": True}
    assert put["exposed"] == "app"
    assert put["hidden"] is None  # not in expose_headers: the browser hides it
    puts = [s for s in run.seen if s.method == "PUT"]
    assert len(puts) == 1
    assert puts[0].path == "/items/7" and puts[0].body == b"hello"
    assert puts[0].headers["X-Client-ID"] == CLIENT_ID
    assert puts[0].headers["Origin"] == run.origin
    assert "session=allowed-cookie" in puts[0].headers.get("Cookie", "")

    token = run.results["token"]
    assert token.get("status") == 200, token
    assert token["exposed"] == "app"
    with_token = [s for s in run.seen if s.path == "/with-token"]
    assert [s.method for s in with_token] == ["GET"]
    assert with_token[0].headers["Authorization"] == f"Bearer {run.token}"

    # Chromium did preflight (once per URL), and the gateway answered every
    # preflight itself with 204: the backend never saw an OPTIONS.
    assert sorted(line["path"] for line in run.preflights) == PREFLIGHTED
    assert {line["status"] for line in run.preflights} == {204}
    assert sorted((s.method, s.path) for s in run.seen) == [
        ("GET", "/with-token"),
        ("PUT", "/items/7"),
    ]


async def test_the_gateways_own_401_is_readable_from_the_allowed_origin(
    tmp_path: Path, log_file: Path
) -> None:
    run = await browse(tmp_path, log_file, allowed_origin=True)
    # Read by the script: a network error would mean the 401 lacked the CORS
    # headers, or that the preflight before it (sent without credentials, as
    # browsers do) was refused by auth instead of answered by the cors middleware.
    unauthorized = run.results["unauthorized"]
    assert unauthorized.get("status") == 401, unauthorized
    assert json.loads(unauthorized["body"])["error"] == "unauthorized"
    assert "/private/anonymous" in {line["path"] for line in run.preflights}
    assert "/anonymous" not in {s.path for s in run.seen}  # the 401 came from the gateway


async def test_a_browser_fetch_from_a_foreign_origin_fails_and_never_reaches_the_backend(
    tmp_path: Path, log_file: Path
) -> None:
    run = await browse(tmp_path, log_file, allowed_origin=False)
    # The same page, the same fetches: each one a network error (TypeError), the
    # script reads nothing, not even the gateway's 401.
    for name in ("put", "unauthorized", "token"):
        assert run.results[name].get("error") == "TypeError", (name, run.results[name])
    # The gateway refused the preflights itself (204 without Access-Control-*
    # headers); the PUT and the GETs were never sent, so the backend saw nothing.
    assert sorted(line["path"] for line in run.preflights) == PREFLIGHTED
    assert {line["status"] for line in run.preflights} == {204}
    assert run.seen == []

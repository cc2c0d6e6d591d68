"""The status page (/ on the admin listener) in a real headless Chromium.

A real gateway and backend serve some traffic, then Chromium loads the page,
lets its script poll for a few (virtual) seconds and dumps the DOM; the test
checks that the live values are there and keeps a screenshot and the DOM in
test-artifacts/. Chromium is Debian's `chromium` package (scripts/test.sh
installs it as root); without it this test fails rather than skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import web

from harness.backends import Backend
from harness.gateway import fetch, free_port, gateway, url
from pyproxyd.observe import metrics
from pyproxyd.server import Gateway

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
NONE = "\u2013"  # what the page shows for no value
TOKEN_ENV = "PYPROXYD_STATUS_PAGE_TEST_TOKEN"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
)  # fmt: skip


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is missing: apt-get install chromium (scripts/test.sh, as root)")


async def chromium(profile: Path, *args: str, timeout: float = 90.0) -> str:
    """Run headless Chromium once; its stdout. Killed by its PID past the timeout."""
    proc = await asyncio.create_subprocess_exec(
        chromium_binary(), *FLAGS, f"--user-data-dir={profile}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"chromium took longer than {timeout}s") from None
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


class Page(HTMLParser):
    """The dumped DOM's table rows: {(kind, key): {data-field: text}}, plus body attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str], dict[str, str]] = {}
        self.body: dict[str, str] = {}
        self.ids: dict[str, str] = {}
        self._row: dict[str, str] | None = None
        self._field: str | None = None
        self._id: str | None = None
        self._depth = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        if "id" in a and tag in ("span", "div"):
            self._id = a["id"]
            self.ids[self._id] = ""
        if tag == "tr":
            for kind in ("route", "target", "policy"):
                if f"data-{kind}" in a:
                    key = a[f"data-{kind}"]
                    if kind == "policy":
                        key += "/" + a.get("data-tier", "")
                    self._row = self.rows.setdefault((kind, key), {})
        elif tag == "td" and self._row is not None:
            self._field = a.get("data-field")
            if self._field:
                self._row[self._field] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        elif tag == "td":
            self._field = None
        elif tag in ("span", "div"):
            self._id = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._field:
            self._row[self._field] += data
        if self._id is not None:
            self.ids[self._id] += data


def toml(app: Backend, dead_port: int, *, token: bool = False) -> str:
    return f"""
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
{f'token_env = "{TOKEN_ENV}"' if token else ""}
[logging]
access_log = false

[upstreams.app]
targets = [{{ url = "{app.url}" }}]
circuit_breaker = {{}}

[upstreams.dead]
targets = [{{ url = "http://127.0.0.1:{dead_port}" }}]
connect_timeout = "1s"
retries = 0
health = {{ max_fails = 1, eject_for = "5m" }}

[[routes]]
id = "orders-api"
path = "/api/**"
upstream = "app"
strip_prefix = 1

[[routes]]
id = "legacy"
path = "/legacy/**"
methods = ["GET"]
upstream = "dead"
"""


@contextlib.asynccontextmanager
async def traffic(gw: Gateway) -> AsyncIterator[None]:
    """Requests in the background while Chromium polls, so that rates are live."""

    async def loop() -> None:
        while True:
            await fetch(url(gw, "/api/echo"))
            await asyncio.sleep(0.01)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_status_page_shows_live_values(tmp_path: Path) -> None:
    chromium_binary()
    # Rate-limit decisions as the limiter would count them (same process as the gateway).
    metrics.RATELIMIT.labels("orders-api", "status-page-per-key", "free", "rejected").inc(3)
    metrics.RATELIMIT.labels("orders-api", "status-page-per-key", "free", "allowed").inc(12)
    async with Backend(name="app") as app, gateway(tmp_path, toml(app, free_port())) as gw:
        for _ in range(5):
            status, _, _ = await fetch(url(gw, "/api/echo"))
            assert status == 200
        for _ in range(2):
            status, _, _ = await fetch(url(gw, "/api/status/500"))
            assert status == 500
        status, _, _ = await fetch(url(gw, "/legacy/x"))
        assert status == 502
        admin = f"http://127.0.0.1:{gw.admin_port}"
        status, headers, body = await fetch(admin + "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b"<script" in body and b"src=" not in body  # self-contained, nothing fetched
        _, _, upstreams = await fetch(admin + "/admin/upstreams")

        dom = await chromium(tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom",
                             admin + "/")  # fmt: skip
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "status-page.html").write_text(dom)

        shot = ARTIFACTS / "status-page.png"
        shot.unlink(missing_ok=True)
        async with traffic(gw):
            await chromium(tmp_path / "profile", "--virtual-time-budget=5000",
                           "--window-size=1280,1000", f"--screenshot={shot}",
                           admin + "/")  # fmt: skip
    assert shot.stat().st_size > 10_000

    page = Page(dom)
    assert int(page.body["data-polls"]) >= 2, "the page did not poll twice"
    assert page.body.get("data-ok") == "1", page.ids.get("error")
    assert page.ids["error"] == ""

    api = page.rows[("route", "orders-api")]
    assert api["pattern"] == "/api/**"
    assert api["upstream"] == "app"
    assert api["requests"] == "7"
    assert api["errors"] == "2"
    assert api["rate"] != NONE  # a rate from two polls' counter delta
    legacy = page.rows[("route", "legacy")]
    assert legacy["methods"] == "GET" and legacy["requests"] == "1" and legacy["errors"] == "1"

    # Upstream targets, as /admin/upstreams has them
    view = json.loads(upstreams)["upstreams"]
    target = f"127.0.0.1:{app.port}"
    row = page.rows[("target", target)]
    assert row["upstream"] == "app"
    assert row["idle"] == str(view["app"]["targets"][0]["idle"])
    assert row["busy"] == "0"
    assert row["circuit"] == view["app"]["circuit"]["state"] == "closed"
    dead = view["dead"]["targets"][0]
    dead_row = page.rows[("target", dead["target"])]
    assert dead_row["health"] == ("ejected" if dead["ejected"] else "in rotation")

    limits = page.rows[("policy", "status-page-per-key/free")]
    assert limits["rejected"] == "3" and limits["allowed"] == "12"


async def test_status_page_sends_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chromium_binary()
    monkeypatch.setenv(TOKEN_ENV, "s3cret-token")
    async with (
        Backend(name="app") as app,
        gateway(tmp_path, toml(app, free_port(), token=True)) as gw,
    ):
        admin = f"http://127.0.0.1:{gw.admin_port}"
        status, _, _ = await fetch(admin + "/admin/routes")
        assert status == 401
        status, _, _ = await fetch(admin + "/")  # the page itself is open
        assert status == 200
        with_token, without = await asyncio.gather(
            chromium(tmp_path / "p1", "--virtual-time-budget=3000", "--dump-dom",
                     admin + "/?token=s3cret-token"),
            chromium(tmp_path / "p2", "--virtual-time-budget=3000", "--dump-dom",
                     admin + "/"),
        )  # fmt: skip
    page = Page(with_token)
    assert page.ids["error"] == ""
    assert ("route", "orders-api") in page.rows
    assert ("target", f"127.0.0.1:{app.port}") in page.rows
    assert "s3cret-token" not in with_token.split("<script")[0]  # not shown on the page

    refused = Page(without)
    assert "401" in refused.ids["error"] and "?token=" in refused.ids["error"]
    # /metrics is open, /admin/* is not: counts show, the route table and targets do not
    assert refused.rows.get(("route", "orders-api"), {}).get("pattern", NONE) == NONE
    assert ("target", f"127.0.0.1:{app.port}") not in refused.rows


def recent_toml(app: Backend, dead_port: int) -> str:
    return f"""
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[logging]
access_log = false

[upstreams.app]
targets = [{{ url = "{app.url}" }}]

[upstreams.unwatched]
targets = [{{ url = "http://127.0.0.1:{dead_port}" }}]
connect_timeout = "1s"
retries = 0

[[routes]]
id = "recent-api"
path = "/api/**"
upstream = "app"
strip_prefix = 1

[[routes]]
id = "recent-broken"
path = "/broken/**"
upstream = "app"
strip_prefix = 1

[[routes]]
id = "recent-gone"
path = "/gone/**"
upstream = "unwatched"
"""


@contextlib.asynccontextmanager
async def between_polls(gw: Gateway, path: str, n: int) -> AsyncIterator[str]:
    """The admin listener behind a relay that, before every /metrics request but the
    first, sends `n` requests to `path` through the gateway: traffic that falls
    between two polls whatever Chromium's virtual clock does. Yields the relay's URL."""
    admin = f"http://127.0.0.1:{gw.admin_port}"
    polls = 0

    async def relay(request: web.Request) -> web.Response:
        nonlocal polls
        if request.path == "/metrics":
            polls += 1
            for _ in range(n if polls > 1 else 0):
                assert (await fetch(url(gw, path)))[0] == 200
        status, headers, body = await fetch(admin + request.path_qs)
        return web.Response(status=status, body=body, content_type=headers["Content-Type"]
                            .split(";")[0], charset="utf-8")  # fmt: skip

    app = web.Application()
    app.router.add_get("/{tail:.*}", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def seconds(text: str) -> float:
    value, unit = text.split()
    return float(value) / 1000 if unit == "ms" else float(value)


async def test_status_page_shows_recent_values_and_failing_targets(tmp_path: Path) -> None:
    """(a) a dead target of an upstream without [health] is not shown healthy;
    (b) a route whose traffic stopped shows "no traffic", not a 0.0% error rate;
    (c) p50/p99 are of recent requests, not of everything since start."""
    chromium_binary()
    dead_port = free_port()
    async with Backend(name="app") as app, gateway(tmp_path, recent_toml(app, dead_port)) as gw:
        for _ in range(3):
            assert (await fetch(url(gw, "/gone/x")))[0] == 502
        for _ in range(4):
            assert (await fetch(url(gw, "/broken/status/500")))[0] == 500
        slow = await asyncio.gather(*(fetch(url(gw, "/api/sleep?s=1.2")) for _ in range(20)))
        assert {status for status, _, _ in slow} == {200}
        # fast requests to recent-api only, between the page's polls
        async with between_polls(gw, "/api/echo", 10) as admin:
            dom = await chromium(tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom",
                                 admin + "/")  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "status-page-recent.html").write_text(dom)
    page = Page(dom)
    assert int(page.body["data-polls"]) >= 2, "the page did not poll twice"
    assert page.ids["error"] == ""

    gone = page.rows[("target", f"127.0.0.1:{dead_port}")]
    assert gone["health"].startswith("failing"), gone  # (a): was "in rotation", green

    broken = page.rows[("route", "recent-broken")]
    assert broken["requests"] == "4" and broken["errors"] == "4"
    # (b): was "0.0%" once the route's traffic stopped
    assert broken["error-rate"] == "no traffic (last 100.0%)", broken
    assert broken["latency"] == "no traffic"

    api = page.rows[("route", "recent-api")]
    _p50, p99 = (seconds(v) for v in api["latency"].split(" / "))
    # (c): the 20 requests of 1.2 s before the page opened are out of the window:
    # since start they made p99 over 1 s
    assert p99 < 1.0, api
    assert api["error-rate"] == "0.0%"

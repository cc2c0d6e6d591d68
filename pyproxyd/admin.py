"""The admin listener (aiohttp): probes, /metrics, /admin/* and the status page.

One serving process and a supervisor of workers both answer here; what differs
is where the answers come from, which the `AdminSource` they pass says.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Callable
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from . import errors
from .observe import metrics
from .resilience.view import upstreams_view
from .snapshot import Snapshot
from .tracing import new_id

if TYPE_CHECKING:
    from .reload import ReloadTally


def error_response(err: errors.GatewayError, rid: str) -> web.Response:
    """An error of the admin listener, rendered like the proxy's."""
    return web.Response(
        status=err.status,
        body=errors.render(err, rid),
        content_type="application/json",
        headers={"X-Request-ID": rid, **err.headers},
    )


class AdminSource(Protocol):
    def admin_snapshot(self) -> Snapshot:
        """The config the answers describe: the one serving, or the one last validated."""

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready or not, and the body /readyz answers with."""

    def reloads(self) -> ReloadTally: ...

    def before_scrape(self) -> None:
        """Bring the metrics up to date before /metrics renders them."""

    async def upstreams(self) -> dict[str, Any]:
        """The body of /admin/upstreams: {"upstreams": {name: view}, ...}."""


class Admin:
    """The aiohttp app of the admin listener."""

    def __init__(self, source: AdminSource):
        self.source = source
        self.app = web.Application(middlewares=[self._auth])
        for path, handler in (
            ("/healthz", self._healthz),
            ("/readyz", self._readyz),
            ("/metrics", self._metrics),
            ("/admin/config", self._config),
            ("/admin/routes", self._routes),
            ("/admin/upstreams", self._upstreams),
            ("/", self._status_page),
        ):
            self.app.router.add_get(path, handler)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """/admin/* wants `Authorization: Bearer <token>` when admin.token_env is set."""
        env = self.source.admin_snapshot().admin_token_env
        if env and request.path.startswith("/admin/"):
            token = os.environ.get(env, "")
            given = request.headers.get("Authorization", "")
            if not token or not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                err = errors.Unauthorized("admin endpoints need the bearer token")
                resp = error_response(err, new_id())
                resp.headers["WWW-Authenticate"] = 'Bearer realm="pyproxyd-admin"'
                return resp
        result: web.StreamResponse = await handler(request)
        return result

    async def _status_page(self, request: web.Request) -> web.Response:
        """observe/status.html: one self-contained page that polls the endpoints here.
        Open, like /metrics; its script sends `?token=` as the bearer token to /admin/*."""
        return web.Response(
            body=files("pyproxyd.observe").joinpath("status.html").read_bytes(),
            content_type="text/html",
            charset="utf-8",
            headers={
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
                "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; frame-ancestors 'none'",
            },
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, body = self.source.readiness()
        return web.json_response(body, status=200 if ready else 503)

    async def _config(self, request: web.Request) -> web.Response:
        snap = self.source.admin_snapshot()
        reloads = self.source.reloads()
        return web.json_response(
            {
                "file": snap.file,
                "sha256": snap.digest,
                "loaded_at": snap.loaded_at,
                "routes": len(snap.routes),
                "upstreams": len(snap.upstreams),
                "config_key": snap.config_key,
                "config_revision": snap.revision,  # of the key's document serving, if any
                "last_reload_error": reloads.last_error,
                "reloads": {"success": reloads.successes, "error": reloads.failures},
            }
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        self.source.before_scrape()
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _routes(self, request: web.Request) -> web.Response:
        snap = self.source.admin_snapshot()
        chains = {r.id: r.chain.names if r.chain is not None else () for r in snap.routes}
        rows = snap.router.table()
        for row in rows:  # in the order they run: server.middlewares first
            row["middlewares"] = list(chains.get(row["id"], ()))
        return web.json_response({"routes": rows})

    async def _upstreams(self, request: web.Request) -> web.Response:
        return web.json_response(await self.source.upstreams())


def local_upstreams(snapshot: Snapshot) -> dict[str, Any]:
    """/admin/upstreams of the process that serves: its own pools, health and circuits."""
    return {"upstreams": upstreams_view(snapshot, asyncio.get_running_loop().time())}


def worker_app(snapshot: Callable[[], Snapshot]) -> web.Application:
    """A worker's private admin, on a Unix socket in its supervisor's 0700 folder:
    the supervisor's /admin/upstreams gathers every worker's from here."""

    async def upstreams(request: web.Request) -> web.Response:
        return web.json_response(local_upstreams(snapshot()))

    app = web.Application()
    app.router.add_get("/admin/upstreams", upstreams)
    return app

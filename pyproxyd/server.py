"""Listeners, the admin endpoints, signals and graceful drain.

`Gateway` is what both `pyproxyd run` and the end-to-end tests start: a real
server on real sockets (port 0 works), in the current event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import os
import socket
import ssl
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from . import errors
from .compile import compile_snapshot
from .config_load import Loaded
from .observe import metrics
from .observe.logging import AccessLog, get_logger
from .proxy import Proxy, error_response
from .resilience.view import upstreams_view
from .snapshot import Snapshot, SnapshotHolder
from .tracing import new_id
from .upstream.pool import TargetPool
from .websocket import close_client

log = get_logger("pyproxyd.server")


class GatewayRequestHandler(RequestHandler):
    """aiohttp's connection handler plus a header deadline and JSON errors.

    aiohttp has no client_header_timeout: its keep-alive timer is the only
    guard against a client that trickles its headers (slowloris). This arms a
    deadline when a request head starts arriving and disarms it once the head
    is parsed. It reads aiohttp internals (`_request_count`, `_messages`,
    `_request_in_progress`), hence the pinned aiohttp range and the e2e test.
    """

    __slots__ = ("_header_handle", "_header_timeout")

    def __init__(self, manager: Server, *, header_timeout: float, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_handle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self._header_timeout > 0:
            self._header_handle = self._loop.call_later(self._header_timeout, self._header_late)

    def _header_late(self) -> None:
        self._header_handle = None
        if not self._request_in_progress and not self._messages:
            self.force_close()

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            if self._header_handle is not None:
                self._header_handle.cancel()
                self._header_handle = None
        elif self._header_handle is None and not self._request_in_progress and not self._upgraded:
            self._arm()

    @property
    def busy(self) -> bool:
        return self._request_in_progress or bool(self._messages)

    def drain(self) -> None:
        """Close once idle. Not aiohttp's close(): that also stops reading, which
        would cut a WebSocket still in flight."""
        self.keep_alive(False)
        if not self.busy:
            self.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_handle is not None:
            self._header_handle.cancel()
            self._header_handle = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        err: errors.GatewayError
        if isinstance(exc, LineTooLong):
            err = errors.HeadersTooLarge()
        elif status == 400:
            err = errors.BadRequest(f"malformed request: {message or exc}"[:200])
        elif status == 504:
            err = errors.UpstreamTimeout()
        else:
            log.error("internal_error", error=repr(exc))
            err = errors.GatewayError()
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        resp = error_response(err, new_id())
        resp.force_close()
        return resp


class GatewayServer(Server):
    def __init__(self, handler: Any, *, header_timeout: float, **kwargs: Any):
        super().__init__(handler, handler_cancellation=True, **kwargs)
        self._header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(
            self, loop=self._loop, header_timeout=self._header_timeout, **self._kwargs
        )


def split_host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def bind(addr: str, *, reuse_port: bool = False) -> socket.socket:
    host, port = split_host_port(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Gateway:
    """One serving process: listeners, admin, the snapshot holder."""

    def __init__(self, loaded: Loaded, *, admin: bool = True, reuse_port: bool = False):
        self.loaded = loaded
        self.with_admin = admin
        self.reuse_port = reuse_port
        self.reloader: Any = None
        self.holder: SnapshotHolder | None = None
        self.ready = False
        self.ports: list[int] = []
        self.admin_port: int | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._http: GatewayServer | None = None
        self._admin: web.AppRunner | None = None
        self.stopped = asyncio.Event()
        self.sampler = metrics.PoolSampler()

    @property
    def snapshot(self) -> Snapshot:
        assert self.holder is not None
        return self.holder.current

    async def start(self) -> None:
        snap = compile_snapshot(self.loaded)
        self.holder = SnapshotHolder(snap)
        self.holder.activate()  # health checkers; a reload's swap activates its snapshot
        s = snap.server
        self.access_log = AccessLog()
        proxy = Proxy(self.holder, self.access_log)
        self._http = GatewayServer(
            proxy,
            header_timeout=s.client_header_timeout,
            keepalive_timeout=s.keepalive_timeout,
            max_line_size=s.max_header_size,
            max_field_size=s.max_header_size,
            access_log=None,
            auto_decompress=False,
        )
        context = None
        if s.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*s.tls)
        loop = asyncio.get_running_loop()
        for addr in s.listen:
            sock = bind(addr, reuse_port=self.reuse_port)
            server = await loop.create_server(self._http, sock=sock, ssl=context)
            self._servers.append(server)
            self.ports.append(sock.getsockname()[1])
        if self.with_admin:
            await self._start_admin(snap.admin_listen)
        self.sampler.start(lambda: self.snapshot)
        self.ready = True
        # What is alive now lives as long as the config: keep it out of every
        # future collection, so a full GC pass never scans the whole route table.
        gc.freeze()
        log.info("listening", listen=list(s.listen), ports=self.ports, admin=self.admin_port)

    async def _start_admin(self, listen: str) -> None:
        app = web.Application(middlewares=[self._admin_auth])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/admin/config", self._config)
        app.router.add_get("/admin/routes", self._routes)
        app.router.add_get("/admin/upstreams", self._upstreams)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._status_page)
        self._admin = web.AppRunner(app, access_log=None)
        await self._admin.setup()
        sock = bind(listen)
        await web.SockSite(self._admin, sock).start()
        self.admin_port = sock.getsockname()[1]

    @web.middleware
    async def _admin_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """/admin/* wants `Authorization: Bearer <token>` when admin.token_env is set."""
        env = self.snapshot.admin_token_env
        if env and request.path.startswith("/admin/"):
            token = os.environ.get(env, "")
            given = request.headers.get("Authorization", "")
            if not token or not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                err = errors.Unauthorized("admin endpoints need the bearer token")
                resp = error_response(err, new_id())
                resp.headers["WWW-Authenticate"] = 'Bearer realm="pyproxyd-admin"'
                return resp
        return await handler(request)

    async def _status_page(self, request: web.Request) -> web.Response:
        """observe/status.html: one self-contained page that polls the endpoints here.
        Open, like /metrics; its script sends `?token=` as the bearer token to /admin/*."""
        from importlib.resources import files

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
        if self.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "draining"}, status=503)

    async def _config(self, request: web.Request) -> web.Response:
        snap = self.snapshot
        reloader = self.reloader
        return web.json_response(
            {
                "file": snap.file,
                "sha256": snap.digest,
                "loaded_at": snap.loaded_at,
                "routes": len(snap.routes),
                "upstreams": len(snap.upstreams),
                "last_reload_error": reloader.last_error if reloader is not None else None,
                "reloads": {
                    "success": reloader.successes if reloader is not None else 0,
                    "error": reloader.failures if reloader is not None else 0,
                },
            }
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        self.sampler.sample(self.snapshot)
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _routes(self, request: web.Request) -> web.Response:
        return web.json_response({"routes": self.snapshot.router.table()})

    async def _upstreams(self, request: web.Request) -> web.Response:
        now = asyncio.get_running_loop().time()
        return web.json_response({"upstreams": upstreams_view(self.snapshot, now)})

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within graceful_timeout."""
        if not self.ready and not self._servers:
            return
        self.ready = False
        self.sampler.stop()
        timeout = self.snapshot.server.graceful_timeout
        for server in self._servers:
            server.close()
        if self._http is not None:
            # aiohttp's shutdown() stops reading from every connection at once,
            # which cuts WebSockets; drain ourselves, then let it cancel the rest.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            conns = [c for c in self._http.connections if isinstance(c, GatewayRequestHandler)]
            for conn in conns:
                conn.drain()
            while any(c.busy for c in conns) and loop.time() < deadline:
                await asyncio.sleep(0.05)
            await self._http.shutdown(0.5)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
        for pool in self.snapshot.pools():
            await pool.aclose()
        for obj in self.snapshot.state.values():  # health checkers and their connections
            close = getattr(obj, "aclose", None)
            if close is not None and not isinstance(obj, TargetPool):
                await close()
        await close_client()
        self.access_log.flush()
        if self._admin is not None:
            await self._admin.cleanup()
        self.stopped.set()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

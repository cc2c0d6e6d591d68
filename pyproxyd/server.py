"""Listeners, the admin listener, signals and graceful drain.

`Gateway` is what both `pyproxyd run` and the end-to-end tests start: a real
server on real sockets (port 0 works), in the current event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
from typing import Any, NamedTuple

from aiohttp import web

from .admin import Admin, local_upstreams, worker_app
from .compile import compile_snapshot
from .compiled import status as compiled_status
from .config_load import Loaded
from .discovery.build import close_clients, etcd_client
from .fleet import SharedConfig, with_document
from .frontend.connection import Frontend
from .frontend.http2 import Http2Frontend
from .observe.logging import AccessLog, get_logger
from .proxy.handler import Proxy
from .reload import Reloader, ReloadTally
from .resilience.view import discovery_ready
from .sampler import PoolSampler
from .shm.zone import Zone
from .snapshot import Snapshot, SnapshotHolder
from .upstream.pool import TargetPool

log = get_logger("pyproxyd.server")

# Allocations between two young-generation collections (CPython's default: 700).
GC_YOUNG = 20_000


def split_host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class Drained(NamedTuple):
    """What a graceful stop found busy, counted by client connection (one
    request or WebSocket each; pipelined requests behind one are its own)."""

    in_flight: int  # busy when the listeners closed
    cut: int  # still busy at graceful_timeout, aborted

    @property
    def finished(self) -> int:
        return self.in_flight - self.cut


class CannotStart(Exception):
    """What keeps the gateway from starting, led by the setting to blame."""


def bind(addr: str, *, key: str, reuse_port: bool = False) -> socket.socket:
    host, port = split_host_port(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CannotStart(f"{key}: cannot listen on {addr}: {e.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def compile_or_refuse(loaded: Loaded, zone: Zone | None = None) -> Snapshot:
    try:
        return compile_snapshot(loaded, zone=zone)
    except ValueError as e:  # a file the config names does not load (TLS pair, jwks_file)
        raise CannotStart(f"(compile): {e}") from None


class Gateway:
    """One serving process: listeners, admin, the snapshot holder."""

    def __init__(
        self,
        loaded: Loaded,
        *,
        admin: bool = True,
        reuse_port: bool = False,
        worker_socket: str | None = None,
        zone: Zone | None = None,
        document_file: str | None = None,
    ):
        self.loaded = loaded
        # A worker's: its supervisor watches etcd.config_key and writes here
        # the document it validated (fleet.py); the worker reads, never watches.
        self.document_file = document_file
        self.zone = zone  # a worker's: the instance's shared state (pyproxyd/shm)
        self.with_admin = admin
        self.worker_socket = worker_socket  # a worker's private admin (supervisor.py)
        self.reuse_port = reuse_port
        self._reloader: Reloader | None = None  # made by start()
        self.shared: SharedConfig | None = None  # etcd.config_key's watch, made by start()
        self.holder: SnapshotHolder | None = None
        self.ready = False
        self.ports: list[int] = []
        self.admin_port: int | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._http: Frontend | None = None
        self.http2: Http2Frontend | None = None  # (its buffered() is what tests measure)
        self._admin: web.AppRunner | None = None
        self._worker_admin: web.AppRunner | None = None
        self.stopped = asyncio.Event()
        self.sampler = PoolSampler()

    @property
    def reloader(self) -> Reloader:
        assert self._reloader is not None, "start() first"
        return self._reloader

    @property
    def snapshot(self) -> Snapshot:
        assert self.holder is not None
        return self.holder.current

    def _current_certificate(
        self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        """Hand each handshake the certificate of the current snapshot.

        A listener keeps the context it was created with; a reload compiles a
        new one, and OpenSSL's servername callback (called with or without
        SNI) is where a handshake may still change context.
        """
        current = self.snapshot.server.tls
        if current is not None and current is not context:
            conn.context = current

    async def start(self) -> None:
        if self.document_file is not None:
            self.loaded = with_document(self.loaded, self.document_file)
        snap = compile_or_refuse(self.loaded, self.zone)
        self.holder = SnapshotHolder(snap)
        # A worker's reloads are its supervisor's to count (see ReloadTally).
        self._reloader = Reloader(self.holder, self.loaded, counted=self.worker_socket is None)
        self._reloader.document_file = self.document_file
        self.holder.activate()  # health checkers; a reload's swap activates its snapshot
        etcd = self.loaded.config.etcd
        if etcd is not None and etcd.config_key is not None and self.document_file is None:
            client = etcd_client(self.loaded.config, self.loaded.path.parent)
            self.shared = SharedConfig(self._reloader, client, etcd.config_key, etcd.timeout)
            self.shared.start()
        s = snap.server
        self.access_log = AccessLog()
        proxy = Proxy(self.holder, self.access_log)
        self.sampler.flushers.append(proxy.metrics.flush)
        self.proxy = proxy
        self._http = Frontend(
            proxy,
            header_timeout=s.client_header_timeout,
            keepalive_timeout=s.keepalive_timeout,
            max_header_size=s.max_header_size,
            body_timeout=s.client_body_timeout,
            refused=proxy.refused,
        )
        self._http.start()
        self.http2 = Http2Frontend(
            proxy,
            header_timeout=s.client_header_timeout,
            keepalive_timeout=s.keepalive_timeout,
            body_timeout=s.client_body_timeout,
            max_header_size=s.max_header_size,
            max_streams=s.max_concurrent_streams,
            refused=proxy.refused,
        )
        self.http2.start()
        self._configure_fronts(snap)
        self.holder.subscribe(self._configure_fronts)
        context = s.tls
        if context is not None:
            context.sni_callback = self._current_certificate
        loop = asyncio.get_running_loop()
        for addr in s.listen:
            sock = bind(addr, key="server.listen", reuse_port=self.reuse_port)
            server = await loop.create_server(
                self._http.protocol(context is not None), sock=sock, ssl=context
            )
            self._servers.append(server)
            self.ports.append(sock.getsockname()[1])
        if self.with_admin:
            await self._start_admin(snap.admin_listen)
        if self.worker_socket is not None:
            self._worker_admin = web.AppRunner(worker_app(lambda: self.snapshot), access_log=None)
            await self._worker_admin.setup()
            await web.UnixSite(self._worker_admin, self.worker_socket).start()
        self.sampler.start(lambda: self.snapshot)
        self.ready = True
        # What is alive now lives as long as the config: keep it out of every
        # future collection, so a full GC pass never scans the whole route table.
        gc.freeze()
        # A young collection scans every young object still alive, and under
        # load that is the objects of every request in flight (128 gRPC calls:
        # thousands), while a request's own garbage dies by refcount. At the
        # default 700 allocations this was 4.2% of a gRPC call's CPU; at
        # GC_YOUNG, 0.3%. Cyclic garbage waits longer, bounded by GC_YOUNG.
        gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
        compiled, stale = compiled_status()
        log.info(
            "listening",
            listen=list(s.listen),
            ports=self.ports,
            admin=self.admin_port,
            compiled=len(compiled),  # request-path modules built by mypyc (setup.py)
        )
        if stale:
            log.warning(
                "stale_build",
                modules=stale,
                message="these .py files are newer than their compiled build, which runs "
                "instead: run scripts/compile.sh (or --clean)",
            )

    def _configure_fronts(self, snap: Snapshot) -> None:
        """Client settings of a (new) snapshot: connections use them from their
        next deadline or head on; HTTP/2 is offered to new connections or not."""
        new = snap.server
        assert self._http is not None and self.http2 is not None
        self._http.configure(new.client_header_timeout, new.keepalive_timeout,
                             new.client_body_timeout, new.max_header_size)  # fmt: skip
        self.http2.configure(new.client_header_timeout, new.keepalive_timeout,
                             new.client_body_timeout, new.max_header_size,
                             new.max_concurrent_streams)  # fmt: skip
        self._http.http2 = self.http2.take if new.http2 else None

    async def _start_admin(self, listen: str) -> None:
        self._admin = web.AppRunner(Admin(self).app, access_log=None)
        await self._admin.setup()
        sock = bind(listen, key="admin.listen")
        await web.SockSite(self._admin, sock).start()
        self.admin_port = sock.getsockname()[1]

    # AdminSource: what the admin endpoints of a serving process answer
    def admin_snapshot(self) -> Snapshot:
        return self.snapshot

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        if not self.ready:
            return False, {"status": "draining"}
        if not discovery_ready(self.snapshot):
            return False, {"status": "waiting_for_discovery"}
        if self.shared is not None and not self.shared.ready():
            return False, {"status": "waiting_for_config_key"}
        return True, {"status": "ready"}

    def reloads(self) -> ReloadTally:
        return self._reloader.tally if self._reloader is not None else ReloadTally()

    def before_scrape(self) -> None:
        self.sampler.sample(self.snapshot)

    async def upstreams(self) -> dict[str, Any]:
        return local_upstreams(self.snapshot)

    async def stop(self) -> Drained:
        """Stop accepting, let in-flight requests finish within graceful_timeout."""
        if not self.ready and not self._servers:
            return Drained(0, 0)
        self.ready = False
        self.sampler.stop()
        if self.shared is not None:
            await self.shared.stop()
        timeout = self.snapshot.server.graceful_timeout
        for server in self._servers:
            server.close()
        drained = Drained(0, 0)
        if self._http is not None and self.http2 is not None:
            # Idle connections close now; busy ones (a request, a WebSocket, an
            # HTTP/2 connection's open streams, after its GOAWAY) get until
            # graceful_timeout, then are cut.
            http, h2 = self._http, self.http2

            def connections() -> list[Any]:
                return [*http.connections, *h2.connections]

            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            for conn in connections():
                conn.drain_close()
            in_flight = sum(1 for c in connections() if c.busy)
            while any(c.busy for c in connections()) and loop.time() < deadline:
                await asyncio.sleep(0.05)
            drained = Drained(in_flight, sum(1 for c in connections() if c.busy))
            for conn in connections():
                conn.abort()
            self._http.stop()
            self.http2.stop()
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
        await close_clients()
        self.access_log.flush()
        self.proxy.metrics.flush()
        for runner in (self._admin, self._worker_admin):
            if runner is not None:
                await runner.cleanup()
        self.stopped.set()
        return drained

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

"""`server.workers = N`: N worker processes sharing the listeners (SO_REUSEPORT).

The supervisor serves the admin listener, watches the config file, passes
SIGHUP and SIGTERM on to the workers, and restarts a worker that dies, with
exponential backoff. It owns the shared zone (pyproxyd/shm): created before
the first worker, inherited by each one it starts (a restarted worker maps
the same memory), closed when it stops; a memfd, so nothing is left to
remove after any kind of stop. Workers report readiness to it with the sd_notify
protocol over a private datagram socket, so one mechanism serves both
systemd and the supervisor.

With `etcd.config_key` the supervisor is the instance's one watcher of the
key (fleet.py): it validates each document as it validates a file edit, and
its workers take the document it validated from a file in its folder.
Discovery too is one per instance: the supervisor runs each discovered
upstream's source and relays every set to all of its workers
(discovery/relay.py), so they serve the same targets from one watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from . import sdnotify
from .admin import Admin
from .config_load import ConfigError, Document, Loaded, watched
from .discovery.build import close_clients, etcd_client
from .discovery.relay import SOCKET_ENV, Hub
from .fleet import DOCUMENT_ENV, SharedConfig, write_document
from .observe import metrics
from .observe.logging import get_logger
from .reload import ReloadTally, candidate
from .resilience.view import merge_views
from .server import bind, compile_or_refuse
from .shm import zone as shm_zone
from .snapshot import Snapshot
from .watch import watch

WORKER_ENV = "PYPROXYD_WORKER"
SUPERVISOR_ENV = "PYPROXYD_SUPERVISOR"
WORKER_SOCKET_ENV = "PYPROXYD_WORKER_SOCKET"
_PR_SET_PDEATHSIG = 1


def stop_with_supervisor(stop: Callable[[], None]) -> None:
    """In a worker: when the supervisor dies (SIGKILL, OOM killer), stop gracefully.

    An orphaned worker would go on serving its SO_REUSEPORT listeners beside a
    restarted supervisor's workers, on an old config and unsupervised. Linux
    sends the worker SIGTERM when its parent dies; a parent already gone
    before the request was made is seen as a different parent PID.
    """
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != os.environ.get(SUPERVISOR_ENV):
        stop()


log = get_logger("pyproxyd.supervisor")

BACKOFF_START, BACKOFF_MAX, STABLE_AFTER = 0.5, 30.0, 30.0


class Worker:
    def __init__(self, index: int, folder: str):
        self.index = index
        self.socket = str(Path(folder) / f"worker-{index}.sock")  # its private admin
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = False
        self.backoff = BACKOFF_START
        self.started_at = 0.0
        self.generation = 0  # the supervisor's config generation it was last given


class Supervisor:
    def __init__(self, loaded: Loaded, workers: int, *, watch: bool = True):
        self.loaded = loaded
        self.watch = watch
        self.stopping = False
        self.snapshot: Snapshot | None = None  # the last config validated, for /admin/*
        self.tally = ReloadTally()
        self._tmp = tempfile.TemporaryDirectory(prefix="pyproxyd-")
        self._notify_path = str(Path(self._tmp.name) / "notify.sock")
        self.workers = [Worker(i, self._tmp.name) for i in range(workers)]
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(self._notify_path)
        self._notify.setblocking(False)
        self._tasks: set[asyncio.Task[object]] = set()
        self._sent_ready = False
        self._reload_lock = asyncio.Lock()
        self.zone: shm_zone.Zone | None = None
        self.generation = 0  # one more at every config the workers are told to load
        # etcd.config_key: the last document read (fleet.Target), and where the
        # one validated last is kept for the workers.
        self.document: Document | None = loaded.document
        self.document_file = Path(self._tmp.name) / "document.json"
        self.shared: SharedConfig | None = None
        self.hub = Hub(Path(self._tmp.name) / "discovery.sock")

    # ------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        # Refused here once, not by every worker in a restart loop: a config that
        # does not compile, a port another program holds.
        self.snapshot = compile_or_refuse(self.loaded)
        for addr in self.snapshot.server.listen:
            bind(addr, key="server.listen", reuse_port=True).close()
        self.zone = shm_zone.Zone.create(self.loaded.config.server.shared_zone_size)
        loop = asyncio.get_running_loop()
        loop.add_reader(self._notify.fileno(), self._on_notify)
        runner = await self._start_admin()
        await self.hub.start()
        self.hub.configure(self.snapshot)
        stop = asyncio.Event()

        def on_signal(sig: signal.Signals) -> None:
            if not stop.is_set():
                stop.set()
                self.stopping = True
                log.info("shutdown", signal=sig.name, workers=len(self.workers),
                         graceful_timeout=self.loaded.config.server.graceful_timeout)  # fmt: skip
                sdnotify.stopping()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))
        etcd = self.loaded.config.etcd
        if etcd is not None and etcd.config_key is not None:
            client = etcd_client(self.loaded.config, self.loaded.path.parent)
            self.shared = SharedConfig(self, client, etcd.config_key, etcd.timeout)
            self.shared.start()
            # Workers start on the document (within etcd.timeout), not on the
            # file alone only to be told to reload a moment later.
            await self.shared.first_read()
        for w in self.workers:
            self._spawn(self._keep_running(w))
        watcher = asyncio.create_task(self._watch(stop)) if self.watch else None
        await stop.wait()
        started = loop.time()
        killed = await self._stop_workers()
        # Each worker logs its own worker_stopped with the requests it finished or cut.
        log.info("stopped", workers=len(self.workers), killed=killed,
                 seconds=round(loop.time() - started, 3))  # fmt: skip
        if watcher is not None:
            await watcher
        if self.shared is not None:
            await self.shared.stop()
        await self.hub.close()
        await close_clients()
        loop.remove_reader(self._notify.fileno())
        self._notify.close()
        self._tmp.cleanup()
        self.zone.close()
        await runner.cleanup()

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keep_running(self, w: Worker) -> None:
        loop = asyncio.get_running_loop()
        assert self.zone is not None
        zone_fd = self.zone.fd
        while not self.stopping:
            env = dict(
                os.environ,
                **{
                    WORKER_ENV: str(w.index),
                    SUPERVISOR_ENV: str(os.getpid()),
                    WORKER_SOCKET_ENV: w.socket,
                    "NOTIFY_SOCKET": self._notify_path,
                    shm_zone.ENV: str(zone_fd),
                    DOCUMENT_ENV: str(self.document_file),
                    SOCKET_ENV: str(self.hub.path),
                },
            )
            w.ready = False
            w.started_at = loop.time()
            w.generation = self.generation  # what it reads at start
            with contextlib.suppress(FileNotFoundError):
                os.unlink(w.socket)  # left by a worker that was killed
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pyproxyd", "run", "-c", str(self.loaded.path), env=env,
                pass_fds=(zone_fd,),
            )  # fmt: skip
            log.info("worker_started", worker=w.index, pid=w.proc.pid)
            code = await w.proc.wait()
            metrics.worker_exited(w.proc.pid)
            w.ready = False
            if self.stopping:
                return
            if loop.time() - w.started_at > STABLE_AFTER:
                w.backoff = BACKOFF_START
            log.error("worker_exited", worker=w.index, pid=w.proc.pid, code=code,
                      restart_in=w.backoff)  # fmt: skip
            await asyncio.sleep(w.backoff)
            w.backoff = min(w.backoff * 2, BACKOFF_MAX)

    async def _stop_workers(self) -> int:
        """SIGTERM to every worker; how many had to be killed after the grace."""
        grace = self.loaded.config.server.graceful_timeout + 5.0
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        killed = 0
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), grace)
        except TimeoutError:
            for p in procs:
                if p.returncode is None:
                    killed += 1
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            await asyncio.gather(*(p.wait() for p in procs))
        return killed

    # ---------------------------------------------------------------- notify

    def _on_notify(self) -> None:
        try:
            data, _ = self._notify.recvfrom(4096)
        except OSError:
            return
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        pid = int(fields.get("MAINPID", "0"))
        for w in self.workers:
            if w.proc is not None and w.proc.pid == pid and fields.get("READY") == "1":
                w.ready = True
                if w.generation != self.generation:
                    # A reload came while it was starting, perhaps after it read
                    # its config: now that it has its SIGHUP handler, pass it on.
                    self._hup(w)
        if not self._sent_ready and all(w.ready for w in self.workers):
            self._sent_ready = True
            log.info("workers_ready", workers=len(self.workers))
            sdnotify.ready()

    # ---------------------------------------------------------------- reload

    async def _watch(self, stop: asyncio.Event) -> None:
        await watch(lambda: watched(self.loaded), self.reload, stop)

    async def reload(self) -> bool:
        """Validate first, so a bad file is reported once and no worker tries it.

        Answered as the single process answers (reload.Reloader.reload):
        RELOADING=1, one log event, READY=1, whatever the outcome.
        """
        async with self._reload_lock:
            notify = self._sent_ready  # before that, a reload is part of the start
            if notify:
                sdnotify.reloading()
            try:
                return await self._reload()
            finally:
                if notify:
                    sdnotify.ready()

    async def reload_document(self, document: Document | None) -> bool:
        """fleet.Target: a new document at etcd.config_key (None: deleted)."""
        async with self._reload_lock:
            self.document = document
        return await self.reload()

    async def _reload(self) -> bool:
        file = str(self.loaded.path)
        assert self.snapshot is not None
        try:
            found = await candidate(self.loaded.path, self.snapshot, self.document)
        except (ConfigError, ValueError, OSError) as e:
            self.tally.failed(file, e)
            return False
        if found is None:
            self.tally.unchanged(file)
            return False
        self.loaded, self.snapshot = found
        self.hub.configure(self.snapshot)  # before any worker compiles it
        if self.shared is not None:
            write_document(self.document_file, self.loaded.document)
        self.generation += 1
        for w in self.workers:
            if w.ready:  # one still starting is told when it says READY=1 (_on_notify)
                self._hup(w)
        fields: dict[str, object] = {"digest": self.loaded.digest, "workers": len(self.workers)}
        if self.snapshot.revision is not None:
            fields.update(config_key=self.snapshot.config_key, revision=self.snapshot.revision)
            metrics.config_revision(self.snapshot.revision)
        self.tally.succeeded(file, **fields)
        return True

    def _hup(self, w: Worker) -> None:
        w.generation = self.generation
        if w.proc is not None and w.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGHUP)

    # ----------------------------------------------------------------- admin

    async def _start_admin(self) -> web.AppRunner:
        runner = web.AppRunner(Admin(self).app, access_log=None)
        await runner.setup()
        sock = bind(self.loaded.config.admin.listen, key="admin.listen")
        await web.SockSite(runner, sock).start()
        log.info("supervisor_listening", admin=sock.getsockname()[1],
                 workers=len(self.workers))  # fmt: skip
        return runner

    # AdminSource: the supervisor answers for its workers
    def admin_snapshot(self) -> Snapshot:
        assert self.snapshot is not None
        return self.snapshot

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        ready = [w.ready for w in self.workers]
        body = {"ready_workers": sum(ready), "workers": len(ready)}
        if not self.stopping and all(ready):
            # The sources run here, relayed to the workers: ready once each
            # answered (or its first-answer wait has passed).
            if not self.hub.ready():
                return False, {"status": "waiting_for_discovery", **body}
            if self.shared is not None and not self.shared.ready():
                return False, {"status": "waiting_for_config_key", **body}
            return True, {"status": "ready", **body}
        return False, {"status": "not_ready", **body}

    def reloads(self) -> ReloadTally:
        return self.tally

    def before_scrape(self) -> None:
        pass  # the workers flush theirs to the multiprocess files once a second

    async def upstreams(self) -> dict[str, Any]:
        """Every worker's view, and all of them merged into the single-process shape."""
        workers = await asyncio.gather(*(self._worker_upstreams(w) for w in self.workers))
        views = [w["upstreams"] for w in workers if "upstreams" in w]
        return {"upstreams": merge_views(views), "workers": workers}

    async def _worker_upstreams(self, w: Worker) -> dict[str, Any]:
        out: dict[str, Any] = {"worker": w.index, "pid": w.proc.pid if w.proc else None}
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=w.socket),
                    timeout=aiohttp.ClientTimeout(total=2.0),
                ) as session,
                session.get("http://worker/admin/upstreams") as r,
            ):
                r.raise_for_status()
                out["upstreams"] = (await r.json())["upstreams"]
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            out["error"] = str(e) or type(e).__name__  # starting, restarting, stuck
        return out

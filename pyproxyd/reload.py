"""Reload: load -> compile -> swap, or keep the old snapshot and say why."""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import sdnotify
from .compile import ZONE, compile_snapshot, unsupported
from .config_load import ConfigError, Document, Loaded, load, watched
from .fleet import read_document
from .observe import metrics
from .observe.logging import get_logger
from .watch import watch

if TYPE_CHECKING:
    from .snapshot import Snapshot, SnapshotHolder

log = get_logger("pyproxyd.reload")


class ReloadTally:
    """One process's reload results: what /admin/config shows, the metric counts,
    and the one log event each reload attempt gets.

    `counted=False` for a worker: its reloads are its supervisor's to count
    (it validated them first), or N workers would count each one N times; and
    its events are named `worker_*`, so that a reload logs one `config_*`
    event per instance, the supervisor's.
    """

    def __init__(self, *, counted: bool = True):
        self.counted = counted
        self.last_error: list[str] | None = None
        self.successes = 0
        self.failures = 0

    def _event(self, name: str) -> str:
        return name if self.counted else f"worker_{name}"

    def unchanged(self, file: str) -> None:
        self.last_error = None
        if self.counted:
            log.info("config_unchanged", file=file)
        else:  # the supervisor already said so; a worker is only told when it changed
            log.debug("worker_config_unchanged", file=file)

    def succeeded(self, file: str, **fields: object) -> None:
        self.last_error = None
        self.successes += 1
        if self.counted:
            metrics.reloads("success")
        log.info(self._event("config_reloaded"), file=file, **fields)

    def failed(self, file: str, exc: Exception) -> None:
        """A file that did not load or compile: the lines `pyproxyd validate` prints."""
        lines = exc.lines() if isinstance(exc, ConfigError) else [f"{file}: (compile): {exc}"]
        self.last_error = lines
        self.failures += 1
        if self.counted:
            metrics.reloads("error")
        log.error(self._event("config_reload_failed"), file=file, errors=lines)


async def candidate(
    path: str | Path, serving: Snapshot, document: Document | None = None
) -> tuple[Loaded, Snapshot] | None:
    """The next config, read and compiled off the event loop, for the single
    process and the supervisor alike; None when the files are byte-identical
    to the ones `serving` came from. Raises ConfigError, ValueError (a file
    the config names does not load) or OSError.

    The compile thread and the event loop share the GIL. At the default 5 ms
    switch interval the loop waits for it on every turn and stalls 100-150 ms
    under load (scripts/bench/reload_stall.py); at 0.2 ms the worst stall
    measured was under 20 ms. A full collection over the new objects would
    stall too: none while compiling, and what survives is frozen out of
    later ones.
    """
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    gc.disable()
    try:
        loaded = await asyncio.to_thread(load, path, document)
        if loaded.digest == serving.digest:
            return None
        problems = unsupported(loaded.config)
        if problems:
            raise ConfigError(str(path), problems)
        new = await asyncio.to_thread(compile_snapshot, loaded, serving)
    finally:
        sys.setswitchinterval(interval)
        gc.freeze()
        gc.enable()
    for setting in _fixed_settings(serving, loaded.config):
        log.warning("config_change_needs_restart", setting=setting, kept="old value")
    return loaded, new


class Reloader:
    """Installs new snapshots in `holder`: from a file change, SIGHUP or a call.

    It knows the holder and the files, not the server: whatever listens for
    a change reads the holder (one atomic swap), as Traefik's watcher knows
    no server.
    """

    def __init__(self, holder: SnapshotHolder, loaded: Loaded, *, counted: bool = True):
        self.holder = holder
        self.loaded = loaded  # the files the serving snapshot came from
        self.tally = ReloadTally(counted=counted)
        # The shared document from etcd.config_key (fleet.py): every reload,
        # a file edit's too, merges the last one read.
        self.document: Document | None = loaded.document
        # A worker's: the document its supervisor validated, read at each reload.
        self.document_file: str | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload when the file, or a file it reads (jwks_file), changes on disk."""
        await watch(lambda: watched(self.loaded), self.reload, stop)

    def trigger(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload_document(self, document: Document | None) -> bool:
        """A new shared document (None: the key is gone): reload with it."""
        async with self._lock:
            self.document = document
        return await self.reload()

    async def reload(self) -> bool:
        """True when a new snapshot was installed.

        Every call is answered the same way, whatever its outcome: RELOADING=1,
        one log event (config_reloaded, config_unchanged or
        config_reload_failed), READY=1. systemd's notify-reload waits for
        READY=1 after each SIGHUP, and an operator who sent one wants to see
        that it was read.
        """
        async with self._lock:
            sdnotify.reloading()
            try:
                return await self._reload()
            finally:
                sdnotify.ready()  # after a failure too: the old config keeps serving

    async def _reload(self) -> bool:
        current = self.holder.current
        try:
            if self.document_file is not None:
                self.document = read_document(self.document_file)
            found = await candidate(current.file, current, self.document)
        except (ConfigError, ValueError, OSError) as e:
            self.tally.failed(current.file, e)
            return False
        if found is None:
            self.tally.unchanged(current.file)
            return False
        self.loaded, new = found
        self.holder.swap(new)
        fields: dict[str, object] = {"digest": new.digest, "routes": len(new.routes)}
        if new.revision is not None:
            fields.update(config_key=new.config_key, revision=new.revision)
            metrics.config_revision(new.revision)
        self.tally.succeeded(current.file, **fields)
        return True


def _fixed_settings(current: object, cfg: object) -> list[str]:
    from .config import Config
    from .snapshot import Snapshot

    assert isinstance(current, Snapshot) and isinstance(cfg, Config)
    out = []
    if tuple(cfg.server.listen) != current.server.listen:
        out.append("server.listen")
    if cfg.server.workers != current.server.workers:
        out.append("server.workers")
    if (cfg.server.tls is None) != (current.server.tls is None):
        out.append("server.tls")  # a listener cannot start or stop speaking TLS
    if cfg.admin.listen != current.admin_listen:
        out.append("admin.listen")
    zone = current.state.get(ZONE)  # a worker's: its size was set when the instance started
    if zone is not None and zone.size != cfg.server.shared_zone_size:
        out.append("server.shared_zone_size")
    return out

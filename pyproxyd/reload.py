"""Reload: load -> compile -> swap, or keep the old snapshot and say why."""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import TYPE_CHECKING

from . import sdnotify
from .compile import compile_snapshot, unsupported
from .config_load import ConfigError, load, watched
from .observe import metrics
from .observe.logging import get_logger
from .watch import watch

if TYPE_CHECKING:
    from .server import Gateway
    from .snapshot import Snapshot

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


class Reloader:
    def __init__(self, gateway: Gateway, *, counted: bool = True):
        self.gateway = gateway
        self.tally = ReloadTally(counted=counted)
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload when the file, or a file it reads (jwks_file), changes on disk."""
        await watch(lambda: watched(self.gateway.loaded), self.reload, stop)

    def trigger(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """True when a new snapshot was installed.

        Every call is answered the same way, whatever its outcome: RELOADING=1,
        one log event (config_reloaded, config_unchanged or
        config_reload_failed), READY=1. systemd's notify-reload waits for
        READY=1 after each SIGHUP, and an operator who sent one wants to see
        that it was read. Parsing and compiling run in a thread: with the GIL
        handing the loop a turn every few milliseconds, a 5,000-route compile
        does not stall the requests in flight.
        """
        async with self._lock:
            sdnotify.reloading()
            gw = self.gateway
            assert gw.holder is not None
            current = gw.holder.current
            # The compile thread and the event loop share the GIL. At the default
            # 5 ms switch interval the loop waits for it on every turn and stalls
            # 100-150 ms under load (scripts/bench/reload_stall.py); at 0.2 ms
            # the worst stall measured was under 20 ms. A full collection over
            # the new objects would stall too: none while compiling, and what
            # survives is frozen out of later ones.
            interval = sys.getswitchinterval()
            sys.setswitchinterval(0.0002)
            gc.disable()
            try:
                return await self._reload(gw, current)
            finally:
                sys.setswitchinterval(interval)
                gc.freeze()
                gc.enable()
                sdnotify.ready()  # after a failure too: the old config keeps serving

    async def _reload(self, gw: Gateway, current: Snapshot) -> bool:
        try:
            loaded = await asyncio.to_thread(load, current.file)
            if loaded.digest == current.digest:
                self.tally.unchanged(current.file)
                return False
            problems = unsupported(loaded.config)
            if problems:
                raise ConfigError(current.file, problems)
            fixed = _fixed_settings(current, loaded.config)
            new = await asyncio.to_thread(compile_snapshot, loaded, current)
        except (ConfigError, ValueError, OSError) as e:
            self.tally.failed(current.file, e)
            return False
        for setting in fixed:
            log.warning("config_change_needs_restart", setting=setting, kept="old value")
        assert gw.holder is not None
        gw.holder.swap(new)
        gw.loaded = loaded
        self.tally.succeeded(current.file, digest=loaded.digest, routes=len(new.routes))
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
    return out

"""One config for a fleet: the TOML document at etcd.config_key.

Every instance reads the key at start and watches it; each change reloads
through the same load -> compile -> swap as a file edit (reload.Reloader),
so an invalid document keeps the old config serving and is reported the way
a bad file is. A deleted key leaves the file's own tables. While etcd
cannot be reached, the last document read keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from .config_load import Document
from .observe.logging import get_logger

if TYPE_CHECKING:
    from .reload import Reloader

log = get_logger("pyproxyd.fleet")
BACKOFF = (0.2, 2.0)  # first and longest wait between tries


class SharedConfig:
    """Watches one key and hands each document to the reloader."""

    def __init__(self, reloader: Reloader, client: Any, key: str, wait: float) -> None:
        self.reloader = reloader
        self.client = client  # discovery.etcd.EtcdClient
        self.key = key
        self.wait = wait  # /readyz waits this long for the key to be read once
        self.read_once = False
        self.failing = False
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def ready(self) -> bool:
        return self.read_once or time.monotonic() - self._started >= self.wait

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        from .discovery.etcd import Compacted, EtcdError

        delay = BACKOFF[0]
        while True:
            try:
                revision = await self._read()
                delay = BACKOFF[0]
                async for events in self.client.watch_key(self.key, revision + 1):
                    last = events[-1]
                    doc = None
                    if last.type == "put":
                        doc = Document(self.key, last.value.decode("utf-8", "replace"),
                                       last.mod_revision)  # fmt: skip
                    await self._apply(doc)
            except asyncio.CancelledError:
                raise
            except Compacted:
                continue  # read the key again, then watch from there
            except EtcdError as e:
                self._unavailable(str(e))
            except Exception as e:  # never let the watch die: it is the fleet's link
                self._unavailable(repr(e))
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF[1])

    async def _read(self) -> int:
        revision, value, mod_revision = await self.client.get(self.key)
        if self.failing:
            self.failing = False
            log.info("config_key_restored", key=self.key)
        doc = None
        if value is not None:
            doc = Document(self.key, value.decode("utf-8", "replace"), mod_revision)
        await self._apply(doc)
        self.read_once = True
        return int(revision)

    async def _apply(self, doc: Document | None) -> None:
        current = self.reloader.document
        if doc == current:
            return
        if doc is None:
            log.warning("config_key_deleted", key=self.key)
        await self.reloader.reload_document(doc)

    def _unavailable(self, reason: str) -> None:
        if not self.failing:
            self.failing = True
            log.warning("config_key_unavailable", key=self.key, reason=reason,
                        serving=self.reloader.document.revision if self.reloader.document
                        else None)  # fmt: skip

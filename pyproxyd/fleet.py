"""One config for a fleet: the TOML document at etcd.config_key.

Every instance reads the key at start and watches it; each change reloads
through the same load -> compile -> swap as a file edit (reload.Reloader),
so an invalid document keeps the old config serving and is reported the way
a bad file is. A deleted key leaves the file's own tables. While etcd
cannot be reached, the last document read keeps serving.

With workers, the supervisor is the one instance's watcher (one watch, not
one per worker): it validates each document, writes the one it validated to
a file in its private folder (write_document) and passes SIGHUP on; a worker
reads that file when it starts and at every SIGHUP (read_document), so every
worker serves the document its supervisor validated, and a restarted worker
starts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from .config_load import ConfigError, Document, Loaded, load
from .observe.logging import get_logger

log = get_logger("pyproxyd.fleet")
BACKOFF = (0.2, 2.0)  # first and longest wait between tries
DOCUMENT_ENV = "PYPROXYD_DOCUMENT"  # a worker's copy of the document its supervisor validated


class Target(Protocol):
    """What takes each document: reload.Reloader in a single process, the
    supervisor with workers. `document` is the last one handed over."""

    document: Document | None

    async def reload_document(self, document: Document | None) -> bool: ...


def write_document(path: Path, document: Document | None) -> None:
    """Replace the file at once (rename): a worker never reads half of it."""
    tmp = path.with_name(path.name + ".tmp")
    body = None if document is None else [document.name, document.text, document.revision]
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)


def read_document(path: str | Path) -> Document | None:
    """The document written last; None before the first one (the file alone)."""
    try:
        body = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    return None if body is None else Document(body[0], body[1], int(body[2]))


def with_document(loaded: Loaded, path: str) -> Loaded:
    """A worker's start: its file merged with the document its supervisor
    validated last (none yet: the file alone)."""
    from .server import CannotStart

    document = read_document(path)
    if document is None:
        return loaded
    try:
        return load(loaded.path, document)
    except ConfigError as e:  # the file changed on disk since the supervisor checked it
        raise CannotStart("; ".join(e.lines())) from None


class SharedConfig:
    """Watches one key and hands each document to the reloader."""

    def __init__(self, reloader: Target, client: Any, key: str, wait: float) -> None:
        self.reloader = reloader
        self.client = client  # discovery.etcd.EtcdClient
        self.key = key
        self.wait = wait  # /readyz waits this long for the key to be read once
        self.read_once = False
        self.failing = False
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._read = asyncio.Event()

    def ready(self) -> bool:
        return self.read_once or time.monotonic() - self._started >= self.wait

    async def first_read(self) -> None:
        """Until the key was read and applied once, or `wait` has passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, self._started + self.wait - time.monotonic())):
                await self._read.wait()

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
                revision = await self._read_key()
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

    async def _read_key(self) -> int:
        revision, value, mod_revision = await self.client.get(self.key)
        if self.failing:
            self.failing = False
            log.info("config_key_restored", key=self.key)
        doc = None
        if value is not None:
            doc = Document(self.key, value.decode("utf-8", "replace"), mod_revision)
        await self._apply(doc)
        self.read_once = True
        self._read.set()
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

"""With workers, one watch per instance: the supervisor runs each discovered
upstream's source once and hands every set it finds to all of its workers.

The supervisor's `Hub` keeps one `HubFeed` per discovered upstream (made
from the supervisor's own compile, which never runs its sources) and serves
them on a Unix socket in its private folder. A worker's discovered upstream
gets a `RelaySource` instead of the real source: it subscribes to its feed
and reports what the feed says. Every message is the whole current set, so a
worker that connects (or reconnects) late is never a change behind, and every
worker sees the same sets in the same order. The feed logs and counts each
answer once for the instance; the workers' copies are silent
(`Feed(announce=False)`).

Protocol, one JSON object a line: the worker sends {"feed": ID}; the
supervisor answers at once with {"instances": [[url, weight], ...] or null
(no answer yet), "failed": reason or null}, then the same after each change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..observe.logging import get_logger
from . import Found, Report, Source
from .runner import Feed

if TYPE_CHECKING:
    from ..snapshot import Snapshot

log = get_logger("pyproxyd.discovery")

SOCKET_ENV = "PYPROXYD_DISCOVERY"  # a worker's: where its supervisor's hub listens
LINE_LIMIT = 64 * 1024 * 1024  # one message holds every instance of a prefix
STALLED = 16 * 1024 * 1024  # a worker this far behind is cut off; it reconnects
RETRY = 0.2  # a worker reconnects after this long (its supervisor restarting a feed)


def feed_id(upstream: str, spec: dict[str, Any]) -> str:
    """The same string in the supervisor's compile and a worker's."""
    return json.dumps([upstream, spec], sort_keys=True)


def _message(instances: list[Found] | None, failed: str | None) -> bytes:
    sets = None if instances is None else [[f.url, f.weight] for f in instances]
    return json.dumps({"instances": sets, "failed": failed}).encode() + b"\n"


def _parse(line: bytes) -> tuple[list[Found] | None, str | None]:
    msg = json.loads(line)
    raw = msg.get("instances")
    instances = None if raw is None else [Found(str(u), int(w)) for u, w in raw]
    return instances, msg.get("failed")


class HubFeed(Feed):
    """One source, run in the supervisor; every change goes to its subscribers."""

    def __init__(self, upstream: str, source: Source, wait: float) -> None:
        super().__init__(upstream, source, wait)
        self.reason: str | None = None  # why it is failing, while it is
        self.subscribers: set[asyncio.StreamWriter] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self.source.run(self)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a source must not die silently
            log.error("discovery_failed", upstream=self.upstream, source=self.source.name,
                      error=repr(e))  # fmt: skip

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for writer in list(self.subscribers):
            writer.close()
        self.subscribers.clear()

    def subscribe(self, writer: asyncio.StreamWriter) -> None:
        self.subscribers.add(writer)
        writer.write(self._state())

    def _state(self) -> bytes:
        return _message(self.instances, self.reason if self.failing else None)

    def _changed(self) -> None:
        self._send()

    def _failed(self, reason: str) -> None:
        self.reason = reason
        self._send()

    def _send(self) -> None:
        line = self._state()
        for writer in list(self.subscribers):
            if writer.transport.get_write_buffer_size() > STALLED:
                self.subscribers.discard(writer)
                writer.transport.abort()  # it reconnects and gets the whole set again
            else:
                writer.write(line)


class Hub:
    """The supervisor's feeds, served on a Unix socket to its workers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.feeds: dict[str, HubFeed] = {}
        self._pending: dict[str, set[asyncio.StreamWriter]] = {}  # feeds not made yet
        self._server: asyncio.AbstractServer | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(
            self._serve, str(self.path), limit=LINE_LIMIT
        )

    def configure(self, snapshot: Snapshot) -> None:
        """At the supervisor's start and after each of its reloads, before the
        workers compile: a feed for each discovered upstream of `snapshot`;
        a feed whose upstream (or source) is gone stops."""
        from .runner import Discovered

        wanted: dict[str, Discovered] = {}
        for key, obj in snapshot.state.items():
            if isinstance(key, tuple) and key[0] == "discovery" and isinstance(obj, Discovered):
                wanted[feed_id(key[1], dict(key[2]))] = obj
        for fid, discovered in wanted.items():
            if fid not in self.feeds:
                feed = self.feeds[fid] = HubFeed(
                    discovered.upstream, discovered.source, discovered.wait
                )
                feed.start()
                for writer in self._pending.pop(fid, set()):
                    feed.subscribe(writer)
        for fid in [f for f in self.feeds if f not in wanted]:
            feed = self.feeds.pop(fid)
            task = asyncio.get_running_loop().create_task(feed.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def ready(self) -> bool:
        return all(feed.ready() for feed in self.feeds.values())

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for feed in self.feeds.values():
            await feed.aclose()
        self.feeds.clear()
        for writers in self._pending.values():
            for writer in writers:
                writer.close()
        self._pending.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fid = ""
        try:
            fid = str(json.loads(await reader.readline())["feed"])
            feed = self.feeds.get(fid)
            if feed is not None:
                feed.subscribe(writer)
            else:  # a worker that compiled before this supervisor: no answer yet
                self._pending.setdefault(fid, set()).add(writer)
                writer.write(_message(None, None))
            await reader.read()  # until the worker goes away
        except (OSError, ValueError, KeyError, TypeError):
            pass
        finally:
            feed = self.feeds.get(fid)
            if feed is not None:
                feed.subscribers.discard(writer)
            self._pending.get(fid, set()).discard(writer)
            writer.close()


class RelaySource:
    """A worker's source: what its supervisor's feed `fid` found."""

    def __init__(self, path: str, fid: str, name: str) -> None:
        self.path = path
        self.fid = fid
        self.name = name  # the real source's, as /admin/upstreams shows it

    def first(self, timeout: float = 2.0) -> tuple[list[Found] | None, str | None]:
        """The feed's set now, asked without a loop (a worker's compile, which
        may run in a thread): a new or reloaded worker starts with the set
        the others serve, not with none. (None, None) if the hub is not there."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(self.path)
                sock.sendall(json.dumps({"feed": self.fid}).encode() + b"\n")
                with sock.makefile("rb") as f:
                    return _parse(f.readline(LINE_LIMIT))
        except (OSError, ValueError, KeyError, TypeError):
            return None, None

    async def run(self, report: Report) -> None:
        while True:
            writer = None
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=LINE_LIMIT)
                writer.write(json.dumps({"feed": self.fid}).encode() + b"\n")
                while line := await reader.readline():
                    instances, failed = _parse(line)
                    if instances is not None:
                        report.found(instances)
                    if failed:
                        report.failed(failed)
            except (OSError, ValueError, KeyError, TypeError):
                pass  # the supervisor is going away, or restarting this feed
            finally:
                if writer is not None:
                    writer.close()
            await asyncio.sleep(RETRY)

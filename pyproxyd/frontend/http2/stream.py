"""Compiled by mypyc (pyproxyd/compiled.py), as the Request it subclasses is.
One HTTP/2 stream as the pipeline sees it (proxy/interface.py), and how it answers.

The request body is fed by DATA frames and acknowledged to the client (its
flow-control window reopened) only as the pipeline reads it: a slow upstream
slows the client, and the gateway never holds more than the window. The
answer goes out as the client's window allows: `write()` returns once what
it was given is in the connection, so a client that reads slowly slows the
upstream it reads from.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from ...errors import ClientGone
from ...framing import field_value
from ...proxy.interface import Request
from ..request import BodyQueue

if TYPE_CHECKING:
    from .connection import H2ClientConnection

# Connection-specific fields (RFC 9113 8.2.2): never sent on HTTP/2.
CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)
_NO_BODY: Final = frozenset({204, 304})
_STATUS: Final = {code: b"%d" % code for code in range(100, 600)}

# What an answer's field name is on HTTP/2 (field_name()):
_KEEP: Final = 0
_SPECIFIC: Final = 1  # connection-specific: never sent
_LENGTH: Final = 2  # content-length
_DATE: Final = 3
# Names seen so far, at most NAMES_KEPT of at most NAME_BYTES each (then it
# starts again empty): answers repeat the names of the ones before them, and a
# lookup is cheaper than lower() and the set lookups of a new bytes object.
NAMES_KEPT: Final = 1024
NAME_BYTES: Final = 64
_NAMES: Final[dict[bytes, tuple[bytes, int]]] = {}


def field_name(name: bytes) -> tuple[bytes, int]:
    """(the lower-case name, what it is) of an answer's field name."""
    names = _NAMES
    entry = names.get(name)
    if entry is not None:
        return entry
    lname = name.lower()
    if lname in CONNECTION_SPECIFIC:
        kind = _SPECIFIC
    elif lname == b"content-length":
        kind = _LENGTH
    elif lname == b"date":
        kind = _DATE
    else:
        kind = _KEEP
    entry = (lname, kind)
    if len(name) <= NAME_BYTES:
        if len(names) >= NAMES_KEPT:
            names.clear()
        names[name] = entry
    return entry


def raw_fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    """HTTP/1.1 header lines (each "Name: value" and CRLF) as (name, value)
    pairs, names as written, both stripped; a line without a colon is skipped."""
    fields: list[tuple[bytes, bytes]] = []
    for line in raw.split(b"\r\n"):
        colon = line.find(b":")
        if colon < 0:
            continue
        name = line[:colon]
        value = field_value(line, colon + 1)
        if name and (name[0] <= 32 or name[-1] <= 32):
            name = name.strip()
        fields.append((name, value))
    return fields


class StreamBody(BodyQueue):
    """The request body as DATA frames bring it."""

    __slots__ = ("_conn", "_owed", "last", "stream_id")

    def __init__(self, conn: H2ClientConnection, stream_id: int, expect_continue: bool) -> None:
        super().__init__(expect_continue)
        self._conn = conn
        self.stream_id = stream_id
        self._owed = 0  # flow-controlled bytes received and not yet acknowledged
        self.last = conn.loop.time()  # the last DATA frame, or the start of a wait for one

    @property
    def waiting(self) -> bool:
        """The pipeline waits for the client (client_body_timeout runs)."""
        return self._waiter is not None

    def feed(self, data: bytes, flow: int) -> None:
        if data:
            self._chunks.append(data)
            self.total += len(data)
        self._owed += flow
        self.last = self._conn.loop.time()
        self._wake()

    def discard(self) -> None:
        """The stream is over: what nobody will read gives its window back."""
        self._chunks = []
        owed, self._owed = self._owed, 0
        if owed:
            self._conn.acknowledge(self.stream_id, owed)

    def _read(self) -> None:
        owed, self._owed = self._owed, 0
        if owed:
            self._conn.acknowledge(self.stream_id, owed)

    def __aiter__(self) -> StreamBody:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks:
                data = self._take()
                self._read()
                return data
            if self.eof:
                raise StopAsyncIteration
            if self._continue:
                self._continue = False
                self._conn.send_continue(self.stream_id)
            fut = self._conn.loop.create_future()
            self._waiter = fut
            self.last = self._conn.loop.time()
            try:
                await fut
            finally:
                self._waiter = None


class H2Request(Request):
    """One stream's request head, its body, and the answer written as frames."""

    __slots__ = ("_ended", "_out", "_trailers", "_writer", "conn", "done", "ending", "gone",
                 "no_body", "queued", "stream_id")  # fmt: skip

    def __init__(
        self,
        conn: H2ClientConnection,
        stream_id: int,
        method: str,
        raw_path: str,
        raw_headers: list[tuple[bytes, bytes]],
        picked: dict[bytes, bytes],
        body: StreamBody | None,
        content_length: int | None,
    ) -> None:
        super().__init__(
            method, raw_path, "2", raw_headers, picked, body, content_length, False,
            conn.secure, conn.peer,
        )  # fmt: skip
        self.conn = conn
        self.stream_id = stream_id
        self._out: deque[bytes] = deque()  # answer bytes the window has not let out yet
        self.queued = 0  # their size
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._writer: asyncio.Future[None] | None = None
        self.ending = False  # end() or trailers() called: END_STREAM follows the queue
        self._ended = False  # END_STREAM sent
        self.no_body = False  # HEAD, 204, 304: DATA would be a protocol error
        self.gone = False  # reset (by either side) or the connection lost
        self.done = False  # handled() called

    # -- the request ---------------------------------------------------------------

    @property
    def local(self) -> str:
        return self.conn.local

    @property
    def client_connected(self) -> bool:
        return not self.gone and self.conn.open

    def handled(self) -> None:
        self.conn.done(self)

    # -- the response --------------------------------------------------------------

    def _head(
        self,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        length: int | None,
        keep_length: bool,
        drop: frozenset[bytes] | None,
        raw: bytes,
    ) -> list[Any]:
        # list[Any]: a never-indexed field must stay an hpack HeaderTuple (a
        # native tuple type would drop the subclass under mypyc).
        out: list[Any] = [(b":status", _STATUS.get(status) or b"%d" % status)]
        has_date = False
        for name, value in headers:
            lname, kind = field_name(name)
            if kind == _SPECIFIC or (drop is not None and lname in drop):
                continue
            if kind == _LENGTH:
                if not keep_length:
                    continue
            elif kind == _DATE:
                has_date = True
            out.append((lname, value))
        if raw:
            for name, value in raw_fields(raw):
                lname, kind = field_name(name)
                if kind != _SPECIFIC:
                    out.append((lname, value))
        if length is not None and not keep_length:
            out.append((b"content-length", b"%d" % length))
        if not has_date:
            out.append((b"date", self.conn.front.date()))
        return out

    def respond(
        self,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        reason: str = "",
        drop: frozenset[bytes] | None = None,
        raw: bytes = b"",
    ) -> None:
        if self.gone:
            raise ClientGone("the client reset the stream")
        self.started = True
        if self.method == "HEAD" or status in _NO_BODY:
            self.no_body = True
            head = self._head(status, headers, None, True, drop, raw)
            body = b""
        else:
            head = self._head(status, headers, len(body), False, drop, raw)
        self.finished = True
        self.ending = True
        self.sent = len(body)
        if body:
            self._out.append(body)
            self.queued = len(body)
        self.conn.send_head(self, head, not body)

    def start(
        self,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        length: int | None,
        reason: str = "",
        drop: frozenset[bytes] | None = None,
        raw: bytes = b"",
    ) -> None:
        if self.gone:
            raise ClientGone("the client reset the stream")
        if status < 200:  # informational: a head of its own, the real one follows
            self.conn.send_head(self, self._head(status, headers, None, True, drop, raw), False)
            return
        self.started = True
        if self.method == "HEAD" or status in _NO_BODY:
            self.no_body = True
            head = self._head(status, headers, None, True, drop, raw)
        else:
            head = self._head(status, headers, length, False, drop, raw)
        self.conn.send_head(self, head, False)

    async def write(self, data: bytes) -> None:
        if self.gone:
            raise ClientGone("the client reset the stream")
        if not data or self.no_body:
            return
        self.sent += len(data)
        self._out.append(data)
        self.queued += len(data)
        conn = self.conn
        conn.push(self)
        if self.queued or conn.write_paused:
            fut = conn.loop.create_future()
            self._writer = fut
            try:
                await fut
            finally:
                self._writer = None

    def writable(self, exc: BaseException | None = None) -> None:
        """The connection took the queue (or the stream is gone: `exc`)."""
        w = self._writer
        if w is not None and not w.done():
            if exc is not None:
                w.set_exception(exc)
            else:
                w.set_result(None)

    def trailers(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        if self.gone or not headers:
            return
        trailers: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            lname, kind = field_name(name)
            if kind != _SPECIFIC:
                trailers.append((lname, value))
        self._trailers = trailers
        self.end()

    def end(self) -> None:
        self.finished = True
        if not self.ending and not self.gone:
            self.ending = True
            self.conn.push(self)

    def abort(self) -> None:
        """Reset the stream: an answer that cannot be completed honestly."""
        self.conn.reset(self, cancel=not self.started)

    # -- what the connection drains ----------------------------------------------------

    def take(self, limit: int) -> bytes:
        """Up to `limit` queued bytes."""
        out = self._out
        chunk = out[0]
        if len(chunk) <= limit:
            out.popleft()
        else:
            out[0] = chunk[limit:]
            chunk = chunk[:limit]
        self.queued -= len(chunk)
        return chunk

    @property
    def trailer_fields(self) -> list[tuple[bytes, bytes]] | None:
        return self._trailers

    @property
    def ended(self) -> bool:
        """END_STREAM is sent."""
        return self._ended

    def mark_ended(self) -> None:
        self._ended = True

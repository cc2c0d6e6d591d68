"""Compiled by mypyc (pyproxyd/compiled.py).
The upstream HTTP/2 exchange: one request as one stream on a pooled
connection (h2pool.py), whatever protocol the client spoke.

The pipeline plans every request as an HTTP/1.1 head (proxy/prepare.py);
`h2_headers` translates it: the request line becomes :method and :path,
Host becomes :authority, hop-by-hop fields are dropped (`te: trailers` is
kept when the client asked for trailers or speaks gRPC: gRPC servers
require it), and a chunked body is unframed again into DATA frames.

The request body is sent by a task of its own while the response comes
back, so a stream may carry both directions at once (gRPC streaming). A
stream the upstream refused, or one above a GOAWAY's last-stream-id, never
reached it: it is sent again on another connection (its body replayed, up
to REPLAY_LIMIT), once, invisible to the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Final

from pyproxyd._vendor.hpack import NeverIndexedHeaderTuple

from .. import errors
from ..forwarding import REPEATED_FIELDS
from ..framing import field_value
from .h2conn import H2Stream, H2UpstreamConnection, StreamError
from .h2pool import H2Pool
from .h2response import H2Response
from .http1 import ReplayBody
from .pool import Multiplexed

# Never sent upstream on HTTP/2 (RFC 9113 8.2.2); Host becomes :authority.
CONNECTION_SPECIFIC: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"te",
        b"http2-settings",
        b"trailer",
    }
)
# Sent as never-indexed literals (RFC 7541 7.1.3), which hpack_plain.PlainEncoder
# also keeps out of its per-process cache of encoded fields.
SENSITIVE: Final = frozenset({b"authorization", b"proxy-authorization"})
# Tries of one request on one target when streams are refused (GOAWAY, REFUSED_STREAM).
STREAM_TRIES: Final = 3

_GRPC_UNITS: Final = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_grpc_timeout(value: str) -> float | None:
    """Seconds of a `grpc-timeout` value ("1S", "250m", up to 8 digits); None if invalid."""
    value = value.strip()
    digits, unit = value[:-1], value[-1:]
    if not (0 < len(digits) <= 8 and digits.isdigit()) or unit not in _GRPC_UNITS:
        return None
    return int(digits) * _GRPC_UNITS[unit]


def grpc_timeout(seconds: float) -> bytes:
    """A `grpc-timeout` value for `seconds` (at most 8 digits, rounded up)."""
    millis = max(1, int(seconds * 1000 + 0.999))
    if millis < 10**8:
        return b"%dm" % millis
    return b"%dS" % min(10**8 - 1, int(seconds + 0.999))


# What a field name of a planned head becomes on HTTP/2 (name_kind):
_PLAIN: Final = 0  # sent, lower-cased
_HOST: Final = 1  # :authority
_FRAMING: Final = 2  # transfer-encoding: tells whether the body is chunked; not sent
_DROPPED: Final = 3  # connection-specific
_TIMEOUT: Final = 4  # grpc-timeout: replaced when the gateway sets a deadline
_SENSITIVE: Final = 5  # a never-indexed literal
# Names seen so far (as written in the head), at most KINDS_KEPT of at most
# KIND_NAME_BYTES each, then it starts again empty: a head repeats the names of
# the heads before it, and a lookup is cheaper than strip().lower() and three
# set lookups.
KINDS_KEPT: Final = 1024
KIND_NAME_BYTES: Final = 64
_KINDS: Final[dict[bytes, tuple[bytes, int]]] = {}


def name_kind(name: bytes) -> tuple[bytes, int]:
    """(the lower-case name, what becomes of the field) of a head's field name."""
    kinds = _KINDS
    entry = kinds.get(name)
    if entry is not None:
        return entry
    lname = name.strip().lower()
    if lname == b"host":
        kind = _HOST
    elif lname == b"transfer-encoding":
        kind = _FRAMING
    elif lname in CONNECTION_SPECIFIC:
        kind = _DROPPED
    elif lname == b"grpc-timeout":
        kind = _TIMEOUT
    elif lname in SENSITIVE:
        kind = _SENSITIVE
    else:
        kind = _PLAIN
    entry = (lname, kind)
    if len(name) <= KIND_NAME_BYTES:
        if len(kinds) >= KINDS_KEPT:
            kinds.clear()
        kinds[name] = entry
    return entry


# Whole field lines seen so far -> (the field as sent, its name's kind), at most
# LINES_KEPT of at most LINE_BYTES each, then it starts again empty: a head
# repeats most lines of the heads before it (content-type, te, user-agent, the
# X-Forwarded-* lines the gateway writes), and a hit is one lookup where a miss
# slices, trims and looks the name up. Only lines of forwarding.REPEATED_FIELDS
# are kept: one whose value changes from request to request would only churn
# it, and a credential must not outlive its request. The fields are immutable
# pairs, shared by the lists they go into.
LINES_KEPT: Final = 1024
LINE_BYTES: Final = 128
_LINES: Final[dict[bytes, tuple[Any, int]]] = {}  # (Any: a NeverIndexedHeaderTuple keeps its class)


def _field(line: bytes) -> tuple[Any, int]:
    """(the field to send, its name's kind) of one field line of a head."""
    colon = line.find(b":")
    if colon < 0:
        name = line
        value = b""
    else:
        name = line[:colon]
        value = field_value(line, colon + 1)
    lname, kind = name_kind(name)
    if kind == _SENSITIVE:
        return NeverIndexedHeaderTuple(lname, value), kind
    return (lname, value), kind


def h2_headers(
    head: bytes, scheme: bytes, te_trailers: bool, timeout: bytes | None
) -> tuple[list[tuple[bytes, bytes]], bool]:
    """(HTTP/2 header list, body chunked) of an HTTP/1.1 request head.

    `timeout`: a grpc-timeout value that replaces the client's (or is added).
    """
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    authority = b""
    chunked = False
    headers: list[Any] = [(b":method", method), (b":scheme", scheme), (b":authority", authority),
                          (b":path", target)]  # fmt: skip
    if te_trailers:
        headers.append((b"te", b"trailers"))
    if timeout is not None:
        headers.append((b"grpc-timeout", timeout))
    kept = _LINES
    for i in range(1, len(lines)):
        line = lines[i]
        if not line:
            continue
        entry = kept.get(line)
        if entry is None:
            entry = _field(line)
            if len(line) <= LINE_BYTES and entry[0][0] in REPEATED_FIELDS:
                if len(kept) >= LINES_KEPT:
                    kept.clear()
                kept[line] = entry
        field, kind = entry
        if kind in (_PLAIN, _SENSITIVE):
            headers.append(field)
        elif kind == _HOST:
            authority = field[1]
        elif kind == _FRAMING:
            chunked = field[1].lower().endswith(b"chunked")
        elif kind == _TIMEOUT and timeout is None:
            headers.append(field)
    headers[2] = (b":authority", authority)
    return headers, chunked


def unchunk(piece: bytes) -> bytes:
    """The data of one piece of bodies.chunked(): exactly one chunk each."""
    end = piece.index(b"\r\n")
    size = int(piece[:end], 16)
    return piece[end + 2 : end + 2 + size]


class _Refused(Exception):
    """The stream never reached the upstream (refused, above a GOAWAY)."""


class BodyPump:
    """The request body, sent by a task of its own on the current stream.

    When a stream is refused, `attach()` gives it the next one: what was
    consumed so far is sent again first (kept up to REPLAY_LIMIT)."""

    def __init__(self, body: AsyncIterator[bytes], chunked: bool, timeout: float) -> None:
        self.body = ReplayBody(body)  # what was sent, kept for a stream that is refused
        self.chunked = chunked
        self.timeout = timeout  # for an upstream that keeps its window shut
        self.error: errors.GatewayError | None = None  # the client's side failed
        self.stream: H2Stream | None = None
        self.conn: H2UpstreamConnection | None = None  # the stream's
        self.task: asyncio.Task[None] | None = None
        self._attached: asyncio.Future[None] | None = None

    def attach(self, conn: H2UpstreamConnection, stream: H2Stream) -> None:
        self.stream, self.conn = stream, conn
        task = self.task
        if task is None or task.done():
            # The first stream, or the body was all sent before the stream was refused.
            self.task = conn.loop.create_task(self._run(replay=task is not None))
        elif self._attached is not None and not self._attached.done():
            self._attached.set_result(None)

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def _next(self) -> bytes | None:
        body = self.body
        piece = await body.next(record=False)
        if piece is None:
            return None
        data = unchunk(piece) if self.chunked else piece
        if not data and self.chunked:
            body.done = True  # the last-chunk
            return None
        body.keep(data)  # kept de-chunked: a replay goes out as DATA frames
        return data

    async def _run(self, replay: bool) -> None:
        while True:
            stream, conn = self.stream, self.conn
            assert stream is not None and conn is not None
            try:
                if replay:
                    for chunk in self.body.sent:
                        await conn.send_data(stream, chunk, self._deadline(conn))
                while not self.body.done:
                    data = await self._next()
                    if data:
                        await conn.send_data(stream, data, self._deadline(conn))
                conn.end_stream(stream)
                return
            except TimeoutError:
                conn.reset(stream)
                stream.fail(f"upstream kept its flow-control window shut for {self.timeout:g}s")
                return
            except StreamError:
                pass
            except errors.GatewayError as exc:
                self.error = exc
                conn.reset(stream)
                stream.fail(exc.detail)
                return
            if self.body.overflow or not stream.refused:
                return  # the exchange reports the stream's failure
            replay = True
            if self.stream is stream:
                self._attached = conn.loop.create_future()
                await self._attached

    def _deadline(self, conn: H2UpstreamConnection) -> float:
        return conn.loop.time() + self.timeout


class _Once:
    """One chunk as a body (a whole body the windows could not take at once)."""

    def __init__(self, data: bytes) -> None:
        self.data: bytes | None = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        data = self.data
        if data is None:
            raise StopAsyncIteration
        self.data = None
        return data


async def exchange(
    pool: H2Pool,
    headers: list[tuple[bytes, bytes]],
    pump: BodyPump | None,
    timeout: float,
    whole: bytes | None = None,
) -> H2Response:
    """Send one request as a stream; return once the response head is in.

    `whole`: the body, all of it in already (then `pump` is None): it goes
    with the HEADERS when the windows allow, else by a pump like any body.
    Raises UpstreamConnectError for what never reached the upstream (safe to
    try elsewhere), BadGateway / UpstreamTimeout otherwise."""
    tries = 0
    while True:
        tries += 1
        conn = await pool.acquire()
        try:
            stream = conn.open_stream(headers, pump is None and not whole, whole or b"")
        except StreamError as unopened:
            pool.release(conn)
            if tries < STREAM_TRIES:
                continue
            _cancel(pump)
            raise errors.UpstreamConnectError(str(unopened)) from None
        if whole and not stream.local_closed:  # the windows took only part of it
            pump = BodyPump(_Once(whole), False, timeout)
            whole = None  # the pump has it now, for the tries after too
        if pump is not None:
            pump.attach(conn, stream)
        try:
            await _head(conn, stream, pump, timeout)
        except _Refused as exc:
            conn.forget(stream)
            pool.release(conn)
            if tries < STREAM_TRIES and (pump is None or not pump.body.overflow):
                continue
            _cancel(pump)
            if pump is not None and pump.body.size:
                # Never processed, but the body is spent: no other target can have it.
                err = errors.BadGateway(f"{exc} (not sent again)")
                err.response_started = False
                raise err from None
            raise errors.UpstreamConnectError(f"{exc} (not sent again)") from None
        except BaseException:
            # A failure, a timeout or a cancel (the client left): the stream is
            # reset with CANCEL, so the upstream stops working on it.
            conn.reset(stream)
            conn.forget(stream)
            pool.release(conn)
            _cancel(pump)
            raise
        return H2Response(pool, conn, stream, pump, timeout)


def _cancel(pump: BodyPump | None) -> None:
    if pump is not None:
        pump.cancel()


async def _head(
    conn: H2UpstreamConnection, stream: H2Stream, pump: BodyPump | None, timeout: float
) -> None:
    deadline = conn.loop.time() + timeout
    while not stream.head_done:
        if pump is not None and pump.error is not None:
            raise pump.error
        if stream.error is not None:
            if stream.refused:
                raise _Refused(stream.error)
            err = errors.BadGateway(stream.error)
            err.response_started = False
            raise err
        if not await stream.wait(deadline):
            raise errors.UpstreamTimeout(
                f"upstream sent no response head within {timeout:g}s (read_timeout)"
            )


async def send(
    multiplexed: Multiplexed,
    head: bytes,
    body: AsyncIterator[bytes] | None,
    *,
    whole: bytes | None = None,
    te_trailers: bool,
    grpc_deadline: float | None,
    read_timeout: float | None,
) -> H2Response:
    """exchange() for a planned HTTP/1.1 head (proxy/forward.py), on a
    TargetPool's HTTP/2 side."""
    pool = multiplexed
    assert isinstance(pool, H2Pool)
    timeout = pool.settings.read_timeout if read_timeout is None else read_timeout
    grpc = None
    if grpc_deadline is not None:
        grpc = grpc_timeout(grpc_deadline - asyncio.get_running_loop().time())
    scheme = b"https" if pool.ssl is not None else b"http"
    headers, chunked = h2_headers(head, scheme, te_trailers, grpc)
    pump = BodyPump(body, chunked, timeout) if body is not None else None
    return await exchange(pool, headers, pump, timeout, whole)

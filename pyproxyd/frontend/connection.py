"""Compiled by mypyc (pyproxyd/compiled.py).

The client side of HTTP/1.1: an asyncio.Protocol fed to httptools (llhttp).

aiohttp's server did this job until the profile showed that its request and
response objects cost more than everything the gateway does per request. This
keeps only what a proxy needs: the raw head, a streamed body with flow control,
a response written with one `transport.write`, keep-alive and pipelining in
order, client_header_timeout and keepalive_timeout, errors as the JSON of
docs/behaviour.md, and a raw byte tunnel after a WebSocket upgrade.

Timeouts are not one timer per request: each connection keeps a deadline and
`Frontend` sweeps them a few times a second, so a request costs no timer at all.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from email.utils import formatdate
from time import time

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)

from .. import errors, framing
from ..errors import ClientGone
from ..observe.logging import get_logger
from ..sockets import half_close
from ..tracing import new_id
from .request import ClientRequest, RequestBody, reason_for, status_line

log = get_logger("pyproxyd.server")

# Takes a request and answers it, now or later: with callbacks or a task of
# its own, as it likes. It calls `request.conn.done(request)` at the end, and
# sets `request.cancel` to hear of a client that leaves before that.
Handler = Callable[[ClientRequest], None]
# Told of every request the frontend answers itself (malformed, too large, a
# stalled body), so that it is logged and counted as the handler's are:
# (method or "", raw target or "", peer, the error, its request id).
Refused = Callable[[str, str, str, errors.GatewayError, str], None]
# Takes a connection over for HTTP/2 (frontend/http2): (transport, secure,
# peer, local address, the bytes read so far).
TakeOver = Callable[[asyncio.Transport, bool, str, str, bytes], None]
# The h2c connection preface (RFC 9113 3.4): a plain connection that opens
# with it speaks HTTP/2 with prior knowledge.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Request headers the proxy reads on every request (ClientRequest.picked).
# Content-Type tells a gRPC call, whose errors are gRPC statuses.
PICKED = frozenset({b"host", b"x-request-id", b"traceparent", b"x-forwarded-for", b"content-type"})
_PICK_LENGTHS = frozenset(len(n) for n in PICKED)

_HEADER, _IDLE, _LINGER, _BODY = 1, 2, 3, 4
# After the gateway decides to close, it still reads (and drops) what the
# client sends for this long, so that a response is not destroyed by the RST
# a close with unread data causes (nginx's lingering_close).
_LINGER_TIME = 2.0
# Pipelined requests parsed ahead of the one being answered; more pause reading.
_QUEUE_LIMIT = 8


class _TooLarge(Exception):
    """A request line or header line over max_header_size."""


class _Refused(Exception):
    """Raised in a parser callback: the request is answered with `error`."""

    def __init__(self, error: errors.GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


class Frontend:
    """The protocol factory of the client listeners, and what they share:
    settings, the open connections, the deadline sweep and the Date header."""

    # (set by configure(), at start and on every reload)
    header_timeout: float
    keepalive_timeout: float
    body_timeout: float
    max_line: int
    max_head: int
    _interval: float

    def __init__(
        self,
        handler: Handler,
        *,
        header_timeout: float,
        keepalive_timeout: float,
        max_header_size: int,
        body_timeout: float = 60.0,
        refused: Refused | None = None,
    ) -> None:
        self.handler = handler
        self.refused = refused
        # Set while server.http2 is on: ALPN "h2" and the h2c preface go there.
        self.http2: TakeOver | None = None
        self.connections: set[ClientConnection] = set()
        self.loop = asyncio.get_running_loop()
        self._date_at = 0
        self._date = b""
        self._sweep_handle: asyncio.TimerHandle | None = None
        self.configure(header_timeout, keepalive_timeout, body_timeout, max_header_size)

    def configure(
        self,
        header_timeout: float,
        keepalive_timeout: float,
        body_timeout: float,
        max_header_size: int,
    ) -> None:
        """New client settings (a reload): connections use them from their next
        deadline or head on."""
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.body_timeout = body_timeout
        self.max_line = max_header_size
        # Everything before the body, all lines together (nginx: 4 x 8k buffers).
        self.max_head = max(64 * 1024, 4 * max_header_size)
        shortest = min(t for t in (header_timeout, keepalive_timeout, body_timeout, 4.0) if t > 0)
        self._interval = min(1.0, max(0.05, shortest / 5))

    def protocol(self, secure: bool) -> Callable[[], ClientConnection]:
        return lambda: ClientConnection(self, secure)

    def date_line(self) -> bytes:
        now = int(time())
        if now != self._date_at:
            self._date_at = now
            self._date = f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self._date

    def start(self) -> None:
        self._sweep_handle = self.loop.call_later(self._interval, self._sweep)

    def stop(self) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in [c for c in self.connections if c.deadline and c.deadline <= now]:
            conn.expire()
        self._sweep_handle = self.loop.call_later(self._interval, self._sweep)


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_active",
        "_auths",
        "_broken",
        "_clen",
        "_closing",
        "_connection",
        "_deadline_kind",
        "_dispatching",
        "_drain_waiter",
        "_draining",
        "_early",
        "_expect",
        "_head_bytes",
        "_head_size",
        "_hosts",
        "_in_head",
        "_lingering",
        "_parsing",
        "_paused",
        "_picked",
        "_queue",
        "_raw",
        "_sniff",
        "_sniffed",
        "_te",
        "_te_value",
        "_tunnel",
        "_tunnel_eof",
        "_tunnel_lost",
        "_upgraded",
        "_url",
        "deadline",
        "front",
        "local",
        "loop",
        "on_writable",
        "parser",
        "peer",
        "secure",
        "transport",
        "write_paused",
    )

    def __init__(self, front: Frontend, secure: bool) -> None:
        self.front = front
        self.loop = front.loop
        self.secure = secure
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.local = ""
        self.parser = HttpRequestParser(self)
        self.deadline = 0.0
        self._deadline_kind = 0
        self.write_paused = False
        self.on_writable: Callable[[bool], None] | None = None  # the tunnel's flow control
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused: set[str] = set()  # why reading is paused: "body", "queue", "tunnel"
        self._in_head = False
        self._head_bytes = 0  # raw bytes of a head still incomplete after a read
        self._head_size = 0  # parsed bytes of the current head
        self._broken = False  # the byte stream is unparseable: nothing more is read
        self._url = b""
        self._raw: list[tuple[bytes, bytes]] = []
        self._picked: dict[bytes, bytes] = {}
        self._clen: int | None = None
        self._te = False
        self._te_value = b""
        self._connection: bytes | None = None
        self._hosts = 0
        self._auths = 0
        self._expect = False
        self._parsing: ClientRequest | None = None  # the request whose body is arriving
        self._active: ClientRequest | None = None  # the request being answered
        self._dispatching = False
        self._queue: deque[ClientRequest | errors.GatewayError] = deque()
        self._closing = False  # answer what is in, then close
        self._draining = False
        self._upgraded = False
        self._lingering = False
        self._early: list[bytes] = []
        self._tunnel: Callable[[bytes], None] | None = None
        self._tunnel_eof: Callable[[], None] | None = None
        self._tunnel_lost: Callable[[], None] | None = None
        self._sniff = False  # the first bytes may be the h2c preface
        self._sniffed = b""  # the part of the preface read so far

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0])
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            host = str(local[0])
            self.local = f"[{host}]:{local[1]}" if ":" in host else f"{host}:{local[1]}"
        self._set_deadline(_HEADER)
        self.front.connections.add(self)
        if self.front.http2 is not None:
            if not self.secure:
                self._sniff = True
            else:
                tls = transport.get_extra_info("ssl_object")
                if tls is not None and tls.selected_alpn_protocol() == "h2":
                    self._hand_over(b"")

    def data_received(self, data: bytes) -> None:
        if self._sniff:
            data = self._h2c(data)
            if not data:
                return
        if self._lingering:
            return
        if self._upgraded:
            if self._tunnel is not None:
                self._tunnel(data)
            elif self._closing:
                return
            else:
                self._early.append(data)
            return
        if self._broken or (self._closing and self._active is None and not self._queue):
            return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            self._upgraded = True
            rest = data[upgrade.args[0] :] if upgrade.args else b""
            if rest:
                self._early.append(rest)
            return
        except HttpParserCallbackError as failed:
            cause = failed.__context__
            if isinstance(cause, _TooLarge):
                self._refuse(errors.HeadersTooLarge())
            elif isinstance(cause, _Refused):
                self._refuse(cause.error)
            else:
                if not isinstance(cause, (ValueError, UnicodeError)):
                    log.error("internal_error", error=repr(cause))
                self._refuse(errors.BadRequest(f"malformed request: {cause or failed}"[:200]))
            return
        except HttpParserError as exc:
            self._refuse(errors.BadRequest(f"malformed request: {exc}"[:200]))
            return
        if self._in_head:
            # Bytes of a head that is still incomplete: bound the whole of it,
            # and give the rest of it client_header_timeout to arrive.
            self._head_bytes += len(data)
            if self._head_bytes > self.front.max_head:
                self._refuse(errors.HeadersTooLarge())
            elif self._deadline_kind != _HEADER:
                self._set_deadline(_HEADER)
        elif self._parsing is not None:
            # client_body_timeout runs between two reads of the body (nginx).
            self._set_deadline(_BODY)

    def _h2c(self, data: bytes) -> bytes:
        """The first bytes of a plain connection: the h2c preface hands it to
        HTTP/2; anything else (one byte told it, for nearly every request) is
        HTTP/1.1 as ever."""
        if self._sniffed:
            data = self._sniffed + data
            self._sniffed = b""
        if data[:1] != b"P":
            self._sniff = False
            return data
        if len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
            self._sniffed = data  # (client_header_timeout still runs)
            return b""
        self._sniff = False
        if data.startswith(H2_PREFACE) and self.front.http2 is not None:
            self._hand_over(data)
            return b""
        return data

    def _hand_over(self, data: bytes) -> None:
        take = self.front.http2
        transport = self.transport
        if take is None or transport is None:
            return
        self.front.connections.discard(self)
        self.deadline = 0.0
        self._broken = True  # (nothing reaches this protocol from here on)
        self.transport = None
        take(transport, self.secure, self.peer, self.local, data)

    def eof_received(self) -> bool | None:
        if self._lingering:
            return False
        if self._upgraded and self._tunnel_eof is not None:
            self._tunnel_eof()
            return True
        # A client that stops sending has left, as for nginx (499): closing
        # cancels the request in flight, and a delayed one frees its slot.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.deadline = 0.0
        self.front.connections.discard(self)
        gone = ClientGone("the client closed the connection")
        parsing = self._parsing
        if parsing is not None and parsing.body is not None:
            parsing.body.fail(gone)
        for item in self._queue:
            if isinstance(item, ClientRequest) and item.body is not None:
                item.body.fail(gone)
        self._queue.clear()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(gone)
        self._drain_waiter = None
        active = self._active
        if active is not None and not active.finished and active.cancel is not None:
            active.cancel()  # the handler learns that its client left (nginx's 499)
        if self._tunnel_lost is not None:
            self._tunnel_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.on_writable is not None:
            self.on_writable(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self.on_writable is not None:
            self.on_writable(True)

    # -- httptools callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._head_size = 0
        self._url = b""
        self._raw = []
        self._picked = {}
        self._clen = None
        self._te = False
        self._te_value = b""
        self._connection = None
        self._hosts = 0
        self._auths = 0
        self._expect = False
        # (client_header_timeout starts in data_received if the head is not whole)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.front.max_line:
            raise _TooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        n = len(name)
        size = n + len(value) + 2
        if size > self.front.max_line:
            raise _TooLarge
        # The whole head is bounded too, however the reads cut it.
        self._head_size += size
        if self._head_size > self.front.max_head:
            raise _TooLarge
        if name.find(b"_") >= 0:
            # Dropped, as nginx does (underscores_in_headers off): a CGI/WSGI
            # backend reads X_User_ID as X-User-ID, a forged identity header.
            # (find, not `in`: bytes.__contains__ first tries the operand as an
            # int and builds a TypeError message each time: perf showed it.)
            return
        self._raw.append((name, value))
        # The names that matter here, told apart by length first: 14, 17, 6,
        # 10 and 13 (framing, Expect, Connection, Authorization).
        if n == 14 and name.lower() == b"content-length":
            self._clen = int(value)
        elif n == 17 and name.lower() == b"transfer-encoding":
            self._te = True
            self._te_value = self._te_value + b"," + value if self._te_value else value
        elif n == 6 and name.lower() == b"expect":
            self._expect = value.strip().lower() == b"100-continue"
        elif n == 10 and name.lower() == b"connection":
            c = self._connection
            self._connection = value if c is None else c + b"," + value
        elif n == 13 and name.lower() == b"authorization":
            self._auths += 1
        elif n in _PICK_LENGTHS and (lname := name.lower()) in PICKED:
            # The few headers every request reads, kept apart so that most
            # requests never build a header mapping. Repeats join with ", ".
            picked = self._picked
            if n == 4:
                self._hosts += 1
            picked[lname] = picked[lname] + b", " + value if lname in picked else value

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        version = parser.get_http_version()
        if self._hosts != 1 or self._auths > 1 or self._te or self._connection is not None:
            # (the common head has one Host and nothing else to judge: no call)
            problem = framing.request_problem(
                version,
                self._hosts,
                self._auths,
                self._te_value if self._te else None,
                self._connection,
            )
            if problem is not None:
                raise _Refused(problem)
        url = self._url
        if url and url[0] != 47 and url[:4].lower() == b"http":  # 47: "/"
            url = self._origin_form(url)
        upgrade = parser.should_upgrade()
        clen = None if self._te else self._clen
        body = None
        if not upgrade and (self._te or (clen or 0) > 0):
            body = RequestBody(self, self._expect)
        req = ClientRequest(
            self,
            parser.get_method().decode("ascii", "replace"),
            url.decode("latin-1"),
            version,
            self._raw,
            self._picked,
            parser.should_keep_alive(),
            body,
            upgrade,
            clen,
        )
        self._parsing = req if body is not None else None
        if body is not None:
            self._set_deadline(_BODY)
        else:
            self.deadline = 0.0
            self._deadline_kind = 0
        self._submit(req)

    def _origin_form(self, url: bytes) -> bytes:
        """An absolute-form target (`GET http://host/path HTTP/1.1`) as the
        path it names. RFC 9112 3.2.2: a server must accept it, and its
        authority replaces the Host header."""
        scheme, sep, rest = url.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            raise _Refused(errors.BadRequest("the request target is neither a path nor a URL"))
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        authority, path = rest[:cut], rest[cut:]
        if not authority or b"@" in authority:
            raise _Refused(errors.BadRequest("the request target's authority is not a host"))
        self._picked[b"host"] = authority
        return path if path[:1] == b"/" else b"/" + path

    def on_body(self, data: bytes) -> None:
        req = self._parsing
        if req is not None and req.body is not None:
            req.body.feed(data)

    def on_message_complete(self) -> None:
        req = self._parsing
        if req is not None and req.body is not None:
            req.body.feed_eof()
            if self._deadline_kind == _BODY:
                self.deadline = 0.0
                self._deadline_kind = 0
        self._parsing = None

    # -- requests in order ---------------------------------------------------------

    def _submit(self, item: ClientRequest | errors.GatewayError) -> None:
        self._queue.append(item)
        if self._active is None and not self._dispatching:
            self._dispatch()
        if len(self._queue) > _QUEUE_LIMIT:
            self._pause("queue")

    def _dispatch(self) -> None:
        """Hand queued requests to the handler in order, one at a time.

        No task of its own: most requests are answered by callbacks (the
        proxy's fast path), and a task parked on every idle connection cost
        1.4 KiB each (scripts/bench/idle_conns.py).
        """
        queue = self._queue
        handler = self.front.handler
        self._dispatching = True
        try:
            while (
                queue
                and self._active is None
                and self.transport is not None
                and not self._lingering
            ):
                item = queue.popleft()
                if len(queue) <= _QUEUE_LIMIT:
                    self._resume("queue")
                if isinstance(item, errors.GatewayError):
                    self._send_error(item, None)
                    return
                self._active = item
                try:
                    handler(item)
                except Exception as exc:  # the handler's own net failed: still no traceback out
                    self._active = None
                    if item.started or self.transport is None:
                        self.abort()
                        return
                    log.error("internal_error", error=repr(exc))
                    self._send_error(errors.GatewayError(), item)
                    return
        finally:
            self._dispatching = False

    def done(self, item: ClientRequest) -> None:
        """The handler is through with `item`: keep the connection or close it,
        and go on with the next request."""
        if self._active is not item:
            return
        self._active = None
        item.cancel = None
        if self.transport is None:
            return
        if not item.finished:
            self.abort()  # the handler gave up on a response it had started
            return
        if item.close_after or item.upgrade:
            self.close()
            return
        if self._queue:
            if not self._dispatching:
                self._dispatch()
            return
        if self._closing or self._draining:
            self.close()
            return
        if not self._in_head:
            self._set_deadline(_IDLE)

    def _refuse(self, err: errors.GatewayError) -> None:
        """The byte stream is broken: answer what came before, then this, then close."""
        if self._lingering:
            # Already answered and closing (Connection: close answered while the
            # parser still held what followed): those bytes are not requests.
            return
        self._broken = True
        self._upgraded = False
        self._in_head = False
        parsing = self._parsing
        self._parsing = None
        if parsing is not None and parsing.body is not None:
            # Broken or stalled mid-body: the request it belongs to fails (its
            # handler answers), and no second response follows.
            parsing.body.fail(err)
            return
        if self._active is None and not self._queue:
            self._send_error(err, None)
        else:
            self._submit(err)
            self._pause("queue")

    def _send_error(self, err: errors.GatewayError, req: ClientRequest | None) -> None:
        rid = new_id()
        refused = self.front.refused
        if refused is not None:
            method = req.method if req is not None else self._method()
            target = req.raw_path if req is not None else self._url.decode("latin-1")
            try:
                refused(method, target, self.peer, err, rid)
            except Exception as exc:  # bookkeeping must not cost the answer
                log.error("internal_error", error=repr(exc))
        body = errors.render(err, rid)
        lines = [
            f"HTTP/1.1 {err.status} {reason_for(err.status)}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Request-ID: {rid}\r\nConnection: close\r\n",
            *(f"{n}: {v}\r\n" for n, v in err.headers.items()),
        ]
        head = "".join(lines).encode("latin-1", "replace") + self.front.date_line() + b"\r\n"
        if req is not None and req.method == "HEAD":
            body = b""
        self.write(head + body)
        self.close()

    def _method(self) -> str:
        try:
            return self.parser.get_method().decode("ascii", "replace")
        except HttpParserError:
            return ""  # the request line itself was what broke

    # -- writing -------------------------------------------------------------------

    def head(
        self,
        req: ClientRequest,
        status: int,
        reason: str,
        headers: Sequence[tuple[bytes, bytes]],
        length: int | None,
        *,
        keep_length: bool,
        drop: frozenset[bytes] | None = None,
        raw: bytes = b"",
    ) -> bytes:
        """The status line and headers, with the framing and Connection this
        connection needs. `keep_length` passes a Content-Length through (HEAD, 304).
        `drop`: lower-case names left out of `headers` (an upstream's, filtered
        in the same pass); `raw`: header lines already rendered, added as they are."""
        keep = (
            req.keep_alive
            and not self._closing
            and not self._draining
            and (req.body is None or req.body.eof)
            and (not req.upgrade or status == 101)
        )
        lines = [status_line(status, reason)]
        has_date = False
        for name, value in headers:
            n = len(name)
            if drop is not None or n == 14 or n == 4:
                lname = name.lower()
                if drop is not None and lname in drop:
                    continue
                if lname == b"content-length":
                    if not keep_length:
                        continue
                elif lname == b"date":
                    has_date = True
            lines.append(b"%s: %s\r\n" % (name, value))
        if raw:
            lines.append(raw)
        if not keep_length:
            if length is not None:
                lines.append(b"Content-Length: %d\r\n" % length)
            elif req.version == "1.1":
                lines.append(b"Transfer-Encoding: chunked\r\n")
                req.chunked_out = True
            else:
                keep = False  # HTTP/1.0: the body ends where the connection does
        if status != 101:
            if not keep:
                lines.append(b"Connection: close\r\n")
            elif req.version == "1.0":
                lines.append(b"Connection: keep-alive\r\n")
        req.close_after = not keep and status != 101
        if not has_date:
            lines.append(self.front.date_line())
        lines.append(b"\r\n")
        return b"".join(lines)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            raise ClientGone("the client closed the connection")
        transport.write(data)

    async def drain(self) -> None:
        if not self.write_paused:
            return
        if self.transport is None:
            raise ClientGone("the client closed the connection")
        fut = self.loop.create_future()
        self._drain_waiter = fut
        await fut

    def send_continue(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- reading -------------------------------------------------------------------

    def _pause(self, why: str) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(why)

    def _resume(self, why: str) -> None:
        if why in self._paused:
            self._paused.discard(why)
            if not self._paused and self.transport is not None:
                self.transport.resume_reading()

    def pause_body(self) -> None:
        self._pause("body")

    def resume_body(self) -> None:
        self._resume("body")

    # -- the tunnel after an upgrade ---------------------------------------------

    def tunnel(
        self,
        sink: Callable[[bytes], None],
        on_eof: Callable[[], None],
        on_lost: Callable[[], None],
    ) -> list[bytes]:
        """Hand every later client byte to `sink`; returns what arrived already."""
        self._tunnel = sink
        self._tunnel_eof = on_eof
        self._tunnel_lost = on_lost
        early, self._early = self._early, []
        return early

    def pause_tunnel(self, paused: bool) -> None:
        if paused:
            self._pause("tunnel")
        else:
            self._resume("tunnel")

    # -- lifecycle -----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._active is not None or bool(self._queue)

    def _set_deadline(self, kind: int) -> None:
        if kind == _LINGER:
            timeout = _LINGER_TIME
        elif kind == _HEADER:
            timeout = self.front.header_timeout
        elif kind == _BODY:
            timeout = self.front.body_timeout
        else:
            timeout = self.front.keepalive_timeout
        self._deadline_kind = kind
        self.deadline = self.loop.time() + timeout if timeout > 0 else 0.0

    def expire(self) -> None:
        kind = self._deadline_kind
        self.deadline = 0.0
        self._deadline_kind = 0
        if kind == _HEADER and (self._in_head or not self.busy):
            self.close()  # client_header_timeout: no answer owed (nginx closes too)
        elif kind == _IDLE and not self.busy and not self._in_head:
            self.close()
        elif kind == _LINGER:
            self.abort()
        elif kind == _BODY and self._parsing is not None:
            body = self._parsing.body
            if self._paused or (body is not None and body.awaits_continue):
                # The wait is the gateway's (the handler is behind, or has not
                # asked for the body yet): not the client's to time out.
                self._set_deadline(_BODY)
            else:
                timeout = self.front.body_timeout
                self._refuse(errors.RequestTimeout(f"no request body byte for {timeout:g}s"))

    def drain_close(self) -> None:
        """Graceful stop: no further requests; close now if idle. A WebSocket
        tunnel or a request in flight keeps the connection until it ends."""
        self._draining = True
        if not self.busy:
            self.close()

    def close(self) -> None:
        """Send what is written, then FIN; read and drop until the client closes
        too (or _LINGER_TIME passes)."""
        transport = self.transport
        if transport is None or transport.is_closing() or self._lingering:
            return
        self._lingering = True
        self._closing = True
        if self.secure or not transport.can_write_eof():
            transport.close()
            return
        if not half_close(transport):
            return
        if self._paused:
            self._paused.clear()
            transport.resume_reading()
        self._set_deadline(_LINGER)

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()

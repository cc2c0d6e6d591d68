"""Compiled by mypyc (pyproxyd/compiled.py).
One HTTP/2 client connection: an asyncio.Protocol around h2's state machine.

The HTTP/1.1 frontend hands a connection over (ALPN "h2", or the h2c
preface on a plain port); from then on this protocol owns the transport.
h2 does the framing, HPACK and window arithmetic; this module decides what
the gateway promises on top (docs/behaviour.md, "HTTP/2 and gRPC"):

- each stream becomes an H2Request for the protocol-free pipeline;
- windows open only as the pipeline reads a body, and answers leave only as
  the client's windows allow (stream.py), so memory stays bounded both ways;
- max_concurrent_streams is enforced stream by stream (REFUSED_STREAM), a
  header list over the limit is answered 431, one far over it, endless
  CONTINUATION frames, rapid resets (guard.py) or bytes that are not HTTP/2
  end the connection with GOAWAY, and never with a traceback;
- idle and header timeouts close with GOAWAY; a graceful stop sends GOAWAY
  naming the last stream it will answer and closes once those are done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from pyproxyd._vendor.h2.config import H2Configuration
from pyproxyd._vendor.h2.connection import H2Connection
from pyproxyd._vendor.h2.errors import ErrorCodes
from pyproxyd._vendor.h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RemoteSettingsChanged,
    RequestReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from pyproxyd._vendor.h2.exceptions import H2Error, ProtocolError
from pyproxyd._vendor.h2.settings import SettingCodes, Settings
from pyproxyd._vendor.hyperframe.frame import GoAwayFrame

from ... import errors
from ...errors import ClientGone
from ...hpack_plain import PlainEncoder
from ...observe.logging import get_logger
from ...proxy.interface import Request
from ...sockets import half_close
from ...tracing import new_id
from .guard import ResetGuard
from .headers import parse_request
from .stream import H2Request, StreamBody

# (method, target, peer, error, request id, HTTP version): Proxy.refused
Refused = Callable[[str, str, str, errors.GatewayError, str, str], None]


class Front(Protocol):
    """What a connection reads of the frontend that made it (front.Http2Frontend)."""

    loop: asyncio.AbstractEventLoop
    connections: set[H2ClientConnection]
    handler: Callable[[Request], None]
    refused: Refused | None
    header_timeout: float
    keepalive_timeout: float
    body_timeout: float
    max_line: int
    max_head: int
    hard_list: int
    max_streams: int

    def guard(self) -> ResetGuard: ...

    def date(self) -> bytes: ...


log = get_logger("pyproxyd.server")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# What a client may send before the pipeline reads it: per stream, and for
# the whole connection (the bound on a connection's buffered request bodies).
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 1024 * 1024
_DEFAULT_WINDOW = 65535
_LINGER_TIME = 2.0
# DATA frames in a row that carry nothing and end nothing (CVE-2019-9518): a
# client may send a few, a flood of them costs work and says nothing.
EMPTY_FRAMES = 100
_IDLE, _LINGER = 1, 2

_CONFIG = H2Configuration(
    client_side=False,
    header_encoding=None,
    # headers.py checks a request's fields (one compiled pass, and a malformed
    # request is an error of its stream, not the connection's) and joins cookies.
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    # Names are lowered and connection-specific fields dropped in stream.py.
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


class _Settings(Settings):
    """Our SETTINGS, as advertised, but without h2's own stream limit.

    h2 treats a stream over MAX_CONCURRENT_STREAMS as an error of the whole
    connection; RFC 9113 5.1.2 allows refusing just that stream, which the
    connection does itself (REFUSED_STREAM), so h2 is told of no limit."""

    @property  # type: ignore[misc]
    def max_concurrent_streams(self) -> int:
        return 2**31 - 1


class H2ClientConnection(asyncio.Protocol):
    def __init__(
        self,
        front: Front,
        transport: asyncio.Transport,
        secure: bool,
        peer: str,
        local: str,
    ) -> None:
        self.front = front
        self.loop = front.loop
        self.transport: asyncio.Transport | None = transport
        self.secure = secure
        self.peer = peer
        self.local = local
        self.max_streams = front.max_streams  # (a reload's value applies to new connections)
        h2 = H2Connection(_CONFIG)
        h2.encoder = PlainEncoder()
        h2.local_settings = _Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: front.max_head,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            },
        )
        h2.decoder.max_header_list_size = front.hard_list
        self.h2 = h2
        self.streams: dict[int, H2Request] = {}
        # Requests of the read being handled, started once all of its frames are
        # in: a body that came with its HEADERS is then whole (Plan.whole).
        self._starting: list[H2Request] = []
        self.guard = front.guard()
        self.write_paused = False
        self.deadline = 0.0
        self._kind = 0
        self._hello = b""  # the preface, while it is incomplete
        self._greeted = False
        self._flushing = False  # a write of what h2 has ready is scheduled
        self._had_stream = False
        self._draining = False  # GOAWAY sent: answer the streams open, then close
        self._lingering = False
        self._empty = 0  # empty DATA frames in a row

    # -- start ---------------------------------------------------------------------

    def start(self, data: bytes) -> None:
        """Taken over from the HTTP/1.1 frontend, with what it read already."""
        self.front.connections.add(self)
        h2 = self.h2
        h2.initiate_connection()
        h2.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self._flush()
        self._idle()
        if data:
            self.data_received(data)

    @property
    def open(self) -> bool:
        t = self.transport
        return t is not None and not t.is_closing()

    # -- asyncio.Protocol --------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if not self._greeted:
            data = self._greet(data)
            if not data:
                return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as refused:  # h2 has queued its GOAWAY
            self._fail(f"protocol error: {refused}")
            return
        except Exception as fault:  # a fault of h2's or ours: still no traceback out
            log.error("internal_error", error=repr(fault), peer=self.peer)
            self._goodbye(ErrorCodes.INTERNAL_ERROR)
            return
        try:
            for event in events:
                if self._lingering:
                    break
                self._event(event)
        except Exception as fault:
            log.error("internal_error", error=repr(fault), peer=self.peer)
            self._goodbye(ErrorCodes.INTERNAL_ERROR)
            return
        finally:
            if self._starting:
                self._start_all()
        self._flush()

    def eof_received(self) -> bool | None:
        return False  # a client that stops sending has left (nginx's 499)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.deadline = 0.0
        self.front.connections.discard(self)
        gone = ClientGone("the client closed the connection")
        for req in list(self.streams.values()):
            self._gone(req, gone)
        self.streams.clear()

    def pause_writing(self) -> None:
        # A client that does not read its answers sends no more requests, nor
        # PINGs or SETTINGS whose acknowledgements would pile up here.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self._lingering:
            self.transport.resume_reading()
        for req in list(self.streams.values()):
            if not req.queued:
                req.writable()

    # -- the preface -------------------------------------------------------------

    def _greet(self, data: bytes) -> bytes:
        """RFC 9113 3.4: the preface, then a SETTINGS frame; anything else is a
        connection error (PROTOCOL_ERROR)."""
        buf = self._hello + data
        if len(buf) < len(PREFACE) + 9:
            if PREFACE.startswith(buf[: len(PREFACE)]):
                self._hello = buf
                return b""
        elif buf.startswith(PREFACE) and buf[len(PREFACE) + 3] == 0x4:  # type 4: SETTINGS
            self._greeted = True
            self._hello = b""
            return buf
        with contextlib.suppress(H2Error):
            self.h2.close_connection(ErrorCodes.PROTOCOL_ERROR, b"invalid connection preface")
        self._fail("invalid connection preface")
        return b""

    # -- events --------------------------------------------------------------------

    def _event(self, event: Event) -> None:
        kind = type(event)
        if kind is DataReceived:
            assert isinstance(event, DataReceived)
            sid = event.stream_id
            if event.data:
                self._empty = 0
            elif event.stream_ended is None:
                self._empty += 1
                if self._empty > EMPTY_FRAMES:
                    self._calm("empty_frames")
                    return
            req = self.streams.get(sid)
            body = req.body if req is not None else None
            if body is not None and not req.gone:  # type: ignore[union-attr]
                body.feed(event.data or b"", event.flow_controlled_length or 0)
            else:
                self.acknowledge(sid, event.flow_controlled_length or 0)
        elif kind is RequestReceived:
            assert isinstance(event, RequestReceived)
            self._request(event)
        elif kind is StreamEnded:
            req = self.streams.get(event.stream_id)  # type: ignore[attr-defined]
            if req is not None and req.body is not None:
                req.body.feed_eof()
        elif kind is WindowUpdated:
            sid = event.stream_id  # type: ignore[attr-defined]
            if sid:
                req = self.streams.get(sid)
                if req is not None:
                    self.push(req)
            else:
                self._push_all()
        elif kind is StreamReset:
            assert isinstance(event, StreamReset)
            self._client_reset(event)
        elif kind is RemoteSettingsChanged:
            assert isinstance(event, RemoteSettingsChanged)
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._push_all()
        elif kind is SettingsAcknowledged:
            # h2 sets the decoder to the advertised list size on the ACK; the
            # hard limit stays above it, so that a list just over it gets a 431.
            self.h2.decoder.max_header_list_size = self.front.hard_list
        elif kind is ConnectionTerminated:
            # The client's GOAWAY: h2 sends nothing after it, so what is open is over.
            self._cut_all()
            self._linger()

    def _request(self, event: RequestReceived) -> None:
        sid = event.stream_id or 0
        front = self.front
        if self._draining:
            self._refuse_stream(sid, count=False)
            return
        if len(self.streams) >= self.max_streams:
            self._refuse_stream(sid, count=True)
            return
        parsed = parse_request(event.headers or [], front.max_line, front.max_head)
        if parsed.malformed is not None:
            self._malformed(sid, parsed.malformed)
            return
        body = None
        if event.stream_ended is None:
            body = StreamBody(self, sid, parsed.expect_continue)
        req = H2Request(self, sid, parsed.method, parsed.path, parsed.raw, parsed.picked, body,
                        parsed.content_length)  # fmt: skip
        self.streams[sid] = req
        self.deadline = 0.0
        self._kind = 0
        self._had_stream = True
        if parsed.error is not None:
            self._answer(req, parsed.error)
            return
        self._starting.append(req)

    def _start_all(self) -> None:
        starting, self._starting = self._starting, []
        for req in starting:
            if req.gone:  # reset in the same read: the pipeline never saw it
                self.done(req)
            else:
                self._start(req)

    def _start(self, req: H2Request) -> None:
        try:
            self.front.handler(req)
        except Exception as exc:  # the handler's own net failed: still no traceback out
            if not req.done:
                log.error("internal_error", error=repr(exc))
                if req.started:
                    req.abort()
                    self.done(req)
                else:
                    self._answer(req, errors.GatewayError())

    def _refuse_stream(self, sid: int, count: bool) -> None:
        with contextlib.suppress(H2Error):
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
        if count and self.guard.reset(self.loop.time()):
            self._calm("rapid_reset")

    def _malformed(self, sid: int, why: str) -> None:
        """RFC 9113 8.1.1: RST_STREAM (PROTOCOL_ERROR), logged as the 400 an
        HTTP/1.1 client would get; counted as a reset, so that a flood of them
        ends as a rapid reset does."""
        refused = self.front.refused
        if refused is not None:
            try:
                refused("", "", self.peer, errors.BadRequest(f"malformed HTTP/2 request: {why}"),
                        new_id(), "2")  # fmt: skip
            except Exception as exc:  # bookkeeping must not cost the answer
                log.error("internal_error", error=repr(exc))
        with contextlib.suppress(H2Error):
            self.h2.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
        if self.guard.reset(self.loop.time()):
            self._calm("rapid_reset")

    def _answer(self, req: H2Request, err: errors.GatewayError) -> None:
        """The frontend's own answer (malformed, too large): logged and counted
        as the pipeline's are."""
        rid = new_id()
        refused = self.front.refused
        if refused is not None:
            try:
                refused(req.method, req.raw_path, self.peer, err, rid, "2")
            except Exception as exc:  # bookkeeping must not cost the answer
                log.error("internal_error", error=repr(exc))
        headers = [(b"content-type", b"application/json"), (b"x-request-id", rid.encode())]
        headers.extend((n.lower().encode(), v.encode("latin-1", "replace"))
                       for n, v in err.headers.items())  # fmt: skip
        with contextlib.suppress(ClientGone):
            req.respond(err.status, headers, errors.render(err, rid))
        self.done(req)

    def _client_reset(self, event: StreamReset) -> None:
        sid = event.stream_id or 0
        if event.remote_reset and self.guard.reset(self.loop.time()):
            self._calm("rapid_reset")
        req = self.streams.get(sid)
        if req is not None:
            self._gone(req, ClientGone("the client reset the stream"))

    # -- what streams ask of the connection ----------------------------------------

    def acknowledge(self, sid: int, size: int) -> None:
        """`size` bytes of a body were read: the client may send as many more."""
        if size <= 0 or self._lingering:
            return
        try:
            self.h2.acknowledge_received_data(size, sid)
        except H2Error:
            return
        self._flush()

    def send_continue(self, sid: int) -> None:
        """100 Continue: the pipeline reads a body whose client waits to be asked."""
        req = self.streams.get(sid)
        if req is None or req.gone or req.started:
            return
        with contextlib.suppress(H2Error):
            self.h2.send_headers(sid, [(b":status", b"100")])
        self._flush()

    def send_head(self, req: H2Request, head: list[Any], end: bool) -> None:
        try:
            self.h2.send_headers(req.stream_id, head, end_stream=end)
        except H2Error:
            self._gone(req, ClientGone("the stream is closed"))
            raise ClientGone("the stream is closed") from None
        if end:
            req.mark_ended()
            self._flush()
            self._settle(req)
            return
        if req.queued or req.ending:
            self.push(req)
        else:
            self._flush()

    def push(self, req: H2Request) -> None:
        """Send what the stream has queued, as far as the windows allow."""
        if req.gone or req.ended or not req.started:
            return
        h2 = self.h2
        sid = req.stream_id
        try:
            while req.queued:
                window = h2.local_flow_control_window(sid)
                if window <= 0:
                    break
                chunk = req.take(min(window, h2.max_outbound_frame_size))
                end = req.ending and not req.queued and req.trailer_fields is None
                h2.send_data(sid, chunk, end_stream=end)
                if end:
                    req.mark_ended()
            if req.ending and not req.queued and not req.ended:
                trailers = req.trailer_fields
                if trailers is not None:
                    h2.send_headers(sid, trailers, end_stream=True)
                else:
                    h2.end_stream(sid)
                req.mark_ended()
        except H2Error:  # reset by the client in the same read, or the connection ended
            self._gone(req, ClientGone("the stream is closed"))
            return
        self._flush()
        if not req.queued and not self.write_paused:
            req.writable()
        if req.ended:
            self._settle(req)

    def _push_all(self) -> None:
        for req in list(self.streams.values()):
            if req.queued or (req.ending and not req.ended):
                self.push(req)

    def reset(self, req: H2Request, cancel: bool) -> None:
        """The pipeline gives the stream up (abort())."""
        if req.gone:
            return
        code = ErrorCodes.CANCEL if cancel else ErrorCodes.INTERNAL_ERROR
        with contextlib.suppress(H2Error):
            self.h2.reset_stream(req.stream_id, code)
        self._flush()
        req.cancel = None  # the pipeline is the one giving up: nothing to tell it
        self._gone(req, ClientGone("the stream was reset"))

    def done(self, req: H2Request) -> None:
        """The pipeline is through with `req` (handled())."""
        if req.done:
            return
        req.done = True
        req.cancel = None
        if not req.gone and not req.finished:
            self.reset(req, cancel=False)  # it gave up on an answer it had started
        self._settle(req)

    def _gone(self, req: H2Request, exc: ClientGone) -> None:
        """The stream is over for the client: wake what waits on it, cancel its work."""
        if req.gone:
            return
        req.gone = True
        if req.body is not None:
            req.body.fail(exc)
        req.writable(exc)
        if not req.done and not req.finished and req.cancel is not None:
            cancel = req.cancel
            req.cancel = None
            cancel()  # the handler learns that its client left (nginx's 499)
        self._settle(req)

    def _settle(self, req: H2Request) -> None:
        """Forget a stream both sides are through with."""
        if not req.done or not (req.gone or req.ended):
            return
        sid = req.stream_id
        if self.streams.get(sid) is not req:
            return
        del self.streams[sid]
        body = req.body
        if body is not None:
            if not req.gone and not body.eof and not self._lingering:
                # Answered before the request body ended (RFC 9113 8.1).
                with contextlib.suppress(H2Error):
                    self.h2.reset_stream(sid, ErrorCodes.NO_ERROR)
            body.discard()
        if req.ended and not req.gone:
            self.guard.complete(self.loop.time())
        self._flush()
        if not self.streams:
            if self._draining:
                self._goodbye(ErrorCodes.NO_ERROR)
            else:
                self._idle()

    # -- writing -------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what h2 has ready at the end of this turn of the loop: the
        frames of every stream answered meanwhile leave in one write (one
        write a response measured as the largest cost of the h2 path)."""
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        self._flushing = False
        data = self.h2.data_to_send()
        if data:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(data)

    # -- timeouts, stop and the end ---------------------------------------------------

    def buffered(self) -> int:
        t = self.transport
        held = t.get_write_buffer_size() if t is not None else 0
        return held + sum(req.queued for req in self.streams.values())

    @property
    def busy(self) -> bool:
        return bool(self.streams)

    def _idle(self) -> None:
        front = self.front
        timeout = front.keepalive_timeout if self._had_stream else front.header_timeout
        self._kind = _IDLE
        self.deadline = self.loop.time() + timeout if timeout > 0 else 0.0

    def expire(self) -> None:
        kind = self._kind
        self.deadline = 0.0
        self._kind = 0
        if kind == _LINGER:
            self.abort()
        elif kind == _IDLE and not self.streams:
            self._goodbye(ErrorCodes.NO_ERROR)

    def check_bodies(self, now: float) -> None:
        """client_body_timeout, per stream: a body the pipeline waits for and
        the client does not send."""
        timeout = self.front.body_timeout
        if timeout <= 0:
            return
        for req in list(self.streams.values()):
            body = req.body
            if body is not None and body.waiting and not body.eof and now - body.last > timeout:
                body.fail(errors.RequestTimeout(f"no request body byte for {timeout:g}s"))

    def drain_close(self) -> None:
        """Graceful stop: GOAWAY with the last stream that will be answered;
        close once those are done (or the server's graceful_timeout cuts them)."""
        if self._draining or self._lingering:
            return
        self._draining = True
        if not self.streams:
            self._goodbye(ErrorCodes.NO_ERROR)
            return
        # h2's close_connection would end the open streams as well: this GOAWAY
        # is announced by hand (hyperframe frames it), h2's follows at the end.
        frame = GoAwayFrame(stream_id=0, last_stream_id=self.h2.highest_inbound_stream_id,
                            error_code=ErrorCodes.NO_ERROR)  # fmt: skip
        self._write_out()
        if self.open:
            self.transport.write(frame.serialize())  # type: ignore[union-attr]

    def _calm(self, reason: str) -> None:
        """Abuse (rapid reset, empty frames): this connection alone is closed."""
        log.warning("http2_abuse", peer=self.peer, reason=reason)
        self._cut_all()
        self._goodbye(ErrorCodes.ENHANCE_YOUR_CALM)

    def _fail(self, reason: str) -> None:
        """A connection error: h2's GOAWAY (queued) goes out, the streams are cut."""
        log.info("http2_connection_error", peer=self.peer, error=reason[:200])
        self._cut_all()
        self._write_out()
        self._linger()

    def _cut_all(self) -> None:
        gone = ClientGone("the connection is closing")
        for req in list(self.streams.values()):
            self._gone(req, gone)

    def _goodbye(self, code: ErrorCodes) -> None:
        if self._lingering:
            return
        with contextlib.suppress(H2Error):
            self.h2.close_connection(code)
        self._write_out()
        self._linger()

    def _linger(self) -> None:
        """Send what is written, then FIN; drop what the client still sends for
        a while, so that its unread bytes do not turn the close into an RST
        that destroys the GOAWAY before it is read."""
        if self._lingering:
            return
        self._lingering = True
        self._draining = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.secure or not transport.can_write_eof():
            transport.close()
            return
        if not half_close(transport):
            return
        transport.resume_reading()
        self._kind = _LINGER
        self.deadline = self.loop.time() + _LINGER_TIME

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()

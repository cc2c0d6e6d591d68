"""Compiled by mypyc (pyproxyd/compiled.py).
One upstream HTTP/2 connection (h2c or h2): an asyncio.Protocol around the
`h2` library's state machine, carrying many requests at once as streams.

`h2` does the framing, HPACK and flow-control bookkeeping; this module owns
what the gateway decides on top of it:

* the response body is acknowledged (stream WINDOW_UPDATE) only as the relay
  takes it (`H2Stream.take`), so a client that reads slowly slows its
  upstream instead of growing the gateway's memory: at most STREAM_WINDOW
  bytes wait per stream. The connection window is handed back on receipt, so
  one slow stream does not stall the others on the connection: in one
  WINDOW_UPDATE once a sixteenth of it was received (a frame per response
  cost a write and the upstream a frame to parse; the window stays far above
  what the streams' own windows let in).
* request DATA goes out only as the upstream's windows allow (`send_data`).
* a GOAWAY retires the connection: no new streams; the streams above its
  last-stream-id were never processed and are marked `refused` (safe to send
  again); the others finish.
* a PING that is not answered in time closes the connection (h2pool.py sends
  them to idle connections).

The pool (h2pool.py) decides which connection a request uses; the exchange
(h2exchange.py) drives one stream (h2stream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Any, Final

from pyproxyd._vendor.h2.config import H2Configuration
from pyproxyd._vendor.h2.connection import ConnectionState, H2Connection
from pyproxyd._vendor.h2.errors import ErrorCodes
from pyproxyd._vendor.h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from pyproxyd._vendor.h2.exceptions import H2Error, StreamClosedError
from pyproxyd._vendor.h2.settings import SettingCodes

from ..hpack_plain import PlainEncoder
from .h2check import response_malformed
from .h2stream import STREAM_WINDOW, H2Stream, StreamError, response_head

if TYPE_CHECKING:
    from .h2pool import H2Pool

__all__ = ["CONNECTION_WINDOW", "STREAM_WINDOW", "H2Stream", "H2UpstreamConnection", "StreamError"]

# The connection's receive window: handed back on receipt (see the docstring).
CONNECTION_WINDOW: Final = 16 * 1024 * 1024
_WINDOW_BATCH: Final = CONNECTION_WINDOW // 16


class _H2(H2Connection):
    """h2 4.x closes its state machine on any GOAWAY it receives, then refuses
    the frames of the streams below last-stream-id, which RFC 9113 6.8 says
    still complete. Its state is put back; the connection is retired instead
    (no new streams: `goaway`), and closes once those streams are done."""

    def _receive_goaway_frame(self, frame: Any) -> Any:
        state = self.state_machine.state
        result = super()._receive_goaway_frame(frame)
        if state == ConnectionState.CLIENT_OPEN:
            self.state_machine.state = state
        return result


def client_config() -> H2Configuration:
    """h2's settings for an upstream connection. Outbound headers are built
    well-formed (h2exchange.h2_headers: names lower-case, values trimmed, no
    connection-specific ones): h2's checks of them cost a third of sending a
    request. Inbound ones are checked by h2check, a malformed one failing its
    stream only (h2 would end the connection)."""
    return H2Configuration(
        client_side=True,
        header_encoding=None,
        # (h2's inbound normalising joins cookie fields, which answers have not.)
        normalize_inbound_headers=False,
        validate_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


class H2UpstreamConnection(asyncio.Protocol):
    """An HTTP/2 client connection to one upstream target."""

    def __init__(self, pool: H2Pool, loop: asyncio.AbstractEventLoop, alpn: bool) -> None:
        self.pool = pool
        self.loop = loop
        self.alpn = alpn  # h2 over TLS: the server must pick "h2"
        self.h2 = _H2(client_config())
        self.h2.encoder = PlainEncoder()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.active = 0  # streams lent out (opened or about to be), counted by the pool
        self.requests = 0  # streams completed on it
        self.opened_at = loop.time()
        self.idle_since = self.opened_at
        self.ready: asyncio.Future[None] = loop.create_future()  # the upstream's SETTINGS
        self.goaway = False  # no new streams (GOAWAY received, or retiring)
        self.error: str | None = None
        self.ping_sent_at = 0.0  # 0: no PING outstanding
        self.pinged_at = 0.0  # the last PING sent
        self._write_paused = False
        self._drains: list[asyncio.Future[None]] = []
        self._window_waiters: list[H2Stream] = []
        self._unacked = 0  # connection window received and not yet handed back
        self._flush_soon_pending = False
        # The upstream's SETTINGS_MAX_CONCURRENT_STREAMS, read when its SETTINGS
        # come (h2's Settings answers each read through three Python calls).
        self._remote_streams = self.h2.remote_settings.max_concurrent_streams

    def __repr__(self) -> str:
        state = "closed" if self.transport is None else ("goaway" if self.goaway else "open")
        return f"<H2UpstreamConnection {self.pool.label} {state} active={self.active}>"

    # -- what the pool asks ----------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self.transport is None

    @property
    def capacity(self) -> int:
        """Streams it may carry at once: ours, or fewer if the upstream says so."""
        return min(self.pool.max_streams, self._remote_streams)

    @property
    def usable(self) -> bool:
        """It may take new streams at all (open, no GOAWAY, not failed)."""
        return self.transport is not None and not self.goaway and self.error is None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.alpn:
            ssl_object = transport.get_extra_info("ssl_object")
            chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if chosen != "h2":
                self.fail(
                    f"upstream did not choose h2 by ALPN (it chose {chosen or 'nothing'}): "
                    "it does not speak HTTP/2 over TLS"
                )
                return
        h2 = self.h2
        h2.initiate_connection()
        h2.update_settings(
            {
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_HEADER_LIST_SIZE: self.pool.settings.max_head,
            }
        )
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error as exc:
            if not self.ready.done():
                self.fail(f"upstream does not speak HTTP/2 (it sent {data[:24]!r})")
            else:
                self.fail(f"upstream broke the HTTP/2 protocol: {exc or type(exc).__name__}")
            return
        received = 0
        for event in events:
            if isinstance(event, DataReceived):
                stream = self.streams.get(event.stream_id)
                flow = event.flow_controlled_length
                received += flow
                if stream is not None:
                    stream.received(event.data, flow)
                elif flow:  # a stream we gave up on: its window goes straight back
                    with contextlib.suppress(H2Error):
                        self.h2.increment_flow_control_window(flow, event.stream_id)
            elif isinstance(event, ResponseReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    why = response_malformed(event.headers, False)
                    if why is None:
                        response_head(stream, event.headers)
                    else:
                        self._malformed(stream, why)
            elif isinstance(event, TrailersReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    why = response_malformed(event.headers, True)
                    if why is None:
                        stream.trailers = list(event.headers)
                    else:
                        self._malformed(stream, why)
            elif isinstance(event, StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.ended = True
                    stream.wake()
            elif isinstance(event, StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    refused = event.error_code == ErrorCodes.REFUSED_STREAM
                    stream.local_closed = True
                    stream.fail(f"upstream reset the stream ({_code(event.error_code)})",
                                refused=refused and not stream.head_done)  # fmt: skip
            elif isinstance(event, WindowUpdated):
                self._window_opened()
            elif isinstance(event, RemoteSettingsChanged):
                self._remote_streams = self.h2.remote_settings.max_concurrent_streams
                if not self.ready.done():
                    self.ready.set_result(None)
                self._window_opened()  # INITIAL_WINDOW_SIZE may have grown
                self.pool.capacity_changed(self)
            elif isinstance(event, PingAckReceived):
                self.ping_sent_at = 0.0
            elif isinstance(event, ConnectionTerminated):
                self._goaway(event.last_stream_id, event.error_code or 0)
            elif isinstance(event, InformationalResponseReceived):
                # 100 Continue, 103 Early Hints: the final head follows
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    why = response_malformed(event.headers, False)
                    if why is not None:
                        self._malformed(stream, why)
        if received:
            # The connection window goes back on receipt; streams hold their own.
            received += self._unacked
            if received >= _WINDOW_BATCH:
                with contextlib.suppress(H2Error):
                    self.h2.increment_flow_control_window(received)
                received = 0
            self._unacked = received
        self._flush()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        reason = self.error or (
            f"upstream connection lost: {exc}" if exc else "upstream closed the connection"
        )
        if not self.ready.done():
            if self.error is None:
                reason += " before its HTTP/2 SETTINGS (does it speak HTTP/2?)"
            self.ready.set_exception(ConnectionError(reason))
            self.ready.exception()  # retrieved: whoever opened it has its own error
        for stream in list(self.streams.values()):
            stream.fail(reason)
        self._window_opened()
        self._wake_drain()
        self.pool.lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- streams -------------------------------------------------------------------------

    def open_stream(
        self, headers: list[tuple[bytes, bytes]], end_stream: bool, whole: bytes = b""
    ) -> H2Stream:
        """A new stream carrying `headers` (the pool lent a slot for it), and
        `whole`, a body with nothing to follow, when the windows take all of it
        (then the stream is closed on our side: `local_closed`)."""
        if not self.usable:
            raise StreamError(self.error or "upstream connection is closing")
        h2 = self.h2
        stream_id = h2.get_next_available_stream_id()
        stream = H2Stream(self, stream_id)
        try:
            h2.send_headers(stream_id, headers, end_stream=end_stream)
            if whole and len(whole) <= h2.local_flow_control_window(stream_id):
                size = h2.max_outbound_frame_size
                for at in range(0, len(whole), size):
                    last = at + size >= len(whole)
                    h2.send_data(stream_id, whole[at : at + size], end_stream=last)
                end_stream = True
        except H2Error as exc:
            raise StreamError(f"could not open a stream: {exc}") from None
        self.streams[stream_id] = stream
        stream.local_closed = end_stream
        self._flush_soon()
        return stream

    async def send_data(self, stream: H2Stream, data: bytes, deadline: float | None) -> None:
        """`data` as DATA frames, as fast as the windows and the socket allow."""
        h2 = self.h2
        view = memoryview(data)
        while view:
            if stream.closed and (stream.error is not None or stream.local_closed):
                raise StreamError(stream.error or "stream closed")
            if self.transport is None:
                raise StreamError(self.error or "upstream connection lost")
            try:
                window = h2.local_flow_control_window(stream.stream_id)
            except H2Error:
                raise StreamError("stream closed") from None
            size = min(window, h2.max_outbound_frame_size, len(view))
            if size <= 0:
                self._window_waiters.append(stream)
                if not await stream.wait_window(deadline):
                    raise TimeoutError
                continue
            try:
                h2.send_data(stream.stream_id, view[:size].tobytes())
            except H2Error as exc:
                raise StreamError(f"could not send: {exc}") from None
            view = view[size:]
            self._flush()
            if self._write_paused:
                await self._drained()

    def end_stream(self, stream: H2Stream) -> None:
        if stream.local_closed:
            return
        stream.local_closed = True
        with contextlib.suppress(H2Error):
            self.h2.end_stream(stream.stream_id)
            self._flush_soon()

    def reset(self, stream: H2Stream, code: int = ErrorCodes.CANCEL) -> None:
        """Reset a stream the gateway gives up on (the client left, a timeout)."""
        if not (stream.ended and stream.local_closed) and self.transport is not None:
            with contextlib.suppress(H2Error):
                self.h2.reset_stream(stream.stream_id, code)
                self._flush()
        stream.local_closed = True
        if stream.error is None and not stream.ended:
            stream.error = "stream reset by the gateway"

    def _malformed(self, stream: H2Stream, why: str) -> None:
        """RFC 9113 8.1.1: a malformed response is an error of its stream. It
        is reset (PROTOCOL_ERROR) and left out of `streams`, so what else comes
        for it is dropped (its window handed back); its request gets a 502."""
        self.streams.pop(stream.stream_id, None)
        stream.local_closed = True
        with contextlib.suppress(H2Error):
            self.h2.reset_stream(stream.stream_id, ErrorCodes.PROTOCOL_ERROR)
        stream.fail(f"upstream sent a malformed response: {why}")

    def forget(self, stream: H2Stream) -> None:
        """The exchange is over: buffered body bytes are dropped."""
        self.streams.pop(stream.stream_id, None)

    def acknowledge(self, stream: H2Stream, size: int) -> None:
        if stream.ended or self.transport is None:
            return  # a closed stream has no window left to reopen
        try:
            self.h2.increment_flow_control_window(size, stream.stream_id)
        except StreamClosedError:
            return
        except H2Error:
            return
        self._flush()

    # -- PING, GOAWAY, closing ---------------------------------------------------------

    def ping(self, now: float) -> None:
        if self.transport is None or self.ping_sent_at:
            return
        self.ping_sent_at = self.pinged_at = now
        with contextlib.suppress(H2Error):
            self.h2.ping(b"pyproxyd")
            self._flush()

    def _goaway(self, last_stream_id: int | None, code: int) -> None:
        self.goaway = True
        last = last_stream_id if last_stream_id is not None else 2**31
        for sid, stream in list(self.streams.items()):
            if sid > last:
                stream.fail(
                    f"upstream sent GOAWAY ({_code(code)}) before stream {sid}", refused=True
                )
        self.pool.retired(self)

    def retire(self) -> None:
        """No new streams; close once the open ones are done (the pool's call)."""
        self.goaway = True

    def close(self) -> None:
        """Close now with a GOAWAY; open streams fail."""
        transport = self.transport
        if transport is None:
            return
        self.goaway = True
        with contextlib.suppress(H2Error):
            self.h2.close_connection()
            self._flush()
        transport.close()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.abort()

    def fail(self, reason: str) -> None:
        """The connection cannot go on: its streams fail, it closes abruptly."""
        self.error = reason
        self.goaway = True
        for stream in list(self.streams.values()):
            stream.fail(reason)
        transport = self.transport
        if transport is not None:
            transport.abort()

    # -- writing ---------------------------------------------------------------------

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def _flush_soon(self) -> None:
        """Write what h2 has ready at the end of this turn of the loop: the
        streams the turn's requests opened leave in one write, not one each (a
        write per request was the upstream side's largest single cost). Any
        _flush() before then writes them too."""
        if not self._flush_soon_pending:
            self._flush_soon_pending = True
            self.loop.call_soon(self._flush_later)

    def _flush_later(self) -> None:
        self._flush_soon_pending = False
        self._flush()

    async def _drained(self) -> None:
        while self._write_paused and self.transport is not None:
            fut: asyncio.Future[None] = self.loop.create_future()
            self._drains.append(fut)
            await fut

    def _wake_drain(self) -> None:
        drains = self._drains
        if drains:
            self._drains = []
            for fut in drains:
                if not fut.done():
                    fut.set_result(None)

    def _window_opened(self) -> None:
        waiters = self._window_waiters
        if waiters:
            self._window_waiters = []
            for stream in waiters:
                stream.window_opened()


def _code(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error code {code}"

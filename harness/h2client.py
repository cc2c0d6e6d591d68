"""A small HTTP/2 client over a real socket, on the `h2` state machine.

What curl cannot do is what the safety tests need: streams opened and reset
by the thousand, a window that never opens, raw frames and raw bytes after
the preface. Everything the gateway sends is read by one task and kept per
stream; GOAWAY and the connection's end are recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    PingAckReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.settings import SettingCodes

TIMEOUT = 10.0


@dataclass
class Stream:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    reset: int | None = None  # the error code of a RST_STREAM from the gateway
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)

    @property
    def body(self) -> bytes:
        return bytes(self.data)


class H2Client:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: H2Connection,
        ack: bool,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.ack = ack  # acknowledge DATA as it arrives (False: the window never reopens)
        self.streams: dict[int, Stream] = {}
        self.goaway: tuple[int, int] | None = None  # (error code, last stream id)
        self.closed = asyncio.Event()  # the gateway closed the connection
        self.received = 0  # DATA bytes received on all streams
        self.error: Exception | None = None  # what h2 refused in the gateway's bytes
        self.pongs: list[bytes] = []  # the payloads of PING ACKs
        self._window = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._pump())

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        tls: bool = False,
        window: int | None = None,
        ack: bool = True,
        settings: dict[int, int] | None = None,
        checked: bool = True,
    ) -> H2Client:
        """Connect and send the preface (h2c with prior knowledge, or ALPN h2).
        `window`: the client's initial stream window. `checked=False`: h2 sends
        header lists as given (malformed ones too), names and values unchanged."""
        context = None
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost" if tls else None
        )
        if tls:
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        conn = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding="utf-8",
                validate_outbound_headers=checked,
                normalize_outbound_headers=checked,
            )
        )
        wanted = dict(settings or {})
        if window is not None:
            wanted[SettingCodes.INITIAL_WINDOW_SIZE] = window
        conn.initiate_connection()
        if wanted:
            conn.update_settings(wanted)  # a second SETTINGS frame, right behind the first
        client = cls(reader, writer, conn, ack)
        client.flush()
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def _pump(self) -> None:
        buf = b""
        try:
            while data := await self.reader.read(65536):
                buf += data
                # Frame by frame: h2 closes its side on a GOAWAY and refuses the
                # frames of the streams still open (RFC 9113 6.8 lets them
                # finish), so its state is put back to open after each one.
                while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                    size = 9 + int.from_bytes(buf[:3], "big")
                    frame, buf = buf[:size], buf[size:]
                    state = self.conn.state_machine.state
                    try:
                        events = self.conn.receive_data(frame)
                    except Exception as exc:  # the gateway said something h2 refuses
                        self.error = exc
                        return
                    for event in events:
                        self._event(event)
                    if self.goaway is not None:
                        self.conn.state_machine.state = state
                self.flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            for stream in self.streams.values():
                stream.done.set()

    def _event(self, event: object) -> None:
        if isinstance(event, (ResponseReceived, InformationalResponseReceived)):
            stream = self.streams[event.stream_id]  # type: ignore[index]
            for name, value in event.headers or []:
                if name == ":status":
                    stream.status = int(value)
                else:
                    stream.headers.append((str(name), str(value)))
        elif isinstance(event, DataReceived):
            stream = self.streams[event.stream_id]  # type: ignore[index]
            stream.data += event.data or b""
            self.received += len(event.data or b"")
            if self.ack:
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id or 0
                )
        elif isinstance(event, TrailersReceived):
            stream = self.streams[event.stream_id]  # type: ignore[index]
            stream.trailers = [(str(n), str(v)) for n, v in event.headers or []]
        elif isinstance(event, StreamEnded):
            self.streams[event.stream_id].done.set()  # type: ignore[index]
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                stream.reset = int(event.error_code or 0)
                stream.done.set()
        elif isinstance(event, WindowUpdated):
            self._window.set()
        elif isinstance(event, PingAckReceived):
            self.pongs.append(bytes(event.ping_data or b""))
        elif isinstance(event, ConnectionTerminated):
            self.goaway = (int(event.error_code or 0), int(event.last_stream_id or 0))

    # -- requests ------------------------------------------------------------------

    def start(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        *,
        end: bool = True,
        authority: str = "localhost",
    ) -> int:
        """Send a request head; returns its stream id (flushed)."""
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = Stream()
        head = [(":method", method), (":path", path), (":scheme", "http"),
                (":authority", authority), *(headers or [])]  # fmt: skip
        self.conn.send_headers(sid, head, end_stream=end)
        self.flush()
        return sid

    def send_whole(
        self, method: str, path: str, body: bytes, headers: list[tuple[str, str]] | None = None
    ) -> int:
        """A request and all of its body (within the windows) in one write."""
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = Stream()
        head = [(":method", method), (":path", path), (":scheme", "http"),
                (":authority", "localhost"), *(headers or [])]  # fmt: skip
        self.conn.send_headers(sid, head)
        self.conn.send_data(sid, body, end_stream=True)
        self.flush()
        return sid

    async def send_body(self, sid: int, body: bytes, end: bool = True) -> None:
        """DATA frames as the gateway's windows allow."""
        view = memoryview(body)
        while view:
            if self.streams[sid].done.is_set():
                return  # answered (or reset) before the body was all sent
            window = min(
                self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                self._window.clear()
                self.flush()
                done = asyncio.ensure_future(self.streams[sid].done.wait())
                opened = asyncio.ensure_future(self._window.wait())
                await asyncio.wait({done, opened}, timeout=TIMEOUT,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                done.cancel()
                opened.cancel()
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            self.flush()
            await self.writer.drain()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> Stream:
        sid = self.start(method, path, headers, end=body is None)
        if body is not None:
            await self.send_body(sid, body)
        return await self.wait(sid)

    async def wait(self, sid: int, timeout: float = TIMEOUT) -> Stream:
        stream = self.streams[sid]
        await asyncio.wait_for(stream.done.wait(), timeout)
        return stream

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid)
        self.flush()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def raw_exchange(port: int, data: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send bytes, read until the gateway closes the connection (or timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    chunks = []
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
    return b"".join(chunks)

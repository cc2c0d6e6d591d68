"""A real h2c (HTTP/2 with prior knowledge) test upstream, on the `h2` library
over asyncio, on 127.0.0.1 port 0. An async context manager:

    async with H2Backend() as b:
        ... f"http://127.0.0.1:{b.port}/echo" ...
        assert b.connections_opened == 1

Paths (every answer carries x-conn-id and x-stream-id):

    /echo            the request body back; x-method, x-path, x-authority, x-te,
                     x-grpc-timeout headers say what arrived
    /slow?ms=200     waits, then "ok"
    /stream?n=3&size=5   n DATA frames of `size` bytes (as the window allows)
    /big?size=N      N bytes, sent only as the client's window allows
                     (`sent[stream]` says how many went out so far)
    /trailers        "body", then trailers grpc-status: 0, x-trailer: yes
    /status?code=503 that status
    /grpc-status?code=5  a trailers-only gRPC answer with that grpc-status
    /bighead?size=N  "ok" with a response header of N bytes
    /reset           RST_STREAM (INTERNAL_ERROR) instead of an answer
    /hang            never answers (`resets` records the gateway's RST_STREAM)
    /slowread?ms=300 reads the body but acknowledges none of it for `ms`
                     (`read_before_ack`), then answers its length
    /mute            "ok", then the connection stops reading: PINGs go unanswered

Misbehaviour by setting: `goaway_after = n` sends GOAWAY once a connection has
received n streams, with last_stream_id the n-th; later streams are never
answered. `refuse = n` resets the first n streams with REFUSED_STREAM.
`max_concurrent_streams` and `initial_window` (INITIAL_WINDOW_SIZE) are
advertised in SETTINGS, `settings_delay` seconds after the connection opens.

Recorded: `received` requests (each knows whether its END_STREAM came in the
same read as its HEADERS: `one_read`), `resets`, `goaways_received`, and
`connection_window_updates` (WINDOW_UPDATE frames for the whole connection).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from urllib.parse import parse_qs, urlsplit

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame


class Request:
    def __init__(self, conn_id: int, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.conn_id = conn_id
        self.stream_id = stream_id
        self.headers = {k.decode(): v.decode() for k, v in headers}
        self.body = b""
        self.ended = asyncio.Event()
        self.one_read = False  # HEADERS and END_STREAM in one read (the body came whole)
        # /slowread: flow-controlled bytes not acknowledged yet (None: acknowledged as read)
        self.held: int | None = 0 if self.path.startswith("/slowread") else None

    @property
    def path(self) -> str:
        return self.headers[":path"]


class _Conn(asyncio.Protocol):
    def __init__(self, backend: H2Backend, conn_id: int) -> None:
        self.backend = backend
        self.conn_id = conn_id
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, Request] = {}
        self.windows: dict[int, asyncio.Event] = {}
        self.streams_seen = 0
        self.last_stream = 2**31 - 1
        self.muted = False
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.backend.connections_opened += 1
        self.backend.open_connections += 1
        wanted = {}
        if self.backend.max_concurrent_streams is not None:
            wanted[SettingCodes.MAX_CONCURRENT_STREAMS] = self.backend.max_concurrent_streams
        if self.backend.initial_window is not None:
            wanted[SettingCodes.INITIAL_WINDOW_SIZE] = self.backend.initial_window
        if wanted:
            # Replaced before the preface, so its first SETTINGS frame says it.
            self.h2.local_settings = Settings(client=False, initial_values=wanted)
        if self.backend.settings_delay:
            # A slow upstream: its preface (SETTINGS) comes late, input waits till then.
            self.early: list[bytes] | None = []
            asyncio.get_running_loop().call_later(self.backend.settings_delay, self.start)
            return
        self.early = None
        self.h2.initiate_connection()
        self.flush()

    def start(self) -> None:
        early, self.early = self.early or [], None
        if self.transport is None:
            return
        self.h2.initiate_connection()
        self.flush()
        for data in early:
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.backend.open_connections -= 1
        for event in self.windows.values():
            event.set()

    def data_received(self, data: bytes) -> None:
        if self.early is not None:
            self.early.append(data)
            return
        if self.muted:
            return
        try:
            events = self.h2.receive_data(data)
        except H2Error:
            if self.transport is not None:
                self.transport.close()
            return
        started = set()
        for ev in events:
            if isinstance(ev, RequestReceived):
                started.add(ev.stream_id)
                self.on_request(ev.stream_id, ev.headers)
            elif isinstance(ev, DataReceived):
                req = self.requests.get(ev.stream_id)
                if req is not None:
                    req.body += ev.data
                    if req.held is not None:  # /slowread: acknowledged later
                        req.held += ev.flow_controlled_length
                        continue
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, StreamEnded):
                req = self.requests.get(ev.stream_id)
                if req is not None:
                    req.one_read = ev.stream_id in started
                    req.ended.set()
            elif isinstance(ev, StreamReset):
                self.backend.resets.append((self.conn_id, ev.stream_id, ev.error_code))
                req = self.requests.get(ev.stream_id)
                if req is not None:
                    req.ended.set()
                event = self.windows.get(ev.stream_id)
                if event is not None:
                    event.set()
            elif isinstance(ev, WindowUpdated):
                if not ev.stream_id:
                    self.backend.connection_window_updates += 1
                for event in self.windows.values():
                    event.set()
            elif isinstance(ev, ConnectionTerminated):
                self.backend.goaways_received += 1
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def on_request(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        backend = self.backend
        self.streams_seen += 1
        req = Request(self.conn_id, stream_id, headers)
        if stream_id > self.last_stream:
            return  # after our GOAWAY: never processed
        if backend.refuse > 0:
            backend.refuse -= 1
            backend.refused.append(req)
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self.requests[stream_id] = req
        backend.received.append(req)
        if backend.goaway_after and self.streams_seen == backend.goaway_after:
            self.last_stream = stream_id
            # Written by hand: h2's close_connection() would refuse to answer the
            # streams below last_stream_id, which a graceful GOAWAY still does.
            self.flush()
            assert self.transport is not None
            self.transport.write(GoAwayFrame(0, last_stream_id=stream_id).serialize())
        task = asyncio.get_running_loop().create_task(self.answer(req))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def answer(self, req: Request) -> None:
        parts = urlsplit(req.path)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        sid = req.stream_id
        path = parts.path
        backend = self.backend
        base = [(b"x-conn-id", b"%d" % self.conn_id), (b"x-stream-id", b"%d" % sid)]
        if path == "/hang":
            return
        if path == "/reset":
            self.h2.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
            self.flush()
            return
        if path == "/slow":
            await asyncio.sleep(int(q.get("ms", "200")) / 1000)
        if path == "/slowread":
            await asyncio.sleep(int(q.get("ms", "300")) / 1000)
            backend.read_before_ack = len(req.body)
            held, req.held = req.held or 0, None
            if held and self.transport is not None:
                self.h2.acknowledge_received_data(held, sid)
                self.flush()
        await req.ended.wait()
        if self.transport is None or sid not in self.requests:
            return
        try:
            if path == "/echo":
                h = req.headers
                extra = [
                    (b"x-method", h[":method"].encode()),
                    (b"x-path", h[":path"].encode()),
                    (b"x-authority", h.get(":authority", "").encode()),
                    (b"x-te", h.get("te", "-").encode()),
                    (b"x-grpc-timeout", h.get("grpc-timeout", "-").encode()),
                ]
                await self.respond(sid, 200, base + extra, [req.body])
            elif path == "/stream":
                size = int(q.get("size", "5"))
                chunks = [str(i % 10).encode() * size for i in range(int(q.get("n", "3")))]
                await self.respond(sid, 200, base, chunks)
            elif path == "/slowread":
                await self.respond(sid, 200, base, [b"%d" % len(req.body)])
            elif path == "/big":
                size = int(q.get("size", "1000000"))
                await self.respond(sid, 200, base, [b"x" * size])
            elif path == "/trailers":
                await self.respond(sid, 200, base, [b"body"],
                                   [(b"grpc-status", b"0"), (b"x-trailer", b"yes")])  # fmt: skip
            elif path == "/bighead":
                big = [(b"x-big", b"b" * int(q.get("size", "10000")))]
                await self.respond(sid, 200, base + big, [b"ok"])
            elif path == "/status":
                await self.respond(sid, int(q.get("code", "200")), base, [])
            elif path == "/grpc-status":  # a trailers-only gRPC answer: the status in the head
                only = [(b"content-type", b"application/grpc"),
                        (b"grpc-status", q.get("code", "5").encode())]  # fmt: skip
                await self.respond(sid, 200, base + only, [])
            elif path == "/mute":
                await self.respond(sid, 200, base, [b"ok"])
                self.muted = True
            else:
                await self.respond(sid, 200, base, [b"ok"])
        except (H2Error, ConnectionError):
            pass

    async def respond(
        self,
        sid: int,
        status: int,
        headers: list[tuple[bytes, bytes]],
        chunks: list[bytes],
        trailers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        h2 = self.h2
        h2.send_headers(sid, [(b":status", b"%d" % status), *headers],
                        end_stream=not chunks and not trailers)  # fmt: skip
        self.flush()
        backend = self.backend
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1 and not trailers
            view = memoryview(chunk)
            while True:
                if self.transport is None or sid not in self.requests:
                    return
                try:
                    window = h2.local_flow_control_window(sid)
                except H2Error:
                    return
                size = min(window, h2.max_outbound_frame_size, len(view))
                if size <= 0 and view:
                    event = self.windows[sid] = asyncio.Event()
                    await event.wait()
                    continue
                h2.send_data(sid, view[:size].tobytes(), end_stream=last and size == len(view))
                backend.sent[(self.conn_id, sid)] = backend.sent.get((self.conn_id, sid), 0) + size
                view = view[size:]
                self.flush()
                if not view:
                    break
        if trailers:
            h2.send_headers(sid, trailers, end_stream=True)
            self.flush()


class H2Backend:
    def __init__(
        self,
        *,
        max_concurrent_streams: int | None = None,
        goaway_after: int = 0,
        refuse: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        settings_delay: float = 0.0,
        initial_window: int | None = None,
    ) -> None:
        self.initial_window = initial_window
        self.settings_delay = settings_delay  # seconds before a connection's SETTINGS go out
        self.ssl_context = ssl_context  # TLS with ALPN "h2" (protocol = "h2" upstreams)
        self.max_concurrent_streams = max_concurrent_streams
        self.goaway_after = goaway_after
        self.refuse = refuse
        self.connections_opened = 0
        self.open_connections = 0
        self.goaways_received = 0
        self.connection_window_updates = 0
        self.read_before_ack = 0  # /slowread: body bytes in before it acknowledged any
        self.received: list[Request] = []
        self.refused: list[Request] = []
        self.resets: list[tuple[int, int, int]] = []
        self.sent: dict[tuple[int, int], int] = {}
        self.conns: list[_Conn] = []
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _make(self) -> _Conn:
        conn = _Conn(self, next(self._ids))
        self.conns.append(conn)
        return conn

    async def __aenter__(self) -> H2Backend:
        loop = asyncio.get_running_loop()
        if self.ssl_context is not None:
            self.ssl_context.set_alpn_protocols(["h2"])
        self._server = await loop.create_server(self._make, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.conns:
            for task in list(conn.tasks):
                task.cancel()
            if conn.transport is not None:
                conn.transport.abort()
        await self._server.wait_closed()

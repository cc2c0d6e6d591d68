"""What the HTTP/2 client connections share: settings, the open connections,
the deadline sweep and the Date header; and `take`, the hook the HTTP/1.1
frontend calls to hand a connection over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from email.utils import formatdate
from time import time

from ...proxy.interface import Request
from .connection import H2ClientConnection, Refused
from .guard import ResetGuard


class Http2Frontend:
    # (set by configure(), at start and on every reload)
    header_timeout: float
    keepalive_timeout: float
    body_timeout: float
    max_line: int
    max_head: int
    hard_list: int
    max_streams: int
    _interval: float

    def __init__(
        self,
        handler: Callable[[Request], None],
        *,
        header_timeout: float,
        keepalive_timeout: float,
        body_timeout: float,
        max_header_size: int,
        max_streams: int,
        refused: Refused | None = None,
    ) -> None:
        self.handler = handler
        self.refused = refused
        self.connections: set[H2ClientConnection] = set()
        self.loop = asyncio.get_running_loop()
        self._date_at = 0
        self._date = b""
        self._sweep_handle: asyncio.TimerHandle | None = None
        self.configure(header_timeout, keepalive_timeout, body_timeout, max_header_size,
                       max_streams)  # fmt: skip

    def configure(
        self,
        header_timeout: float,
        keepalive_timeout: float,
        body_timeout: float,
        max_header_size: int,
        max_streams: int,
    ) -> None:
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.body_timeout = body_timeout
        self.max_line = max_header_size  # one field (name and value), as one HTTP/1.1 line
        # The whole list, as HTTP/1.1's whole head: advertised, and answered 431 beyond.
        self.max_head = max(64 * 1024, 4 * max_header_size)
        # Beyond this HPACK stops decoding and the connection ends (GOAWAY).
        self.hard_list = 2 * self.max_head
        self.max_streams = max_streams
        shortest = min(t for t in (header_timeout, keepalive_timeout, body_timeout, 4.0) if t > 0)
        self._interval = min(1.0, max(0.05, shortest / 5))

    def guard(self) -> ResetGuard:
        return ResetGuard()

    def take(
        self, transport: asyncio.Transport, secure: bool, peer: str, local: str, data: bytes
    ) -> None:
        """A connection that speaks HTTP/2 from here on, with the bytes read so far."""
        conn = H2ClientConnection(self, transport, secure, peer, local)
        transport.set_protocol(conn)
        conn.start(data)

    def buffered(self) -> int:
        """Answer bytes the HTTP/2 connections hold: queued behind the clients'
        windows, and written but not yet taken by the kernel."""
        return sum(conn.buffered() for conn in self.connections)

    def date(self) -> bytes:
        now = int(time())
        if now != self._date_at:
            self._date_at = now
            self._date = formatdate(now, usegmt=True).encode()
        return self._date

    def start(self) -> None:
        self._sweep_handle = self.loop.call_later(self._interval, self._sweep)

    def stop(self) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            if conn.deadline and conn.deadline <= now:
                conn.expire()
            elif conn.busy:
                conn.check_bodies(now)
        self._sweep_handle = self.loop.call_later(self._interval, self._sweep)

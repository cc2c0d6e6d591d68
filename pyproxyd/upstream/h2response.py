"""Compiled by mypyc (pyproxyd/compiled.py). An upstream HTTP/2 answer, read
as relay.py reads an HTTP/1.1 one.

A subclass of http1.UpstreamResponse, so the compiled pipeline takes either
without a type check of its own; it only overrides how the body is read and
how the exchange ends (a stream reset, never a closed connection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .. import errors
from .http1 import UpstreamResponse

if TYPE_CHECKING:
    from .h2conn import H2UpstreamConnection
    from .h2pool import H2Pool
    from .h2stream import H2Stream


class Sender(Protocol):
    """The request body's sender (h2exchange.BodyPump), stopped when the exchange ends."""

    def cancel(self) -> None: ...


class H2Response(UpstreamResponse):
    """An upstream HTTP/2 answer, read as relay.py reads an HTTP/1.1 one."""

    __slots__ = ("_h2conn", "_h2pool", "_pump", "_stream")

    def __init__(
        self,
        pool: H2Pool,
        conn: H2UpstreamConnection,
        stream: H2Stream,
        pump: Sender | None,
        timeout: float,
    ) -> None:
        self._h2pool = pool
        self._h2conn = conn
        self._stream = stream
        self._pump = pump
        self._timeout = timeout
        self._done = False
        self.status = stream.status
        self.reason = ""
        self.headers = stream.headers
        self.lists_headers = False
        self.version = "2"
        self.chunked = False
        self.content_length = None
        for name, value in stream.headers:
            if name == b"content-length" and value.isdigit():
                self.content_length = int(value)
        self.trailers = None

    def __repr__(self) -> str:
        return f"<H2Response {self.status} via {self._stream!r} on {self._h2conn!r}>"

    def whole_body(self) -> bytes | None:
        stream = self._stream
        if self._done or not stream.ended or stream.trailers is not None:
            return None
        return stream.take() if stream.has_data else b""

    async def read(self) -> bytes:
        if self._done:
            return b""
        stream = self._stream
        deadline = 0.0
        while True:
            if stream.has_data:
                return stream.take()
            if stream.ended:
                self.trailers = stream.trailers
                return b""
            if stream.error is not None:
                err = errors.BadGateway(stream.error)
                err.response_started = True
                self.abort()
                raise err
            if not deadline:
                deadline = self._h2conn.loop.time() + self._timeout
            try:
                progressed = await stream.wait(deadline)
            except BaseException:
                self.abort()
                raise
            if not progressed:
                self.abort()
                err2 = errors.UpstreamTimeout(
                    f"upstream sent nothing for {self._timeout:g}s (read_timeout) mid-body"
                )
                err2.response_started = True
                raise err2

    def release(self) -> None:
        if self._done:
            return
        self._done = True
        stream = self._stream
        self.trailers = stream.trailers
        conn = self._h2conn
        if not (stream.ended and stream.local_closed):
            # The answer is whole but the request body is not (the upstream
            # answered early): the stream is reset, the connection stays.
            conn.reset(stream)
        self._finish()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._h2conn.reset(self._stream)
        self._finish()

    def _finish(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        conn = self._h2conn
        conn.forget(self._stream)
        self._h2pool.release(conn)

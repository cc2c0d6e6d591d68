"""An HTTP/2 upstream's malformed response (RFC 9113 8.1.1) fails its stream only:
the gateway resets that stream with PROTOCOL_ERROR and answers its request 502,
while another stream on the same upstream connection completes. Over a real h2c
upstream written here on the `h2` library, with its outbound checks off so that
it can send what a broken server would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, RequestReceived, StreamReset

from harness.backends import wait_for
from harness.gateway import config, gateway, url
from pyproxyd.upstream.h2check import response_malformed

from .h2util import h2_upstream

# What /bad answers, by the test's parameter: a head h2 would have refused too.
BAD_HEADS = {
    "upper-case name": [(b":status", b"200"), (b"X-Bad", b"1")],
    "connection-specific field": [(b":status", b"200"), (b"connection", b"close")],
    "no :status": [(b"content-type", b"text/plain")],
    "request pseudo-header": [(b":status", b"200"), (b":path", b"/")],
    "value with surrounding space": [(b":status", b"200"), (b"x-a", b" 1")],
}


class BrokenUpstream(asyncio.Protocol):
    """Answers /bad with `bad_head` once an /ok request is in too, then /ok with
    "fine" once the gateway reset /bad's stream. Records resets and GOAWAYs."""

    def __init__(
        self,
        bad_head: list[tuple[bytes, bytes]],
        bad_trailers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.bad_head = bad_head
        self.bad_trailers = bad_trailers  # instead: a good head, a body, these trailers
        self.h2 = H2Connection(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.transport: asyncio.Transport | None = None
        self.paths: dict[bytes, int] = {}
        self.resets: list[tuple[int, int]] = []
        self.goaways = 0
        self.connections = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections += 1
        self.h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, RequestReceived):
                path = dict(event.headers)[b":path"]
                self.paths[path] = event.stream_id
            elif isinstance(event, StreamReset):
                self.resets.append((event.stream_id, event.error_code))
            elif isinstance(event, ConnectionTerminated):
                self.goaways += 1
        bad, ok = self.paths.get(b"/bad"), self.paths.get(b"/ok")
        if bad is not None and ok is not None and self.bad_trailers is not None:
            if self.h2.streams[bad].open:
                # The trailers end the stream: nothing is left to reset, so /ok
                # is answered right after, on the same connection.
                self.h2.send_headers(bad, [(b":status", b"200")])
                self.h2.send_data(bad, b"partial")
                self.h2.send_headers(bad, self.bad_trailers, end_stream=True)
                self.h2.send_headers(ok, [(b":status", b"200"), (b"content-length", b"4")])
                self.h2.send_data(ok, b"fine", end_stream=True)
        elif bad is not None and ok is not None:
            if not self.resets and self.h2.streams[bad].open:
                self.h2.send_headers(bad, self.bad_head)
                # (no END_STREAM: the stream stays open here, so the gateway's
                # RST_STREAM arrives as a StreamReset)
                self.h2.send_data(bad, b"never relayed")
            elif self.resets and self.h2.streams.get(ok) is not None and self.h2.streams[ok].open:
                self.h2.send_headers(ok, [(b":status", b"200"), (b"content-length", b"4")])
                self.h2.send_data(ok, b"fine", end_stream=True)
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)


@asynccontextmanager
async def broken_upstream(
    bad_head: list[tuple[bytes, bytes]], bad_trailers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[tuple[str, BrokenUpstream]]:
    protocol = BrokenUpstream(bad_head, bad_trailers)
    server = await asyncio.get_running_loop().create_server(lambda: protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", protocol
    finally:
        server.close()
        if protocol.transport is not None:
            protocol.transport.close()


@pytest.mark.parametrize("kind", sorted(BAD_HEADS))
async def test_a_malformed_response_fails_its_stream_only(tmp_path: Path, kind: str) -> None:
    assert response_malformed(BAD_HEADS[kind], False) is not None
    async with (
        broken_upstream(BAD_HEADS[kind]) as (target, up),
        gateway(tmp_path, config(h2_upstream(target))) as gw,
        aiohttp.ClientSession() as s,
    ):

        async def get(path: str) -> tuple[int, bytes]:
            async with s.get(url(gw, path)) as r:
                return r.status, await r.read()

        bad = asyncio.create_task(get("/h2/bad"))
        await wait_for(lambda: b"/bad" in up.paths)  # /bad opens the connection first
        ok = asyncio.create_task(get("/h2/ok"))
        (bad_status, _), (ok_status, ok_body) = await asyncio.wait_for(asyncio.gather(bad, ok), 10)
    assert bad_status == 502
    assert (ok_status, ok_body) == (200, b"fine")
    assert up.connections == 1 and up.goaways == 0
    assert up.resets == [(up.paths[b"/bad"], ErrorCodes.PROTOCOL_ERROR)]


async def test_malformed_trailers_cut_their_response_only(tmp_path: Path) -> None:
    """Trailers come after the head went to the client: that response is cut
    off (no clean end), the other stream on the connection completes."""
    bad_trailers = [(b"grpc-status", b"0"), (b":status", b"200")]
    assert response_malformed(bad_trailers, True) is not None
    async with (
        broken_upstream([], bad_trailers) as (target, up),
        gateway(tmp_path, config(h2_upstream(target))) as gw,
        aiohttp.ClientSession() as s,
    ):

        async def bad() -> tuple[int, bool]:
            async with s.get(url(gw, "/h2/bad")) as r:
                try:
                    await r.read()
                except aiohttp.ClientPayloadError:
                    return r.status, False
                return r.status, True

        async def ok() -> tuple[int, bytes]:
            async with s.get(url(gw, "/h2/ok")) as r:
                return r.status, await r.read()

        bad_task = asyncio.create_task(bad())
        await wait_for(lambda: b"/bad" in up.paths)
        (bad_status, bad_complete), ok_answer = await asyncio.wait_for(
            asyncio.gather(bad_task, ok()), 10
        )
    assert bad_status == 200 and not bad_complete
    assert ok_answer == (200, b"fine")
    assert up.connections == 1 and up.goaways == 0


GOOD = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"x-e", b"")]


@pytest.mark.parametrize(
    ("headers", "trailers", "why"),
    [
        (GOOD, False, None),
        ([(b":status", b"103"), (b"link", b"</a>; rel=preload")], False, None),
        ([(b"grpc-status", b"0"), (b"grpc-message", b"")], True, None),
        ([(b"te", b"Trailers")], True, None),
        ([], True, None),
        ([], False, "no :status"),
        ([(b":status", b"200"), (b":status", b"204")], False, "two :status fields"),
        ([(b"x-a", b"1"), (b":status", b"200")], False, "pseudo-header field b':status' after"),
        ([(b":status", b"200")], True, "pseudo-header field b':status' in trailers"),
        ([(b":status", b"200"), (b":authority", b"a")], False, "not one of a response"),
        ([(b":status", b"200"), (b"", b"1")], False, "field name b'' is empty"),
        ([(b":status", b"200"), (b"a:b", b"1")], False, "field name b'a:b'"),
        ([(b":status", b"200"), (b"a b", b"1")], False, "field name b'a b'"),
        ([(b":status", b"200"), (b"x\x7f", b"1")], False, "field name b'x\\x7f'"),
        ([(b":status", b"200"), (b"x-a", b"1\r\n")], False, "the value of b'x-a'"),
        ([(b":status", b"200"), (b"x-a", b"a\x00b")], False, "the value of b'x-a'"),
        ([(b":status", b"200"), (b"x-a", b"\t1")], False, "the value of b'x-a'"),
        ([(b"grpc-status", b"0 ")], True, "the value of b'grpc-status'"),
        ([(b":status", b"200"), (b"keep-alive", b"5")], False, "connection-specific"),
        ([(b"transfer-encoding", b"chunked")], True, "connection-specific"),
        ([(b":status", b"200"), (b"te", b"gzip")], False, "te other than trailers"),
    ],
)
def test_what_a_malformed_head_or_trailer_block_is(
    headers: list[tuple[bytes, bytes]], trailers: bool, why: str | None
) -> None:
    got = response_malformed(headers, trailers)
    if why is None:
        assert got is None
    else:
        assert got is not None and why in got, got

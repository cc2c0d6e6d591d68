"""The HTTP/1.1 client side (frontend/) end to end, over raw sockets.

Every test speaks bytes to a real gateway in front of a real aiohttp Backend:
keep-alive and its timeout, pipelining, HTTP/1.0, response framing, HEAD,
100-continue, body limits and the lingering close, malformed heads, a client
that leaves, chunked uploads and the WebSocket tunnel.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from harness.backends import Backend, RawBackend, json_of, payload, read_request, sha256
from harness.gateway import config, fetch, gateway, one_route
from pyproxyd.server import Gateway

TIMEOUT = 5.0  # generous: the machine is shared


# -- a tiny HTTP/1.1 client ------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    chunked: bool  # the body came with Transfer-Encoding: chunked


async def _read_response(reader: asyncio.StreamReader, method: str) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    version, code, *_ = status_line.split(" ", 2)
    assert version in ("HTTP/1.1", "HTTP/1.0"), status_line
    status = int(code)
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
    if status < 200 or status in (204, 304) or method == "HEAD":
        return Response(status, headers, b"", chunked)
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                break
            chunk = await reader.readexactly(size + 2)
            assert chunk.endswith(b"\r\n")
            parts.append(chunk[:-2])
        return Response(status, headers, b"".join(parts), chunked)
    if "Content-Length" in headers:
        body = await reader.readexactly(int(headers["Content-Length"]))
        return Response(status, headers, body, chunked)
    return Response(status, headers, await reader.read(), chunked)  # close-delimited


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    """One response off the stream, framed as HTTP/1.1 says."""
    return await asyncio.wait_for(_read_response(reader, method), TIMEOUT)


async def read_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the gateway closes (b"" when nothing more came)."""
    return await asyncio.wait_for(reader.read(), TIMEOUT)


@asynccontextmanager
async def client(gw: Gateway) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports[0])
    try:
        yield reader, writer
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


def get(path: str, version: str = "1.1", extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: gw.test\r\n".encode() + extra + b"\r\n"


def error_of(resp: Response) -> dict[str, object]:
    """The gateway's own error JSON, checked against docs/behaviour.md's shape."""
    assert resp.headers["Content-Type"] == "application/json"
    body = json_of(resp.body)
    assert set(body) == {"error", "message", "status", "request_id"}
    assert body["status"] == resp.status
    assert body["request_id"] == resp.headers["X-Request-ID"]
    return body


def front(backend_url: str, server: str = "") -> str:
    return config(one_route(backend_url, "front", "/api"), server=server)


async def _named(request: web.Request) -> web.Response:
    """/named/{name}?delay=s: answers its own name, after `delay` seconds."""
    await asyncio.sleep(float(request.query.get("delay", "0")))
    return web.Response(text=request.match_info["name"])


STREAMED = 300_000  # bytes of /stream: well over 64 KiB, never buffered whole


async def _stream(request: web.Request) -> web.StreamResponse:
    """A response of unknown length: no Content-Length, written in pieces."""
    resp = web.StreamResponse()
    await resp.prepare(request)
    data = payload(STREAMED)
    for i in range(0, STREAMED, 10_000):
        await resp.write(data[i : i + 10_000])
    await resp.write_eof()
    return resp


ROUTES = [web.get("/named/{name}", _named), web.get("/stream", _stream)]


# -- keep-alive --------------------------------------------------------------------


async def test_keepalive_answers_two_requests_on_one_connection(tmp_path: Path) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url, 'keepalive_timeout = "5s"')) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(get("/api/named/one"))
        first = await read_response(reader)
        await asyncio.sleep(0.3)  # idle, well within keepalive_timeout
        writer.write(get("/api/named/two"))
        second = await read_response(reader)
    assert (first.status, first.body) == (200, b"one")
    assert (second.status, second.body) == (200, b"two")
    assert "Connection" not in first.headers
    assert "Connection" not in second.headers


async def test_keepalive_timeout_closes_an_idle_connection(tmp_path: Path) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url, 'keepalive_timeout = "300ms"')) as gw,
        client(gw) as (reader, writer),
    ):
        loop = asyncio.get_running_loop()
        writer.write(get("/api/named/one"))
        resp = await read_response(reader)
        idle_since = loop.time()
        rest = await read_eof(reader)
        closed_after = loop.time() - idle_since
    assert (resp.status, resp.body) == (200, b"one")
    assert rest == b""  # closed without a word
    assert 0.2 < closed_after < 3.0


# -- pipelining --------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(get("/api/named/a") + get("/api/named/b") + get("/api/named/c"))
        answers = [await read_response(reader) for _ in range(3)]
    assert [(r.status, r.body) for r in answers] == [(200, b"a"), (200, b"b"), (200, b"c")]


async def test_pipelined_fast_requests_wait_for_a_slow_first_one(tmp_path: Path) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(
            get("/api/named/slow?delay=0.5") + get("/api/named/fast1") + get("/api/named/fast2")
        )
        answers = [await read_response(reader) for _ in range(3)]
        # still usable after the pipeline drained
        writer.write(get("/api/named/after"))
        after = await read_response(reader)
    assert [r.body for r in answers] == [b"slow", b"fast1", b"fast2"]
    assert all(r.status == 200 for r in answers)
    assert after.body == b"after"


async def test_pipeline_on_a_warm_pool_mixes_every_framing_in_order(tmp_path: Path) -> None:
    """With an idle upstream connection each request takes the callback path;
    HEAD, 204 and 304 leave it for a task and the next one comes back to it."""
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(get("/api/named/warm"))
        assert (await read_response(reader)).body == b"warm"
        writer.write(
            get("/api/named/a")
            + b"HEAD /api/named/b HTTP/1.1\r\nHost: gw.test\r\n\r\n"
            + get("/api/status/204")
            + get("/api/status/304")
            + get("/api/slow?chunks=3&delay=0.01&size=2")
            + get("/api/named/c")
        )
        answers = [
            await read_response(reader, m) for m in ("GET", "HEAD", "GET", "GET", "GET", "GET")
        ]
        writer.write(get("/api/named/after"))
        after = await read_response(reader)
    assert [(r.status, r.body) for r in answers] == [
        (200, b"a"),
        (200, b""),
        (204, b""),
        (304, b""),
        (200, b"001122"),
        (200, b"c"),
    ]
    assert answers[1].headers["Content-Length"] == "1"  # HEAD: the length GET would have
    assert (after.status, after.body) == (200, b"after")
    assert b.connections_opened == 1


async def test_pipelined_post_with_a_body_then_a_get(tmp_path: Path) -> None:
    data = payload(100_000)
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(
            b"POST /api/echo HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n%b"
            % (len(data), data)
            + get("/api/named/after")
        )
        posted = await read_response(reader)
        after = await read_response(reader)
    assert posted.status == 200
    assert json_of(posted.body)["body_sha256"] == sha256(data)
    assert (after.status, after.body) == (200, b"after")


async def test_http11_connection_close_is_answered_then_closed(tmp_path: Path) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(get("/api/named/last", extra=b"Connection: close\r\n"))
        resp = await read_response(reader)
        rest = await read_eof(reader)
    assert (resp.status, resp.body) == (200, b"last")
    assert resp.headers["Connection"] == "close"
    assert rest == b""


async def test_bytes_after_a_connection_close_request_answered_at_once_are_dropped(
    tmp_path: Path,
) -> None:
    """A 404 is written while the parser still holds the bytes after it; they are not
    parsed into a second answer, and nothing fails in the connection (found by fuzzing:
    the error for them was written after the FIN, and the transport died)."""
    loop = asyncio.get_running_loop()
    failures: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: failures.append(context))
    try:
        async with (
            Backend(ROUTES) as b,
            gateway(tmp_path, front(b.url)) as gw,
            client(gw) as (reader, writer),
        ):
            writer.write(get("/nowhere", extra=b"Connection: close\r\n") + b"GARBAGE\r\n")
            resp = await read_response(reader)
            rest = await read_eof(reader)
    finally:
        loop.set_exception_handler(None)
    assert resp.status == 404 and resp.headers["Connection"] == "close"
    assert rest == b""
    assert failures == []


# -- HTTP/1.0 ------------------------------------------------------------------------


async def test_http10_without_keepalive_is_answered_then_closed(tmp_path: Path) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(get("/api/named/old", "1.0"))
        resp = await read_response(reader)
        rest = await read_eof(reader)
    assert (resp.status, resp.body) == (200, b"old")
    assert resp.headers["Connection"] == "close"
    assert rest == b""


async def test_http10_with_keepalive_stays_open(tmp_path: Path) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(get("/api/named/one", "1.0", b"Connection: keep-alive\r\n"))
        first = await read_response(reader)
        writer.write(get("/api/named/two", "1.0", b"Connection: keep-alive\r\n"))
        second = await read_response(reader)
    assert (first.status, first.body) == (200, b"one")
    assert first.headers["Connection"].lower() == "keep-alive"
    assert (second.status, second.body) == (200, b"two")
    assert second.headers["Connection"].lower() == "keep-alive"


# -- response framing ----------------------------------------------------------------


async def test_unknown_length_response_is_chunked_to_an_http11_client(tmp_path: Path) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(get("/api/stream"))
        resp = await read_response(reader)
        writer.write(get("/api/named/next"))  # the chunked framing ended cleanly
        following = await read_response(reader)
    assert resp.status == 200
    assert resp.chunked
    assert "Content-Length" not in resp.headers
    assert len(resp.body) == STREAMED
    assert sha256(resp.body) == sha256(payload(STREAMED))
    assert following.body == b"next"


async def test_unknown_length_response_is_close_delimited_to_an_http10_client(
    tmp_path: Path,
) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(get("/api/stream", "1.0", b"Connection: keep-alive\r\n"))
        resp = await read_response(reader)  # no length: reads until the close
    assert resp.status == 200
    assert not resp.chunked
    assert "Transfer-Encoding" not in resp.headers
    assert "Content-Length" not in resp.headers
    assert resp.headers["Connection"] == "close"
    assert len(resp.body) == STREAMED
    assert sha256(resp.body) == sha256(payload(STREAMED))


async def test_head_keeps_content_length_sends_no_body_and_keeps_the_connection(
    tmp_path: Path,
) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(b"HEAD /api/download/5000 HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        head = await read_response(reader, "HEAD")
        writer.write(get("/api/named/next"))
        # Body bytes after the HEAD's head would show up here, before the status line.
        following = await read_response(reader)
    assert head.status == 200
    assert head.headers["Content-Length"] == "5000"
    assert "Transfer-Encoding" not in head.headers
    assert (following.status, following.body) == (200, b"next")


# -- request bodies -------------------------------------------------------------------


async def test_expect_100_continue_then_body_is_echoed(tmp_path: Path) -> None:
    data = payload(50_000)
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(
            b"POST /api/echo HTTP/1.1\r\nHost: gw.test\r\nExpect: 100-continue\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % len(data)
        )
        interim = await read_response(reader)  # before a single body byte is sent
        writer.write(data)
        resp = await read_response(reader)
    assert interim.status == 100
    assert resp.status == 200
    echoed = json_of(resp.body)
    assert (echoed["method"], echoed["body_length"]) == ("POST", len(data))
    assert echoed["body_sha256"] == sha256(data)


async def test_expect_100_continue_over_the_body_limit_is_413_without_continue(
    tmp_path: Path,
) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url, 'client_max_body_size = "1MiB"')) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(
            b"POST /api/echo HTTP/1.1\r\nHost: gw.test\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (2 * 1024 * 1024)
        )
        resp = await read_response(reader)  # the final answer, no 100 first
        rest = await read_eof(reader)  # the body was never sent: the gateway closes
    assert resp.status == 413
    assert resp.headers["Connection"] == "close"
    assert error_of(resp)["error"] == "payload_too_large"
    assert rest == b""
    assert b.hits == 0


async def test_chunked_request_body_arrives_intact(tmp_path: Path) -> None:
    data = payload(1024 * 1024)
    sizes = [1, 7, 4096, 65536, 100_000, 300_001]
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(
            b"POST /api/echo HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        pos = 0
        i = 0
        while pos < len(data):
            part = data[pos : pos + sizes[i % len(sizes)]]
            writer.write(b"%x\r\n%b\r\n" % (len(part), part))
            await writer.drain()
            pos += len(part)
            i += 1
        writer.write(b"0\r\n\r\n")
        resp = await read_response(reader)
    assert resp.status == 200
    echoed = json_of(resp.body)
    assert echoed["body_length"] == len(data)
    assert echoed["body_sha256"] == sha256(data)


async def test_413_reaches_a_client_still_sending_its_body(tmp_path: Path) -> None:
    """The gateway answers 413 from the head alone, while the client is still
    uploading. A plain socket, not a StreamReader, so that the answer waits in
    the kernel until the whole body is sent: a close that RSTs (unread data)
    instead of lingering would destroy it."""
    body = os.urandom(4 * 1024 * 1024)
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url, 'client_max_body_size = "1MiB"')) as gw,
    ):
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", gw.ports[0]))
            await loop.sock_sendall(
                sock,
                b"POST /api/echo HTTP/1.1\r\nHost: gw.test\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body),
            )
            await asyncio.wait_for(loop.sock_sendall(sock, body), TIMEOUT)
            received = b""
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), TIMEOUT):
                received += chunk
        finally:
            sock.close()
    reader = asyncio.StreamReader()
    reader.feed_data(received)
    reader.feed_eof()
    resp = await read_response(reader)
    assert resp.status == 413
    assert resp.headers["Connection"] == "close"
    assert error_of(resp)["error"] == "payload_too_large"
    assert b.hits == 0


# -- broken requests -------------------------------------------------------------------


async def test_malformed_request_line_is_400_json_and_close(tmp_path: Path) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(b"GET /api/named/x HTTP/1.1 trailing-garbage\r\nHost: gw.test\r\n\r\n")
        resp = await read_response(reader)
        rest = await read_eof(reader)
    assert resp.status == 400
    assert resp.headers["Connection"] == "close"
    assert error_of(resp)["error"] == "bad_request"
    assert rest == b""
    assert b.hits == 0


async def test_header_line_over_max_header_size_is_431_json(tmp_path: Path) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url, "max_header_size = 1024")) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(get("/api/named/x", extra=b"X-Big: " + b"a" * 2000 + b"\r\n"))
        resp = await read_response(reader)
    assert resp.status == 431
    assert resp.headers["Connection"] == "close"
    assert error_of(resp)["error"] == "request_header_fields_too_large"
    assert b.hits == 0


async def test_request_line_over_max_header_size_is_431_json(tmp_path: Path) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url, "max_header_size = 1024")) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(get("/api/named/" + "x" * 2000))
        resp = await read_response(reader)
    assert resp.status == 431
    assert resp.headers["Connection"] == "close"
    assert error_of(resp)["error"] == "request_header_fields_too_large"
    assert b.hits == 0


async def test_giant_head_of_small_headers_is_431(tmp_path: Path) -> None:
    # max_header_size 1024: no line is too long, but the head's total limit is 64 KiB.
    # Over 256 KiB, so that the head cannot arrive in a single socket read.
    many = b"".join(b"X-Header-%05d: %s\r\n" % (i, b"v" * 40) for i in range(6000))
    assert len(many) > 256 * 1024
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url, "max_header_size = 1024")) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(get("/api/named/x", extra=many))
        resp = await read_response(reader)
        rest = await read_eof(reader)
    assert resp.status == 431
    assert resp.headers["Connection"] == "close"
    assert error_of(resp)["error"] == "request_header_fields_too_large"
    assert rest == b""
    assert b.hits == 0


async def test_request_after_a_malformed_one_is_not_answered(tmp_path: Path) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(
            b"GET /api/named/bad HTTP/1.1\r\nHost: gw.test\r\nBad Header Line\r\n\r\n"
            + get("/api/named/after")
        )
        bad = await read_response(reader)
        rest = await read_eof(reader)
    assert bad.status == 400
    assert bad.headers["Connection"] == "close"
    assert error_of(bad)["error"] == "bad_request"
    assert rest == b""  # nothing for /after: the connection closed after the 400
    assert b.hits == 0


# -- a client that leaves ----------------------------------------------------------------


async def test_giant_head_of_small_headers_in_one_read_is_431(tmp_path: Path) -> None:
    # max_header_size 1024: no line is too long, but the head's total limit is 64 KiB.
    many = b"".join(b"X-Header-%05d: %s\r\n" % (i, b"v" * 40) for i in range(2000))
    assert 64 * 1024 < len(many) < 256 * 1024  # fits in one socket read
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url, "max_header_size = 1024")) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(get("/api/named/x", extra=many))
        resp = await read_response(reader)
    assert resp.status == 431
    assert error_of(resp)["error"] == "request_header_fields_too_large"
    assert b.hits == 0


async def test_pipelined_requests_before_a_malformed_one_are_answered_then_400(
    tmp_path: Path,
) -> None:
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(
            get("/api/named/first")
            + get("/api/named/second")
            + b"GET /api/named/bad HTTP/1.1\r\nHost: gw.test\r\nBad Header Line\r\n\r\n"
            + get("/api/named/after")
        )
        first = await read_response(reader)
        second = await read_response(reader)
        bad = await read_response(reader)
        rest = await read_eof(reader)
    assert (first.status, first.body) == (200, b"first")
    assert (second.status, second.body) == (200, b"second")
    assert bad.status == 400
    assert error_of(bad)["error"] == "bad_request"
    assert rest == b""
    assert b.hits == 2


def _requests_total(text: str, status: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "pyproxyd_requests_total" and s.labels == {
                "route": "front",
                "upstream": "app",
                "status": status,
            }:
                return s.value
    return 0.0


async def test_client_leaving_while_the_upstream_works_is_counted_as_499(
    tmp_path: Path,
) -> None:
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        arrived.set()
        with suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 30)
        return web.Response(text="late")

    async with Backend([web.get("/hang", hang)]) as b, gateway(tmp_path, front(b.url)) as gw:
        metrics_url = f"http://127.0.0.1:{gw.admin_port}/metrics"
        _, _, before = await fetch(metrics_url)
        try:
            async with client(gw) as (_, writer):
                writer.write(get("/api/hang"))
                await asyncio.wait_for(arrived.wait(), TIMEOUT)
            # the client is gone; the upstream still works on its request
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT
            async with aiohttp.ClientSession() as s:
                while True:
                    async with s.get(metrics_url) as r:
                        after = await r.text()
                    counted = _requests_total(after, "499") - _requests_total(
                        before.decode(), "499"
                    )
                    if counted or loop.time() > deadline:
                        break
                    await asyncio.sleep(0.05)
        finally:
            release.set()
    assert counted == 1
    assert _requests_total(after, "200") == _requests_total(before.decode(), "200")


# -- WebSocket -------------------------------------------------------------------------------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_handshake(path: str, key: bytes) -> bytes:
    return (
        (
            f"GET {path} HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: superchat, chat\r\n"
        ).encode()
        + b"Sec-WebSocket-Key: "
        + key
        + b"\r\n\r\n"
    )


def masked_text_frame(text: bytes) -> bytes:
    assert len(text) < 126
    mask = os.urandom(4)
    return (
        bytes([0x81, 0x80 | len(text)]) + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(text))
    )


async def test_websocket_handshake_passes_accept_and_protocol(tmp_path: Path) -> None:
    async def ws_chat(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
        return ws

    key = base64.b64encode(os.urandom(16))
    async with (
        Backend([web.get("/ws", ws_chat)]) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(ws_handshake("/api/ws", key))
        resp = await read_response(reader)
        writer.write(masked_text_frame(b"hi"))  # the tunnel carries frames both ways
        frame = await asyncio.wait_for(reader.readexactly(2 + len(b"echo:hi")), TIMEOUT)
    assert resp.status == 101
    expected = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
    assert resp.headers["Sec-WebSocket-Accept"] == expected
    assert resp.headers["Sec-WebSocket-Protocol"] == "chat"
    assert resp.headers["Upgrade"].lower() == "websocket"
    assert resp.headers["Connection"].lower() == "upgrade"
    assert frame == bytes([0x81, len(b"echo:hi")]) + b"echo:hi"


async def test_websocket_refused_by_the_upstream_is_passed_through(tmp_path: Path) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no sockets for you")

    async with (
        Backend([web.get("/ws", refuse)], name="refuser") as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(ws_handshake("/api/ws", base64.b64encode(os.urandom(16))))
        resp = await read_response(reader)
    assert resp.status == 403
    assert resp.body == b"no sockets for you"
    assert resp.headers["X-Backend"] == "refuser"  # the upstream's answer, not the gateway's
    assert "Sec-WebSocket-Accept" not in resp.headers


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 700 Odd\r\nContent-Length: 2\r\n\r\nno",
        b"HTTP/1.1 101 Switching Protocols\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"HTTP/1.1 403 No\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(20_000)) + b"\r\n",
    ],
    ids=["status-700", "one-long-line", "many-lines"],
)
async def test_a_websocket_answer_that_no_request_would_get_is_a_bad_gateway(
    tmp_path: Path, answer: bytes
) -> None:
    """The rules of any upstream head: a status in 100-599
    (upstream.connection.response_status), at most server.max_header_size."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        await reader.read()

    async with (
        RawBackend(handler) as b,
        gateway(tmp_path, front(b.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(ws_handshake("/api/ws", base64.b64encode(os.urandom(16))))
        resp = await read_response(reader)
    assert resp.status == 502
    assert error_of(resp)["error"] == "bad_gateway"

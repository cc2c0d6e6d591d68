"""The gateway at its edges: framing both ways, stalled bodies, odd upstream
heads, forged identity headers, absolute-form targets and encoded separators.

Each test speaks raw bytes to the real gateway, with a raw upstream that
records exactly what reached it (or answers exactly what a test needs).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harness.backends import Backend, RawBackend, json_of, read_request
from harness.gateway import access_lines, config, free_port, gateway, one_route
from tests.e2e.test_frontend import (
    ROUTES,
    TIMEOUT,
    Response,
    client,
    error_of,
    front,
    read_eof,
    read_response,
)

Raw = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Recorder:
    """A raw upstream that answers every request 200 and keeps what it read."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.raw = bytearray()  # every byte that reached the upstream

    async def __call__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        while True:
            head, body = await read_request(reader)
            self.raw += head + body
            self.heads.append(head)
            self.bodies.append(body)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()


async def ask(port: int, data: bytes, method: str = "GET") -> tuple[Response, bytes]:
    """Send raw bytes on a fresh connection: the first response and whatever
    followed it until the gateway closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        resp = await read_response(reader, method)
        try:
            rest = await asyncio.wait_for(reader.read(), 1.0)
        except TimeoutError:
            rest = b"(still open)"
        return resp, rest
    finally:
        writer.close()


# -- 1. framing: a Connection header cannot unframe a request -----------------------


SMUGGLED = b"GET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "connection",
    [
        b"Content-Length",
        b"close, content-length",
        b"Transfer-Encoding",
        b"Host",
        b"keep-alive,HOST",
    ],
)
async def test_connection_naming_a_framing_header_is_400_and_nothing_reaches_upstream(
    tmp_path: Path, connection: bytes
) -> None:
    rec = Recorder()
    async with RawBackend(rec) as up, gateway(tmp_path, front(up.url)) as gw:
        resp, rest = await ask(
            gw.ports[0],
            b"POST /api/x HTTP/1.1\r\nHost: x\r\nConnection: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (connection, len(SMUGGLED), SMUGGLED),
        )
        assert resp.status == 400
        assert error_of(resp)["error"] == "bad_request"
        assert resp.headers["Connection"] == "close"
        assert rest == b""  # the smuggled request is not answered either
        assert up.connections_opened == 0 and rec.raw == b""


async def test_a_chunked_body_with_connection_naming_te_is_refused(tmp_path: Path) -> None:
    rec = Recorder()
    async with RawBackend(rec) as up, gateway(tmp_path, front(up.url)) as gw:
        resp, _ = await ask(
            gw.ports[0],
            b"POST /api/x HTTP/1.1\r\nHost: x\r\nConnection: Transfer-Encoding\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
        )
        assert resp.status == 400
        assert up.connections_opened == 0


@pytest.mark.parametrize(
    ("coding", "status", "code"),
    [
        (b"gzip, chunked", 501, "not_implemented"),
        (b"deflate,chunked", 501, "not_implemented"),
        (b"x-custom, chunked", 501, "not_implemented"),
        (b"chunked, gzip", 400, "bad_request"),
        (b"gzip", 400, "bad_request"),
    ],
)
async def test_a_transfer_coding_other_than_chunked_is_refused(
    tmp_path: Path, coding: bytes, status: int, code: str
) -> None:
    rec = Recorder()
    async with RawBackend(rec) as up, gateway(tmp_path, front(up.url)) as gw:
        resp, _ = await ask(
            gw.ports[0],
            b"POST /api/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: %s\r\n\r\n0\r\n\r\n" % coding,
        )
        assert resp.status == status
        assert error_of(resp)["error"] == code
        assert up.connections_opened == 0


@pytest.mark.parametrize(
    "head",
    [
        b"GET /api/x HTTP/1.1\r\n\r\n",  # no Host
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer a\r\n"
        b"Authorization: Bearer b\r\n\r\n",
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["no-host", "two-hosts", "two-authorizations", "two-lengths", "length-and-chunked"],
)
async def test_ambiguous_request_heads_are_400_and_not_forwarded(
    tmp_path: Path, head: bytes
) -> None:
    rec = Recorder()
    async with RawBackend(rec) as up, gateway(tmp_path, front(up.url)) as gw:
        resp, _ = await ask(gw.ports[0], head)
        assert resp.status == 400
        assert error_of(resp)["error"] == "bad_request"
        assert up.connections_opened == 0


async def test_http10_without_host_is_still_served(tmp_path: Path) -> None:
    rec = Recorder()
    async with RawBackend(rec) as up, gateway(tmp_path, front(up.url)) as gw:
        resp, _ = await ask(gw.ports[0], b"GET /api/x HTTP/1.0\r\n\r\n")
        assert resp.status == 200
        assert len(rec.heads) == 1


# -- 2. an upstream's stray bytes reach no client ------------------------------------


STRAY = (
    b"HTTP/1.1 404 Stray\r\nSet-Cookie: stolen=1\r\nContent-Length: 5\r\nX-Stray: yes\r\n\r\nstray"
)


def _owed(framing: str) -> bytes:
    if framing == "length":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n"


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_second_unsolicited_response_is_dropped_and_the_connection_closed(
    tmp_path: Path, framing: str
) -> None:
    async def upstream(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int
    ) -> None:
        while True:
            await read_request(reader)
            if conn == 1:
                writer.write(_owed(framing) + STRAY)  # one write: the owed answer and more
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
            await writer.drain()

    async with (
        RawBackend(upstream) as up,
        gateway(tmp_path, front(up.url)) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(b"GET /api/a HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await read_response(reader)
        writer.write(b"GET /api/b HTTP/1.1\r\nHost: x\r\n\r\n")
        second = await read_response(reader)
    assert (first.status, first.body) == (200, b"first")
    assert "Set-Cookie" not in first.headers and "X-Stray" not in first.headers
    assert "Connection" not in first.headers  # the client connection stays usable
    assert (second.status, second.body) == (200, b"second")
    assert up.connections_opened == 2  # the confused connection was not reused


# -- 3. a stalled request body ---------------------------------------------------------


async def test_a_stalled_body_gets_408_and_the_upstream_request_is_aborted(
    tmp_path: Path,
) -> None:
    got: list[bytes] = []
    closed = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        try:
            while data := await reader.read(65536):
                got.append(data)
        finally:
            closed.set()

    toml = front("http://127.0.0.1:1", 'client_body_timeout = "300ms"')
    async with RawBackend(upstream) as up:
        toml = front(up.url, 'client_body_timeout = "300ms"')
        async with gateway(tmp_path, toml) as gw, client(gw) as (reader, writer):
            writer.write(b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
            resp = await read_response(reader)
            await asyncio.wait_for(closed.wait(), TIMEOUT)
    assert resp.status == 408
    assert error_of(resp)["error"] == "request_timeout"
    assert resp.headers["Connection"] == "close"
    assert b"".join(got).endswith(b"abc")  # the upstream saw a request it never completed


async def test_a_slow_but_steady_body_is_not_timed_out(tmp_path: Path) -> None:
    # The timeout runs between two reads (nginx), not over the whole body.
    async with (
        Backend(ROUTES) as b,
        gateway(tmp_path, front(b.url, 'client_body_timeout = "400ms"')) as gw,
        client(gw) as (reader, writer),
    ):
        writer.write(b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        for byte in b"12345678":
            await asyncio.sleep(0.15)
            writer.write(bytes([byte]))
        resp = await read_response(reader)
    assert resp.status == 200
    assert json_of(resp.body)["body_sha256"]


async def test_a_stalled_body_on_a_route_that_answers_first_gets_no_second_answer(
    tmp_path: Path,
) -> None:
    # A 401 answers before the body is read; the connection then just closes.
    toml = config(
        """
[auth.api_key]
header = "X-API-Key"
[consumers.alice]
api_key_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[upstreams.app]
targets = [{ url = "http://127.0.0.1:1" }]
[[routes]]
id = "keyed"
path = "/k/**"
upstream = "app"
auth = "api_key"
""",
        server='client_body_timeout = "300ms"',
    )
    async with gateway(tmp_path, toml) as gw, client(gw) as (reader, writer):
        writer.write(b"POST /k/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        resp = await read_response(reader)
        rest = await read_eof(reader)
    assert resp.status == 401
    assert rest == b""


# -- 4. upstream response heads are bounded ----------------------------------------------


def _answering(head: bytes) -> Raw:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(head)
        await writer.drain()
        await reader.read()

    return upstream


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20_000 + b"\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(20_000)) + b"\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    ],
    ids=["one-long-header", "many-headers", "gzip-chunked", "gzip-only"],
)
async def test_an_oversized_or_unframeable_upstream_head_is_502(
    tmp_path: Path, head: bytes
) -> None:
    async with RawBackend(_answering(head)) as up, gateway(tmp_path, front(up.url)) as gw:
        resp, _ = await ask(gw.ports[0], b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 502
    assert error_of(resp)["error"] == "bad_gateway"


async def test_a_head_just_under_max_header_size_is_relayed(tmp_path: Path) -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 7000 + b"\r\nContent-Length: 2\r\n\r\nok"
    async with RawBackend(_answering(head)) as up, gateway(tmp_path, front(up.url)) as gw:
        resp, _ = await ask(gw.ports[0], b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (resp.status, resp.body) == (200, b"ok")
    assert len(resp.headers["X-Big"]) == 7000


async def test_an_endless_upstream_header_is_cut_off_early(tmp_path: Path) -> None:
    written = 0
    cut = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        nonlocal written
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        try:
            for _ in range(1024):  # up to 64 MiB, never a line end
                writer.write(b"a" * 65536)
                await writer.drain()
                written += 65536
        except ConnectionError:
            cut.set()

    async with RawBackend(upstream) as up, gateway(tmp_path, front(up.url)) as gw:
        resp, _ = await ask(gw.ports[0], b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(cut.wait(), TIMEOUT)
    assert resp.status == 502
    assert written < 16 * 1024 * 1024  # read a little past the limit, not the whole thing


# -- 5. header names with underscores ------------------------------------------------------


async def test_header_names_with_underscores_are_dropped(tmp_path: Path) -> None:
    rec = Recorder()
    async with RawBackend(rec) as up, gateway(tmp_path, front(up.url)) as gw:
        resp, _ = await ask(
            gw.ports[0],
            b"GET /api/x HTTP/1.1\r\nHost: x\r\nX_User_ID: admin\r\n"
            b"X_Forwarded_For: 10.0.0.1\r\nX-Kept: yes\r\n\r\n",
        )
    assert resp.status == 200
    head = rec.heads[0].lower()
    assert b"x_user_id" not in head and b"x_forwarded_for" not in head
    assert b"10.0.0.1" not in head
    assert b"x-kept: yes" in head


# -- 6. targets and paths --------------------------------------------------------------------


async def test_an_absolute_form_target_is_routed_by_its_path(tmp_path: Path) -> None:
    rec = Recorder()
    async with RawBackend(rec) as up, gateway(tmp_path, front(up.url)) as gw:
        resp, _ = await ask(
            gw.ports[0],
            b"GET http://Example.test:8080/api/x/y?q=1 HTTP/1.1\r\nHost: other.test\r\n\r\n",
        )
    assert resp.status == 200
    request_line, *lines = rec.heads[0].split(b"\r\n")
    assert request_line == b"GET /x/y?q=1 HTTP/1.1"
    # RFC 9112 3.2.2: the target's authority stands in for the Host header.
    assert b"X-Forwarded-Host: Example.test:8080" in lines


@pytest.mark.parametrize(
    "target", [b"ftp://example.test/api/x", b"http://user@example.test/api/x", b"http:///api/x"]
)
async def test_an_absolute_form_target_that_is_not_http_is_400(
    tmp_path: Path, target: bytes
) -> None:
    rec = Recorder()
    async with RawBackend(rec) as up, gateway(tmp_path, front(up.url)) as gw:
        resp, _ = await ask(gw.ports[0], b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
    assert resp.status == 400
    assert up.connections_opened == 0


async def test_an_encoded_slash_is_not_a_separator(tmp_path: Path) -> None:
    rec = Recorder()
    toml = config(
        one_route("http://127.0.0.1:1", "admin", "/admin", "closed")
        + one_route("UP", "public", "/public", "open")
        + one_route("UP", "strip", "/strip", "stripped")
    )
    async with RawBackend(rec) as up:
        toml = toml.replace("UP", up.url)
        async with gateway(tmp_path, toml) as gw:
            crossing, _ = await ask(
                gw.ports[0], b"GET /public%2F..%2Fadmin/x HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            stripped, _ = await ask(gw.ports[0], b"GET /strip/a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n")
    assert crossing.status == 404  # one segment under "/", not /admin/x
    assert error_of(crossing)["error"] == "no_route"
    assert stripped.status == 200
    assert rec.heads[0].startswith(b"GET /a%2Fb HTTP/1.1\r\n")


async def test_a_502_names_no_upstream_address(tmp_path: Path, log_file: Path) -> None:
    port = free_port()
    async with gateway(tmp_path, front(f"http://127.0.0.1:{port}")) as gw:
        resp, _ = await ask(gw.ports[0], b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 502
    message = str(error_of(resp)["message"])
    assert str(port) not in message and "127.0.0.1" not in message
    assert "errno" not in message.lower() and "refused" not in message.lower()
    # The operator still learns what happened, from the log.
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    logged = [e for e in lines if e["event"] == "upstream_error"]
    assert logged and str(port) in logged[0]["error"]
    assert logged[0]["request_id"] == resp.headers["X-Request-ID"]


# -- requests the frontend refuses are logged and counted like any other ---------------


async def test_a_request_refused_while_parsing_is_logged_and_counted(
    tmp_path: Path, log_file: Path
) -> None:
    toml = config(one_route("http://127.0.0.1:1", "r", "/api"), access_log=True)
    async with gateway(tmp_path, toml) as gw:
        bad, _ = await ask(gw.ports[0], b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        big, _ = await ask(
            gw.ports[0], b"GET /api/y HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
        )
        gw.before_scrape()
        samples = {
            (s.labels["route"], s.labels["status"]): s.value
            for family in text_string_to_metric_families(generate_latest().decode())
            if family.name == "pyproxyd_requests"
            for s in family.samples
            if s.name == "pyproxyd_requests_total"
        }
        await asyncio.sleep(0.1)  # the access log is written in batches (50 ms)
    assert (bad.status, big.status) == (400, 431)
    lines = access_lines(log_file)
    assert [(e["status"], e["method"], e["path"]) for e in lines] == [
        (400, "GET", "/api/x"),
        (431, "GET", "/api/y"),
    ]
    assert lines[0]["request_id"] == bad.headers["X-Request-ID"]
    assert samples[("(none)", "400")] >= 1 and samples[("(none)", "431")] >= 1


async def test_client_timeouts_follow_a_reload(tmp_path: Path) -> None:
    """client_body_timeout (like the other client timeouts and max_header_size)
    applies from the next request after a reload, without a restart."""
    rec = Recorder()
    async with RawBackend(rec) as up, gateway(tmp_path, front(up.url)) as gw:  # default: 60 s
        (tmp_path / "gateway.toml").write_text(front(up.url, 'client_body_timeout = "300ms"'))
        assert await gw.reloader.reload()
        async with client(gw) as (reader, writer):
            writer.write(b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
            resp = await read_response(reader)
    assert resp.status == 408

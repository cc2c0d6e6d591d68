"""exchange() and TargetPool against real backends on loopback."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.backends import (
    Backend,
    RawBackend,
    payload,
    read_request,
    self_signed,
    sha256,
    wait_for,
)
from harness.gateway import free_port
from pyproxyd import errors
from pyproxyd.bodies import chunked
from pyproxyd.upstream.http1 import READ_HIGH_WATER, UpstreamResponse, exchange
from pyproxyd.upstream.pool import PoolSettings, TargetPool

SETTINGS = PoolSettings(
    max_connections=100,
    keepalive=32,
    keepalive_requests=1000,
    keepalive_timeout=60.0,
    keepalive_time=3600.0,
    connect_timeout=2.0,
    read_timeout=5.0,
)


def pool_for(port: int, **changes: Any) -> TargetPool:
    return TargetPool("127.0.0.1", port, replace(SETTINGS, **changes))


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


async def read_all(resp: UpstreamResponse) -> bytes:
    parts = []
    while chunk := await resp.read():
        parts.append(chunk)
    return b"".join(parts)


async def fetch(pool: TargetPool, path: str, **kw: object) -> tuple[UpstreamResponse, bytes]:
    resp = await exchange(pool, get(path), None, **kw)  # type: ignore[arg-type]
    body = await read_all(resp)
    resp.release()
    return resp, body


def header(resp: UpstreamResponse, name: str) -> list[str]:
    return [v.decode() for k, v in resp.headers if k.lower() == name.lower().encode()]


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


# -- keep-alive rules, observed at the backend -------------------------------------


async def test_keepalive_requests_10_gives_5_connections_for_50_exchanges() -> None:
    async with Backend() as b:
        pool = pool_for(b.port, keepalive_requests=10)
        conn_ids = []
        for _ in range(50):
            resp, _ = await fetch(pool, "/echo")
            assert resp.status == 200
            conn_ids.append(header(resp, "X-Conn-Id")[0])
        assert b.connections_opened == 5
        assert pool.opened_total == 5
        # Ten in a row on each connection, then a new one.
        assert [len(set(conn_ids[i : i + 10])) for i in range(0, 50, 10)] == [1] * 5
        assert len(set(conn_ids)) == 5
        await pool.aclose()


async def test_idle_connections_close_after_keepalive_timeout() -> None:
    async with Backend() as b:
        pool = pool_for(b.port, keepalive_timeout=0.2)
        await asyncio.gather(*(fetch(pool, "/slow?chunks=2&delay=0.05") for _ in range(3)))
        assert b.open_connections == 3
        assert pool.idle == 3
        # No traffic at all: the sweep timer alone closes them.
        await wait_for(lambda: b.open_connections == 0, timeout=1.0)
        assert pool.idle == 0
        assert pool.busy == 0


async def test_burst_of_20_keeps_at_most_4_idle() -> None:
    async with Backend() as b:
        pool = pool_for(b.port, keepalive=4)
        results = await asyncio.gather(
            *(fetch(pool, "/slow?chunks=2&delay=0.05") for _ in range(20))
        )
        assert all(r.status == 200 for r, _ in results)
        assert b.connections_opened == 20
        await wait_for(lambda: pool.idle == 4)  # the surplus closes after TRIM_GRACE
        await wait_for(lambda: b.open_connections == 4)
        await pool.aclose()


async def test_backend_closing_idle_connections_never_errors() -> None:
    async with Backend(close_idle_after=0.3) as b:
        pool = pool_for(b.port)
        statuses = []
        for _ in range(3):
            resp, _ = await fetch(pool, "/echo")
            statuses.append(resp.status)
            await asyncio.sleep(0.5)
        assert statuses == [200, 200, 200]
        assert b.connections_opened == 3
        await pool.aclose()


async def test_idle_connection_closed_by_upstream_leaves_idle_set_at_once() -> None:
    async with Backend(close_idle_after=0.1) as b:
        pool = pool_for(b.port)  # our own keepalive_timeout is 60 s
        await fetch(pool, "/echo")
        assert pool.idle == 1
        await wait_for(lambda: pool.idle == 0, timeout=1.0)
        await wait_for(lambda: b.open_connections == 0)
        await pool.aclose()


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


@pytest.mark.parametrize("with_body", [False, True], ids=["GET", "POST-body"])
async def test_keepalive_race_is_retried_on_a_fresh_connection(with_body: bool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        # Connection 1 answers once, then takes the 2nd request and closes
        # without a byte of answer: the upstream's keep-alive timer won the race.
        served = 0
        while True:
            _, body = await read_request(reader)
            if n == 1 and served == 1:
                return
            served += 1
            writer.write(answer(b"conn%d:%s" % (n, hashlib.sha256(body).hexdigest().encode())))
            await writer.drain()

    async with RawBackend(handler) as b:
        pool = pool_for(b.port)
        first, _ = await fetch(pool, "/a")
        assert first.status == 200
        data = payload(5000)
        head = get("/b", "POST", f"Content-Length: {len(data)}\r\n") if with_body else get("/b")
        resp = await exchange(pool, head, chunks_of(data, 1000) if with_body else None)
        body = await read_all(resp)
        resp.release()
        expected = sha256(data) if with_body else sha256(b"")
        assert body == b"conn2:" + expected.encode()
        assert b.connections_opened == 2
        assert pool.opened_total == 2
        assert (pool.busy, pool.idle) == (0, 1)
        await pool.aclose()


async def test_keepalive_race_with_body_over_replay_limit_is_bad_gateway() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(b"ok"))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(100_000)  # take the whole body, then close unanswered

    async with RawBackend(handler) as b:
        pool = pool_for(b.port)
        await fetch(pool, "/a")
        data = payload(100_000)
        with pytest.raises(errors.BadGateway) as info:
            await exchange(
                pool,
                get("/b", "POST", f"Content-Length: {len(data)}\r\n"),
                chunks_of(data, 8192),
            )
        assert type(info.value) is errors.BadGateway
        assert info.value.response_started is False
        assert "too large to replay" in info.value.detail
        assert b.connections_opened == 1
        assert pool.busy == 0
        await pool.aclose()


async def test_fresh_connection_closed_unanswered_is_bad_gateway_not_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)

    async with RawBackend(handler) as b:
        pool = pool_for(b.port)
        with pytest.raises(errors.BadGateway) as info:
            await exchange(pool, get("/"), None)
        assert type(info.value) is errors.BadGateway
        assert info.value.response_started is False
        assert b.connections_opened == 1
        assert pool.busy == 0


# -- bodies both ways --------------------------------------------------------------


async def test_upload_1mib_with_content_length_arrives_intact() -> None:
    data = payload(1 << 20)
    async with Backend() as b:
        pool = pool_for(b.port)
        head = get("/echo", "POST", f"Content-Length: {len(data)}\r\n")
        resp = await exchange(pool, head, chunks_of(data, 100_000))
        echo = json.loads(await read_all(resp))
        resp.release()
        assert (echo["body_length"], echo["body_sha256"]) == (len(data), sha256(data))
        assert pool.idle == 1
        await pool.aclose()


async def test_upload_1mib_chunked_arrives_intact() -> None:
    data = payload(1 << 20)
    async with Backend() as b:
        pool = pool_for(b.port)
        head = get("/echo", "POST", "Transfer-Encoding: chunked\r\n")
        resp = await exchange(pool, head, chunked(chunks_of(data, 70_000)))
        echo = json.loads(await read_all(resp))
        resp.release()
        assert (echo["body_length"], echo["body_sha256"]) == (len(data), sha256(data))
        assert pool.idle == 1
        await pool.aclose()


async def test_chunked_helper_frames_and_terminates() -> None:
    framed = [c async for c in chunked(chunks_of(b"hello world", 6))]
    assert framed == [b"6\r\nhello \r\n", b"5\r\nworld\r\n", b"0\r\n\r\n"]


@pytest.mark.parametrize("query", ["", "?length=1"], ids=["chunked", "content-length"])
async def test_download_10mib_arrives_intact(query: str) -> None:
    n = 10 << 20
    async with Backend() as b:
        pool = pool_for(b.port)
        resp, body = await fetch(pool, f"/download/{n}{query}")
        assert resp.chunked is (query == "")
        assert resp.content_length == (n if query else None)
        assert sha256(body) == sha256(payload(n))
        assert pool.idle == 1  # whole body read: reusable
        await pool.aclose()


async def test_unread_body_is_bounded_by_pausing_the_socket() -> None:
    async with Backend() as b:
        pool = pool_for(b.port)
        resp = await exchange(pool, get(f"/download/{10 << 20}"), None)
        await asyncio.sleep(0.2)  # read nothing: the socket must pause
        conn = resp._conn
        assert conn.reading_paused
        assert conn.buffered <= READ_HIGH_WATER + 256 * 1024
        body = await read_all(resp)
        assert len(body) == 10 << 20
        resp.release()
        await pool.aclose()


async def test_first_body_chunk_arrives_before_the_rest_is_sent() -> None:
    async with Backend() as b:
        pool = pool_for(b.port)
        loop = asyncio.get_running_loop()
        start = loop.time()
        resp = await exchange(pool, get("/slow?chunks=3&delay=0.3"), None)
        assert await resp.read() == b"00000"
        assert loop.time() - start < 0.25
        assert await read_all(resp) == b"1111122222"
        resp.release()
        await pool.aclose()


async def test_repeated_headers_stay_separate_in_order() -> None:
    async with Backend() as b:
        pool = pool_for(b.port)
        resp, body = await fetch(pool, "/cookies?n=3")
        assert body == b"cookies"
        assert header(resp, "Set-Cookie") == ["c0=v0; Path=/", "c1=v1; Path=/", "c2=v2; Path=/"]
        assert (resp.status, resp.reason, resp.version) == (200, "OK", "1.1")
        await pool.aclose()


async def test_gzip_body_passes_through_undecoded() -> None:
    async with Backend() as b:
        pool = pool_for(b.port)
        resp, raw = await fetch(pool, "/gzip")
        assert header(resp, "Content-Encoding") == ["gzip"]
        assert gzip.decompress(raw) == payload(1000)
        assert resp.content_length == len(raw)
        await pool.aclose()


# -- bodiless responses and interim responses -----------------------------------------


async def test_head_response_has_no_body_and_connection_is_reused() -> None:
    async with Backend() as b:
        pool = pool_for(b.port)
        resp = await exchange(pool, get("/download/5000", "HEAD"), None, is_head=True)
        assert resp.status == 200
        assert resp.content_length == 5000
        assert await resp.read() == b""
        resp.release()
        assert pool.idle == 1
        _, body = await fetch(pool, "/echo")
        assert json.loads(body)["method"] == "GET"
        assert b.connections_opened == 1
        await pool.aclose()


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_status_has_no_body_and_connection_is_reused(status: int) -> None:
    async with Backend() as b:
        pool = pool_for(b.port)
        resp, body = await fetch(pool, f"/status/{status}")
        assert (resp.status, body) == (status, b"")
        resp2, _ = await fetch(pool, "/echo")
        assert resp2.status == 200
        assert b.connections_opened == 1
        await pool.aclose()


async def test_100_continue_from_aiohttp_is_skipped() -> None:
    async with Backend() as b:
        pool = pool_for(b.port)
        data = b"x" * 1000
        head = get("/echo", "POST", f"Content-Length: {len(data)}\r\nExpect: 100-continue\r\n")
        resp = await exchange(pool, head, chunks_of(data, 1000))
        echo = json.loads(await read_all(resp))
        resp.release()
        assert resp.status == 200
        assert echo["body_sha256"] == sha256(data)
        assert pool.idle == 1
        await pool.aclose()


async def test_interim_responses_are_skipped_with_their_headers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                + answer(b"final", b"X-Final: 1\r\n")
            )
            await writer.drain()

    async with RawBackend(handler) as b:
        pool = pool_for(b.port)
        for _ in range(2):
            resp, body = await fetch(pool, "/")
            assert (resp.status, body) == (200, b"final")
            assert [k for k, _ in resp.headers] == [b"Content-Length", b"X-Final"]
        assert b.connections_opened == 1
        await pool.aclose()


# -- framing the upstream decides -------------------------------------------------------


async def test_until_close_body_is_read_to_eof_and_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nX: y\r\n\r\nuntil the end")
        await writer.drain()

    async with RawBackend(handler) as b:
        pool = pool_for(b.port)
        resp, body = await fetch(pool, "/")
        assert (resp.version, resp.content_length, resp.chunked) == ("1.0", None, False)
        assert body == b"until the end"
        assert pool.idle == 0
        await pool.aclose()


async def test_connection_close_response_is_not_reused() -> None:
    async with Backend() as b:
        pool = pool_for(b.port)
        _, body = await fetch(pool, "/close")
        assert body == b"bye"
        assert pool.idle == 0
        await fetch(pool, "/echo")
        assert b.connections_opened == 2
        await pool.aclose()


async def test_malformed_response_is_bad_gateway_before_start() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 abc nonsense\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with RawBackend(handler) as b:
        pool = pool_for(b.port)
        with pytest.raises(errors.BadGateway) as info:
            await exchange(pool, get("/"), None)
        assert info.value.response_started is False
        assert "malformed" in info.value.detail
        assert pool.busy == 0


async def test_reset_mid_body_is_bad_gateway_after_start() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()

    async with RawBackend(handler) as b:
        pool = pool_for(b.port)
        resp = await exchange(pool, get("/"), None)
        assert resp.status == 200
        with pytest.raises(errors.BadGateway) as info:
            await read_all(resp)
        assert info.value.response_started is True
        resp.release()  # after the error: nothing happens twice
        assert (pool.busy, pool.idle) == (0, 0)


async def test_early_response_stops_the_upload_and_is_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer(b"too big", b"X-Early: 1\r\n").replace(b"200 OK", b"413 Too Big"))
        await writer.drain()
        await asyncio.sleep(1)

    sent = []

    async def slow_body() -> AsyncIterator[bytes]:
        for i in range(20):
            sent.append(i)
            yield b"x" * 100
            await asyncio.sleep(0.05)

    async with RawBackend(handler) as b:
        pool = pool_for(b.port)
        resp = await exchange(pool, get("/", "POST", "Content-Length: 2000\r\n"), slow_body())
        assert resp.status == 413
        assert await read_all(resp) == b"too big"
        resp.release()
        assert len(sent) < 20
        assert pool.idle == 0
        await pool.aclose()


# -- errors --------------------------------------------------------------------------


async def test_connect_refused_is_upstream_connect_error() -> None:
    pool = pool_for(free_port())
    with pytest.raises(errors.UpstreamConnectError):
        await exchange(pool, get("/"), None)
    assert (pool.busy, pool.idle, pool.opened_total) == (0, 0, 0)


async def test_read_timeout_before_head_is_upstream_timeout() -> None:
    async with Backend() as b:
        pool = pool_for(b.port)
        with pytest.raises(errors.UpstreamTimeout) as info:
            await exchange(pool, get("/sleep?s=1"), None, read_timeout=0.1)
        assert info.value.response_started is False
        assert (pool.busy, pool.idle) == (0, 0)
        await wait_for(lambda: b.open_connections == 0)


async def test_read_timeout_between_body_reads_is_upstream_timeout() -> None:
    async with Backend() as b:
        pool = pool_for(b.port, read_timeout=0.15)
        resp = await exchange(pool, get("/slow?chunks=2&delay=1"), None)
        assert await resp.read() == b"00000"
        with pytest.raises(errors.UpstreamTimeout) as info:
            await resp.read()
        assert info.value.response_started is True
        assert (pool.busy, pool.idle) == (0, 0)


async def test_failing_request_body_closes_the_connection() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"part"
        raise ConnectionResetError("client went away")

    async with Backend() as b:
        pool = pool_for(b.port)
        with pytest.raises(errors.BadRequest):
            await exchange(pool, get("/echo", "POST", "Content-Length: 100\r\n"), broken())
        assert (pool.busy, pool.idle) == (0, 0)
        await wait_for(lambda: b.open_connections == 0)


async def test_abort_closes_the_connection_and_leaves_idle_count_unchanged() -> None:
    async with Backend() as b:
        pool = pool_for(b.port)
        await asyncio.gather(*(fetch(pool, "/slow?chunks=2&delay=0.05") for _ in range(2)))
        assert (pool.idle, b.open_connections) == (2, 2)
        resp = await exchange(pool, get(f"/download/{10 << 20}"), None)
        assert await resp.read()
        assert pool.idle == 1
        resp.abort()
        resp.abort()
        resp.release()  # no effect after abort
        assert (pool.busy, pool.idle) == (0, 1)
        await wait_for(lambda: b.open_connections == 1)
        await pool.aclose()


# -- the pool around exchanges --------------------------------------------------------


async def test_max_connections_queues_acquirers_on_one_connection() -> None:
    async with Backend() as b:
        pool = pool_for(b.port, max_connections=1)
        results = await asyncio.gather(
            *(fetch(pool, "/slow?chunks=2&delay=0.05") for _ in range(3))
        )
        assert [r.status for r, _ in results] == [200, 200, 200]
        assert b.connections_opened == 1
        await pool.aclose()


async def test_waiting_longer_than_connect_timeout_is_connect_error() -> None:
    async with Backend() as b:
        pool = pool_for(b.port, max_connections=1, connect_timeout=0.1)
        held = await exchange(pool, get("/echo"), None)
        assert pool.busy == 1
        waiting = asyncio.ensure_future(exchange(pool, get("/echo"), None))
        await asyncio.sleep(0.02)
        assert pool.queued == 1
        with pytest.raises(errors.UpstreamConnectError):
            await waiting
        assert pool.queued == 0
        await read_all(held)
        held.release()
        assert (pool.busy, pool.idle) == (0, 1)
        await pool.aclose()


async def test_cancelled_waiter_does_not_leak_its_grant() -> None:
    async with Backend() as b:
        pool = pool_for(b.port, max_connections=1)
        held = await exchange(pool, get("/echo"), None)
        waiting = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.01)
        await read_all(held)
        held.release()  # granted to the waiter ...
        waiting.cancel()  # ... which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (pool.busy, pool.idle, pool.queued) == (0, 1, 0)
        await pool.aclose()


async def test_repr_shows_counts() -> None:
    async with Backend() as b:
        pool = pool_for(b.port)
        await asyncio.gather(*(fetch(pool, "/slow?chunks=2&delay=0.05") for _ in range(2)))
        resp = await exchange(pool, get("/echo"), None)
        assert repr(pool) == (
            f"<TargetPool 127.0.0.1:{b.port} [Requests: 1 active, 0 queued"
            " | Connections: 1 active, 1 idle]>"
        )
        await read_all(resp)
        resp.release()
        assert "Connections: 0 active, 2 idle" in repr(pool)
        await pool.aclose()


async def test_aclose_closes_idle_now_and_busy_on_release() -> None:
    async with Backend() as b:
        pool = pool_for(b.port)
        await asyncio.gather(*(fetch(pool, "/slow?chunks=2&delay=0.05") for _ in range(2)))
        resp = await exchange(pool, get("/echo"), None)
        await pool.aclose()
        await wait_for(lambda: b.open_connections == 1)
        body = await read_all(resp)  # the request in flight finishes normally
        assert json.loads(body)["method"] == "GET"
        resp.release()
        await wait_for(lambda: b.open_connections == 0)
        with pytest.raises(errors.UpstreamConnectError):
            await exchange(pool, get("/echo"), None)


def test_same_exchanges_on_uvloop() -> None:
    """The gateway runs on uvloop: its transports must behave the same here."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        async with Backend() as b:
            pool = pool_for(b.port, keepalive_requests=3)
            for _ in range(6):
                resp, _ = await fetch(pool, "/echo")
                assert resp.status == 200
            assert b.connections_opened == 2
            n = 4 << 20
            resp, body = await fetch(pool, f"/download/{n}")
            assert sha256(body) == sha256(payload(n))
            data = payload(1 << 20)
            head = get("/echo", "POST", "Transfer-Encoding: chunked\r\n")
            up = await exchange(pool, head, chunked(chunks_of(data, 70_000)))
            assert json.loads(await read_all(up))["body_sha256"] == sha256(data)
            up.release()
            resp = await exchange(pool, get("/download/10", "HEAD"), None, is_head=True)
            assert await resp.read() == b""
            resp.release()
            with pytest.raises(errors.UpstreamTimeout):
                await exchange(pool, get("/sleep?s=1"), None, read_timeout=0.05)
            await pool.aclose()

    uvloop.run(scenario())


async def test_tls_upstream_with_sni_and_keepalive(tmp_path: Path) -> None:
    server_ctx, client_ctx = self_signed(tmp_path)
    async with Backend(ssl_context=server_ctx) as b:
        pool = TargetPool(
            "127.0.0.1", b.port, SETTINGS, ssl=client_ctx, server_hostname="localhost"
        )
        for _ in range(3):
            _, body = await fetch(pool, f"/download/{1 << 20}")
            assert sha256(body) == sha256(payload(1 << 20))
        assert b.connections_opened == 1
        await pool.aclose()


async def test_tls_certificate_mismatch_is_connect_error(tmp_path: Path) -> None:
    server_ctx, client_ctx = self_signed(tmp_path)
    async with Backend(ssl_context=server_ctx) as b:
        pool = TargetPool("127.0.0.1", b.port, SETTINGS, ssl=client_ctx, server_hostname="other")
        with pytest.raises(errors.UpstreamConnectError):
            await exchange(pool, get("/echo"), None)
        assert pool.busy == 0


async def test_acquire_fresh_opens_a_new_connection_despite_idle_ones() -> None:
    async with Backend() as b:
        pool = pool_for(b.port)
        await fetch(pool, "/echo")
        assert pool.idle == 1
        conn = await pool.acquire(fresh=True)
        assert conn.requests == 0
        assert (pool.opened_total, pool.busy, pool.idle) == (2, 1, 1)
        pool.release(conn, reusable=False)
        assert (pool.busy, pool.idle) == (0, 1)
        await wait_for(lambda: b.open_connections == 1)
        await pool.aclose()

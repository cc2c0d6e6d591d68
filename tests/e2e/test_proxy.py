"""The whole gateway between a real client and real aiohttp backends."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from harness.backends import Backend, RawBackend, payload, read_request, sha256, wait_for
from harness.gateway import config, fetch, gateway, url

ROUTES = """
[upstreams.app]
targets = [{{ url = "{url}" }}]
keepalive = {keepalive}
keepalive_requests = {keepalive_requests}
keepalive_timeout = "{keepalive_timeout}"
read_timeout = "{read_timeout}"

[[routes]]
id = "echo"
path = "/api/**"
upstream = "app"
strip_prefix = 1

[[routes]]
id = "byid"
path = "/v1/user/{{id}}"
upstream = "app"
rewrite = "/echo/users/{{id}}"

[[routes]]
id = "kept-host"
path = "/host/**"
upstream = "app"
strip_prefix = 1
preserve_host = true

[[routes]]
id = "timed"
path = "/timed/**"
upstream = "app"
strip_prefix = 1
timeout = "300ms"
"""


def routes(backend_url: str, **kw: object) -> str:
    settings: dict[str, object] = {
        "keepalive": 32,
        "keepalive_requests": 1000,
        "keepalive_timeout": "60s",
        "read_timeout": "30s",
    }
    settings.update(kw)
    return config(
        ROUTES.format(url=backend_url, **settings), server='client_max_body_size = "2MiB"'
    )


def echoed_headers(body: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in json.loads(body)["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


# ------------------------------------------------------------ pool semantics


async def test_keepalive_requests_caps_requests_per_upstream_connection(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url, keepalive_requests=10)) as gw:
        async with aiohttp.ClientSession() as s:
            conn_ids = []
            for _ in range(50):
                async with s.get(url(gw, "/api/echo")) as r:
                    assert r.status == 200
                    conn_ids.append(r.headers["X-Conn-Id"])
        assert b.connections_opened == 5
        assert len(set(conn_ids)) == 5
        assert all(conn_ids.count(c) == 10 for c in set(conn_ids))


async def test_idle_upstream_connections_close_after_keepalive_timeout(tmp_path: Path) -> None:
    toml = routes("{url}", keepalive_timeout="300ms")
    async with Backend() as b, gateway(tmp_path, toml.replace("{url}", b.url)) as gw:
        status, _, _ = await fetch(url(gw, "/api/echo"))
        assert status == 200
        assert b.open_connections == 1
        await wait_for(lambda: b.open_connections == 0, timeout=3)
        assert b.connections_opened == 1


async def test_at_most_keepalive_idle_connections_survive_a_burst(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url, keepalive=4)) as gw:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

            async def one() -> int:
                async with s.get(url(gw, "/api/sleep?s=0.2")) as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(one() for _ in range(20)))
        assert statuses == [200] * 20
        assert b.connections_opened >= 10  # the burst really needed many connections
        await wait_for(lambda: b.open_connections <= 4)
        pool = gw.snapshot.upstreams["app"].targets[0].pool
        assert pool.idle <= 4
        assert b.open_connections == pool.idle


async def test_upstream_closing_idle_connections_never_surfaces_as_502(tmp_path: Path) -> None:
    async with (
        Backend(close_idle_after=0.3) as b,
        gateway(tmp_path, routes(b.url)) as gw,
        aiohttp.ClientSession() as s,
    ):
        for _ in range(6):
            async with s.get(url(gw, "/api/echo")) as r:
                assert r.status == 200
            await asyncio.sleep(0.5)
        assert b.connections_opened == 6  # each reuse attempt found a closed connection


async def test_keepalive_race_is_retried_on_a_fresh_connection(tmp_path: Path) -> None:
    """The upstream closes a kept-alive connection just as the next request arrives."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)  # the reused connection: read, then hang up
        writer.close()

    async with RawBackend(handler) as b, gateway(tmp_path, routes(b.url)) as gw:
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.get(url(gw, "/api/x")) as r:
                    assert r.status == 200
                    assert await r.read() == b"ok"
        assert b.connections_opened == 3


@pytest.mark.parametrize("status", [b"600", b"700", b"999"])
async def test_a_status_outside_100_to_599_is_a_bad_gateway(tmp_path: Path, status: bytes) -> None:
    """llhttp reads any three digits; HTTP has no such status (found by fuzzing)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 " + status + b" OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with RawBackend(handler) as b, gateway(tmp_path, routes(b.url)) as gw:
        got, _, body = await fetch(url(gw, "/api/x"))
    assert got == 502
    assert json.loads(body)["error"] == "bad_gateway"


# ----------------------------------------------------------------- streaming


async def test_one_mib_upload_arrives_intact(tmp_path: Path) -> None:
    data = payload(1024 * 1024)
    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        status, _, body = await fetch(url(gw, "/api/echo"), "POST", data=data)
        assert status == 200
        echoed = json.loads(body)
        assert echoed["body_length"] == len(data)
        assert echoed["body_sha256"] == sha256(data)
        assert echoed["method"] == "POST"


async def test_chunked_upload_arrives_intact(tmp_path: Path) -> None:
    parts = [payload(1000), payload(70000), payload(3)]

    async def gen():  # type: ignore[no-untyped-def]
        for p in parts:
            yield p

    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        status, _, body = await fetch(url(gw, "/api/echo"), "PUT", data=gen())
        assert status == 200
        assert json.loads(body)["body_sha256"] == sha256(b"".join(parts))


async def test_ten_mib_download_arrives_intact(tmp_path: Path) -> None:
    n = 10 * 1024 * 1024
    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        for suffix in ("", "?length=1"):
            status, headers, body = await fetch(url(gw, f"/api/download/{n}{suffix}"))
            assert status == 200
            assert len(body) == n
            assert hashlib.sha256(body).hexdigest() == sha256(payload(n))
            if suffix:
                assert headers["Content-Length"] == str(n)


async def test_first_chunk_arrives_before_the_last_is_sent(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        loop = asyncio.get_running_loop()
        async with (
            aiohttp.ClientSession() as s,
            s.get(url(gw, "/api/slow?chunks=3&delay=0.4&size=5")) as r,
        ):
            started = loop.time()
            first = await r.content.readany()
            first_at = loop.time() - started
            rest = await r.read()
            total = loop.time() - started
        assert first.startswith(b"00000")
        assert first_at < 0.3  # well before the last chunk (sent 0.8 s in)
        assert total >= 0.7
        assert first + rest == b"00000" + b"11111" + b"22222"


async def test_head_and_bodyless_statuses(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        status, headers, body = await fetch(url(gw, "/api/download/5000"), "HEAD")
        assert (status, body) == (200, b"")
        assert headers["Content-Length"] == "5000"
        for code in (204, 304):
            status, _, body = await fetch(url(gw, f"/api/status/{code}"))
            assert (status, body) == (code, b"")
        # the connection stays usable after bodyless answers
        status, _, _ = await fetch(url(gw, "/api/echo"))
        assert status == 200


# ---------------------------------------------------------------- headers


async def test_repeated_set_cookie_headers_stay_separate(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        _, headers, _ = await fetch(url(gw, "/api/cookies?n=3"))
        assert headers.getall("Set-Cookie") == ["c0=v0; Path=/", "c1=v1; Path=/", "c2=v2; Path=/"]


async def test_content_encoding_passes_undecoded(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        async with (
            aiohttp.ClientSession(auto_decompress=False) as s,
            s.get(url(gw, "/api/gzip"), headers={"Accept-Encoding": "gzip"}) as r,
        ):
            raw = await r.read()
            assert r.headers["Content-Encoding"] == "gzip"
        import gzip

        assert gzip.decompress(raw) == payload(1000)


async def test_hop_by_hop_headers_are_dropped_upstream(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports[0])
        writer.write(
            b"GET /api/echo HTTP/1.1\r\nHost: gw.example\r\n"
            b"Connection: keep-alive, X-Private\r\nX-Private: secret\r\nKeep-Alive: 5\r\n"
            b"TE: trailers\r\nProxy-Authorization: Basic eA==\r\nX-Pass: yes\r\n"
            b"Cookie: a=1\r\nCookie: b=2\r\n\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        body = await reader.readexactly(length)
        writer.close()
        seen = echoed_headers(body)
        for gone in ("x-private", "keep-alive", "te", "proxy-authorization"):
            assert gone not in seen
        assert seen["x-pass"] == ["yes"]
        assert seen["cookie"] == ["a=1", "b=2"] or seen["cookie"] == ["a=1; b=2"]


async def test_hop_by_hop_headers_are_dropped_downstream(tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            text="x",
            headers={"Connection": "X-Internal", "X-Internal": "1", "Keep-Alive": "timeout=9",
                     "X-Public": "2"},
        )  # fmt: skip

    async with Backend(handler) as b, gateway(tmp_path, routes(b.url)) as gw:
        _, headers, _ = await fetch(url(gw, "/api/x"))
        assert "X-Internal" not in headers
        assert "Keep-Alive" not in headers
        assert headers["X-Public"] == "2"


async def test_forwarded_headers_host_and_request_id(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        _, headers, body = await fetch(
            url(gw, "/api/echo?q=1&q=2"),
            headers={"X-Request-ID": "req-42", "X-Forwarded-For": "203.0.113.7"},
        )
        seen = echoed_headers(body)
        # 127.0.0.1 is a trusted proxy by default: its X-Forwarded-For is kept and extended
        assert seen["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
        assert seen["x-forwarded-proto"] == ["http"]
        assert seen["x-forwarded-host"] == [f"127.0.0.1:{gw.ports[0]}"]
        assert seen["host"] == [f"127.0.0.1:{b.port}"]
        assert seen["x-request-id"] == ["req-42"]
        assert headers["X-Request-ID"] == "req-42"
        assert json.loads(body)["path_qs"] == "/echo?q=1&q=2"
        assert seen["traceparent"][0].startswith("00-")

        _, headers, body = await fetch(url(gw, "/host/echo"), headers={"Host": "public.example"})
        assert echoed_headers(body)["host"] == ["public.example"]
        assert len(headers["X-Request-ID"]) == 32  # generated


async def test_spoofed_forwarded_for_from_untrusted_peer_is_replaced(tmp_path: Path) -> None:
    async with Backend() as b:
        toml = routes(b.url).replace(
            'client_max_body_size = "2MiB"',
            'client_max_body_size = "2MiB"\ntrusted_proxies = ["10.9.9.9/32"]',
        )
        async with gateway(tmp_path, toml) as gw:
            _, _, body = await fetch(
                url(gw, "/api/echo"),
                headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"},
            )
            seen = echoed_headers(body)
            assert seen["x-forwarded-for"] == ["127.0.0.1"]
            assert seen["x-forwarded-proto"] == ["http"]


async def test_rewrite_and_normalised_path_upstream(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        _, _, body = await fetch(url(gw, "/v1/user/42?x=%20y"))
        assert json.loads(body)["path_qs"] == "/echo/users/42?x=%20y"
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports[0])
        writer.write(b"GET /api/x/../echo/%7Ea HTTP/1.1\r\nHost: h\r\n\r\n")
        data = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["raw_path"] == "/echo/~a"


# ------------------------------------------------------------------ errors


async def test_body_over_client_max_body_size_is_413(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        status, _, body = await fetch(url(gw, "/api/echo"), "POST", data=b"x" * (3 * 1024 * 1024))
        assert status == 413
        assert json.loads(body)["error"] == "payload_too_large"

        async def gen():  # type: ignore[no-untyped-def]
            for _ in range(40):
                yield b"y" * 100_000

        status, _, body = await fetch(url(gw, "/api/echo"), "POST", data=gen())
        assert status == 413
        assert b.hits == 0 or json.loads(body)["error"] == "payload_too_large"


async def test_read_timeout_is_504(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url, read_timeout="200ms")) as gw:
        status, _, body = await fetch(url(gw, "/api/sleep?s=1"))
        assert status == 504
        assert json.loads(body)["error"] == "upstream_timeout"


async def test_route_timeout_is_504(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, _, body = await fetch(url(gw, "/timed/sleep?s=2"))
        assert status == 504
        assert json.loads(body)["error"] == "upstream_timeout"
        assert loop.time() - started < 1.5


async def test_client_leaving_mid_response_closes_the_upstream_connection(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports[0])
        writer.write(b"GET /api/slow?chunks=20&delay=0.1 HTTP/1.1\r\nHost: h\r\n\r\n")
        await reader.readuntil(b"00000")
        writer.close()
        await wait_for(lambda: b.open_connections == 0, timeout=3)
        pool = gw.snapshot.upstreams["app"].targets[0].pool
        await wait_for(lambda: pool.busy == 0)
        assert pool.idle == 0  # closed, not returned dirty to the pool


# --------------------------------------------------------------- websocket


async def test_websocket_is_proxied_both_ways(tmp_path: Path) -> None:
    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    async with (
        Backend([web.get("/ws", ws_echo)]) as b,
        gateway(tmp_path, routes(b.url)) as gw,
        aiohttp.ClientSession() as s,
        s.ws_connect(f"ws://127.0.0.1:{gw.ports[0]}/api/ws") as ws,
    ):
        await ws.send_str("hello")
        assert (await ws.receive()).data == "echo:hello"
        await ws.send_bytes(b"abc")
        assert (await ws.receive()).data == b"cba"


async def test_websocket_keeps_working_during_graceful_stop(tmp_path: Path) -> None:
    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str("echo:" + msg.data)
        return ws

    async with Backend([web.get("/ws", ws_echo)]) as b:
        gw_cm = gateway(tmp_path, routes(b.url))
        gw = await gw_cm.__aenter__()
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"ws://127.0.0.1:{gw.ports[0]}/api/ws")
            await ws.send_str("before")
            assert (await ws.receive()).data == "echo:before"
            stopping = asyncio.create_task(gw.stop())
            await asyncio.sleep(0.3)
            assert not stopping.done()  # the open WebSocket holds the drain
            await ws.send_str("during")
            assert (await ws.receive()).data == "echo:during"
            await ws.close()
            await asyncio.wait_for(stopping, 5)
        await gw_cm.__aexit__(None, None, None)


# ----------------------------------------------- the callback path (a warm pool)
# A body-less request that finds an idle upstream connection is relayed by
# callbacks, without a task (proxy._InFlight); these check each way it leaves
# that path: a late body, a read timeout, a client that goes.


async def _warm(gw: object, b: Backend) -> None:
    status, _, _ = await fetch(url(gw, "/api/echo"))
    assert status == 200
    assert b.connections_opened == 1  # one idle connection, so the next request reuses it


async def test_answer_arriving_in_pieces_on_a_reused_connection(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        await _warm(gw, b)
        status, _, body = await fetch(url(gw, "/api/slow?chunks=4&delay=0.05&size=3"))
        assert (status, body) == (200, b"000111222333")
        status, _, _ = await fetch(url(gw, "/api/echo"))
        assert status == 200
        assert b.connections_opened == 1  # the same connection all along


async def test_read_timeout_on_a_reused_connection_is_504_on_time(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url, read_timeout="200ms")) as gw:
        await _warm(gw, b)
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, _, body = await fetch(url(gw, "/api/sleep?s=2"))
        assert status == 504
        assert json.loads(body)["error"] == "upstream_timeout"
        assert loop.time() - started < 1.0
        pool = gw.snapshot.upstreams["app"].targets[0].pool
        await wait_for(lambda: pool.busy == 0)
        assert pool.idle == 0  # a connection with an answer still due is not kept


async def test_client_leaving_while_a_reused_connection_waits(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, routes(b.url)) as gw:
        await _warm(gw, b)
        _, writer = await asyncio.open_connection("127.0.0.1", gw.ports[0])
        writer.write(b"GET /api/sleep?s=2 HTTP/1.1\r\nHost: h\r\n\r\n")
        pool = gw.snapshot.upstreams["app"].targets[0].pool
        await wait_for(lambda: pool.busy == 1)
        writer.close()
        await wait_for(lambda: pool.busy == 0, timeout=3)
        assert pool.idle == 0  # closed, not returned with an answer still due
        await wait_for(lambda: b.open_connections == 0, timeout=3)
        # and the gateway goes on serving
        status, _, _ = await fetch(url(gw, "/api/echo"))
        assert status == 200


async def test_response_head_on_a_reused_connection_is_filtered_exactly(tmp_path: Path) -> None:
    """The upstream's head is filtered while the client's is written: its
    hop-by-hop headers and X-Request-ID go, its Date and Content-Length stay
    single, repeats and order of the rest are kept."""
    answer = (
        b"HTTP/1.1 201 Made\r\nX-Request-ID: upstream-id\r\nSet-Cookie: a=1\r\n"
        b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
        b"Date: Thu, 01 Jan 2026 00:00:00 GMT\r\nSet-Cookie: b=2\r\n"
        b"content-length: 2\r\n\r\nok"
    )

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        for _ in range(2):
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        await reader.read()

    async with RawBackend(handler) as b, gateway(tmp_path, routes(b.url)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports[0])
        heads = []
        for _ in range(2):  # the second is answered on the reused upstream connection
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\nX-Request-ID: mine\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert await reader.readexactly(2) == b"ok"
            heads.append(head)
        writer.close()
        assert b.connections_opened == 1
    for head in heads:
        lines = head.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 201 Made"
        names = [line.split(":", 1)[0].lower() for line in lines[1:] if line]
        assert names.count("content-length") == 1
        assert names.count("date") == 1
        assert "connection" not in names and "keep-alive" not in names
        assert "Date: Thu, 01 Jan 2026 00:00:00 GMT" in lines
        assert [x for x in lines if x.startswith("Set-Cookie")] == [
            "Set-Cookie: a=1",
            "Set-Cookie: b=2",
        ]
        assert [x for x in lines if x.lower().startswith("x-request-id")] == ["X-Request-ID: mine"]


async def test_a_reused_connection_that_fails_the_write_is_replayed_at_once(
    tmp_path: Path,
) -> None:
    """The keep-alive race met while writing (not while reading): the callback
    path hands over to the replay at once, not after read_timeout."""
    tripped: list[object] = []

    class ClosingOnce:
        """The pooled connection's transport, found closing at the next write."""

        def __init__(self, real: asyncio.Transport) -> None:
            self.real = real

        def is_closing(self) -> bool:
            if not tripped:
                tripped.append(self)
                return True
            return self.real.is_closing()

        def __getattr__(self, name: str) -> object:
            return getattr(self.real, name)

    async with Backend() as b, gateway(tmp_path, routes(b.url, read_timeout="30s")) as gw:
        await _warm(gw, b)
        (conn,) = gw.snapshot.upstreams["app"].targets[0].pool._core.idle
        conn.transport = ClosingOnce(conn.transport)  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, _, _ = await fetch(url(gw, "/api/echo"))
        assert status == 200
        assert loop.time() - started < 2.0
        assert len(tripped) == 1
        assert b.connections_opened == 2  # replayed on a fresh connection

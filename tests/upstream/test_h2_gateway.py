"""HTTP/1.1 clients through the whole gateway to a real h2c upstream
(harness/h2backend.py): translation, multiplexing, pool rules, GOAWAY and
refused streams, trailers, deadlines, flow control, breakers and health."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from harness.backends import wait_for
from harness.gateway import config, fetch, free_port, gateway, url
from harness.h2backend import H2Backend
from pyproxyd.upstream.h2conn import STREAM_WINDOW

from .h2util import admin, h2_upstream, raw_request


async def test_a_request_is_translated_for_the_h2c_upstream(tmp_path: Path) -> None:
    async with H2Backend() as b, gateway(tmp_path, config(h2_upstream(b.url))) as gw:
        status, headers, body = await fetch(
            url(gw, "/h2/echo?x=1"),
            "POST",
            data=b"hello",
            headers={"Host": "api.example", "Keep-Alive": "timeout=5", "TE": "trailers"},
        )
        assert status == 200 and body == b"hello"
        assert headers["x-method"] == "POST"
        assert headers["x-path"] == "/echo?x=1"
        # Host becomes :authority (the target's, as for HTTP/1.1 without preserve_host)
        assert headers["x-authority"] == f"127.0.0.1:{b.port}"
        assert headers["x-te"] == "trailers"  # kept: gRPC needs it
        req = b.received[0]
        assert "keep-alive" not in req.headers and "connection" not in req.headers
        assert "host" not in req.headers
        assert req.headers["x-forwarded-host"] == "api.example"


async def test_a_chunked_request_body_arrives_unframed(tmp_path: Path) -> None:
    async def body():  # no length: HTTP/1.1 chunked from the client
        for part in (b"abc", b"defg", b"h" * 70000):
            yield part

    async with H2Backend() as b, gateway(tmp_path, config(h2_upstream(b.url))) as gw:
        status, _, answer = await fetch(url(gw, "/h2/echo"), "POST", data=body())
        assert status == 200
        assert answer == b"abcdefg" + b"h" * 70000
        assert "transfer-encoding" not in b.received[0].headers


async def test_trailers_reach_an_http1_client_that_said_te_trailers(tmp_path: Path) -> None:
    async with H2Backend() as b, gateway(tmp_path, config(h2_upstream(b.url))) as gw:
        port = gw.ports[0]
        with_te = await raw_request(
            port,
            b"GET /h2/trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        )
        assert with_te.status == 200 and with_te.body == b"body"
        assert with_te.trailers == {"grpc-status": "0", "x-trailer": "yes"}
        without = await raw_request(
            port, b"GET /h2/trailers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert without.body == b"body" and without.trailers == {}


async def test_concurrent_requests_share_one_connection(tmp_path: Path) -> None:
    async with H2Backend() as b, gateway(tmp_path, config(h2_upstream(b.url))) as gw:
        async with aiohttp.ClientSession() as s:

            async def one() -> bytes:
                async with s.get(url(gw, "/h2/slow?ms=300")) as r:
                    return await r.read()

            answers = await asyncio.gather(*(one() for _ in range(20)))
        assert answers == [b"ok"] * 20
        assert b.connections_opened == 1
        assert len(b.received) == 20
        assert len({r.stream_id for r in b.received}) == 20


async def test_a_second_connection_opens_when_the_streams_are_taken(tmp_path: Path) -> None:
    toml = config(h2_upstream("URL", extra="max_streams_per_connection = 2"))
    async with H2Backend() as b, gateway(tmp_path, toml.replace("URL", b.url)) as gw:
        async with aiohttp.ClientSession() as s:

            async def one() -> int:
                async with s.get(url(gw, "/h2/slow?ms=400")) as r:
                    await r.read()
                    return r.status

            tasks = [asyncio.ensure_future(one()) for _ in range(4)]
            await wait_for(lambda: len(b.received) == 4)
            view = await admin(gw, "/admin/upstreams")
            t = view["upstreams"]["h2"]["targets"][0]
            assert t["protocol"] == "h2c"
            assert (t["busy"], t["streams"]) == (2, 4)
            assert await asyncio.gather(*tasks) == [200] * 4
        assert b.connections_opened == 2
        assert {r.conn_id for r in b.received} == {1, 2}


async def test_the_upstreams_max_concurrent_streams_is_honoured(tmp_path: Path) -> None:
    async with (
        H2Backend(max_concurrent_streams=3) as b,
        gateway(tmp_path, config(h2_upstream(b.url))) as gw,
        aiohttp.ClientSession() as s,
    ):

        async def one() -> int:
            async with s.get(url(gw, "/h2/slow?ms=300")) as r:
                await r.read()
                return r.status

        # The first connection's SETTINGS say 3; it opens before the rest arrive.
        assert await one() == 200
        assert await asyncio.gather(*(one() for _ in range(6))) == [200] * 6
        assert b.connections_opened == 2


async def test_idle_connections_over_keepalive_close(tmp_path: Path) -> None:
    extra = "max_streams_per_connection = 1\nkeepalive = 1"
    async with H2Backend() as b:
        toml = config(h2_upstream(b.url, extra=extra))
        async with gateway(tmp_path, toml) as gw, aiohttp.ClientSession() as s:

            async def one() -> int:
                async with s.get(url(gw, "/h2/slow?ms=300")) as r:
                    await r.read()
                    return r.status

            assert await asyncio.gather(*(one() for _ in range(3))) == [200] * 3
            assert b.connections_opened == 3
            await wait_for(lambda: b.open_connections == 1)
            t = (await admin(gw, "/admin/upstreams"))["upstreams"]["h2"]["targets"][0]
            assert (t["busy"], t["idle"], t["opened_total"]) == (0, 1, 3)
            assert await one() == 200
            assert b.connections_opened == 3  # the kept one served it


async def test_streams_above_a_goaway_are_retried_on_a_new_connection(tmp_path: Path) -> None:
    async with (
        H2Backend(goaway_after=2) as b,
        gateway(tmp_path, config(h2_upstream(b.url))) as gw,
        aiohttp.ClientSession() as s,
    ):

        async def one(i: int) -> bytes:
            async with s.post(url(gw, "/h2/echo"), data=b"call-%d" % i) as r:
                assert r.status == 200
                return await r.read()

        answers = await asyncio.gather(*(one(i) for i in range(5)))
        assert sorted(answers) == sorted(b"call-%d" % i for i in range(5))
        # Each call was processed once: the ones above last-stream-id never were.
        assert sorted(r.body for r in b.received) == sorted(answers)
        assert b.connections_opened >= 2
        first = [r for r in b.received if r.conn_id == 1]
        assert len(first) == 2


async def test_a_refused_stream_is_sent_again_with_its_body(tmp_path: Path) -> None:
    async with (
        H2Backend(refuse=1) as b,
        gateway(tmp_path, config(h2_upstream(b.url))) as gw,
    ):
        status, _, body = await fetch(url(gw, "/h2/echo"), "POST", data=b"x" * 5000)
        assert status == 200 and body == b"x" * 5000
        assert len(b.refused) == 1 and len(b.received) == 1


async def test_grpc_timeout_is_lowered_and_capped_by_the_route(tmp_path: Path) -> None:
    toml = config(h2_upstream("URL", route='timeout = "1s"'))
    async with H2Backend() as b, gateway(tmp_path, toml.replace("URL", b.url)) as gw:
        grpc = {"content-type": "application/grpc", "te": "trailers"}
        _, headers, _ = await fetch(
            url(gw, "/h2/echo"), "POST", data=b"", headers={**grpc, "grpc-timeout": "500m"}
        )
        assert headers["x-te"] == "trailers"
        sent = headers["x-grpc-timeout"]
        assert sent.endswith("m") and 100 <= int(sent[:-1]) <= 500  # less what was spent
        # The route's 1s caps a longer one.
        _, headers, _ = await fetch(
            url(gw, "/h2/echo"), "POST", data=b"", headers={**grpc, "grpc-timeout": "1H"}
        )
        assert 500 <= int(headers["x-grpc-timeout"][:-1]) <= 1000
        # The client's deadline is the request's: DEADLINE_EXCEEDED once it passes.
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, headers, _ = await fetch(
            url(gw, "/h2/hang"), "POST", data=b"", headers={**grpc, "grpc-timeout": "200m"}
        )
        assert (status, headers["grpc-status"]) == (200, "4")
        assert 0.15 <= loop.time() - started < 2.0
        # The gateway gave up on the stream: the upstream hears CANCEL (0x8).
        await wait_for(lambda: any(code == 8 for _, _, code in b.resets))


async def test_a_client_that_leaves_resets_the_upstream_stream(tmp_path: Path) -> None:
    async with H2Backend() as b, gateway(tmp_path, config(h2_upstream(b.url))) as gw:
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports[0])
        writer.write(b"GET /h2/hang HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await wait_for(lambda: len(b.received) == 1)
        writer.close()
        await wait_for(lambda: b.resets == [(1, b.received[0].stream_id, 8)])
        t = (await admin(gw, "/admin/upstreams"))["upstreams"]["h2"]["targets"][0]
        assert (t["streams"], t["idle"]) == (0, 1)  # the connection stays, the stream is freed


async def test_a_slow_client_slows_the_upstream(tmp_path: Path) -> None:
    size = 64 * 1024 * 1024
    async with H2Backend() as b, gateway(tmp_path, config(h2_upstream(b.url))) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports[0], limit=64 * 1024)
        writer.write(b"GET /h2/big?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        await writer.drain()
        await reader.read(1024)  # the head: then the client stops reading
        await wait_for(lambda: b.sent)
        stalled = -1
        for _ in range(30):  # until the upstream stops: it waits for its window
            await asyncio.sleep(0.3)
            if sum(b.sent.values()) == stalled:
                break
            stalled = sum(b.sent.values())
        assert sum(b.sent.values()) == stalled < size
        # What went out is the stream window plus socket buffers, not the body;
        # what the gateway holds of it is at most the stream window.
        assert stalled < 16 * 1024 * 1024
        conn = gw.snapshot.upstreams["h2"].targets[0].pool.h2.conns[0]
        [stream] = conn.streams.values()
        assert 0 < stream.buffered <= STREAM_WINDOW
        got = 1024
        while got < size:
            chunk = await reader.read(1024 * 1024)
            assert chunk
            got += len(chunk)
        writer.close()
        assert sum(b.sent.values()) == size


async def test_upstream_resets_open_the_breaker(tmp_path: Path) -> None:
    extra = '[upstreams.h2.circuit_breaker]\nconsecutive_failures = 2\ntimeout = "10s"'
    async with H2Backend() as b, gateway(tmp_path, config(h2_upstream(b.url, extra=extra))) as gw:
        statuses = [(await fetch(url(gw, "/h2/reset")))[0] for _ in range(3)]
        assert statuses == [502, 502, 503]
        view = await admin(gw, "/admin/upstreams")
        assert view["upstreams"]["h2"]["circuit"]["state"] == "open"


async def test_a_target_that_refuses_connections_is_ejected(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with H2Backend() as b:
        toml = config(f"""
[upstreams.h2]
targets = [{{ url = "{dead}" }}, {{ url = "{b.url}" }}]
protocol = "h2c"
retries = 1
[upstreams.h2.health]
max_fails = 1
eject_for = "30s"

[[routes]]
id = "h2"
path = "/h2/**"
upstream = "h2"
strip_prefix = 1
""")
        async with gateway(tmp_path, toml) as gw:
            for _ in range(4):
                status, _, body = await fetch(url(gw, "/h2/echo"), "POST", data=b"hi")
                assert (status, body) == (200, b"hi")  # the connect failure is retried
            targets = (await admin(gw, "/admin/upstreams"))["upstreams"]["h2"]["targets"]
            assert [t["ejected"] for t in targets] == [True, False]


async def test_a_body_refused_on_every_try_is_not_sent_elsewhere_empty(tmp_path: Path) -> None:
    async with H2Backend(refuse=3) as b1, H2Backend() as b2:
        toml = config(h2_upstream(b1.url, b2.url, extra='balance = "least_conn"\nretries = 1'))
        async with gateway(tmp_path, toml) as gw:
            status, _, _ = await fetch(url(gw, "/h2/echo"), "POST", data=b"payload")
            assert status == 502
            assert len(b1.refused) == 3  # sent again on b1 while it could be replayed
            assert b2.received == []  # never to another target with its body spent


async def test_active_health_checks_speak_http2_to_an_h2c_target(tmp_path: Path) -> None:
    async with H2Backend() as good, H2Backend() as bad:
        toml = config(f"""
[upstreams.h2]
targets = [{{ url = "{good.url}" }}, {{ url = "{bad.url}" }}]
protocol = "h2c"
[upstreams.h2.health]
path = "/status?code=200"
interval = "50ms"
timeout = "1s"
unhealthy_threshold = 1
healthy_threshold = 1

[[routes]]
id = "h2"
path = "/h2/**"
upstream = "h2"
strip_prefix = 1
""")
        bad.refuse = 10**6  # every stream it gets is refused: its checks fail
        async with gateway(tmp_path, toml) as gw:

            async def healthy() -> list[object]:
                view = await admin(gw, "/admin/upstreams")
                return [t["healthy"] for t in view["upstreams"]["h2"]["targets"]]

            async def settled() -> bool:
                return await healthy() == [True, False]

            await wait_for(settled, timeout=3)
            assert good.received and good.received[0].path == "/status?code=200"


async def test_the_request_body_waits_for_the_upstreams_window(tmp_path: Path) -> None:
    size = 4 * 1024 * 1024
    async with H2Backend() as b, gateway(tmp_path, config(h2_upstream(b.url))) as gw:
        status, _, body = await fetch(url(gw, "/h2/slowread?ms=400"), "POST", data=b"u" * size)
        assert (status, body) == (200, b"%d" % size)
        # Until the upstream acknowledged anything, only its initial window came.
        assert b.read_before_ack == 65535


async def test_a_streamed_answer_is_relayed_as_it_comes(tmp_path: Path) -> None:
    async with H2Backend() as b, gateway(tmp_path, config(h2_upstream(b.url))) as gw:
        status, headers, body = await fetch(url(gw, "/h2/stream?n=50&size=1000"))
        assert status == 200
        assert headers["transfer-encoding"] == "chunked"  # no length from the upstream
        assert body == b"".join(str(i % 10).encode() * 1000 for i in range(50))


async def test_a_response_head_over_max_header_size_is_a_502(tmp_path: Path) -> None:
    toml = config(h2_upstream("URL"), server="max_header_size = 8192")
    async with H2Backend() as b, gateway(tmp_path, toml.replace("URL", b.url)) as gw:
        status, _, body = await fetch(url(gw, "/h2/bighead?size=4000"))
        assert (status, body) == (200, b"ok")
        status, _, _ = await fetch(url(gw, "/h2/bighead?size=20000"))
        assert status == 502


async def test_a_connection_that_sent_goaway_is_not_used_again(tmp_path: Path) -> None:
    async with (
        H2Backend(goaway_after=1) as b,
        gateway(tmp_path, config(h2_upstream(b.url))) as gw,
    ):
        for i in range(3):
            status, headers, _ = await fetch(url(gw, "/h2/echo"), "POST", data=b"x")
            assert status == 200 and headers["x-conn-id"] == str(i + 1)
        await wait_for(lambda: b.open_connections == 0)  # retired ones close once idle
        t = (await admin(gw, "/admin/upstreams"))["upstreams"]["h2"]["targets"][0]
        assert (t["busy"], t["idle"], t["opened_total"]) == (0, 0, 3)


async def test_a_body_over_the_limit_is_a_413_and_the_stream_is_reset(tmp_path: Path) -> None:
    toml = config(h2_upstream("URL"), server='client_max_body_size = "1KiB"')

    async def body():  # chunked: the limit is found while streaming
        for _ in range(10):
            yield b"z" * 500

    async with H2Backend() as b, gateway(tmp_path, toml.replace("URL", b.url)) as gw:
        status, _, _ = await fetch(url(gw, "/h2/hang"), "POST", data=body())
        assert status == 413
        await wait_for(lambda: [code for _, _, code in b.resets] == [8])
        assert len(b.received[0].body) <= 1024

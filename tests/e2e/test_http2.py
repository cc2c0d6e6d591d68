"""HTTP/2 from clients (frontend/http2) to HTTP/1.1 upstreams, end to end.

curl speaks h2 over TLS (ALPN) and h2c with prior knowledge to a real
gateway in front of a real aiohttp Backend; harness/h2client.py drives what
curl cannot (a reset, a GOAWAY during a graceful stop). HTTP/1.1 and a
WebSocket keep working on the same port.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from harness.backends import Backend, payload, sha256, wait_for
from harness.gateway import (
    GatewayProcess,
    access_lines,
    config,
    fetch,
    free_port,
    gateway,
    make_cert,
    one_route,
)
from harness.h2client import H2Client, raw_exchange
from pyproxyd.server import Gateway

TIMEOUT = 20.0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def routes(backend_url: str) -> str:
    return one_route(backend_url, "api", "/api")


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    """curl with its response head first on stdout (with -o, the head alone)."""
    return subprocess.run(["curl", "-sS", "-D", "-", *args], capture_output=True, timeout=TIMEOUT)


async def acurl(*args: str) -> tuple[int, str, dict[str, list[str]], bytes]:
    """(status, HTTP version line, headers, body) of one curl call, off the loop."""
    done = await asyncio.to_thread(curl, *args)
    assert done.returncode == 0, done.stderr.decode()
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, code = status_line.split(" ")[:2]
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(code), version, headers, body


def h2c(gw: Gateway, path: str) -> list[str]:
    return ["--http2-prior-knowledge", f"http://127.0.0.1:{gw.ports[0]}{path}"]


# -- h2 over TLS, h2c on a plain port ------------------------------------------------


async def test_curl_http2_over_tls_is_chosen_by_alpn(tmp_path: Path) -> None:
    make_cert(tmp_path / "cert.pem", tmp_path / "key.pem")
    tls = 'tls = { cert = "cert.pem", key = "key.pem" }'
    async with Backend() as b, gateway(tmp_path, config(routes(b.url), server=tls)) as gw:
        url = f"https://localhost:{gw.ports[0]}/api/echo?q=1"
        resolve = f"localhost:{gw.ports[0]}:127.0.0.1"
        status, version, headers, body = await acurl("--http2", "-k", "--resolve", resolve, url)
        assert (status, version) == (200, "HTTP/2")
        assert headers["x-backend"] == ["backend"]
        echoed = json.loads(body)
        assert echoed["path_qs"] == "/echo?q=1"
        forwarded = dict(echoed["headers"])
        assert forwarded["X-Forwarded-Proto"] == "https"
        assert forwarded["X-Forwarded-Host"] == f"localhost:{gw.ports[0]}"  # :authority
        # A client that offers only http/1.1 still gets it on the same port.
        status, version, _, _ = await acurl("--http1.1", "-k", "--resolve", resolve, url)
        assert (status, version) == (200, "HTTP/1.1")


async def test_curl_h2c_get_and_post_with_a_body(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, config(routes(b.url))) as gw:
        status, version, headers, body = await acurl(*h2c(gw, "/api/echo/x?a=b"))
        assert (status, version) == (200, "HTTP/2")
        assert json.loads(body)["path_qs"] == "/echo/x?a=b"
        assert "connection" not in headers and "transfer-encoding" not in headers
        assert len(headers["x-request-id"]) == 1

        sent = payload(100_000)
        (tmp_path / "up.bin").write_bytes(sent)
        status, _, _, body = await acurl("--data-binary", f"@{tmp_path / 'up.bin'}",
                                         *h2c(gw, "/api/echo"))  # fmt: skip
        echoed = json.loads(body)
        assert status == 200 and echoed["method"] == "POST"
        assert (echoed["body_length"], echoed["body_sha256"]) == (len(sent), sha256(sent))
        assert dict(echoed["headers"])["Content-Length"] == str(len(sent))


async def _digest(request: web.Request) -> web.Response:
    """The body's length and hash, read as it streams (aiohttp's read() stops at 1 MiB)."""
    h = hashlib.sha256()
    n = 0
    async for chunk in request.content.iter_any():
        h.update(chunk)
        n += len(chunk)
    return web.json_response({"body_length": n, "body_sha256": h.hexdigest()})


async def test_large_bodies_both_ways_over_h2c(tmp_path: Path) -> None:
    big = 8 * 1024 * 1024
    server = 'client_max_body_size = "64MiB"'
    async with (
        Backend([web.post("/digest", _digest)]) as b,
        gateway(tmp_path, config(routes(b.url), server=server)) as gw,
    ):
        out = tmp_path / "down.bin"
        status, _, _, _ = await acurl("-o", str(out), *h2c(gw, f"/api/download/{big}"))
        assert status == 200
        assert sha256(out.read_bytes()) == sha256(payload(big))
        # With a length, and past a client whose windows are small (64 KiB a stream).
        client = await H2Client.open(gw.ports[0])
        try:
            got = await client.request("GET", f"/api/download/{big}?length=1")
            assert got.status == 200 and got.header("content-length") == str(big)
            assert sha256(got.body) == sha256(payload(big))
            sent = payload(big + 7)
            echoed = await client.request("POST", "/api/digest", body=sent)  # no content-length
            assert json.loads(echoed.body) == {
                "body_length": len(sent),
                "body_sha256": sha256(sent),
            }
        finally:
            await client.close()
        (tmp_path / "up.bin").write_bytes(sent)
        status, _, _, body = await acurl("--data-binary", f"@{tmp_path / 'up.bin'}",
                                         *h2c(gw, "/api/digest"))  # fmt: skip
        assert status == 200 and json.loads(body)["body_sha256"] == sha256(sent)


async def test_status_headers_and_gateway_errors_relayed(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, config(routes(b.url))) as gw:
        status, _, _, body = await acurl(*h2c(gw, "/api/status/418"))
        assert status == 418 and body == b""
        status, _, headers, body = await acurl(*h2c(gw, "/api/cookies?n=3"))
        assert status == 200 and body == b"cookies"
        assert headers["set-cookie"] == ["c0=v0; Path=/", "c1=v1; Path=/", "c2=v2; Path=/"]
        status, _, headers, _ = await acurl(
            "-I", "-o", "/dev/null", *h2c(gw, "/api/download/1000?length=1")
        )
        assert status == 200 and headers["content-length"] == ["1000"]
        # The gateway's own errors: the JSON of docs/behaviour.md, on the stream.
        status, _, headers, body = await acurl(*h2c(gw, "/nowhere"))
        error = json.loads(body)
        assert status == 404 and headers["content-type"] == ["application/json"]
        assert error["error"] == "no_route" and error["request_id"] == headers["x-request-id"][0]


async def test_cookies_are_joined_and_authority_is_the_host(tmp_path: Path) -> None:
    body = routes("URL").replace('upstream = "app"', 'upstream = "app"\npreserve_host = true')
    async with Backend() as b, gateway(tmp_path, config(body.replace("URL", b.url))) as gw:
        client = await H2Client.open(gw.ports[0])
        try:
            got = await client.request(
                "GET", "/api/echo",
                [("cookie", "a=1"), ("cookie", "b=2"), ("x_user", "forged")],
            )  # fmt: skip
        finally:
            await client.close()
        headers = dict(json.loads(got.body)["headers"])
        assert headers["Cookie"] == "a=1; b=2"  # RFC 9113 8.2.3
        assert headers["Host"] == "localhost"  # the client's :authority, preserved
        assert "x_user" not in {k.lower() for k in headers}


async def test_access_log_and_metrics_name_the_protocol(tmp_path: Path, log_file: Path) -> None:
    async def counted(gw: Gateway) -> dict[tuple[tuple[str, str], ...], float]:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r,
        ):
            text = await r.text()
        # Keyed by every label: samples of earlier tests in this process that
        # share route and status (another upstream) must not replace these.
        return {
            tuple(sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "pyproxyd_requests_total" and s.labels["route"] in ("h2", "(none)")
        }

    async with (
        Backend() as b,
        gateway(tmp_path, config(one_route(b.url, "h2", "/api"), access_log=True)) as gw,
    ):
        before = await counted(gw)
        await acurl(*h2c(gw, "/api/echo"))
        await fetch(f"http://127.0.0.1:{gw.ports[0]}/api/echo")
        await acurl(*h2c(gw, "/nowhere"))
        after = await counted(gw)
        gw.access_log.flush()
    lines = access_lines(log_file)
    assert [(x["protocol"], x["status"]) for x in lines] == [
        ("HTTP/2", 200), ("HTTP/1.1", 200), ("HTTP/2", 404)
    ]  # fmt: skip
    grown: dict[tuple[str, str], float] = {}
    for key, value in after.items():
        if value != before.get(key, 0.0):
            labels = dict(key)
            by = (labels["route"], labels["status"])
            grown[by] = grown.get(by, 0.0) + value - before.get(key, 0.0)
    # (counters of other tests in this process stay: a gRPC error is a 200 under "(none)")
    assert grown == {("h2", "200"): 2.0, ("(none)", "404"): 1.0}


async def test_http1_and_websocket_on_the_same_port_with_http2_on(tmp_path: Path) -> None:
    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str("echo:" + msg.data)
        return ws

    async with (
        Backend([web.get("/ws", ws_echo)]) as b,
        gateway(tmp_path, config(routes(b.url), server="http2 = true")) as gw,
        aiohttp.ClientSession() as s,
    ):
        base = f"127.0.0.1:{gw.ports[0]}"
        async with s.ws_connect(f"ws://{base}/api/ws") as ws:
            await ws.send_str("hi")
            assert (await ws.receive()).data == "echo:hi"
        # HTTP/1.1, pipelined on one connection, keeps its order.
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports[0])
        writer.write(b"GET /api/echo/1 HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"GET /api/echo/2 HTTP/1.1\r\nHost: a\r\n\r\n")  # fmt: skip
        data = b""
        async with asyncio.timeout(TIMEOUT):
            while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"}"):
                data += await reader.read(65536)
        writer.close()
        assert data.index(b"/echo/1") < data.index(b"/echo/2")
        # A body that starts like the preface is HTTP/1.1 all the same.
        status, _, body = await fetch(f"http://{base}/api/echo", "POST", data=b"PRI * x")
        assert status == 200 and json.loads(body)["body_length"] == 7


async def test_http2_off_speaks_only_http1(tmp_path: Path) -> None:
    make_cert(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = 'http2 = false\ntls = { cert = "cert.pem", key = "key.pem" }'
    async with Backend() as b, gateway(tmp_path, config(routes(b.url), server=server)) as gw:
        resolve = f"localhost:{gw.ports[0]}:127.0.0.1"
        url = f"https://localhost:{gw.ports[0]}/api/echo"
        status, version, _, _ = await acurl("--http2", "-k", "--resolve", resolve, url)
        assert (status, version) == (200, "HTTP/1.1")


async def test_a_client_reset_cancels_the_upstream_request(tmp_path: Path, log_file: Path) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        started.set()
        await asyncio.wait_for(release.wait(), 30)
        return web.Response(text="late")

    async with (
        Backend([web.get("/hang", hang)]) as b,
        gateway(tmp_path, config(routes(b.url), access_log=True)) as gw,
    ):
        client = await H2Client.open(gw.ports[0])
        try:
            sid = client.start("GET", "/api/hang")
            await asyncio.wait_for(started.wait(), TIMEOUT)
            assert b.open_connections == 1
            client.reset(sid)
            # The upstream request is cut: its connection closes, not pooled dirty.
            await wait_for(lambda: b.open_connections == 0, timeout=5)
            again = await client.request("GET", "/api/echo")  # the connection goes on
            assert again.status == 200
        finally:
            release.set()
            await client.close()
        gw.access_log.flush()
    assert [x["status"] for x in access_lines(log_file)] == [499, 200]


async def test_graceful_stop_sends_goaway_and_finishes_open_streams(tmp_path: Path) -> None:
    async with Backend() as b:
        cm = gateway(tmp_path, config(routes(b.url), server='graceful_timeout = "10s"'))
        gw = await cm.__aenter__()
        client = await H2Client.open(gw.ports[0])
        try:
            sid = client.start("GET", "/api/slow?chunks=4&delay=0.25&size=10")
            await wait_for(lambda: b.hits == 1, timeout=5)
            stopping = asyncio.create_task(gw.stop())
            await wait_for(lambda: client.goaway is not None, timeout=5)
            assert client.goaway == (0, sid)  # NO_ERROR, and the last stream it will answer
            assert not stopping.done()
            got = await client.wait(sid)
            assert got.status == 200 and got.body == b"0" * 10 + b"1" * 10 + b"2" * 10 + b"3" * 10
            drained = await asyncio.wait_for(stopping, TIMEOUT)
            assert (drained.in_flight, drained.cut) == (1, 0)
            await asyncio.wait_for(client.closed.wait(), TIMEOUT)
        finally:
            await client.close()
            await cm.__aexit__(None, None, None)


async def test_an_idle_connection_is_closed_with_goaway(tmp_path: Path) -> None:
    server = 'keepalive_timeout = "1.5s"\nclient_header_timeout = "0.3s"'
    async with Backend() as b, gateway(tmp_path, config(routes(b.url), server=server)) as gw:
        client = await H2Client.open(gw.ports[0])
        silent = await H2Client.open(gw.ports[0])  # the preface, and never a request
        try:
            assert (await client.request("GET", "/api/echo")).status == 200
            await asyncio.wait_for(silent.closed.wait(), 5)
            assert silent.goaway == (0, 0)  # client_header_timeout
            assert not client.closed.is_set()
            await asyncio.wait_for(client.closed.wait(), 5)  # keepalive_timeout
            assert client.goaway == (0, 1)
        finally:
            await client.close()
            await silent.close()


async def test_a_stalled_body_gets_408_on_its_stream(tmp_path: Path) -> None:
    server = 'client_body_timeout = "0.5s"'
    async with Backend() as b, gateway(tmp_path, config(routes(b.url), server=server)) as gw:
        client = await H2Client.open(gw.ports[0])
        try:
            sid = client.start("POST", "/api/echo", [("content-length", "100")], end=False)
            await client.send_body(sid, b"x" * 10, end=False)
            got = await client.wait(sid)
            assert got.status == 408 and json.loads(got.body)["error"] == "request_timeout"
            assert (await client.request("GET", "/api/echo")).status == 200
        finally:
            await client.close()


async def test_sigterm_sends_goaway_and_lets_the_stream_finish(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    async with Backend() as b:
        path = tmp_path / "gateway.toml"
        path.write_text(
            f'[server]\nlisten = ["127.0.0.1:{port}"]\ngraceful_timeout = "10s"\n'
            f'[admin]\nlisten = "127.0.0.1:{admin}"\n' + routes(b.url)
        )
        async with GatewayProcess(path) as gw:
            await gw.wait_ready(admin)
            client = await H2Client.open(port)
            try:
                sid = client.start("GET", "/api/slow?chunks=3&delay=0.3&size=4")
                await wait_for(lambda: b.hits == 1, timeout=5)
                assert gw.proc is not None
                gw.proc.send_signal(signal.SIGTERM)
                await wait_for(lambda: client.goaway is not None, timeout=5)
                assert client.goaway == (0, sid)
                got = await client.wait(sid)
                assert got.status == 200 and got.body == b"000011112222"
                assert await gw.stop() == 0  # (already stopping: waits for the exit)
                await asyncio.wait_for(client.closed.wait(), TIMEOUT)
            finally:
                await client.close()


async def test_a_reload_turns_http2_off_for_new_connections(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, config(routes(b.url))) as gw:
        before = await H2Client.open(gw.ports[0])
        try:
            assert (await before.request("GET", "/api/echo")).status == 200
            (tmp_path / "gateway.toml").write_text(
                config(routes(b.url), server="http2 = false\nmax_concurrent_streams = 8")
            )
            assert await gw.reloader.reload()
            # A new connection's preface is HTTP/1.1 now (a malformed request) ...
            answer = await raw_exchange(gw.ports[0], PREFACE)
            assert answer.startswith(b"HTTP/1.1 400 ")
            # ... while the HTTP/2 connection already open goes on.
            assert (await before.request("GET", "/api/echo")).status == 200
            (tmp_path / "gateway.toml").write_text(
                config(routes(b.url), server="max_concurrent_streams = 8")
            )
            assert await gw.reloader.reload()
            after = await H2Client.open(gw.ports[0])
            assert (await after.request("GET", "/api/echo")).status == 200
            assert after.conn.remote_settings.max_concurrent_streams == 8
            await after.close()
        finally:
            await before.close()


async def test_expect_100_continue_is_answered_when_the_body_is_read(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, config(routes(b.url))) as gw:
        client = await H2Client.open(gw.ports[0])
        try:
            head = [("expect", "100-continue"), ("content-length", "5")]
            sid = client.start("POST", "/api/echo", head, end=False)
            await wait_for(lambda: client.streams[sid].status == 100, timeout=5)
            await client.send_body(sid, b"hello")
            got = await client.wait(sid)
            assert got.status == 200 and json.loads(got.body)["body_length"] == 5
        finally:
            await client.close()


async def test_a_ping_is_answered(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, config(routes(b.url))) as gw:
        client = await H2Client.open(gw.ports[0])
        try:
            client.conn.ping(b"12345678")
            client.flush()
            await wait_for(lambda: client.pongs == [b"12345678"], timeout=5)
        finally:
            await client.close()

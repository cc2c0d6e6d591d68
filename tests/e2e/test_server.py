"""The listener's own answers: errors, limits, admin endpoints, TLS."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import ssl
import struct
import time
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from harness.gateway import config, fetch, free_port, gateway, make_cert, served_cert, url
from pyproxyd.server import GC_YOUNG

DEAD = """
[upstreams.dead]
targets = [{{ url = "http://127.0.0.1:{port}" }}]
connect_timeout = "1s"
retries = 0
[[routes]]
id = "dead"
path = "/dead/**"
upstream = "dead"
"""


async def raw(port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), read_timeout)
    finally:
        writer.close()


def body_of(response: bytes) -> dict[str, object]:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


async def test_no_route_is_json_404(tmp_path: Path) -> None:
    async with gateway(tmp_path, config(DEAD.format(port=free_port()))) as gw:
        status, headers, raw_body = await fetch(url(gw, "/nothing"))
        body = json.loads(raw_body)
        assert status == 404
        assert body["error"] == "no_route"
        assert body["status"] == 404
        assert body["request_id"] == headers["X-Request-ID"]


async def test_path_climbing_above_root_is_400(tmp_path: Path) -> None:
    async with gateway(tmp_path, config(DEAD.format(port=free_port()))) as gw:
        resp = await raw(gw.ports[0], b"GET /dead/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 400")
        assert body_of(resp)["error"] == "bad_request"


async def test_connect_refused_is_502(tmp_path: Path) -> None:
    async with gateway(tmp_path, config(DEAD.format(port=free_port()))) as gw:
        status, _, body = await fetch(url(gw, "/dead/x"))
        assert status == 502
        assert json.loads(body)["error"] == "bad_gateway"


async def test_oversize_header_is_431_json(tmp_path: Path) -> None:
    toml = config(DEAD.format(port=free_port()), server="max_header_size = 1024")
    async with gateway(tmp_path, toml) as gw:
        big = b"X-Big: " + b"a" * 2000 + b"\r\n"
        resp = await raw(gw.ports[0], b"GET /dead/x HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
        assert resp.split(b" ", 2)[1] == b"431"
        assert body_of(resp)["error"] == "request_header_fields_too_large"


async def test_malformed_request_is_json_400(tmp_path: Path) -> None:
    async with gateway(tmp_path, config(DEAD.format(port=free_port()))) as gw:
        resp = await raw(gw.ports[0], b"GET /x HTTP/1.1\r\nBad Header Line\r\n\r\n")
        assert resp.split(b" ", 2)[1] == b"400"
        assert body_of(resp)["error"] == "bad_request"
        assert b"Traceback" not in resp


async def test_slow_headers_are_cut_after_client_header_timeout(tmp_path: Path) -> None:
    toml = config(DEAD.format(port=free_port()), server='client_header_timeout = "300ms"')
    async with gateway(tmp_path, toml) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports[0])
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(b"GET /dead/x HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:  # a slowloris: one header line every 100 ms
            while not writer.is_closing() and not reader.at_eof():
                writer.write(b"X-A: b\r\n")
                await asyncio.sleep(0.1)

        task = asyncio.create_task(trickle())
        data = await asyncio.wait_for(reader.read(), 3)
        closed_after = loop.time() - started
        task.cancel()
        writer.close()
        assert data == b""  # closed without an answer
        assert 0.25 < closed_after < 1.5


async def test_idle_keepalive_client_is_not_cut_by_the_header_timeout(tmp_path: Path) -> None:
    toml = config(DEAD.format(port=free_port()), server='client_header_timeout = "200ms"')
    async with gateway(tmp_path, toml) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.ports[0])
        writer.write(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b"}"), 5)
        assert first.startswith(b"HTTP/1.1 404")
        await asyncio.sleep(0.5)  # idle between requests: keepalive_timeout governs
        writer.write(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        second = await asyncio.wait_for(reader.readuntil(b"}"), 5)
        assert second.startswith(b"HTTP/1.1 404")
        writer.close()


async def test_a_serving_gateway_collects_its_young_objects_less_often(tmp_path: Path) -> None:
    # A young collection walks every request in flight; the default 700
    # allocations made that 4% of a gRPC call's CPU (docs/performance.md).
    before = gc.get_threshold()
    gc.set_threshold(700, *before[1:])
    try:
        async with gateway(tmp_path, config(DEAD.format(port=free_port()))):
            assert gc.get_threshold()[0] == GC_YOUNG > 700
    finally:
        gc.set_threshold(*before)


async def test_admin_health_and_readiness(tmp_path: Path) -> None:
    async with gateway(tmp_path, config(DEAD.format(port=free_port()))) as gw:
        admin = f"http://127.0.0.1:{gw.admin_port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(admin + "/healthz") as r:
                assert r.status == 200
            async with s.get(admin + "/readyz") as r:
                assert r.status == 200
            gw.ready = False  # what a drain does first
            async with s.get(admin + "/readyz") as r:
                assert r.status == 503


async def test_several_listeners_and_ipv6(tmp_path: Path) -> None:
    toml = config(DEAD.format(port=free_port())).replace(
        'listen = ["127.0.0.1:0"]', 'listen = ["127.0.0.1:0", "[::1]:0"]'
    )
    try:
        async with gateway(tmp_path, toml) as gw:
            assert len(gw.ports) == 2
            async with aiohttp.ClientSession() as s:
                for host in ("127.0.0.1", "[::1]"):
                    async with s.get(f"http://{host}:{gw.ports[-1 if ':' in host else 0]}/x") as r:
                        assert r.status == 404
    except OSError as e:  # pragma: no cover - a machine without IPv6 loopback
        pytest.fail(f"IPv6 loopback unavailable: {e}")


TLS = 'tls = { cert = "tls.crt", key = "tls.key" }'


async def test_tls_listener(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    make_cert(cert, key)
    toml = config(DEAD.format(port=free_port()), server=TLS)
    async with gateway(tmp_path, toml) as gw:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"https://127.0.0.1:{gw.ports[0]}/x", ssl=ctx) as r,
        ):
            assert r.status == 404
            assert (await r.json())["error"] == "no_route"


async def test_a_renewed_certificate_is_served_after_a_reload(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    first = make_cert(cert, key, "first")
    toml = config(DEAD.format(port=free_port()), server=TLS)
    async with gateway(tmp_path, toml) as gw:
        port = gw.ports[0]
        assert await served_cert(port) == first
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
        writer.write(request)
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 404")
        renewed = make_cert(cert, key, "renewed")  # gateway.toml is unchanged
        assert await gw.reloader.reload()
        assert await served_cert(port) == renewed  # no SNI (an address)
        assert await served_cert(port, "localhost") == renewed  # SNI
        await reader.readuntil(b"}")  # the rest of the 404
        writer.write(request)  # the connection made before goes on
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 404")
        writer.close()


async def test_a_certificate_that_does_not_load_keeps_the_old_one(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    first = make_cert(cert, key, "first")
    toml = config(DEAD.format(port=free_port()), server=TLS)
    async with gateway(tmp_path, toml) as gw:
        old_key = key.read_bytes()
        make_cert(cert, key, "renewed")
        key.write_bytes(old_key)  # the new certificate with the old key: a mismatch
        reloader = gw.reloader
        assert not await reloader.reload()
        assert reloader.tally.last_error is not None
        assert "server.tls:" in reloader.tally.last_error[0]
        assert await served_cert(gw.ports[0]) == first
        key.unlink()
        assert not await reloader.reload()
        assert reloader.tally.last_error is not None
        assert f"server.tls.key: cannot read {key}" in reloader.tally.last_error[0]
        assert await served_cert(gw.ports[0]) == first


async def test_a_listener_cannot_start_speaking_tls_on_a_reload(tmp_path: Path) -> None:
    make_cert(tmp_path / "tls.crt", tmp_path / "tls.key")
    plain = config(DEAD.format(port=free_port()))
    async with gateway(tmp_path, plain) as gw:
        (tmp_path / "gateway.toml").write_text(config(DEAD.format(port=free_port()), server=TLS))
        with capture_logs() as logs:
            assert await gw.reloader.reload()  # the rest of the file applies
        restart = [e for e in logs if e["event"] == "config_change_needs_restart"]
        assert [e["setting"] for e in restart] == ["server.tls"]
        status, _, _ = await fetch(url(gw, "/x"))  # still plain HTTP
        assert status == 404


async def test_admin_token_guards_admin_endpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_ADMIN_TOKEN", "s3cret")
    toml = config(DEAD.format(port=free_port())).replace(
        'listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\ntoken_env = "TEST_ADMIN_TOKEN"'
    )
    async with gateway(tmp_path, toml) as gw:
        admin = f"http://127.0.0.1:{gw.admin_port}"
        status, _, body = await fetch(admin + "/admin/config")
        assert status == 401
        assert json.loads(body)["error"] == "unauthorized"
        status, _, _ = await fetch(
            admin + "/admin/config", headers={"Authorization": "Bearer wrong"}
        )
        assert status == 401
        status, _, body = await fetch(
            admin + "/admin/routes", headers={"Authorization": "Bearer s3cret"}
        )
        assert status == 200
        assert json.loads(body)["routes"][0]["id"] == "dead"
        status, _, _ = await fetch(admin + "/healthz")  # probes stay open
        assert status == 200


async def test_a_new_shared_zone_size_is_logged_as_needing_a_restart(tmp_path: Path) -> None:
    # A worker's zone was sized when the instance started; a reload cannot resize it.
    from pyproxyd.config_load import load
    from pyproxyd.server import Gateway
    from pyproxyd.shm.zone import Zone

    path = tmp_path / "gateway.toml"
    path.write_text(config(DEAD.format(port=free_port()), server='shared_zone_size = "2MiB"'))
    zone = Zone.create(2 * 1024 * 1024)
    gw = Gateway(load(path), admin=False, zone=zone)
    await gw.start()
    try:
        path.write_text(config(DEAD.format(port=free_port()), server='shared_zone_size = "4MiB"'))
        with capture_logs() as logs:
            assert await gw.reloader.reload()  # the rest of the file applies
        restart = [e["setting"] for e in logs if e["event"] == "config_change_needs_restart"]
        assert restart == ["server.shared_zone_size"]
    finally:
        await gw.stop()
        zone.close()


async def test_stop_survives_a_client_reset_the_loop_has_not_read(tmp_path: Path) -> None:
    """The CI failure of session 7: an idle keep-alive client sent RST just
    before stop(); shutdown(SHUT_WR) on its socket raised ENOTCONN out of
    stop(). The reset is sent while the loop is blocked, so the gateway has
    not seen it when it drains."""
    loop = asyncio.get_running_loop()
    async with gateway(tmp_path, config(DEAD.format(port=free_port()))) as gw:
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", gw.ports[0]))
        await loop.sock_sendall(client, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(loop.sock_recv(client, 65536), 5)
        assert answer.startswith(b"HTTP/1.1 404")  # served, and now idle
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST
        time.sleep(0.05)  # the RST lands; the loop does not run
        drained = await gw.stop()
        assert drained.cut == 0

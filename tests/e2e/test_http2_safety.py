"""HTTP/2 held to its limits (docs/behaviour.md, "HTTP/2 and gRPC"), end to end.

Each test speaks HTTP/2 over a real socket (harness/h2client.py) to a real
gateway in front of a real aiohttp Backend: stream limits, header list
limits, rapid reset, CONTINUATION floods, windows that never open and bytes
that are not HTTP/2. Abuse closes the offending connection with GOAWAY;
another client on the same gateway is served throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from aiohttp import web
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame, SettingsFrame

from harness.backends import Backend
from harness.gateway import config, gateway, one_route
from harness.h2client import H2Client, Stream, raw_exchange

TIMEOUT = 10.0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def routes(backend_url: str) -> str:
    return one_route(backend_url, "api", "/api")


def frames(data: bytes) -> list[Frame]:
    """The frames in bytes a server sent (it sends no preface)."""
    out = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out


def goaway_code(data: bytes) -> int | None:
    codes = [f.error_code for f in frames(data) if f.type == 0x7]  # type: ignore[attr-defined]
    return codes[-1] if codes else None


async def settled(client: H2Client) -> None:
    """The gateway's SETTINGS are in (and so its limits known to the client)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while SettingCodes.MAX_CONCURRENT_STREAMS not in client.conn.remote_settings:
        assert loop.time() < deadline, "no SETTINGS from the gateway"
        await asyncio.sleep(0.01)


async def test_max_concurrent_streams_is_advertised_and_enforced(tmp_path: Path) -> None:
    server = "max_concurrent_streams = 4"
    async with Backend() as b, gateway(tmp_path, config(routes(b.url), server=server)) as gw:
        client = await H2Client.open(gw.ports[0])
        try:
            # Opened before the gateway's SETTINGS are read: h2 would not let
            # the client go past the advertised limit afterwards.
            sids = [client.start("GET", "/api/slow?chunks=2&delay=0.3") for _ in range(6)]
            got = [await client.wait(sid) for sid in sids]
            assert client.conn.remote_settings.max_concurrent_streams == 4
            assert [g.status for g in got[:4]] == [200] * 4
            assert [g.reset for g in got[4:]] == [ErrorCodes.REFUSED_STREAM] * 2
            assert b.hits == 4
            assert (await client.request("GET", "/api/echo")).status == 200  # and goes on
        finally:
            await client.close()


async def test_rapid_reset_gets_goaway_and_others_are_served(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, config(routes(b.url))) as gw:
        bystander = await H2Client.open(gw.ports[0])
        attacker = await H2Client.open(gw.ports[0])
        try:
            await settled(attacker)
            conn = attacker.conn
            for _ in range(1000):  # opened and reset at once: one write
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, [(":method", "GET"), (":path", "/api/sleep?s=0.5"),
                                        (":scheme", "http"), (":authority", "x")])  # fmt: skip
                conn.reset_stream(sid)
            attacker.flush()
            await asyncio.wait_for(attacker.closed.wait(), TIMEOUT)
            assert attacker.goaway is not None
            assert attacker.goaway[0] == ErrorCodes.ENHANCE_YOUR_CALM
            assert (await bystander.request("GET", "/api/echo")).status == 200
            # The flood started little upstream work: the stream limit held it.
            assert b.hits <= 128 + 1
        finally:
            await attacker.close()
            await bystander.close()


async def test_a_client_that_completes_its_streams_may_reset_some(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, config(routes(b.url))) as gw:
        client = await H2Client.open(gw.ports[0])
        try:
            for _ in range(150):  # more resets than the floor, fewer than completions
                assert (await client.request("GET", "/api/echo")).status == 200
                assert (await client.request("GET", "/api/echo")).status == 200
                client.reset(client.start("GET", "/api/sleep?s=0.2"))
            assert client.goaway is None
            assert (await client.request("GET", "/api/echo")).status == 200
        finally:
            await client.close()


async def test_endless_continuation_gets_goaway(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, config(routes(b.url))) as gw:
        bystander = await H2Client.open(gw.ports[0])
        attacker = await H2Client.open(gw.ports[0])
        try:
            await settled(attacker)
            attacker.send_raw(HeadersFrame(1, data=b"").serialize())  # no END_HEADERS
            sent = 0
            with contextlib.suppress(ConnectionError):
                while not attacker.closed.is_set() and sent < 100_000:  # bounded
                    attacker.send_raw(ContinuationFrame(1, data=b"\x00" * 1024).serialize())
                    sent += 1
                    if sent % 64 == 0:
                        await attacker.writer.drain()
            await asyncio.wait_for(attacker.closed.wait(), TIMEOUT)
            assert attacker.goaway is not None
            assert attacker.goaway[0] == ErrorCodes.PROTOCOL_ERROR
            assert sent < 10_000  # cut off early, not after the flood was read
            assert (await bystander.request("GET", "/api/echo")).status == 200
        finally:
            await attacker.close()
            await bystander.close()


async def test_a_window_that_never_opens_slows_the_upstream(tmp_path: Path) -> None:
    total = 256 * 1024 * 1024
    produced = 0

    async def firehose(request: web.Request) -> web.StreamResponse:
        nonlocal produced
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            while produced < total:
                await resp.write(chunk)  # returns once the socket takes it
                produced += len(chunk)
        return resp

    async with (
        Backend([web.get("/firehose", firehose)]) as b,
        gateway(tmp_path, config(routes(b.url))) as gw,
    ):
        client = await H2Client.open(gw.ports[0], ack=False)  # 64 KiB windows, never reopened
        try:
            sid = client.start("GET", "/api/firehose")
            last = -1
            for _ in range(50):  # until the upstream stops: bounded
                await asyncio.sleep(0.2)
                if produced == last:
                    break
                last = produced
            assert produced == last, "the upstream was never slowed"
            assert client.received <= 65535
            assert client.streams[sid].status == 200
            # What the gateway holds is the client's window and one chunk, no more;
            # the rest waits in the kernel's socket buffers and the upstream.
            assert gw.http2 is not None and gw.http2.buffered() <= 65535 + 256 * 1024
            assert produced < 64 * 1024 * 1024
            # Another client on the gateway is served meanwhile.
            other = await H2Client.open(gw.ports[0])
            assert (await other.request("GET", "/api/echo")).status == 200
            await other.close()
        finally:
            await client.close()


async def test_a_slow_upstream_slows_the_client_upload(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def sluggish(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), TIMEOUT)  # reads nothing until released
        n = 0
        async for chunk in request.content.iter_any():
            n += len(chunk)
        return web.json_response({"body_length": n})

    total = 256 * 1024 * 1024
    server = 'client_max_body_size = "1GiB"'
    async with (
        Backend([web.post("/sluggish", sluggish)]) as b,
        gateway(tmp_path, config(routes(b.url), server=server)) as gw,
    ):
        client = await H2Client.open(gw.ports[0])
        try:
            sid = client.start("POST", "/api/sluggish", end=False)
            sending = asyncio.create_task(client.send_body(sid, b"y" * total))
            last = -1
            for _ in range(50):  # until the client is held: bounded
                await asyncio.sleep(0.2)
                sent = client.conn.streams[sid].outbound_flow_control_window
                if sent == last == 0:
                    break
                last = sent
            assert client.conn.local_flow_control_window(sid) == 0, "the client was never held"
            assert not sending.done()
            release.set()
            await asyncio.wait_for(sending, 60)
            got = await client.wait(sid, timeout=60)
            assert json.loads(got.body) == {"body_length": total}
        finally:
            release.set()
            await client.close()


async def test_header_lists_over_the_limit(tmp_path: Path) -> None:
    server = "max_header_size = 1024"
    async with Backend() as b, gateway(tmp_path, config(routes(b.url), server=server)) as gw:
        client = await H2Client.open(gw.ports[0])
        other = await H2Client.open(gw.ports[0])
        try:
            await settled(client)
            assert client.conn.remote_settings.max_header_list_size == 65536  # as HTTP/1.1's head
            # One field over max_header_size, then a list over the whole limit: 431 on the stream.
            got = await client.request("GET", "/api/echo", [("x-big", "a" * 2000)])
            assert got.status == 431
            assert json.loads(got.body)["error"] == "request_header_fields_too_large"
            many = [(f"x-h{i}", "b" * 900) for i in range(80)]
            assert (await client.request("GET", "/api/echo", many)).status == 431
            assert (await client.request("GET", "/api/echo")).status == 200
            assert b.hits == 1
            # Far over it: HPACK stops decoding and the connection ends.
            huge = [(f"x-h{i}", "c" * 900) for i in range(300)]
            client.start("GET", "/api/echo", huge)
            await asyncio.wait_for(client.closed.wait(), TIMEOUT)
            assert client.goaway is not None
            assert client.goaway[0] == ErrorCodes.ENHANCE_YOUR_CALM
            assert (await other.request("GET", "/api/echo")).status == 200
        finally:
            await client.close()
            await other.close()


async def test_garbage_after_the_preface_gets_goaway_protocol_error(
    tmp_path: Path, log_file: Path
) -> None:
    settings = SettingsFrame(0).serialize()
    async with Backend() as b, gateway(tmp_path, config(routes(b.url))) as gw:
        port = gw.ports[0]
        http1 = PREFACE + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        assert goaway_code(await raw_exchange(port, http1)) == ErrorCodes.PROTOCOL_ERROR
        data_on_zero = PREFACE + settings + b"\x00\x00\x04\x00\x00\x00\x00\x00\x00abcd"
        assert goaway_code(await raw_exchange(port, data_on_zero)) == ErrorCodes.PROTOCOL_ERROR
        noise = PREFACE + settings + bytes(range(256)) * 8
        assert goaway_code(await raw_exchange(port, noise)) is not None
        client = await H2Client.open(port)
        try:
            assert (await client.request("GET", "/api/echo")).status == 200
        finally:
            await client.close()
    events = [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
    assert "internal_error" not in events
    assert "Traceback" not in log_file.read_text()


async def test_extended_connect_is_refused_cleanly(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, config(routes(b.url))) as gw:
        client = await H2Client.open(gw.ports[0])
        try:
            await settled(client)
            assert client.conn.remote_settings.enable_connect_protocol == 0  # not offered
            sid = client.conn.get_next_available_stream_id()
            client.streams[sid] = Stream()
            client.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                                           (":scheme", "http"), (":path", "/api/ws"),
                                           (":authority", "x")], end_stream=True)  # fmt: skip
            client.flush()
            got = await client.wait(sid)
            assert got.status == 501 and json.loads(got.body)["error"] == "not_implemented"
            assert b.hits == 0
            assert (await client.request("GET", "/api/echo")).status == 200
        finally:
            await client.close()


async def test_a_flood_of_empty_data_frames_gets_goaway(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, config(routes(b.url))) as gw:
        client = await H2Client.open(gw.ports[0])
        try:
            sid = client.start("POST", "/api/echo", end=False)
            for _ in range(10):  # a few are allowed
                client.conn.send_data(sid, b"")
            await client.send_body(sid, b"x", end=False)
            for _ in range(500):
                client.conn.send_data(sid, b"")
            client.flush()
            await asyncio.wait_for(client.closed.wait(), TIMEOUT)
            assert client.goaway is not None
            assert client.goaway[0] == ErrorCodes.ENHANCE_YOUR_CALM
        finally:
            await client.close()

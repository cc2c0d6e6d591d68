"""A request body that is all in when its request starts (a unary gRPC call,
a small POST over HTTP/2) goes to an HTTP/2 upstream with its HEADERS, in
one write; what does not fit the upstream's windows, or a refused stream,
still arrives whole. And the connection's receive window is handed back in
batches, not a WINDOW_UPDATE per answer."""

from __future__ import annotations

from pathlib import Path

from harness.backends import wait_for
from harness.gateway import config, gateway
from harness.h2backend import H2Backend
from harness.h2client import H2Client
from pyproxyd.upstream.h2conn import CONNECTION_WINDOW

from .h2util import h2_upstream


async def test_a_body_that_came_whole_goes_with_its_headers(tmp_path: Path) -> None:
    async with H2Backend() as b, gateway(tmp_path, config(h2_upstream(b.url))) as gw:
        client = await H2Client.open(gw.ports[0])
        try:
            sid = client.send_whole("POST", "/h2/echo", b"hello whole")
            stream = await client.wait(sid)
            assert stream.status == 200 and stream.body == b"hello whole"
            # A body still to come goes as it comes: the HEADERS first, on their own.
            sid = client.start("POST", "/h2/echo", end=False)
            await wait_for(lambda: len(b.received) == 2)
            await client.send_body(sid, b"in pieces")
            streamed = await client.wait(sid)
            assert streamed.status == 200 and streamed.body == b"in pieces"
        finally:
            await client.close()
        assert [r.one_read for r in b.received] == [True, False]
        assert "transfer-encoding" not in b.received[0].headers


async def test_a_whole_body_over_the_upstreams_window_still_arrives(tmp_path: Path) -> None:
    async with (
        H2Backend(initial_window=1000) as b,
        gateway(tmp_path, config(h2_upstream(b.url))) as gw,
    ):
        client = await H2Client.open(gw.ports[0])
        try:
            sid = client.send_whole("POST", "/h2/echo", b"w" * 5000)
            stream = await client.wait(sid)
        finally:
            await client.close()
        assert stream.status == 200 and stream.body == b"w" * 5000
        assert b.received[0].body == b"w" * 5000 and not b.received[0].one_read


async def test_a_whole_body_refused_on_every_try_goes_to_another_target(tmp_path: Path) -> None:
    """Unlike a streamed body (test_h2_gateway), a whole one is not spent by
    the tries: a target that refused every stream never processed it."""
    async with H2Backend(refuse=3) as b1, H2Backend() as b2:
        toml = config(h2_upstream(b1.url, b2.url, extra='balance = "least_conn"\nretries = 1'))
        async with gateway(tmp_path, toml) as gw:
            client = await H2Client.open(gw.ports[0])
            try:
                stream = await client.wait(client.send_whole("POST", "/h2/echo", b"payload"))
            finally:
                await client.close()
        assert stream.status == 200 and stream.body == b"payload"
        assert len(b1.refused) == 3 and [r.body for r in b2.received] == [b"payload"]


async def test_a_whole_body_over_the_size_limit_is_a_413(tmp_path: Path) -> None:
    toml = config(h2_upstream("URL"), server='client_max_body_size = "1KiB"')
    async with H2Backend() as b, gateway(tmp_path, toml.replace("URL", b.url)) as gw:
        client = await H2Client.open(gw.ports[0])
        try:
            stream = await client.wait(client.send_whole("POST", "/h2/echo", b"z" * 2000))
        finally:
            await client.close()
        assert stream.status == 413
        assert b.received == []


async def test_the_connection_window_goes_back_in_batches(tmp_path: Path) -> None:
    size = 1024 * 1024
    count = CONNECTION_WINDOW // size + 2  # more than the window: it must come back
    async with H2Backend() as b, gateway(tmp_path, config(h2_upstream(b.url))) as gw:
        client = await H2Client.open(gw.ports[0])
        try:
            for _ in range(count):
                stream = await client.request("GET", f"/h2/big?size={size}")
                assert stream.status == 200 and len(stream.body) == size
        finally:
            await client.close()
        assert b.connections_opened == 1
        # The first one opens the window at the start; then one a sixteenth of it
        # (it was one a read with DATA in it: hundreds here).
        batches = count * size // (CONNECTION_WINDOW // 16)
        assert 1 < b.connection_window_updates <= 1 + batches

"""The HTTP/2 pool against a real h2c backend: PINGs, idle expiry, the
request cap per connection, and connects that fail clearly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from harness.backends import Backend, wait_for
from harness.gateway import free_port
from harness.grpc_greeter import Greeter, frame
from harness.h2backend import H2Backend
from pyproxyd import errors
from pyproxyd.upstream.h2exchange import H2Response, send
from pyproxyd.upstream.h2pool import H2Pool
from pyproxyd.upstream.pool import PoolSettings, TargetPool


def make_pool(port: int, **kw: float) -> tuple[TargetPool, H2Pool]:
    settings = PoolSettings(
        max_connections=int(kw.pop("max_connections", 8)),
        keepalive=int(kw.pop("keepalive", 4)),
        keepalive_requests=int(kw.pop("keepalive_requests", 1000)),
        keepalive_timeout=kw.pop("keepalive_timeout", 60.0),
        keepalive_time=kw.pop("keepalive_time", 3600.0),
        connect_timeout=kw.pop("connect_timeout", 2.0),
        read_timeout=5.0,
        protocol="h2c",
        max_streams=int(kw.pop("max_streams", 100)),
    )
    owner = TargetPool("127.0.0.1", port, settings)
    owner.h2 = H2Pool(owner, settings, **kw)
    return owner, owner.h2


async def get(pool: H2Pool, path: str) -> tuple[H2Response, bytes]:
    up = await send(pool, b"GET %s HTTP/1.1\r\nHost: t\r\n" % path.encode(), None,
                    te_trailers=False, grpc_deadline=None, read_timeout=None)  # fmt: skip
    body = b""
    while chunk := await up.read():
        body += chunk
    up.release()
    return up, body


async def test_a_connection_that_leaves_a_ping_unanswered_is_closed() -> None:
    async with H2Backend() as b:
        owner, pool = make_pool(b.port, ping_interval=0.05, ping_timeout=0.2)
        _, body = await get(pool, "/mute")  # answered, then the backend stops reading
        assert body == b"ok" and owner.idle == 1
        await wait_for(lambda: owner.idle == 0, timeout=3)
        await wait_for(lambda: b.open_connections == 0)
        # The next request gets a new connection.
        _, body = await get(pool, "/echo")
        assert b.connections_opened == 2
        await owner.aclose()


async def test_a_connection_that_answers_pings_stays() -> None:
    async with H2Backend() as b:
        owner, pool = make_pool(b.port, ping_interval=0.05, ping_timeout=1.0)
        await get(pool, "/echo")
        conn = pool.conns[0]
        await wait_for(lambda: conn.pinged_at > 0)
        first = conn.pinged_at
        await wait_for(lambda: conn.pinged_at > first + 0.2, timeout=3)  # several rounds
        assert owner.idle == 1 and b.open_connections == 1
        await owner.aclose()


async def test_an_idle_connection_closes_after_keepalive_timeout() -> None:
    async with H2Backend() as b:
        owner, pool = make_pool(b.port, keepalive_timeout=0.2)
        await get(pool, "/echo")
        assert owner.idle == 1
        await wait_for(lambda: b.open_connections == 0, timeout=3)
        assert owner.idle == 0
        await owner.aclose()


async def test_keepalive_requests_counts_streams_per_connection() -> None:
    async with H2Backend() as b:
        owner, pool = make_pool(b.port, keepalive_requests=3)
        for _ in range(7):
            await get(pool, "/echo")
        assert b.connections_opened == 3
        assert [len([r for r in b.received if r.conn_id == c]) for c in (1, 2, 3)] == [3, 3, 1]
        await owner.aclose()


async def test_requests_wait_when_every_stream_of_every_connection_is_taken() -> None:
    async with H2Backend() as b:
        owner, pool = make_pool(b.port, max_connections=1, max_streams=2)
        results = await asyncio.gather(*(get(pool, "/slow?ms=200") for _ in range(5)))
        assert [body for _, body in results] == [b"ok"] * 5
        assert b.connections_opened == 1
        await owner.aclose()


async def test_read_timeouts_end_each_stream_wait_on_time_whatever_the_order() -> None:
    """The pool's StreamDeadlines: streams that wait on one connection each
    time out at their own read_timeout (a shorter one after a longer one
    too), are reset, and leave the others alone."""
    async with H2Backend() as b:
        owner, pool = make_pool(b.port)
        loop = asyncio.get_running_loop()

        async def timed(path: str, timeout: float) -> tuple[str, float]:
            started = loop.time()
            try:
                head = b"GET %s HTTP/1.1\r\nHost: t\r\n" % path.encode()
                up = await send(pool, head, None, te_trailers=False, grpc_deadline=None,
                                read_timeout=timeout)  # fmt: skip
                while await up.read():
                    pass
                up.release()
                outcome = "ok"
            except errors.UpstreamTimeout:
                outcome = "timeout"
            return outcome, loop.time() - started

        results = await asyncio.gather(
            timed("/hang", 0.6),
            timed("/hang", 0.2),  # queued after a later deadline: a timer of its own
            timed("/slow?ms=100", 2.0),
            timed("/hang", 0.4),
        )
        assert [outcome for outcome, _ in results] == ["timeout", "timeout", "ok", "timeout"]
        for (_, took), timeout in zip(results, (0.6, 0.2, 0.1, 0.4), strict=True):
            assert timeout <= took < timeout + 0.3
        await wait_for(lambda: len(b.resets) == 3)
        assert b.connections_opened == 1 and len(pool.deadlines) <= 4
        await owner.aclose()


async def test_an_http1_server_is_not_taken_for_an_h2c_one() -> None:
    async with Backend() as http1:
        owner, pool = make_pool(http1.port)
        with pytest.raises(errors.UpstreamConnectError, match="speak HTTP/2"):
            await get(pool, "/echo")
        await owner.aclose()


async def test_a_request_that_waited_for_an_abandoned_connect_opens_its_own() -> None:
    async with H2Backend(settings_delay=0.3) as b:
        owner, pool = make_pool(b.port)
        opener = asyncio.ensure_future(get(pool, "/echo"))
        await wait_for(lambda: len(pool.opening) == 1)
        joiner = asyncio.ensure_future(get(pool, "/echo"))
        await wait_for(lambda: pool.opening[0].claims == 2)
        opener.cancel()  # its client left while the connection opened
        _, body = await joiner
        assert body == b"" and opener.cancelled()
        assert b.connections_opened == 2 and len(b.received) == 1
        await owner.aclose()


async def test_a_request_waiting_for_a_slot_hears_at_once_when_the_connect_fails() -> None:
    owner, pool = make_pool(free_port(), max_connections=1, max_streams=1, connect_timeout=5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(get(pool, "/echo"), get(pool, "/echo"), return_exceptions=True)
    assert all(isinstance(r, errors.UpstreamConnectError) for r in results)
    assert loop.time() - started < 2.0  # not the 5 s connect_timeout
    await owner.aclose()


async def test_a_grpc_server_tolerates_the_idle_pings(tmp_path: Path) -> None:
    # keepalive_timeout / 3 apart: two PINGs in an idle period, which grpcio's
    # ping-abuse policy accepts (a third would be answered with GOAWAY).
    async with Greeter(tmp_path) as g:
        owner, pool = make_pool(g.port, ping_interval=0.3, keepalive_timeout=0.9)
        message = frame(g.pb2.HelloRequest(name="x").SerializeToString())

        async def body():
            yield message

        up = await send(pool, b"POST /helloworld.Greeter/SayHello HTTP/1.1\r\n"
                        b"content-type: application/grpc\r\nHost: g\r\n", body(),
                        te_trailers=True, grpc_deadline=None, read_timeout=None)  # fmt: skip
        while await up.read():
            pass
        up.release()
        assert up.trailers is not None and (b"grpc-status", b"0") in up.trailers
        conn = pool.conns[0]
        pings: list[float] = []

        def pinged_twice() -> bool:
            if conn.pinged_at and conn.pinged_at not in pings:
                pings.append(conn.pinged_at)
            return len(pings) == 2 and not conn.ping_sent_at  # the second one answered

        await wait_for(pinged_twice, timeout=3)
        assert not conn.goaway and conn.error is None
        await wait_for(lambda: conn.is_closed, timeout=3)  # then keepalive_timeout
        await owner.aclose()

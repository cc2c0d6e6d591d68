"""gRPC end to end: a real grpcio client, the gateway (h2c to the client,
an h2c upstream) and a real grpcio server (harness/echo_grpc), for the four
kinds of call, metadata, trailers, statuses, deadlines and cancellation;
and the gateway's own errors as gRPC statuses (docs/behaviour.md, "HTTP/2
and gRPC")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from harness.backends import Backend
from harness.echo_grpc import EchoServer
from harness.gateway import access_lines, config, free_port, gateway
from harness.tokens import AUDIENCE, ISSUER, claims, sign

SECRET = "grpc-test-secret-of-at-least-32-bytes!"

ROUTES = """
[auth.jwt]
algorithms = ["HS256"]
hs_secret_env = "PYPROXYD_GRPC_TEST_SECRET"
issuer = "{issuer}"
audience = "{audience}"
forward_claims = {{ sub = "X-User-ID" }}
[rate_limits.one-call]
algorithm = "token_bucket"
backend = "local"
key = ["header:x-client-id", "ip"]
rate = "1/m"
burst = 1
[upstreams.echo]
targets = [{{ url = "{echo}" }}]
protocol = "h2c"
[upstreams.dead]
targets = [{{ url = "http://127.0.0.1:{dead}" }}]
protocol = "h2c"
retries = 0
[upstreams.dead.circuit_breaker]
consecutive_failures = 1
timeout = "60s"
[upstreams.web]
targets = [{{ url = "{web}" }}]
[[routes]]
id = "echo"
path = "/echo.Echo/**"
upstream = "echo"
[[routes]]
id = "capped"
path = "/capped/**"
upstream = "echo"
strip_prefix = 1
timeout = "1s"
[[routes]]
id = "signed"
path = "/signed/**"
upstream = "echo"
strip_prefix = 1
auth = "jwt"
[[routes]]
id = "limited"
path = "/limited/**"
upstream = "echo"
strip_prefix = 1
rate_limit = "one-call"
[[routes]]
id = "dead"
path = "/dead/**"
upstream = "dead"
strip_prefix = 1
[[routes]]
id = "web"
path = "/web/**"
upstream = "web"
strip_prefix = 1
"""


@pytest.fixture
async def world(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, log_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[EchoServer, Any, Path]]:  # fmt: skip
    """(echo server, a channel to the gateway, the log file)."""
    monkeypatch.setenv("PYPROXYD_GRPC_TEST_SECRET", SECRET)
    stubs = tmp_path_factory.getbasetemp() / "echo_stubs"
    async with EchoServer(stubs) as echo, Backend(name="web") as web:
        toml = config(
            ROUTES.format(issuer=ISSUER, audience=AUDIENCE, echo=echo.url, web=web.url,
                          dead=free_port()),
            access_log=True,
        )  # fmt: skip
        async with (
            gateway(tmp_path, toml) as gw,
            grpc.aio.insecure_channel(f"127.0.0.1:{gw.ports[0]}") as channel,
        ):
            yield echo, channel, log_file


def _stub(echo: EchoServer, channel: Any) -> Any:
    return echo.pb2_grpc.EchoStub(channel)


def _method(channel: Any, echo: EchoServer, path: str) -> Any:
    """A unary method at another path (a route's prefix before /echo.Echo/Unary)."""
    note = echo.pb2.Note
    return channel.unary_unary(
        path, request_serializer=note.SerializeToString, response_deserializer=note.FromString
    )


# -- the four kinds of call ------------------------------------------------------------


async def test_a_unary_call_relays_metadata_and_trailers(world: Any) -> None:
    echo, channel, _ = world
    call = _stub(echo, channel).Unary(
        echo.pb2.Note(text="trailer:t-1", count=7), metadata=(("x-meta", "m-1"),)
    )
    answer = await call
    assert (answer.text, answer.count) == ("trailer:t-1", 7)
    assert dict(await call.initial_metadata())["x-echo-meta"] == "m-1"
    assert dict(await call.trailing_metadata())["x-trailer"] == "t-1"
    assert await call.code() == grpc.StatusCode.OK
    assert echo.calls[-1].metadata["x-meta"] == "m-1"


async def test_server_streaming_relays_every_message(world: Any) -> None:
    echo, channel, _ = world
    texts = [n.text async for n in _stub(echo, channel).ServerStream(
        echo.pb2.Note(text="s", count=200))]  # fmt: skip
    assert texts == [f"s-{i}" for i in range(200)]


async def test_client_streaming_relays_every_message(world: Any) -> None:
    echo, channel, _ = world

    async def notes() -> AsyncIterator[Any]:
        for i in range(100):
            yield echo.pb2.Note(text=str(i % 10))

    answer = await _stub(echo, channel).ClientStream(notes())
    assert answer.count == 100
    assert answer.text == "0123456789" * 10


async def test_bidi_streaming_answers_each_message_as_it_comes(world: Any) -> None:
    echo, channel, _ = world
    call = _stub(echo, channel).Bidi()
    for i in range(20):  # one at a time: each answer before the next message
        await call.write(echo.pb2.Note(text=f"b{i}"))
        answer = await asyncio.wait_for(call.read(), 5)
        assert answer.text == f"b{i}"
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


# -- statuses, deadlines, cancellation ---------------------------------------------------


async def test_a_server_error_status_is_relayed_unchanged(world: Any) -> None:
    echo, channel, _ = world
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _stub(echo, channel).Unary(echo.pb2.Note(text="fail:NOT_FOUND:no such note"))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert failed.value.details() == "no such note"


async def test_the_client_deadline_reaches_the_server_lowered(world: Any) -> None:
    echo, channel, _ = world
    await _stub(echo, channel).Unary(echo.pb2.Note(text="d"), timeout=5)
    remaining = echo.calls[-1].time_remaining
    assert remaining is not None and 3 < remaining <= 5
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _stub(echo, channel).Unary(echo.pb2.Note(text="slow", delay_ms=3000), timeout=0.5)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.5


async def test_the_route_timeout_caps_the_client_deadline(world: Any) -> None:
    echo, channel, _ = world
    capped = _method(channel, echo, "/capped/echo.Echo/Unary")
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await capped(echo.pb2.Note(text="slow", delay_ms=4000), timeout=30)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    remaining = echo.calls[-1].time_remaining
    assert remaining is not None and remaining <= 1.0


async def test_a_cancelled_call_is_cancelled_at_the_server(world: Any) -> None:
    echo, channel, _ = world
    call = _stub(echo, channel).ServerStream(echo.pb2.Note(text="c", count=1000, delay_ms=50))
    first = await call.read()
    assert first.text == "c-0"
    call.cancel()
    seen = echo.calls[-1]
    await asyncio.wait_for(seen.cancelled.wait(), 5)
    assert seen.method == "ServerStream"


# -- route features on gRPC ------------------------------------------------------------


async def test_a_jwt_in_the_authorization_metadata_is_checked_and_forwarded(world: Any) -> None:
    echo, channel, _ = world
    signed = _method(channel, echo, "/signed/echo.Echo/Unary")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await signed(echo.pb2.Note(text="x"))
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    token = sign(SECRET.encode(), "HS256", claims(time.time(), sub="grpc-user"), None)
    call = signed(echo.pb2.Note(text="x"), metadata=(("authorization", f"Bearer {token}"),))
    await call
    assert dict(await call.initial_metadata())["x-echo-user"] == "grpc-user"


async def test_gateway_errors_are_grpc_statuses(world: Any) -> None:
    echo, channel, _ = world
    cases = [
        ("/nowhere.Service/Call", grpc.StatusCode.UNIMPLEMENTED),  # 404
        ("/dead/echo.Echo/Unary", grpc.StatusCode.UNAVAILABLE),  # 502: nothing listens
        ("/dead/echo.Echo/Unary", grpc.StatusCode.UNAVAILABLE),  # 503: its circuit is open
        ("/web/echo.Echo/Unary", grpc.StatusCode.UNAVAILABLE),  # an http1 upstream
    ]
    for path, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _method(channel, echo, path)(echo.pb2.Note(text="x"), timeout=5)
        assert failed.value.code() == code, path
    limited = _method(channel, echo, "/limited/echo.Echo/Unary")
    await limited(echo.pb2.Note(text="x"), metadata=(("x-client-id", "c-1"),))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await limited(echo.pb2.Note(text="x"), metadata=(("x-client-id", "c-1"),))
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Another client id is another bucket: metadata are headers for the key.
    await limited(echo.pb2.Note(text="x"), metadata=(("x-client-id", "c-2"),))


async def test_the_access_log_has_the_protocol_and_grpc_status(world: Any) -> None:
    echo, channel, log_file = world
    await _stub(echo, channel).Unary(echo.pb2.Note(text="ok"))
    with pytest.raises(grpc.aio.AioRpcError):
        await _stub(echo, channel).Unary(echo.pb2.Note(text="fail:NOT_FOUND:gone"))
    await asyncio.sleep(0.2)  # the access log is flushed every 50 ms
    lines = [line for line in access_lines(log_file) if line["route"] == "echo"]
    assert [(line["protocol"], line["status"], line["grpc_status"]) for line in lines] == [
        ("HTTP/2", 200, 0),
        ("HTTP/2", 200, 5),
    ]

"""An HTTP/1.1 client calling a real grpcio server (h2c) through the gateway:
gRPC framing built by hand, `te: trailers`, grpc-status read from the
chunked trailers (or the headers of a trailers-only answer)."""

from __future__ import annotations

from pathlib import Path

from harness.backends import wait_for
from harness.gateway import access_lines, config, gateway
from harness.grpc_greeter import Greeter, frame, unframe
from tests.upstream.h2util import Raw, raw_request

ROUTES = """
[upstreams.greeter]
targets = [{{ url = "http://127.0.0.1:{port}" }}]
protocol = "h2c"

[[routes]]
id = "greeter"
path = "/helloworld.Greeter/**"
upstream = "greeter"
timeout = "{timeout}"
"""


async def call(port: int, message: bytes, *headers: str, method: str = "SayHello") -> Raw:
    body = frame(message)
    extra = "".join(f"{h}\r\n" for h in headers)
    request = (
        f"POST /helloworld.Greeter/{method} HTTP/1.1\r\nHost: greeter\r\n"
        "Content-Type: application/grpc\r\nTE: trailers\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode() + body
    return await raw_request(port, request)


def status_of(raw: Raw) -> tuple[str | None, str | None]:
    """grpc-status and grpc-message: from the trailers, or a trailers-only head."""
    fields = raw.trailers or raw.headers
    return fields.get("grpc-status"), fields.get("grpc-message")


async def test_a_unary_call_through_the_gateway(tmp_path: Path) -> None:
    async with Greeter(tmp_path) as g:
        toml = config(ROUTES.format(port=g.port, timeout="10s"))
        async with gateway(tmp_path, toml) as gw:
            request = g.pb2.HelloRequest(name="world").SerializeToString()
            raw = await call(gw.ports[0], request, "x-client-id: c-42")
            assert raw.status == 200
            assert raw.headers["content-type"] == "application/grpc"
            assert raw.headers["x-seen-client-id"] == "c-42"  # metadata both ways
            [reply] = unframe(raw.body)
            assert g.pb2.HelloReply.FromString(reply).message == "Hello, world"
            assert raw.trailers["grpc-status"] == "0"
            assert g.calls == 1


async def test_a_server_error_status_is_relayed_unchanged(tmp_path: Path) -> None:
    async with Greeter(tmp_path) as g:
        toml = config(ROUTES.format(port=g.port, timeout="10s"))
        async with gateway(tmp_path, toml) as gw:
            request = g.pb2.HelloRequest(name="fail").SerializeToString()
            raw = await call(gw.ports[0], request)
            assert raw.status == 200
            assert status_of(raw) == ("3", "bad name")  # INVALID_ARGUMENT


async def test_the_deadline_is_the_client_grpc_timeout_capped_by_the_route(
    tmp_path: Path,
) -> None:
    async with Greeter(tmp_path) as g:
        toml = config(ROUTES.format(port=g.port, timeout="500ms"))
        async with gateway(tmp_path, toml) as gw:
            request = g.pb2.HelloRequest(name="world").SerializeToString()
            raw = await call(gw.ports[0], request, "grpc-timeout: 30S")
            remaining = float(raw.trailers["x-time-remaining"])
            assert 0.05 < remaining <= 0.5  # the route's 500ms, not the client's 30s
            raw = await call(gw.ports[0], request, "grpc-timeout: 300m")
            assert 0.0 < float(raw.trailers["x-time-remaining"]) <= 0.3
            # A call that outlives it: DEADLINE_EXCEEDED, and the upstream call is cancelled.
            slow = g.pb2.HelloRequest(name="slow").SerializeToString()
            raw = await call(gw.ports[0], slow, "grpc-timeout: 200m")
            assert (raw.status, status_of(raw)[0]) == (200, "4")
            await wait_for(lambda: g.cancelled == 1)


async def test_the_upstreams_grpc_status_is_logged_from_its_trailers(
    tmp_path: Path, log_file: Path
) -> None:
    async with Greeter(tmp_path) as g:
        toml = config(ROUTES.format(port=g.port, timeout="10s"), access_log=True)
        async with gateway(tmp_path, toml) as gw:
            for name in ("world", "fail"):
                request = g.pb2.HelloRequest(name=name).SerializeToString()
                await call(gw.ports[0], request)
    lines = access_lines(log_file)
    # 0 came in the trailers after the message; 3 in a trailers-only head.
    assert [(e["status"], e["grpc_status"]) for e in lines] == [(200, 0), (200, 3)]


async def test_server_streaming_and_client_streaming_calls(tmp_path: Path) -> None:
    async with Greeter(tmp_path) as g:
        toml = config(ROUTES.format(port=g.port, timeout="10s"))
        async with gateway(tmp_path, toml) as gw:
            port = gw.ports[0]
            request = g.pb2.HelloRequest(name="world").SerializeToString()
            raw = await call(port, request, method="SayHellos")
            replies = [g.pb2.HelloReply.FromString(m).message for m in unframe(raw.body)]
            assert replies == [f"Hello #{i}, world" for i in range(3)]
            assert raw.trailers["grpc-status"] == "0"
            # Client streaming: several messages in a chunked HTTP/1.1 body.
            names = [g.pb2.HelloRequest(name=n).SerializeToString() for n in ("a", "b", "c")]
            chunks = b"".join(b"%x\r\n%b\r\n" % (len(frame(m)), frame(m)) for m in names)
            head = (
                b"POST /helloworld.Greeter/Collect HTTP/1.1\r\nHost: greeter\r\n"
                b"Content-Type: application/grpc\r\nTE: trailers\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )
            raw = await raw_request(port, head + chunks + b"0\r\n\r\n")
            [reply] = unframe(raw.body)
            assert g.pb2.HelloReply.FromString(reply).message == "Hello, a and b and c"
            assert raw.trailers["grpc-status"] == "0"

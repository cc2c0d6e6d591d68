#!/usr/bin/env python3
"""h2's per-frame work for one gRPC unary call through the gateway, in this process.

    PYTHONPATH=<tree> .venv/bin/python scripts/bench/h2_frames_bench.py [--calls 20000]

Four vendored H2Connections joined in memory: a client (as h2load), the
gateway's frontend connection (`frontend.http2.connection._CONFIG`), the
gateway's upstream connection (`upstream.h2conn.client_config()`, with the
upstream response check h2conn does when the tree has one) and a server (as
grpcio). Only the gateway's two connections are timed: the frontend receives
HEADERS+DATA, the upstream sends them on, receives HEADERS+DATA+trailers, the
frontend sends HEADERS+DATA+trailers. Prints microseconds per call (best of
--rounds), so that two trees compare by running this once with each on
PYTHONPATH, alternately; the pyproxyd tree imported is printed first.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import pyproxyd
from pyproxyd import compiled
from pyproxyd._vendor.h2.config import H2Configuration
from pyproxyd._vendor.h2.connection import H2Connection
from pyproxyd._vendor.h2.events import DataReceived, ResponseReceived, TrailersReceived
from pyproxyd.frontend.http2.connection import _CONFIG as FRONT_CONFIG
from pyproxyd.hpack_plain import PlainEncoder
from pyproxyd.upstream import h2conn

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/echo.Echo/Unary"),
    (b":authority", b"127.0.0.1:18561"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"user-agent", b"h2load nghttp2/1.59.0"),
]
UPSTREAM_REQUEST = [*REQUEST, (b"x-request-id", b"6f1c0d2e9a7b4c3d")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
BODY = b"\x00\x00\x00\x00\x07\n\x05hello"

CHECK = getattr(h2conn, "response_malformed", None)  # the tree's own upstream check, if any


def _conn(config: H2Configuration) -> H2Connection:
    conn = H2Connection(config)
    conn.encoder = PlainEncoder()
    conn.initiate_connection()
    return conn


def _join(a: H2Connection, b: H2Connection) -> None:
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())


def run(calls: int) -> float:
    """Seconds the gateway's two connections spent on `calls` calls."""
    client = _conn(H2Configuration(client_side=True, header_encoding=None))
    front = _conn(FRONT_CONFIG)
    upstream = _conn(h2conn.client_config())
    server = _conn(H2Configuration(client_side=False, header_encoding=None))
    _join(client, front)
    _join(upstream, server)
    for conn in (client, front, upstream, server):
        conn.increment_flow_control_window(2**30)
    _join(client, front)
    _join(upstream, server)
    spent = 0.0
    perf = time.perf_counter
    for i in range(calls):
        cid = 1 + 2 * i
        client.send_headers(cid, REQUEST)
        client.send_data(cid, BODY, end_stream=True)
        incoming = client.data_to_send()

        start = perf()
        events: list[Any] = front.receive_data(incoming)
        body = events[1].data
        upstream.send_headers(cid, UPSTREAM_REQUEST)
        upstream.send_data(cid, body, end_stream=True)
        outgoing = upstream.data_to_send()
        spent += perf() - start

        server.receive_data(outgoing)
        server.send_headers(cid, RESPONSE)
        server.send_data(cid, BODY)
        server.send_headers(cid, TRAILERS, end_stream=True)
        answer = server.data_to_send()

        start = perf()
        head = data = trailers = None
        for event in upstream.receive_data(answer):
            if isinstance(event, ResponseReceived):
                head = event.headers
                if CHECK is not None and CHECK(head, False) is not None:
                    raise AssertionError("a well-formed response found malformed")
            elif isinstance(event, DataReceived):
                data = event.data
            elif isinstance(event, TrailersReceived):
                trailers = event.headers
                if CHECK is not None and CHECK(trailers, True) is not None:
                    raise AssertionError("well-formed trailers found malformed")
        assert head is not None and data is not None and trailers is not None
        front.send_headers(cid, list(head))
        front.send_data(cid, data)
        front.send_headers(cid, list(trailers), end_stream=True)
        reply = front.data_to_send()
        spent += perf() - start

        client.receive_data(reply)
        if i % 1000 == 999:  # connection windows back, as the gateway does in batches
            for conn in (client, front, upstream, server):
                conn.increment_flow_control_window(2**20)
            _join(client, front)
            _join(upstream, server)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    done, stale = compiled.status()
    print(
        f"tree {pyproxyd.__file__.rsplit('/', 2)[0]}: {len(done)} modules compiled"
        f"{' (stale!)' if stale else ''}; upstream check: {'own' if CHECK else 'h2'}"
    )
    run(1000)  # warm up
    best = min(run(args.calls) for _ in range(args.rounds))
    print(
        f"gateway h2 work: {best / args.calls * 1e6:.2f} us per unary call (best of {args.rounds})"
    )


if __name__ == "__main__":
    main()

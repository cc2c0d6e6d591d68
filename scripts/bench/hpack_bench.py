#!/usr/bin/env python3
"""HPACK per gRPC call: pyproxyd's encoder and decoder against hpack's, in this process.

    PYTHONPATH=. .venv/bin/python scripts/bench/hpack_bench.py [--calls 20000]

A gRPC unary call through pyproxyd encodes three header blocks (the request
head to the upstream, the response head and the trailers to the client) and
decodes three (the client's request head, the upstream's response head and
trailers). Encoders: `hpack` is the installed release's Encoder with
huffman=False (what pyproxyd's PlainEncoder was before it went stateless),
`pyproxyd` is hpack_plain.PlainEncoder. Decoders: the installed release's
Decoder and the vendored one (compiled when scripts/compile.sh built this
checkout), over blocks as grpcio sends them (the installed Encoder: dynamic
table and Huffman), one decoder per connection, many calls each. Prints
microseconds per call (3 blocks) for each; nothing is asserted.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import hpack

from pyproxyd import compiled
from pyproxyd._vendor import hpack as vendored
from pyproxyd.hpack_plain import PlainEncoder

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/echo.Echo/Unary"),
    (b":authority", b"127.0.0.1:18561"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"grpc-timeout", b"4999m"),
    (b"user-agent", b"grpc-python/1.66.1 grpc-c/43.0.0 (linux; chttp2)"),
    (b"x-request-id", b"6f1c0d2e9a7b4c3d"),
    (b"forwarded", b"for=127.0.0.1;proto=http"),
]
RESPONSE = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"x-request-id", b"6f1c"),
]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]


def per_call(run: Callable[[int], None], calls: int) -> float:
    """Best of 3: microseconds a call."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        run(calls)
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def encoding(make: Callable[[], object], calls: int) -> float:
    def run(n: int) -> None:
        encoder = make()
        encode = encoder.encode  # type: ignore[attr-defined]
        for i in range(n):
            request = [*REQUEST[:-2], (b"x-request-id", str(i).encode()), REQUEST[-1]]
            encode(request, huffman=False)
            encode(RESPONSE, huffman=False)
            encode(TRAILERS, huffman=False)

    return per_call(run, calls)


def decoding(make: Callable[[], object], calls: int) -> float:
    peer = hpack.Encoder()
    blocks = []
    for i in range(200):  # one connection's worth, the dynamic table warm
        request = [*REQUEST[:-2], (b"x-request-id", str(i).encode()), REQUEST[-1]]
        blocks.append((peer.encode(request), peer.encode(RESPONSE), peer.encode(TRAILERS)))

    def run(n: int) -> None:
        done = 0
        while done < n:
            decoder = make()
            decode = decoder.decode  # type: ignore[attr-defined]
            for a, b, c in blocks[: n - done]:
                decode(a, raw=True)
                decode(b, raw=True)
                decode(c, raw=True)
            done += min(len(blocks), n - done)

    return per_call(run, calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    calls = parser.parse_args().calls
    print(f"pyproxyd: {compiled.running()}; us per gRPC call (3 blocks)")
    print(f"encode  hpack {encoding(hpack.Encoder, calls):6.2f}", end="  ")
    print(f"pyproxyd {encoding(PlainEncoder, calls):6.2f}")
    print(f"decode  hpack {decoding(hpack.Decoder, calls):6.2f}", end="  ")
    print(f"pyproxyd {decoding(vendored.Decoder, calls):6.2f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""HPACK per gRPC call: pyproxyd's encoder and decoder against hpack's, in this process.

    PYTHONPATH=. .venv/bin/python scripts/bench/hpack_bench.py [--calls 20000] [--base DIR]

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

Each call's blocks carry what pyproxyd's do: a new x-request-id and
traceparent in the request head, the x-request-id again in the response
head, and a date that changes every 1,000 calls.

`--base DIR`: another checkout (compiled or not, as it is): its PlainEncoder
and this checkout's are measured in turns, each in a process of its own
(PYTHONPATH=the checkout), `--rounds` times, and the median of the paired
ratios (this / base) printed: the encoder before and after a change, in one
run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hpack

from pyproxyd import compiled
from pyproxyd._vendor import hpack as vendored
from pyproxyd.hpack_plain import PlainEncoder

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"127.0.0.1:18561"),
    (b":path", b"/echo.Echo/Unary"),
    (b"te", b"trailers"),
    (b"grpc-timeout", b"4999m"),
    (b"content-type", b"application/grpc"),
    (b"user-agent", b"grpc-python/1.66.1 grpc-c/43.0.0 (linux; chttp2)"),
    (b"grpc-accept-encoding", b"identity,deflate,gzip"),
    (b"x-forwarded-for", b"127.0.0.1"),
    (b"x-forwarded-proto", b"http"),
    (b"x-forwarded-host", b"127.0.0.1:18562"),
]
RESPONSE = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", b"identity,deflate,gzip"),
]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]


def call_blocks(i: int) -> tuple[list[tuple[bytes, bytes]], ...]:
    """The three header lists of call `i`, with its own request id and trace."""
    rid = b"%016x" % (i * 2654435761 % 2**64)
    trace = b"00-%032x-%016x-01" % (i * 40503, i * 2246822519 % 2**64)
    date = b"Mon, 07 Dec 2026 00:%02d:%02d GMT" % (i // 60000 % 60, i // 1000 % 60)
    request = [*REQUEST, (b"x-request-id", rid), (b"traceparent", trace)]
    response = [*RESPONSE, (b"x-request-id", rid), (b"date", date)]
    return request, response, TRAILERS


def per_call(run: Callable[[int], None], calls: int) -> float:
    """Best of 3: microseconds a call."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        run(calls)
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def encoding(make: Callable[[], object], calls: int) -> float:
    lists = [call_blocks(i) for i in range(calls)]

    def run(n: int) -> None:
        encoder = make()
        encode = encoder.encode  # type: ignore[attr-defined]
        for request, response, trailers in lists[:n]:
            encode(request, huffman=False)
            encode(response, huffman=False)
            encode(trailers, huffman=False)

    return per_call(run, calls)


def decoding(make: Callable[[], object], calls: int) -> float:
    peer = hpack.Encoder()
    blocks = []
    for i in range(200):  # one connection's worth, the dynamic table warm
        request, response, trailers = call_blocks(i)
        blocks.append((peer.encode(request), peer.encode(response), peer.encode(trailers)))

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


def paired(base: Path, calls: int, rounds: int) -> None:
    """This checkout's PlainEncoder against `base`'s, in turns, a process each."""

    def one(checkout: Path) -> float:
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); import hpack_bench as b;"
            "from pyproxyd.hpack_plain import PlainEncoder;"
            "from pyproxyd import compiled;"
            "print(b.encoding(PlainEncoder, int(sys.argv[2])), compiled.running())"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(Path(__file__).parent), str(calls)],
            cwd=checkout, env=env, capture_output=True, text=True, check=True, timeout=600,
        ).stdout.split(maxsplit=1)  # fmt: skip
        print(f"  {checkout}: {float(out[0]):6.2f} us  ({out[1].strip()})")
        return float(out[0])

    here = Path(__file__).resolve().parents[2]
    ratios = []
    for r in range(rounds):  # bounded: rounds x 2 processes
        pair = (base, here) if r % 2 == 0 else (here, base)
        us = {checkout: one(checkout) for checkout in pair}
        ratios.append(us[here] / us[base])
    print(f"encode this/base: median {statistics.median(ratios):.3f} of {rounds} paired rounds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--base", type=Path, help="another checkout: PlainEncoder before/after")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds with --base")
    args = parser.parse_args()
    calls = args.calls
    if args.base is not None:
        paired(args.base.resolve(), calls, args.rounds)
        return
    print(f"pyproxyd: {compiled.running()}; us per gRPC call (3 blocks)")
    print(f"encode  hpack {encoding(hpack.Encoder, calls):6.2f}", end="  ")
    print(f"pyproxyd {encoding(PlainEncoder, calls):6.2f}")
    print(f"decode  hpack {decoding(hpack.Decoder, calls):6.2f}", end="  ")
    print(f"pyproxyd {decoding(vendored.Decoder, calls):6.2f}")


if __name__ == "__main__":
    main()

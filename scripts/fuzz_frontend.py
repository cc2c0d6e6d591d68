#!/usr/bin/env python3
"""Mutational fuzzing of both HTTP/1.1 sides: mangled requests, mangled upstream answers.

    .venv/bin/python scripts/fuzz_frontend.py [--side client|upstream] [--requests 3000] [--seed 1]

`--side client` (the default) starts a test backend (tests/backends.py) and a
gateway in this process, then sends requests made by mutating a few valid ones
(byte flips, inserted HTTP tokens, cut and repeated runs, pipelined extras),
each on a fresh connection, written in random pieces. `--side upstream` sends
GETs and POSTs to a raw backend that answers each with a mutated response
(bad status lines, framing, chunk sizes, early closes) on a kept-alive
connection, so the pool sees whatever state a broken answer leaves. Reports
what the gateway did and fails (exit 1) on:

- a 5xx from the gateway itself other than 502/503/504 (the backend's own 500s,
  marked `X-Backend`, are its business: the test backend refuses some header bytes);
- (upstream side) no answer at all within the read timeout and a second;
- an `internal_error` log line;
- an exception reaching the event loop (a protocol callback that raised);
- the gateway no longer answering a plain request (checked every 200 requests).

Not a test: it is random and slow. It found the bytes-after-`Connection: close`
bug (tests/e2e/test_frontend.py). Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import sys
import time
from collections.abc import MutableMapping
from contextlib import suppress
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from structlog.testing import capture_logs

from tests.auth.tokens import AUDIENCE, ISSUER, claims, jwks, public_jwk, rsa_key, sign
from tests.backends import Backend, RawBackend, RawHandler, read_request
from tests.gateway import config, gateway, one_route

SEEDS = [
    b"GET /a/echo HTTP/1.1\r\nHost: x\r\nX-Request-ID: abc\r\n"
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
    b"POST /a/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /a/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    b"GET /a/echo HTTP/1.1\r\nHost: x\r\n\r\n"
    b"GET /a/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /a/echo HTTP/1.0\r\n\r\n",
    b"HEAD /a/echo HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4, 5.6.7.8\r\n\r\n",
    b"GET /a/%2e%2e/echo?x=1&y=%zz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
    b"Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://x/a/echo HTTP/1.1\r\nHost: y\r\nX-Client-ID: c\r\n"
    b"Authorization: Bearer a.b.c\r\n\r\n",
]
TOKENS = [
    b"\r\n", b"\n", b"\r", b":", b" ", b"\t", b"\x00", b"\xff", b"\x80\x81", b"%", b"/../", b"//",
    b"0", b"-1", b"99999999999999999999", b"ffffffff\r\n", b";ext=1", b"HTTP/1.1", b"HTTP/2.0",
    b"Host: a\r\n", b"Content-Length: 3\r\n", b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n", b"Expect: 100-continue\r\n",
]  # fmt: skip
PLAIN = b"GET /a/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
# Routes that read headers: a JWT (its claims forwarded and matched), an API key,
# and a rate limit keyed by X-Client-ID with a tier from a claim.
GUARDED = f"""
[[routes]]
id = "j"
path = "/j/**"
auth = "jwt"
claims = {{ roles = "user" }}
upstream = "app"
strip_prefix = 1

[[routes]]
id = "k"
path = "/k/**"
auth = "api_key"
upstream = "app"
strip_prefix = 1

[[routes]]
id = "r"
path = "/r/**"
auth = "optional_jwt"
rate_limit = "per-client"
upstream = "app"
strip_prefix = 1

[rate_limits.per-client]
algorithm = "token_bucket"
backend = "local"
key = ["header:X-Client-ID", "ip"]
rate = "1/s"
burst = 1
tier_key = "claim:plan"

[rate_limits.per-client.tiers]
gold = {{ rate = "100/s", burst = 10 }}

[auth.jwt]
algorithms = ["RS256"]
jwks_file = "jwks.json"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
forward_claims = {{ sub = "X-User-ID", roles = "X-User-Roles" }}

[auth.api_key]
header = "X-API-Key"

[consumers.acme]
api_key_sha256 = "{hashlib.sha256(b"fuzz-key").hexdigest()}"
"""
TOKEN = sign(rsa_key(), "RS256", claims(time.time(), plan="gold"), "rsa-1").encode()  # 10 min
SEEDS += [
    b"GET /j/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + b"\r\n\r\n",
    b"GET /r/echo HTTP/1.1\r\nHost: x\r\nX-Client-ID: c-1\r\nAuthorization: Bearer "
    + TOKEN
    + b"\r\n\r\nGET /r/echo HTTP/1.1\r\nHost: x\r\nX-Client-ID: c-1\r\n\r\n",
    b"POST /k/echo HTTP/1.1\r\nHost: x\r\nX-API-Key: fuzz-key\r\nContent-Length: 2\r\n\r\nhi",
]
ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Backend: raw\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\n\r\nto the end",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 503 Busy\r\nRetry-After: 1\r\nContent-Length: 0\r\nKeep-Alive: timeout=5\r\n\r\n",
]
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


def mutate(rng: random.Random, seed: bytes, extras: list[bytes] = SEEDS) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 6)):
        op, pos = rng.randrange(6), rng.randint(0, len(data))
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[pos:pos] = rng.choice(TOKENS)
        elif op == 2:
            del data[pos : pos + rng.randint(1, 8)]
        elif op == 3:
            data[pos:pos] = data[pos : pos + rng.randint(1, 40)] * rng.randint(1, 3)
        elif op == 4:
            data += rng.choice(extras)
        else:
            data[pos:pos] = rng.randbytes(rng.randint(1, 5))
    return bytes(data)


async def exchange(port: int, data: bytes, rng: random.Random, wait: float = 0.3) -> bytes:
    """Write `data` in random pieces, read what comes back within `wait` of the last byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = bytearray()
    try:
        i = 0
        while i < len(data):
            n = rng.randint(1, len(data))
            writer.write(data[i : i + n])
            await writer.drain()
            i += n

        async def read_all() -> None:
            while chunk := await reader.read(65536):
                out.extend(chunk)

        await asyncio.wait_for(read_all(), wait)
    except (TimeoutError, ConnectionError):
        pass  # kept alive, or reset by a lingering close: either is fine here
    finally:
        writer.close()
    return bytes(out)


class Findings:
    """What a run saw: statuses, and the problems that fail it."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.problems: list[str] = []
        self.loop_errors: list[dict[str, Any]] = []
        self.started = time.monotonic()
        asyncio.get_running_loop().set_exception_handler(
            lambda _, ctx: self.loop_errors.append(ctx)
        )

    def answered(self, out: bytes, sent: bytes) -> None:
        for m in STATUS.finditer(out):
            status = int(m.group(1))
            self.statuses[status] = self.statuses.get(status, 0) + 1
            own = b"X-Backend:" not in out
            if status >= 500 and status not in (502, 503, 504) and own:
                self.problems.append(f"{status} for {sent!r}: {out[:300]!r}")

    def report(self, requests: int, seed: int, logs: list[MutableMapping[str, Any]]) -> int:
        problems = self.problems + [
            f"internal_error: {line}" for line in logs if line.get("event") == "internal_error"
        ]
        problems += [f"loop: {c.get('message')} {c.get('exception')!r}" for c in self.loop_errors]
        took = time.monotonic() - self.started
        counts = dict(sorted(self.statuses.items()))
        print(f"{requests} requests in {took:.0f} s, seed {seed}; statuses {counts}")
        for p in problems[:20]:
            print("PROBLEM", p[:500])
        print(f"{len(problems)} problems")
        return 1 if problems else 0


def mutated_answers(rng: random.Random) -> RawHandler:
    """A raw upstream answering each request head with a mutated response on a
    kept-alive connection, closing after some."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        with suppress(asyncio.LimitOverrunError):
            while True:
                if rng.random() < 0.2:  # answer early, the request body unread
                    await reader.readuntil(b"\r\n\r\n")
                else:
                    await read_request(reader)
                answer = mutate(rng, rng.choice(ANSWERS), ANSWERS)
                step = rng.randint(1, len(answer))
                for i in range(0, len(answer), step):
                    writer.write(answer[i : i + step])
                    await writer.drain()
                if rng.random() < 0.3:
                    return

    return handler


async def run_upstream(requests: int, seed: int) -> int:
    rng = random.Random(seed)
    found = Findings()
    requests_sent = [
        b"GET /a/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /a/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4096\r\n\r\n"
        + bytes(4096),
    ]
    with TemporaryDirectory() as tmp, capture_logs() as logs:
        async with RawBackend(mutated_answers(rng)) as raw:
            route = one_route(raw.url, "a", "/a")
            route = route.replace("[[routes]]", 'read_timeout = "1s"\nretries = 0\n[[routes]]')
            async with gateway(Path(tmp), config(route)) as gw:
                for _ in range(requests):
                    request = rng.choice(requests_sent)
                    out = await exchange(gw.ports[0], request, rng, wait=2.0)
                    if STATUS.match(out) is None:
                        found.problems.append(f"no answer: {out[:200]!r}")
                    found.answered(out, request)
    return found.report(requests, seed, logs)


async def run(requests: int, seed: int) -> int:
    rng = random.Random(seed)
    found = Findings()
    with TemporaryDirectory() as tmp, capture_logs() as logs:
        async with Backend() as backend:
            server = 'client_header_timeout = "1s"\nclient_max_body_size = "1KiB"'
            toml = config(one_route(backend.url, "a", "/a") + GUARDED, server=server)
            doc = jwks(public_jwk(rsa_key(), "rsa-1"))
            (Path(tmp) / "jwks.json").write_text(json.dumps(doc))
            async with gateway(Path(tmp), toml) as gw:
                port = gw.ports[0]
                for k in range(requests):
                    data = mutate(rng, rng.choice(SEEDS))
                    found.answered(await exchange(port, data, rng), data)
                    if k % 200 == 0 and b" 200 " not in await exchange(port, PLAIN, rng, 2.0):
                        found.problems.append(f"no answer to a plain request after {data!r}")
    return found.report(requests, seed, logs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", choices=("client", "upstream"), default="client")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    fuzz = run if args.side == "client" else run_upstream
    raise SystemExit(asyncio.run(fuzz(args.requests, args.seed)))


if __name__ == "__main__":
    main()

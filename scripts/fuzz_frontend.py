#!/usr/bin/env python3
"""Mutational fuzzing of both HTTP/1.1 sides: mangled requests, mangled upstream answers.

    .venv/bin/python scripts/fuzz_frontend.py [--side client|upstream] [--requests 3000]
        [--seed 1] [--cases mutate,smuggle,stall | mutate,stray,oversize] [--time-limit 1800]

`--side client` (the default) starts a test backend (harness/backends.py), a raw
counting upstream and a gateway in this process (client_body_timeout 300ms),
and sends, each on a fresh connection written in random pieces, one of:

- `mutate`: requests made by mutating a few valid ones (byte flips, inserted
  HTTP tokens, cut and repeated runs, pipelined extras);
- `smuggle`: framing attacks on the route `/s` of the counting upstream: a
  `Connection` header naming Content-Length / Transfer-Encoding / Host, a body
  carrying a second request, Transfer-Encoding variants, Content-Length with
  Transfer-Encoding, duplicate Host / Authorization / Content-Length, header
  names with `_`, absolute-form targets, `%2F` / `%2E` paths, upgrades that
  carry a request, odd chunked bodies. Where docs/behaviour.md ("Framing")
  names the answer (400, 501, 200) it is checked, as is the close after a refusal;
- `stall`: a head with Content-Length N (or chunked) and fewer body bytes, then
  silence: it must get 408 (or an earlier 4xx) and a close within a bound.

`--side upstream` sends GETs and POSTs through two raw upstreams:

- `mutate`: each request answered with a mutated response (bad status lines,
  framing, chunk sizes, early closes) on a kept-alive connection;
- `stray`: the owed response is followed (same write, a separate one, or later
  while the connection is idle) by an unsolicited response or junk marked
  `X-Stray: 1` / `STRAY`; then a second request on the same client connection;
- `oversize`: response heads around server.max_header_size (8190): one long
  line, many headers, a long reason, a big interim 100 head.

Fails (exit 1) on:

- a 5xx from the gateway itself other than 502/503/504 (the backend's own 500s,
  marked `X-Backend`, are its business: the test backend refuses some header bytes);
- an `internal_error` log line;
- an exception reaching the event loop (a protocol callback that raised);
- the gateway no longer answering a plain request (checked every 200 requests);
- (upstream side) no answer at all within the read timeout and a second;
- (smuggle) the counting upstream parsing more requests during an exchange than
  the client got final responses, a refused request reaching it at all, a
  request it got that the gateway never routed (an inner `SMUGGLED` target not
  rewritten by strip_prefix), a header name with `_`, a path not normalised,
  a body it cannot de-frame; an answer other than the documented one;
- (stall) no answer, a 2xx or 5xx, or no close, within 3 s of the last byte;
- (stray) any trace of the stray response (`X-Stray`, `STRAY`, its cookie) in
  what the client reads, the owed response not relayed as sent, or the next
  request on the same connection not answered with its own response;
- (oversize) a head over the limit not answered 502 bad_gateway, or one well
  under it not relayed whole. (A 502 is expected for a broken or oversized
  upstream answer; it is counted, never a problem, on the mutate side.)

Not a test: it is random and slow. It found the bytes-after-`Connection: close`
bug (tests/e2e/test_frontend.py). Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import logging
import random
import re
import time
from collections.abc import MutableMapping
from contextlib import suppress
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from structlog.testing import capture_logs

from harness.backends import Backend, RawBackend, RawHandler, read_request
from harness.gateway import config, gateway, one_route
from harness.tokens import AUDIENCE, ISSUER, claims, jwks, public_jwk, rsa_key, sign

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
    # The framing rules of docs/behaviour.md, as seeds to mutate.
    b"POST /a/echo HTTP/1.1\r\nHost: x\r\nConnection: close, Content-Length\r\n"
    b"Content-Length: 35\r\n\r\nGET /a/echo HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /a/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST /a/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /a/echo HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a/echo HTTP/1.1\r\nHost: x\r\nHost: y\r\nX_User_ID: admin\r\n\r\n",
    b"GET /a/ec%2Fho/%2E%2E/echo HTTP/1.1\r\nHost: x\r\nConnection: Host\r\n\r\n",
]
TOKENS = [
    b"\r\n", b"\n", b"\r", b":", b" ", b"\t", b"\x00", b"\xff", b"\x80\x81", b"%", b"/../", b"//",
    b"0", b"-1", b"99999999999999999999", b"ffffffff\r\n", b";ext=1", b"HTTP/1.1", b"HTTP/2.0",
    b"Host: a\r\n", b"Content-Length: 3\r\n", b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n", b"Expect: 100-continue\r\n",
    b"Connection: Content-Length\r\n", b"Transfer-Encoding: gzip, chunked\r\n", b"X_A: 1\r\n",
    b"%2F", b"%2e", b"http://x",
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
BODY_TIMEOUT = 0.3  # server.client_body_timeout of the client side
STALL_BOUND = 3.0  # a stalled body is answered and closed within this after its last byte


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


class Peer:
    """One client connection: write in random pieces, read with a quiet period and a cap."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.out = bytearray()
        self.eof = False
        self.last_write = time.monotonic()

    @classmethod
    async def open(cls, port: int) -> Peer:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes, rng: random.Random, pause: float = 0.0) -> None:
        """In random pieces, sleeping up to `pause` between them; a reset is not an error
        (the gateway may answer and close before the last piece)."""
        i = 0
        with suppress(ConnectionError):
            while i < len(data):
                n = rng.randint(1, len(data))
                if i and pause:
                    await asyncio.sleep(rng.uniform(0, pause))
                self.writer.write(data[i : i + n])
                await self.writer.drain()
                i += n
        self.last_write = time.monotonic()

    async def read(self, quiet: float, cap: float) -> None:
        """Until EOF, `quiet` seconds without a byte, or `cap` seconds in all."""
        end = time.monotonic() + cap
        while not self.eof:
            left = min(quiet, end - time.monotonic())
            if left <= 0:
                return
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                return
            except ConnectionError:
                chunk = b""
            if not chunk:
                self.eof = True
            self.out += chunk

    async def one(self, head_only: bool = False, cap: float = 3.0) -> Answer:
        return await asyncio.wait_for(read_answer(self.reader, head_only), cap)

    def close(self) -> None:
        self.writer.close()


class Answer:
    """One final response as the client read it (1xx skipped)."""

    def __init__(self, status: int, head: bytes, body: bytes) -> None:
        self.status, self.head, self.body = status, head, body
        self.headers: dict[bytes, list[bytes]] = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())

    @property
    def raw(self) -> bytes:
        return self.head + self.body

    def __repr__(self) -> str:
        return f"<{self.status} {self.raw[:300]!r}>"


async def read_answer(reader: asyncio.StreamReader, head_only: bool = False) -> Answer:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        if status >= 200 or status == 101:
            break
    answer = Answer(status, head, b"")
    coding = b",".join(answer.headers.get(b"transfer-encoding", [])).lower()
    if head_only or status in (101, 204, 304):
        pass
    elif coding:
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass  # trailers
        answer.body = bytes(body)
    elif b"content-length" in answer.headers:
        answer.body = await reader.readexactly(int(answer.headers[b"content-length"][0]))
    else:
        answer.body = await reader.read()
    return answer


def finals(out: bytes) -> list[int]:
    """The final statuses (and 101s) in what a client read; over-counts if a body
    quotes a status line, which only makes the checks that use it more lenient."""
    return [s for m in STATUS.finditer(out) if (s := int(m.group(1))) >= 200 or s == 101]


class Findings:
    """What a run saw: statuses, and the problems that fail it."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.cases: dict[str, int] = {}
        self.problems: list[str] = []
        self.loop_errors: list[dict[str, Any]] = []
        self.started = time.monotonic()
        asyncio.get_running_loop().set_exception_handler(self._loop_error)

    def _loop_error(self, _: object, ctx: dict[str, Any]) -> None:
        if isinstance(ctx.get("exception"), asyncio.CancelledError) and "StreamReaderProtocol" in (
            ctx.get("message") or ""
        ):
            # A test upstream's handler cancelled by RawBackend.__aexit__: Python 3.11's
            # done-callback of start_server's tasks calls task.exception() on it. Not the gateway.
            return
        self.loop_errors.append(ctx)

    def case(self, name: str) -> None:
        self.cases[name] = self.cases.get(name, 0) + 1

    def answered(self, out: bytes, sent: bytes) -> None:
        for m in STATUS.finditer(out):
            status = int(m.group(1))
            self.statuses[status] = self.statuses.get(status, 0) + 1
            own = b"X-Backend:" not in out
            # 501 not_implemented: a transfer coding before chunked (docs/behaviour.md).
            coding = status == 501 and b'"error":"not_implemented"' in out
            if status >= 500 and status not in (502, 503, 504) and own and not coding:
                self.problems.append(f"{status} for {sent!r}: {out[:300]!r}")

    def report(self, requests: int, seed: int, logs: list[MutableMapping[str, Any]]) -> int:
        problems = self.problems + [
            f"internal_error: {line}" for line in logs if line.get("event") == "internal_error"
        ]
        problems += [f"loop: {c.get('message')} {c.get('exception')!r}" for c in self.loop_errors]
        took = time.monotonic() - self.started
        counts = dict(sorted(self.statuses.items()))
        print(f"{requests} requests in {took:.0f} s, seed {seed}; statuses {counts}")
        print(f"cases {dict(sorted(self.cases.items()))}")
        for p in problems[:20]:
            print("PROBLEM", p[:800])
        print(f"{len(problems)} problems")
        return 1 if problems else 0


# -- client side: smuggling and framing cases, against a counting upstream ------------------

SMUGGLED = b"SMUGGLED"
# A path the gateway forwards is normalised: no dot segment, no "//", "%2E" decoded,
# escapes of reserved characters upper-cased (docs/behaviour.md "Paths").
_UNNORMAL = re.compile(rb"//|/\.\.?(?:/|$)|%2[eE]|%(?:[0-9A-Fa-f][a-f]|[a-f][0-9A-Fa-f])")
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Counting:
    """The raw upstream behind route `/s` (strip_prefix 1): parses every request the
    gateway forwards (Content-Length or chunked), answers 200 "ok" (101 to a
    WebSocket upgrade whose target says ws101, then only drains), and notes what
    no upstream may get. `heads` counts request heads."""

    def __init__(self) -> None:
        self.heads = 0
        self.problems: list[str] = []

    async def __call__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                return  # over this upstream's 64 KiB: it closes, the gateway says 502
            self.heads += 1
            lines = head[:-4].split(b"\r\n")
            method, _, rest = lines[0].partition(b" ")
            target = rest.rpartition(b" ")[0]
            headers = self.check(lines, target)
            coding = b",".join(headers.get(b"transfer-encoding", []))
            lengths = headers.get(b"content-length", [])
            try:
                if coding and lengths:
                    self.problems.append(f"Content-Length and Transfer-Encoding: {head!r}")
                    return
                if coding:
                    if coding.strip().lower() != b"chunked":
                        self.problems.append(f"forwarded Transfer-Encoding {coding!r}")
                    await self.chunked(reader)
                elif lengths:
                    if len(lengths) > 1:
                        self.problems.append(f"forwarded Content-Length twice: {head!r}")
                    await reader.readexactly(int(lengths[0]))
            except (ValueError, asyncio.LimitOverrunError) as exc:
                self.problems.append(f"a body the upstream cannot de-frame ({exc}): {head!r}")
                return
            if b"upgrade" in headers and b"ws101" in target:
                key = headers.get(b"sec-websocket-key", [b""])[0]
                accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
                writer.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept
                )
                await writer.drain()
                while await reader.read(65536):
                    pass  # a tunnel now: whatever comes is the client's own
                return
            body = b"" if method == b"HEAD" else b"ok"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Backend: raw\r\n\r\n" + body)
            await writer.drain()

    def check(self, lines: list[bytes], target: bytes) -> dict[bytes, list[bytes]]:
        if SMUGGLED in target and not target.startswith(b"/" + SMUGGLED):
            # Through the gateway, /s/SMUGGLED arrives as /SMUGGLED and /x/... not at all.
            self.problems.append(f"a request the gateway never routed reached upstream: {lines!r}")
        if not target.startswith(b"/") or _UNNORMAL.search(target.partition(b"?")[0]):
            self.problems.append(f"target not normalised origin-form: {lines[0]!r}")
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or name != name.strip() or not name:
                self.problems.append(f"a malformed header line forwarded: {line!r}")
            if b"_" in name:
                self.problems.append(f"a header name with '_' forwarded: {line!r}")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        return headers

    async def chunked(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line[:-2].split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return
            if (await reader.readexactly(size + 2))[-2:] != b"\r\n":
                raise ValueError("chunk data not followed by CRLF")


def _case(rng: random.Random, word: bytes) -> bytes:
    """`word` with its letters' case scrambled (header names and tokens are case-insensitive)."""
    return bytes(c ^ 32 if 97 <= (c | 32) <= 122 and rng.random() < 0.3 else c for c in word)


def _inner(rng: random.Random) -> bytes:
    """A request to carry inside another: routed, it would reach the upstream as
    /SMUGGLED (route /s) or not at all (no route /x); raw, as itself."""
    target = rng.choice([b"/s/SMUGGLED", b"/x/SMUGGLED", b"http://x/s/SMUGGLED", b"/s/SMUGGLED?a"])
    return rng.choice(
        [
            b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target,
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" % target,
            b"GET %s HTTP/1.1\r\nHost: x\r\nX-Swallow: " % target,  # poisons the next request
            b"GET %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % target,
        ]
    )


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"


CONNECTION_FRAMING = [
    b"Content-Length", b"content-length", b"CONTENT-length", b"Transfer-Encoding",
    b"transfer-encoding", b"Host", b"HOST", b"close, Content-Length", b"keep-alive,HOST",
    b"Upgrade, Transfer-Encoding", b"x-a, x-b,content-length", b"close ,  host",
    b"content-length, close", b",Host,",
]  # fmt: skip
# Transfer-Encoding header values (one header each) and the answer docs/behaviour.md
# gives: 200 forwarded, 400 last coding not chunked, 501 a coding before chunked;
# None where the rules leave it to the parser (odd spacing, parameters).
CODINGS: list[tuple[list[bytes], int | None]] = [
    ([b"chunked"], 200), ([b"Chunked"], 200), ([b"CHUNKED"], 200),
    ([b"gzip, chunked"], 501), ([b"gzip,chunked"], 501), ([b"deflate, chunked"], 501),
    ([b"x-custom, chunked"], 501), ([b"GZIP, Chunked"], 501), ([b"gzip"], 400),
    ([b"gzip", b"chunked"], 501), ([b"x-gzip", b"chunked"], 501),
    ([b"chunked, gzip"], 400), ([b"chunked", b"gzip"], 400), ([b"identity"], 400),
    ([b"chunked, chunked"], 400), ([b"chunked", b"chunked"], 400), ([b"chunk ed"], 400),
    ([b"xchunked"], 400), ([b"chunked", b"identity"], 400),
    ([b" chunked "], None), ([b"chunked,"], None), ([b", chunked"], None),
    ([b"chunked;q=1"], None), ([b"\tchunked"], None), ([b"gzip ,  chunked"], None),
    ([b"chunked\x0b"], None), ([b"chunked, ,"], None),
]  # fmt: skip
CHUNK_TRICKS = [
    b"0x5\r\nhello\r\n0\r\n\r\n", b"+5\r\nhello\r\n0\r\n\r\n", b"5 ;x=1\r\nhello\r\n0\r\n\r\n",
    b"05\r\nhello\r\n0\r\n\r\n", b"5\nhello\n0\n\n", b"5\r\nhello!\r\n0\r\n\r\n",
    b"ffffffffffffffffff1\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\nGET /x/SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n",
    b"5\r\nhello\r\n00000\r\n\r\n", b"5\r\nhe\r\n0\r\n\r\n", b"-1\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r0\r\n\r\n", b"5;\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n",
]  # fmt: skip


# Refusals for framing in doubt, which also close the connection (docs/behaviour.md).
FRAMING_KINDS = frozenset(
    {"connection", "connection-split", "coding", "length-and-coding", "two-lengths",
     "two-hosts", "no-host", "two-authorizations"}
)  # fmt: skip


def smuggle_case(rng: random.Random) -> tuple[bytes, int | None, str]:
    """(request bytes, the first final status docs/behaviour.md gives or None, label)."""
    inner = _inner(rng)
    lines = [b"Host: x"]
    target, method, body, expect = b"/s/a", b"POST", b"", None
    kind = rng.choice(
        ["connection", "connection-split", "coding", "length-and-coding", "two-lengths",
         "two-hosts", "no-host", "two-authorizations", "underscore", "absolute", "encoded",
         "body-request", "pipelined", "upgrade", "chunk-tricks", "length-values"]
    )  # fmt: skip
    if kind == "connection":
        token = _case(rng, rng.choice(CONNECTION_FRAMING))
        if rng.random() < 0.5:
            lines += [b"Connection: " + token, b"Content-Length: %d" % len(inner)]
            body = inner
        else:
            lines += [b"Connection: " + token, b"Transfer-Encoding: chunked"]
            body = _chunked(inner)
        expect = 400
    elif kind == "connection-split":
        framing = _case(rng, rng.choice([b"Content-Length", b"Transfer-Encoding", b"Host"]))
        lines += [b"Connection: keep-alive", b"Connection: " + framing]
        lines += [b"Content-Length: %d" % len(inner)]
        body, expect = inner, 400
    elif kind == "coding":
        values, expect = rng.choice(CODINGS)
        lines += [_case(rng, b"Transfer-Encoding") + b": " + v for v in values]
        body = _chunked(inner)
    elif kind == "length-and-coding":
        both = [
            b"Content-Length: %d" % rng.choice([0, 4, len(inner)]),
            b"Transfer-Encoding: chunked",
        ]
        rng.shuffle(both)
        lines += both
        body, expect = b"0\r\n\r\n" + inner, 400
    elif kind == "two-lengths":
        n = len(inner)
        lines += [b"Content-Length: %d" % n, b"content-length: %d" % rng.choice([n, 0, 3])]
        body, expect = inner, 400
    elif kind == "two-hosts":
        lines += [_case(rng, b"Host") + b": " + rng.choice([b"x", b"y", b"evil.test"])]
        method, expect = b"GET", 400
    elif kind == "no-host":
        lines, method, expect = [b"X-A: 1"], b"GET", 400
    elif kind == "two-authorizations":
        lines += [b"Authorization: Bearer a", _case(rng, b"Authorization") + b": Basic Yjpj"]
        method, expect = b"GET", 400
    elif kind == "underscore":
        lines += rng.sample(
            [b"X_User_ID: admin", b"X_Forwarded_For: 10.0.0.1", b"Host_: y", b"_: 1",
             b"Content_Length: %d" % len(inner), b"Transfer_Encoding: chunked", b"X-Ok: 1"],
            rng.randint(1, 3),
        )  # fmt: skip
        method, body = b"GET", inner  # any Content_Length is dropped: the body is a request
    elif kind == "absolute":
        target, expect = rng.choice(
            [(b"http://x/s/abs", 200), (b"HTTP://X:80/s/abs?q=1", 200), (b"https://x/s/a", 200),
             (b"http://x", 404), (b"http://u@x/s/a", 400), (b"ftp://x/s/a", 400),
             (b"http:///s/a", 400), (b"http://x/s/../x/SMUGGLED", 404), (b"http://x?/s/a", 404),
             (b"http://x/s/SMUGGLED", 200), (b"http://x/x/SMUGGLED", 404)]
        )  # fmt: skip
        method = b"GET"
    elif kind == "encoded":
        target, expect = rng.choice(
            [(b"/s/a%2Fb", 200), (b"/s/a%2fb", 200), (b"/s%2Fa", 404),
             (b"/s/%2e%2e/x/SMUGGLED", 404),
             (b"/s/%2E%2E/s/a", 200), (b"/s/a%2F..%2Fb", 200), (b"/%2E%2E/s/a", 400),
             (b"/s/.%2e/.%2E/", 400), (b"/s/a%2Fb%2E", 200), (b"/s/%2E/a//b/./c", 200),
             (b"/x%2F..%2Fs/a", 404), (b"/s/%252F", 200), (b"/s/a%2", 400)]
        )  # fmt: skip
        method = b"GET"
    elif kind == "body-request":
        method = rng.choice([b"POST", b"GET", b"PUT"])
        if rng.random() < 0.5:
            lines += [b"Content-Length: %d" % len(inner)]
            body = inner
        else:
            lines += [b"Transfer-Encoding: chunked"]
            body = _chunked(inner)
        expect = 200
    elif kind == "pipelined":
        lines += [b"Content-Length: 0"]
        body, expect = inner, 200
    elif kind == "upgrade":
        method, target = b"GET", rng.choice([b"/s/ws", b"/s/ws101"])
        if rng.random() < 0.6:
            lines += [b"Connection: Upgrade", b"Upgrade: websocket", b"Sec-WebSocket-Version: 13",
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]  # fmt: skip
        else:
            lines += [b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
                      b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"]  # fmt: skip
        body = inner
    elif kind == "chunk-tricks":
        lines += [b"Transfer-Encoding: chunked"]
        body = rng.choice(CHUNK_TRICKS)
    else:  # length-values
        value = rng.choice([b"+5", b"05", b"5, 5", b" 5 ", b"0x5", b"5.0", b"-5", b"5 5", b"5\t"])
        lines += [b"Content-Length: " + value]
        body = b"hello" + inner
    if rng.random() < 0.15 and body:
        lines.insert(rng.randint(0, len(lines)), b"Expect: 100-continue")
    if rng.random() < 0.3 and kind not in ("pipelined", "upgrade"):
        lines.append(b"Connection: close")  # answered, then closed: no quiet wait
    head = b"%s %s HTTP/1.1\r\n" % (method, target) + b"".join(x + b"\r\n" for x in lines)
    return head + b"\r\n" + body, expect, kind


async def smuggle_exchange(
    port: int, up: Counting, rng: random.Random, found: Findings
) -> tuple[bytes, bytes]:
    data, expect, kind = smuggle_case(rng)
    found.case(f"smuggle:{kind}")
    await asyncio.sleep(0.005)
    heads, problems = up.heads, len(up.problems)
    peer = await Peer.open(port)
    try:
        await peer.send(data, rng)
        await peer.read(quiet=0.3, cap=3.0)
        if up.heads - heads > len(finals(bytes(peer.out))) and not peer.eof:
            await peer.read(quiet=2.0, cap=2.0)  # a body the gateway still waits for: 408 soon
    finally:
        peer.close()
    await asyncio.sleep(0.01)  # anything the upstream has yet to parse
    out = bytes(peer.out)
    got = finals(out)
    where = f"[{kind}] {data!r} -> {out[:400]!r}"
    if up.heads - heads > len(got):
        found.problems.append(
            f"smuggle: upstream parsed {up.heads - heads} requests, client got {len(got)}: {where}"
        )
    for p in up.problems[problems:]:
        found.problems.append(f"upstream got: {p} for {where}")
    if expect is not None:
        if not got or got[0] != expect:
            found.problems.append(f"expected {expect}, got {got[:1]}: {where}")
        elif expect >= 400 and expect != 404:
            if up.heads != heads:
                found.problems.append(f"refused with {expect} but forwarded: {where}")
            if not peer.eof and kind in FRAMING_KINDS:
                # docs/behaviour.md: closed after the answer, nothing after it trusted
                found.problems.append(f"refused with {expect} but left open: {where}")
    return data, out


# -- client side: stalled bodies ---------------------------------------------------------


def stall_case(rng: random.Random) -> tuple[bytes, bytes, str]:
    """(a complete request or nothing to send first, the stalled request, label)."""
    route = rng.choice(["s", "a", "k", "k-key", "j", "r"])
    lines = [b"Host: x"]
    path = {"s": b"/s/x", "a": b"/a/echo", "j": b"/j/echo", "r": b"/r/echo"}.get(route, b"/k/echo")
    if route == "k-key":
        lines.append(b"X-API-Key: fuzz-key")
    elif route in ("j", "r") and rng.random() < 0.7:
        lines.append(b"Authorization: Bearer " + TOKEN)
    if route == "r":
        lines.append(b"X-Client-ID: stall-%d" % rng.randrange(1000))
    if rng.random() < 0.2:
        lines.append(b"Expect: 100-continue")
    if rng.random() < 0.7:
        n = rng.choice([rng.randint(1, 20), rng.randint(1, 1000), 2000])  # 2000: over 1KiB
        lines.append(b"Content-Length: %d" % n)
        body = bytes(rng.randint(0, n - 1))
        framing = "length"
    else:
        lines.append(b"Transfer-Encoding: chunked")
        body = rng.choice([b"", b"5\r\nhel", b"5\r\nhello\r\n", b"5\r\nhello\r\n0\r\n", b"a"])
        framing = "chunked"
    method = rng.choice([b"POST", b"PUT"])
    head = b"%s %s HTTP/1.1\r\n" % (method, path) + b"".join(x + b"\r\n" for x in lines) + b"\r\n"
    first = b"GET /s/first HTTP/1.1\r\nHost: x\r\n\r\n" if rng.random() < 0.2 else b""
    return first, head + body, f"{route}/{framing}"


async def stall_exchange(port: int, rng: random.Random, found: Findings) -> tuple[bytes, bytes]:
    first, stalled, kind = stall_case(rng)
    found.case(f"stall:{kind}")
    peer = await Peer.open(port)
    try:
        await peer.send(first + stalled, rng, pause=BODY_TIMEOUT / 4)
        await peer.read(quiet=STALL_BOUND, cap=STALL_BOUND)
        took = time.monotonic() - peer.last_write
    finally:
        peer.close()
    out = bytes(peer.out)
    got = finals(out)
    where = f"[{kind}] {first + stalled!r} -> {out[:400]!r}"
    if len(got) < 1 + bool(first):
        found.problems.append(f"stalled body: no answer within {took:.1f} s: {where}")
    elif not 400 <= got[-1] < 500:
        found.problems.append(f"stalled body answered {got[-1]}: {where}")
    elif got[-1] == 408 and b"request_timeout" not in out:
        found.problems.append(f"stalled body: a 408 that is not request_timeout: {where}")
    if not peer.eof:
        found.problems.append(f"stalled body: connection open {took:.1f} s after: {where}")
    return first + stalled, out


async def run(requests: int, seed: int, cases: list[str], time_limit: float) -> int:
    rng = random.Random(seed)
    found = Findings()
    up = Counting()
    weights = {"mutate": 5, "smuggle": 4, "stall": 1}
    done = 0
    with TemporaryDirectory() as tmp, capture_logs() as logs:
        async with Backend() as backend, RawBackend(up) as raw:
            server = (
                'client_header_timeout = "1s"\nclient_max_body_size = "1KiB"\n'
                f'client_body_timeout = "{int(BODY_TIMEOUT * 1000)}ms"'
            )
            routes = one_route(backend.url, "a", "/a") + one_route(raw.url, "s", "/s", "counting")
            toml = config(routes + GUARDED, server=server)
            doc = jwks(public_jwk(rsa_key(), "rsa-1"))
            (Path(tmp) / "jwks.json").write_text(json.dumps(doc))
            async with gateway(Path(tmp), toml) as gw:
                port = gw.ports[0]
                deadline = time.monotonic() + time_limit
                for k in range(requests):
                    if time.monotonic() > deadline:
                        print(f"time limit: stopped after {k} requests")
                        break
                    family = rng.choices(cases, [weights[c] for c in cases])[0]
                    if family == "smuggle":
                        data, out = await smuggle_exchange(port, up, rng, found)
                    elif family == "stall":
                        data, out = await stall_exchange(port, rng, found)
                    else:
                        found.case("mutate")
                        data = mutate(rng, rng.choice(SEEDS))
                        out = await exchange(port, data, rng)
                    found.answered(out, data)
                    done = k + 1
                    if k % 200 == 0 and b" 200 " not in await exchange(port, PLAIN, rng, 2.0):
                        found.problems.append(f"no answer to a plain request after {data!r}")
    return found.report(done, seed, logs)


# -- upstream side -------------------------------------------------------------------------


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


# What a scripted upstream sends for a request: (bytes, seconds to wait before) per write,
# and whether it closes after.
Script = tuple[list[tuple[bytes, float]], bool]


def scripted(scripts: dict[bytes, Script]) -> RawHandler:
    """A raw upstream (route /t, strip_prefix 1) that answers `GET /<token>` with
    scripts[token], on a kept-alive connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            head, _ = await read_request(reader)
            token = head.split(b" ", 2)[1].lstrip(b"/")
            writes, close = scripts.get(token, ([(b"HTTP/1.1 404 No Script\r\n\r\n", 0)], True))
            for data, pause in writes:
                if pause:
                    await asyncio.sleep(pause)
                writer.write(data)
                await writer.drain()
            if close:
                return

    return handler


OWED: list[tuple[bytes, bytes, int, bytes]] = [  # (method, response, status, body the client gets)
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: owed=1\r\n\r\nfirst", 200,
     b"first"),
    (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n", 200,
     b"first"),
    (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nfi\r\n3\r\nrst\r\n"
     b"0\r\nX-Trailer: t\r\n\r\n", 200, b"first"),
    (b"GET", b"HTTP/1.1 204 No Content\r\nX-Owed: 1\r\n\r\n", 204, b""),
    (b"GET", b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\n\r\n', 304, b""),
    (b"GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
     200, b"first"),
    (b"GET", b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nfirst", 200,
     b"first"),
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfirst", 200,
     b"first"),
    (b"GET", b"HTTP/1.1 404 Not Found\r\nContent-Length: 7\r\n\r\nmissing", 404, b"missing"),
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, b""),
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 200, b""),
    (b"POST", b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nfirst", 201, b"first"),
]  # fmt: skip
_STRAY = (
    b"HTTP/1.1 404 Stray\r\nSet-Cookie: stolen=1\r\nContent-Length: 5\r\nX-Stray: 1\r\n\r\nSTRAY"
)
STRAYS = [
    _STRAY,
    b"HTTP/1.1 200 OK\r\nX-Stray: 1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nSTRAY\r\n0\r\n\r\n",
    b"\r\n" + _STRAY,
    b"HTTP/1.1 100 Continue\r\nX-Stray: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Stray: 1\r\nContent-Le",
    b"STRAY junk\r\n\r\n",
    b"STRAY",
    _STRAY * 3,
    b"HTTP/1.1 200 OK\r\nX-Stray: 1\r\nContent-Length: 65536\r\n\r\n" + b"STRAY" * 13107 + b"!",
    b"HTTP/1.1 200 STRAY\r\nX-Stray: 1\r\n\r\nSTRAY until the connection closes",
    b"HTTP/1.1 502 Bad Gateway\r\nX-Stray: 1\r\nContent-Length: 5\r\n\r\nSTRAY",
    b"HTTP/1.1 200 OK\r\nX-Stray: 1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nSTRAY!",
]


def _stray_marks(data: bytes) -> bool:
    low = data.lower()
    return b"stray" in low or b"stolen" in low


def _pieces(rng: random.Random, data: bytes, pause: float) -> list[tuple[bytes, float]]:
    cuts = sorted({rng.randint(1, max(1, len(data) - 1)) for _ in range(rng.randint(0, 3))})
    bounds = [0, *cuts, len(data)]
    return [(data[a:b], pause if a else 0.0) for a, b in itertools.pairwise(bounds) if b > a]


async def stray_exchange(
    port: int, scripts: dict[bytes, Script], tokens: itertools.count[int], rng: random.Random,
    found: Findings,
) -> tuple[int, bytes, bytes]:  # fmt: skip
    """Two requests on one client connection: the first owed a response that is
    followed by stray bytes, the second a plain one. Returns (requests sent, ...)."""
    method, owed, status, body = rng.choice(OWED)
    stray = rng.choice(STRAYS)
    mode = rng.choice(["same-write", "next-write", "idle", "split"])
    if mode == "same-write":
        writes = [(owed + stray, 0.0)]
    elif mode == "next-write":
        writes = [(owed, 0.0), (stray, 0.001)]
    elif mode == "idle":  # the gateway has put the connection back in its pool by then
        writes = [(owed, 0.0), (stray, 0.005)]
    else:
        cut = rng.randint(1, len(owed))
        writes = [(owed[:cut], 0.0), *_pieces(rng, owed[cut:] + stray, 0.001)]
    first, second = b"%d" % next(tokens), b"%d" % next(tokens)
    scripts[first] = (writes, False)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nnext-%s" % (5 + len(second), second)
    scripts[second] = ([(answer, 0.0)], False)
    found.case(f"stray:{mode}")
    req1 = b"%s /t/%s HTTP/1.1\r\nHost: x\r\n" % (method, first)
    req1 += b"Content-Length: 3\r\n\r\nabc" if method == b"POST" else b"\r\n"
    req2 = b"GET /t/%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % second
    where = f"[{mode}] upstream wrote {writes!r}"
    peer = await Peer.open(port)
    sent = 1
    try:
        await peer.send(req1, rng)
        try:
            one = await peer.one(head_only=method == b"HEAD")
        except (TimeoutError, asyncio.IncompleteReadError, ValueError, ConnectionError) as exc:
            found.problems.append(f"stray: the owed response did not arrive ({exc!r}): {where}")
            return sent, req1, b""
        found.answered(one.raw, req1)
        if _stray_marks(one.raw):
            found.problems.append(f"stray: the client saw the stray response: {one!r} {where}")
        elif (one.status, one.body) != (status, body):
            found.problems.append(f"stray: owed {status} {body!r} relayed as {one!r}: {where}")
        if b"close" in b",".join(one.headers.get(b"connection", [])).lower():
            found.problems.append(f"stray: the client connection is closed: {one!r} {where}")
            return sent, req1, one.raw
        await asyncio.sleep(0.03)
        await peer.send(req2, rng)
        sent += 1
        await peer.read(quiet=3.0, cap=3.0)
    finally:
        peer.close()
        scripts.pop(first, None)
        scripts.pop(second, None)
    out = bytes(peer.out)
    found.answered(out, req2)
    if _stray_marks(out):
        found.problems.append(f"stray: the next response carries the stray: {out[:400]!r} {where}")
    elif not out.startswith(b"HTTP/1.1 200 ") or not out.endswith(b"\r\n\r\nnext-" + second):
        found.problems.append(f"stray: the next request got {out[:400]!r}: {where}")
    return sent, req1 + req2, out


MAX_HEAD = 8190  # server.max_header_size, the default


def oversize_case(rng: random.Random) -> tuple[bytes, str]:
    """An upstream response head near or over MAX_HEAD (body b"ok" when relayed)."""
    kind = rng.choice(["line", "headers", "reason", "interim", "trailer"])
    size = rng.choice(
        [rng.randint(6000, 7900), rng.randint(7900, 8500), rng.randint(8500, 20000), 70_000,
         300_000]
    )  # fmt: skip
    final = b"Content-Length: 2\r\n\r\nok"
    if kind == "line":
        head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (size - 44) + b"\r\n" + final
    elif kind == "headers":
        lines = b"".join(b"X-%d: 1\r\n" % i for i in range(size // 10))
        head = b"HTTP/1.1 200 OK\r\n" + lines + final
    elif kind == "reason":
        head = b"HTTP/1.1 200 " + b"R" * (size - 36) + b"\r\n" + final
    elif kind == "interim":
        head = b"HTTP/1.1 100 Continue\r\nX-Big: " + b"a" * (size - 80) + b"\r\n\r\n"
        head += b"HTTP/1.1 200 OK\r\n" + final
    else:  # trailers are not a head: no limit asked, but no hang or stray either
        trailer = b"X-T: " + b"t" * size + b"\r\n"
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n" + trailer
        head += b"\r\n"
    return head, kind


async def oversize_exchange(
    port: int, scripts: dict[bytes, Script], tokens: itertools.count[int], rng: random.Random,
    found: Findings,
) -> tuple[bytes, bytes]:  # fmt: skip
    answer, kind = oversize_case(rng)
    counted = len(answer.partition(b"\r\n\r\nok")[0]) if kind != "trailer" else 0
    token = b"%d" % next(tokens)
    scripts[token] = (_pieces(rng, answer, 0.001), rng.random() < 0.3)
    request = b"GET /t/%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % token
    found.case(f"oversize:{kind}")
    peer = await Peer.open(port)
    try:
        await peer.send(request, rng)
        await peer.read(quiet=3.0, cap=3.0)
    finally:
        peer.close()
        scripts.pop(token, None)
    out = bytes(peer.out)
    got = finals(out)
    where = f"[{kind}, head {counted} bytes] -> {out[:300]!r}"
    if not got or not peer.eof:
        found.problems.append(f"oversize: no answer or no close: {where}")
    elif counted > MAX_HEAD + 200:
        if got[0] != 502 or b'"bad_gateway"' not in out:
            found.problems.append(f"oversize: a head over the limit was not a 502: {where}")
    elif counted and counted < MAX_HEAD - 200:
        if got[0] != 200 or not out.endswith(b"\r\n\r\nok"):
            found.problems.append(f"oversize: a head under the limit was not relayed: {where}")
        elif kind == "line" and out.count(b"a" * (counted - 100)) != 1:
            found.problems.append(f"oversize: the long header was not relayed whole: {where}")
    elif kind == "trailer" and (got[0] not in (200, 502) or b"\r\n\r\n" not in out):
        found.problems.append(f"oversize: {where}")
    return request, out


async def run_upstream(requests: int, seed: int, cases: list[str], time_limit: float) -> int:
    rng = random.Random(seed)
    found = Findings()
    requests_sent = [
        b"GET /a/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /a/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4096\r\n\r\n"
        + bytes(4096),
    ]
    scripts: dict[bytes, Script] = {}
    tokens = itertools.count(1)
    weights = {"mutate": 4, "stray": 4, "oversize": 2}
    sent = 0
    with TemporaryDirectory() as tmp, capture_logs() as logs:
        async with RawBackend(mutated_answers(rng)) as raw, RawBackend(scripted(scripts)) as t:
            route = one_route(raw.url, "a", "/a")
            route = route.replace("[[routes]]", 'read_timeout = "1s"\nretries = 0\n[[routes]]')
            route += one_route(t.url, "t", "/t", "scripted").replace(
                "[[routes]]", 'read_timeout = "2s"\nretries = 0\n[upstreams.scripted.health]\n'
                "max_fails = 0\n[[routes]]"
            )  # fmt: skip
            async with gateway(Path(tmp), config(route)) as gw:
                port = gw.ports[0]
                deadline = time.monotonic() + time_limit
                while sent < requests:
                    if time.monotonic() > deadline:
                        print(f"time limit: stopped after {sent} requests")
                        break
                    family = rng.choices(cases, [weights[c] for c in cases])[0]
                    if family == "stray":
                        n, _, _ = await stray_exchange(port, scripts, tokens, rng, found)
                        sent += n
                        continue
                    if family == "oversize":
                        request, out = await oversize_exchange(port, scripts, tokens, rng, found)
                    else:
                        found.case("mutate")
                        request = rng.choice(requests_sent)
                        out = await exchange(gw.ports[0], request, rng, wait=2.0)
                        if STATUS.match(out) is None:
                            found.problems.append(f"no answer: {out[:200]!r}")
                    found.answered(out, request)
                    sent += 1
    return found.report(sent, seed, logs)


CASES = {"client": ("mutate", "smuggle", "stall"), "upstream": ("mutate", "stray", "oversize")}


def main() -> None:
    # The test backend logs a traceback for every request the gateway aborts (a stalled body).
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", choices=("client", "upstream"), default="client")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--cases",
        help="comma-separated families; client: mutate,smuggle,stall; "
        "upstream: mutate,stray,oversize (default: all of the side's)",
    )
    ap.add_argument("--time-limit", type=float, default=1800.0, help="stop after this many seconds")
    args = ap.parse_args()
    cases = args.cases.split(",") if args.cases else list(CASES[args.side])
    unknown = [c for c in cases if c not in CASES[args.side]]
    if unknown:
        ap.error(f"--cases for --side {args.side}: {', '.join(CASES[args.side])}; not {unknown}")
    fuzz = run if args.side == "client" else run_upstream
    raise SystemExit(asyncio.run(fuzz(args.requests, args.seed, cases, args.time_limit)))


if __name__ == "__main__":
    main()

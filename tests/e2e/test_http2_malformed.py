"""Malformed HTTP/2 requests (RFC 9113 8.1.1, 8.2, 8.3): each is a stream
error (RST_STREAM with PROTOCOL_ERROR), never reaches the upstream, is logged
as a 400, and the connection goes on serving; a flood of them ends like a
rapid reset. The checks are the gateway's own (frontend/http2/headers.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from h2.errors import ErrorCodes

from harness.backends import Backend
from harness.gateway import access_lines, config, gateway, one_route
from harness.h2client import H2Client, Stream

GOOD = [(":method", "GET"), (":path", "/api/echo"), (":scheme", "http"), (":authority", "x")]

MALFORMED = {
    "uppercase name": [*GOOD, ("X-Upper", "1")],
    "space in a name": [*GOOD, ("x bad", "1")],
    "colon in a name": [*GOOD, ("x:y", "1")],
    "empty name": [*GOOD, ("", "1")],
    "CR LF in a value": [*GOOD, ("x-a", "1\r\nx-injected: yes")],
    "NUL in a value": [*GOOD, ("x-a", "1\x00")],
    "leading space in a value": [*GOOD, ("x-a", " 1")],
    "trailing tab in a value": [*GOOD, ("x-a", "1\t")],
    "connection field": [*GOOD, ("connection", "close")],
    "transfer-encoding": [*GOOD, ("transfer-encoding", "chunked")],
    "te gzip": [*GOOD, ("te", "gzip")],
    "pseudo after regular": [*GOOD[:3], ("x-a", "1"), (":authority", "x")],
    "pseudo twice": [*GOOD, (":path", "/api/echo")],
    "unknown pseudo": [*GOOD, (":custom", "1")],
    ":status in a request": [*GOOD, (":status", "200")],
    "no :method": GOOD[1:],
    "no :path": [GOOD[0], *GOOD[2:]],
    "no :scheme": [*GOOD[:2], GOOD[3]],
    "empty :path": [GOOD[0], (":path", ""), *GOOD[2:]],
    ":protocol without CONNECT": [*GOOD, (":protocol", "websocket")],
    "CONNECT with :path": [(":method", "CONNECT"), (":path", "/"), (":authority", "x:443")],
    "no :authority nor host": GOOD[:3],
    "host and :authority differ": [*GOOD, ("host", "y")],
    "two hosts": [*GOOD[:3], ("host", "x"), ("host", "x")],
}


async def send(client: H2Client, headers: list[tuple[str, str]]) -> Stream:
    sid = client.conn.get_next_available_stream_id()
    client.streams[sid] = Stream()
    client.conn.send_headers(sid, headers, end_stream=True)
    client.flush()
    return await client.wait(sid)


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_request_resets_its_stream_only(
    tmp_path: Path, log_file: Path, case: str
) -> None:
    async with (
        Backend() as b,
        gateway(tmp_path, config(one_route(b.url, "api", "/api"), access_log=True)) as gw,
    ):
        client = await H2Client.open(gw.ports[0], checked=False)
        try:
            bad = await send(client, MALFORMED[case])
            assert bad.reset == ErrorCodes.PROTOCOL_ERROR and bad.status == 0
            good = await send(client, [*GOOD, ("x-fine", "a b")])  # same connection
            assert good.status == 200
            assert client.goaway is None
        finally:
            await client.close()
        gw.access_log.flush()
        assert b.hits == 1
        lines = access_lines(log_file)
        assert [(line["status"], line["protocol"]) for line in lines] == [
            (400, "HTTP/2"),
            (200, "HTTP/2"),
        ]


async def test_lower_case_tokens_and_inner_whitespace_are_well_formed(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, config(one_route(b.url, "api", "/api"))) as gw:
        client = await H2Client.open(gw.ports[0], checked=False)
        try:
            fine = [*GOOD, ("x-token!#$%&'*+-.^`|~09", "a \t b"), ("te", "Trailers"),
                    ("host", "x"), ("x-empty", "")]  # fmt: skip
            assert (await send(client, fine)).status == 200
        finally:
            await client.close()


async def test_a_flood_of_malformed_requests_gets_goaway(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, config(one_route(b.url, "api", "/api"))) as gw:
        bystander = await H2Client.open(gw.ports[0])
        attacker = await H2Client.open(gw.ports[0], checked=False)
        try:
            conn = attacker.conn
            for _ in range(1000):  # one write
                conn.send_headers(conn.get_next_available_stream_id(),
                                  [*GOOD, ("X-Upper", "1")], end_stream=True)  # fmt: skip
            attacker.flush()
            await asyncio.wait_for(attacker.closed.wait(), 10)
            assert attacker.goaway is not None
            assert attacker.goaway[0] == ErrorCodes.ENHANCE_YOUR_CALM
            assert (await bystander.request("GET", "/api/echo")).status == 200
            assert b.hits == 1
        finally:
            await attacker.close()
            await bystander.close()

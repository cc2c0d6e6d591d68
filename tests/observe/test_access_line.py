"""The hand-written access line is the JSON object docs/behaviour.md describes."""

from __future__ import annotations

import json
from pathlib import Path

from pyproxyd.observe import logging as plog
from pyproxyd.proxy.record import RequestInfo


async def test_access_line_escapes_every_string_and_nulls_empty_ones(tmp_path: Path) -> None:
    saved = dict(plog._output)
    try:
        plog.configure("json", "info", str(tmp_path / "access.log"))
        log = plog.AccessLog()
        ex = RequestInfo()
        ex.request_id = 'a"b\\c'
        ex.trace_id = "0af7651916cd43dd8448eb211c80319c"
        ex.route = ""
        ex.upstream = "up-ü"
        ex.path = "/caf\u00e9/\u2603/\x01"
        ex.status = 404
        ex.client_ip = "::1"
        ex.consumer = ""
        log.request("GET", ex, 12.34567)
        log.request("GET", ex, 12.34567, "2")
        log.flush()
        line, h2_line = (tmp_path / "access.log").read_text().splitlines()[-2:]
    finally:
        plog._output.update(saved)
    got = json.loads(line)
    assert json.loads(h2_line)["protocol"] == "HTTP/2"
    assert line.isascii()
    assert got.pop("timestamp").endswith("Z")
    assert got == {
        "event": "request",
        "request_id": 'a"b\\c',
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "route": None,
        "upstream": "up-ü",
        "method": "GET",
        "path": "/caf\u00e9/\u2603/\x01",
        "status": 404,
        "duration_ms": 12.346,
        "client_ip": "::1",
        "consumer": None,
        "protocol": "HTTP/1.1",
        "level": "info",
    }

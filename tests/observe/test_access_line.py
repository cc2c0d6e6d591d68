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
        log.flush()
        line = (tmp_path / "access.log").read_text().splitlines()[-1]
    finally:
        plog._output.update(saved)
    got = json.loads(line)
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
    assert "grpc_status" not in got  # not a gRPC call


def _line(tmp_path: Path, ex: RequestInfo) -> dict[str, object]:
    saved = dict(plog._output)
    try:
        plog.configure("json", "info", str(tmp_path / "access.log"))
        log = plog.AccessLog()
        log.request("POST", ex, 1.0)
        log.flush()
        line = (tmp_path / "access.log").read_text().splitlines()[-1]
    finally:
        plog._output.update(saved)
    got: dict[str, object] = json.loads(line)
    return got


async def test_a_grpc_call_logs_its_status_and_protocol(tmp_path: Path) -> None:
    ex = RequestInfo()
    ex.version = "2"
    ex.grpc = True
    ex.grpc_status = 8
    got = _line(tmp_path, ex)
    assert got["protocol"] == "HTTP/2"
    assert got["grpc_status"] == 8
    # The hand-written line and the structlog fields agree, key for key.
    expected = plog._fields("POST", ex, 1.0)
    assert {k: got[k] for k in expected} == expected


async def test_a_grpc_call_without_a_status_logs_null(tmp_path: Path) -> None:
    ex = RequestInfo()
    ex.grpc = True  # e.g. the client left before any answer
    assert _line(tmp_path, ex)["grpc_status"] is None


async def test_durations_are_written_to_the_microsecond(tmp_path: Path) -> None:
    """duration_ms is made of integers (see AccessLog.request): rounded, zero-padded."""
    saved = dict(plog._output)
    try:
        plog.configure("json", "info", str(tmp_path / "access.log"))
        log = plog.AccessLog()
        for ms in (0.0004, 0.0006, 1.9996, 7.05, 12345.6789):
            log.request("GET", RequestInfo(), ms)
        log.flush()
        lines = (tmp_path / "access.log").read_text().splitlines()
    finally:
        plog._output.update(saved)
    written = [line.split('"duration_ms":')[1].split(",")[0] for line in lines]
    assert written == ["0.000", "0.001", "2.000", "7.050", "12345.679"]
    stamps = [json.loads(line)["timestamp"] for line in lines]
    assert all(len(s) == len("2026-12-06T15:00:00.000000Z") for s in stamps)

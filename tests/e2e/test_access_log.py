"""One JSON access line a request, with the fields docs/behaviour.md names."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import structlog

from harness.backends import Backend
from harness.gateway import config, fetch, gateway, one_route, url
from pyproxyd import compiled
from pyproxyd.observe import logging as plog

FIELDS = {
    "event", "level", "timestamp", "request_id", "trace_id", "route", "upstream",
    "method", "path", "status", "duration_ms", "client_ip",
}  # fmt: skip


async def test_access_log_lines(tmp_path: Path, log_file: Path) -> None:
    async with Backend() as b:
        toml = config(
            one_route(b.url, "echo", "/api"),
            access_log=True,
        )
        async with gateway(tmp_path, toml) as gw:
            await fetch(url(gw, "/api/echo"), headers={"X-Request-ID": "abc"})
            await fetch(url(gw, "/nowhere"))
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    requests = [line for line in lines if line["event"] == "request"]
    assert len(requests) == 2
    ok, missing = requests
    assert set(ok) >= FIELDS
    assert ok["request_id"] == "abc"
    assert (ok["route"], ok["upstream"], ok["status"], ok["method"]) == ("echo", "app", 200, "GET")
    assert ok["path"] == "/api/echo" and ok["client_ip"] == "127.0.0.1"
    assert ok["timestamp"].endswith("Z") and ok["timestamp"][10] == "T"
    assert len(ok["trace_id"]) == 32
    assert (missing["route"], missing["status"]) == (None, 404)
    # other events go through structlog to the same file, in the same shape
    (listening,) = [line for line in lines if line["event"] == "listening"]
    # how many request-path modules run compiled (the suite runs both ways)
    assert listening["compiled"] == len(compiled.status()[0])


async def test_console_format_logs_requests_too(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    stream = plog.configure("console", "info", str(path))
    try:
        async with Backend() as b:
            toml = config(
                one_route(b.url, "echo", "/api"),
                access_log=True,
            )
            async with gateway(tmp_path, toml) as gw:
                status, _, _ = await fetch(url(gw, "/api/echo"))
        assert status == 200
        text = path.read_text()
        assert "request" in text and "route=echo" in text and "status=200" in text
    finally:
        stream.close()
        structlog.reset_defaults()
        plog._output.update(stream=sys.stdout, json=True, level=20)

"""The upstream keys of HTTP/2: protocol, max_streams_per_connection, tls; and
h2 (TLS, ALPN) upstreams through the gateway."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.backends import Backend, self_signed
from harness.gateway import config, fetch, gateway, url
from harness.h2backend import H2Backend
from pyproxyd.compile import compile_snapshot, warnings
from pyproxyd.config_load import ConfigError, load, parse

from .h2util import h2_upstream

# The upstreams of the spec's example (spec/next/http2.toml), as they are there.
SPEC_UPSTREAMS = """
[upstreams.greeter]
targets = [{ url = "http://127.0.0.1:50051" }]
protocol = "h2c"
max_streams_per_connection = 100
keepalive = 4

[upstreams.secure-grpc]
targets = [{ url = "https://127.0.0.1:50443" }]
protocol = "h2"
tls = { ca = "certs/internal-ca.pem", server_name = "grpc.internal" }

[upstreams.web]
targets = [{ url = "http://127.0.0.1:9001" }]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, "f.toml")
    return info.value.lines()


def test_h2_needs_https_targets() -> None:
    lines = problems(
        '[upstreams.g]\ntargets = [{ url = "http://127.0.0.1:50051" }]\nprotocol = "h2"\n'
    )
    assert len(lines) == 1
    assert lines[0].startswith("f.toml: upstreams.g: ")
    assert "needs https:// targets" in lines[0] and "h2c" in lines[0]


def test_an_unknown_protocol_is_refused() -> None:
    lines = problems('[upstreams.g]\ntargets = [{ url = "http://a:1" }]\nprotocol = "h3"\n')
    assert lines[0].startswith("f.toml: upstreams.g.protocol: ")


def test_the_defaults_are_http1_and_100_streams(tmp_path: Path) -> None:
    cfg = parse('[upstreams.g]\ntargets = [{ url = "http://a:1" }]\n', "f.toml")
    up = cfg.upstreams["g"]
    assert (up.protocol, up.max_streams_per_connection, up.tls) == ("http1", 100, None)


def test_the_spec_example_upstreams_compile(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    _server, _ = self_signed(tmp_path)
    shutil.copy(tmp_path / "backend.crt", tmp_path / "certs" / "internal-ca.pem")
    path = tmp_path / "gateway.toml"
    path.write_text(SPEC_UPSTREAMS)
    snap = compile_snapshot(load(path))
    greeter = snap.upstreams["greeter"].targets[0].pool
    assert greeter.settings.protocol == "h2c" and greeter.settings.max_streams == 100
    assert greeter.h2 is not None
    secure = snap.upstreams["secure-grpc"].targets[0].pool
    assert secure.server_hostname == "grpc.internal"
    assert secure.settings.tls_ca == str(tmp_path / "certs" / "internal-ca.pem")
    assert snap.upstreams["web"].targets[0].pool.h2 is None


def test_verify_false_is_warned_about() -> None:
    cfg = parse(
        '[upstreams.g]\ntargets = [{ url = "https://a:1" }]\ntls = { verify = false }\n', "f.toml"
    )
    assert [(p.path, "off" in p.message) for p in warnings(cfg)] == [
        ("upstreams.g.tls.verify", True)
    ]


def test_a_grpc_looking_route_to_an_http1_upstream_is_warned_about() -> None:
    upstreams = """
[upstreams.old]
targets = [{ url = "http://a:1" }]
[upstreams.grpc]
targets = [{ url = "http://a:2" }]
protocol = "h2c"
"""
    routes = """
[[routes]]
id = "r{i}"
path = "{path}"
upstream = "{upstream}"
"""
    cases = [
        ("/helloworld.Greeter/**", "old", True),  # a package.Service path, HTTP/1.1
        ("/helloworld.Greeter/**", "grpc", False),
        ("/api/v1.0/**", "old", False),  # a dot, but not in the first segment
        ("/static/**", "old", False),
    ]
    text = upstreams + "".join(
        routes.format(i=i, path=p, upstream=u) for i, (p, u, _) in enumerate(cases)
    )
    warned = {p.path for p in warnings(parse(text, "f.toml"))}
    assert warned == {f"routes[{i}].upstream" for i, c in enumerate(cases) if c[2]}


async def test_an_h2_upstream_is_reached_over_tls_by_alpn(tmp_path: Path) -> None:
    server, _ = self_signed(tmp_path)
    async with H2Backend(ssl_context=server) as b:
        extra = 'tls = { ca = "backend.crt", server_name = "localhost" }'
        toml = config(h2_upstream(b.url, protocol="h2", extra=extra))
        async with gateway(tmp_path, toml) as gw:
            status, headers, body = await fetch(url(gw, "/h2/echo"), "POST", data=b"sealed")
            assert (status, body) == (200, b"sealed")
            assert headers["x-authority"] == f"127.0.0.1:{b.port}"
        assert b.connections_opened == 1


async def test_an_https_server_without_h2_fails_clearly(tmp_path: Path, log_file: Path) -> None:
    server, _ = self_signed(tmp_path)
    server.set_alpn_protocols(["http/1.1"])
    async with Backend(ssl_context=server) as b:
        extra = 'tls = { ca = "backend.crt" }\nretries = 0'
        toml = config(h2_upstream(b.url, protocol="h2", extra=extra))
        async with gateway(tmp_path, toml) as gw:
            status, _, _ = await fetch(url(gw, "/h2/echo"))
            assert status == 502
    errors = [e["error"] for e in map(json.loads, log_file.read_text().splitlines())
              if e["event"] == "upstream_error"]  # fmt: skip
    assert len(errors) == 1
    assert "did not choose h2 by ALPN" in errors[0]


async def test_an_unknown_ca_is_refused(tmp_path: Path) -> None:
    server, _ = self_signed(tmp_path)
    async with H2Backend(ssl_context=server) as b:
        toml = config(h2_upstream(b.url, protocol="h2", extra="retries = 0"))
        async with gateway(tmp_path, toml) as gw:
            status, _, _ = await fetch(url(gw, "/h2/echo"))
            assert status == 502
            assert b.received == []


async def test_upstream_tls_applies_to_https_http1_targets_too(tmp_path: Path) -> None:
    server, _ = self_signed(tmp_path)  # its certificate names localhost and 127.0.0.1
    async with Backend(ssl_context=server) as b:
        trusted = 'tls = { ca = "backend.crt" }\nretries = 0'
        async with gateway(
            tmp_path, config(h2_upstream(b.url, protocol="http1", extra=trusted))
        ) as gw:
            status, _, _ = await fetch(url(gw, "/h2/echo"))
            assert status == 200
        wrong_name = 'tls = { ca = "backend.crt", server_name = "other.example" }\nretries = 0'
        toml = config(h2_upstream(b.url, protocol="http1", extra=wrong_name))
        async with gateway(tmp_path, toml) as gw:
            status, _, _ = await fetch(url(gw, "/h2/echo"))
            assert status == 502
        unchecked = "tls = { verify = false }\nretries = 0"
        toml = config(h2_upstream(b.url, protocol="http1", extra=unchecked))
        async with gateway(tmp_path, toml) as gw:
            status, _, _ = await fetch(url(gw, "/h2/echo"))
            assert status == 200

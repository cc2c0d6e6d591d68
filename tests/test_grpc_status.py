"""The gRPC rendering of the gateway's own errors (errors.render_grpc)."""

from __future__ import annotations

from urllib.parse import unquote

from pyproxyd import errors, forwarding


def test_grpc_content_types_are_told_from_grpc_web_and_others() -> None:
    assert forwarding.is_grpc(b"application/grpc")
    assert forwarding.is_grpc(b"application/grpc+proto")
    assert forwarding.is_grpc(b"application/grpc;charset=utf-8")
    assert not forwarding.is_grpc(b"application/grpc-web")
    assert not forwarding.is_grpc(b"application/grpcfoo")
    assert not forwarding.is_grpc(b"application/json")
    assert not forwarding.is_grpc(None)


def test_each_json_status_of_the_contract_has_its_grpc_status() -> None:
    table = {400: 3, 401: 16, 403: 7, 404: 12, 413: 8, 429: 8, 502: 14, 503: 14, 504: 4}
    assert {s: errors.grpc_status(s) for s in table} == table
    assert errors.grpc_status(418) == errors.GRPC_UNKNOWN


def test_grpc_message_is_percent_encoded_utf8() -> None:
    err = errors.BadRequest("100% bad\r\nX-Injected: yes é")
    fields = dict(errors.render_grpc(err))
    assert fields[b"grpc-status"] == b"3"
    raw = fields[b"grpc-message"]
    assert raw.isascii() and b"\r" not in raw and b"\n" not in raw
    assert b"%25" in raw  # the percent sign itself is escaped
    assert unquote(raw.decode()) == "100% bad\r\nX-Injected: yes é"

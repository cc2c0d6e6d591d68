"""HTTP/1.1 request heads as HTTP/2 header lists, and grpc-timeout values."""

from __future__ import annotations

import pytest

from pyproxyd.upstream.h2exchange import grpc_timeout, h2_headers, parse_grpc_timeout, unchunk


def test_the_request_line_and_host_become_pseudo_headers() -> None:
    head = (
        b"POST /svc/Method?x=1 HTTP/1.1\r\nContent-Type: application/grpc\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n"
        b"Upgrade: h2c\r\nX-Custom: A b\r\nHost: 10.0.0.1:50051\r\n"
    )
    headers, chunked = h2_headers(head, b"http", True, None)
    assert chunked
    assert headers == [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"10.0.0.1:50051"),
        (b":path", b"/svc/Method?x=1"),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
        (b"x-custom", b"A b"),
    ]


def test_te_is_sent_only_as_trailers_and_grpc_timeout_is_replaced() -> None:
    head = b"GET / HTTP/1.1\r\nTE: gzip\r\ngrpc-timeout: 10S\r\nHost: h\r\n"
    headers, chunked = h2_headers(head, b"https", False, b"250m")
    assert not chunked
    assert (b"te", b"gzip") not in headers and not any(n == b"te" for n, _ in headers)
    assert [v for n, v in headers if n == b"grpc-timeout"] == [b"250m"]
    assert (b":scheme", b"https") in headers


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1H", 3600.0),
        ("2M", 120.0),
        ("3S", 3.0),
        ("250m", 0.25),
        ("1000u", 0.001),
        ("5000000n", 0.005),
        ("99999999S", 99999999.0),
        ("123456789S", None),  # 9 digits: invalid
        ("10", None),
        ("S", None),
        ("-1S", None),
        ("1x", None),
        ("", None),
    ],
)
def test_grpc_timeout_values_are_parsed(value: str, seconds: float | None) -> None:
    got = parse_grpc_timeout(value)
    assert got == pytest.approx(seconds) if seconds is not None else got is None


@pytest.mark.parametrize(
    ("seconds", "value"),
    [(0.25, b"250m"), (0.0001, b"1m"), (0.0, b"1m"), (1.0005, b"1001m"), (10**6, b"1000000S")],
)
def test_the_remaining_time_is_written_in_at_most_8_digits(seconds: float, value: bytes) -> None:
    assert grpc_timeout(seconds) == value


def test_a_chunk_of_bodies_chunked_is_unframed() -> None:
    assert unchunk(b"5\r\nhello\r\n") == b"hello"
    assert unchunk(b"0\r\n\r\n") == b""

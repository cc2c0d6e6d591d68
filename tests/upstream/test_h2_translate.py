"""HTTP/1.1 request heads as HTTP/2 header lists, and grpc-timeout values."""

from __future__ import annotations

import random

import pytest

from pyproxyd._vendor.hpack import NeverIndexedHeaderTuple
from pyproxyd.upstream import h2exchange
from pyproxyd.upstream.h2exchange import (
    CONNECTION_SPECIFIC,
    SENSITIVE,
    grpc_timeout,
    h2_headers,
    parse_grpc_timeout,
    unchunk,
)


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


def reference(
    head: bytes, scheme: bytes, te_trailers: bool, timeout: bytes | None
) -> tuple[list[tuple[bytes, bytes]], bool]:
    """h2_headers as it was written first: every line split, stripped and lowered."""
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    authority = b""
    chunked = False
    out: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        value = value.strip()
        if lname in CONNECTION_SPECIFIC:
            if lname == b"host":
                authority = value
            elif lname == b"transfer-encoding":
                chunked = value.lower().endswith(b"chunked")
            continue
        if lname == b"grpc-timeout" and timeout is not None:
            continue
        if lname in SENSITIVE:
            out.append(NeverIndexedHeaderTuple(lname, value))
        else:
            out.append((lname, value))
    headers = [(b":method", method), (b":scheme", scheme), (b":authority", authority),
               (b":path", target)]  # fmt: skip
    if te_trailers:
        headers.append((b"te", b"trailers"))
    if timeout is not None:
        headers.append((b"grpc-timeout", timeout))
    headers.extend(out)
    return headers, chunked


NAMES = [
    *(b"Host", b"host", b"Content-Type", b"X-Request-ID", b"transfer-encoding"),
    *(b"Transfer-Encoding", b"Connection", b"TE", b"grpc-timeout", b"Grpc-Timeout"),
    *(b"Authorization", b"proxy-authorization", b" X-Pad ", b"x-" + b"n" * 70, b"Trailer"),
]
VALUES = [
    *(b"", b" ", b"v", b" v", b"v ", b"  v  ", b"\tv\t", b"a b", b"chunked", b"gzip, chunked"),
    *(b"\x0bv\x0c", b":", b"a:b", b"\xc3\xa9"),
]


def test_heads_translate_as_the_reference_does_whatever_was_seen_before() -> None:
    """Random heads (names in any case, padded, long, the special ones; values
    with and without the space after the colon and whitespace at either end;
    a line without a colon): the same lists, the same never-indexed fields,
    whether the names were seen before or not."""
    rng = random.Random(22)
    h2exchange._KINDS.clear()
    h2exchange._LINES.clear()
    for round_ in range(600):
        lines = [b"POST /p?q=1 HTTP/1.1"]
        for _ in range(rng.randrange(0, 10)):
            name, value = rng.choice(NAMES), rng.choice(VALUES)
            sep = rng.choice([b": ", b":", b" : "])
            lines.append(name + sep + value if rng.random() < 0.97 else name)
        head = b"\r\n".join(lines) + b"\r\n"
        args = (head, rng.choice([b"http", b"https"]), rng.random() < 0.5,
                rng.choice([None, b"250m"]))  # fmt: skip
        got, expected = h2_headers(*args), reference(*args)
        assert got == expected, head
        assert [type(f) for f in got[0]] == [type(f) for f in expected[0]], head
        if round_ == 300:
            h2exchange._KINDS.clear()
            h2exchange._LINES.clear()
    assert b"x-" + b"n" * 70 not in h2exchange._KINDS  # too long to be kept
    assert 100 < len(h2exchange._LINES) <= h2exchange.LINES_KEPT  # lines were seen again


def test_repeated_lines_are_kept_and_per_request_or_secret_ones_are_not() -> None:
    h2exchange._LINES.clear()
    head = (
        b"POST /a HTTP/1.1\r\nContent-Type: application/grpc\r\nX-Request-ID: 7\r\n"
        b"Authorization: secret\r\ntraceparent: 00-1-2-01\r\nX-Long: " + b"v" * 130 + b"\r\n"
        b"Host: h\r\nCookie: session=1\r\nX-Api-Key: k-1\r\nX-User: alice\r\n"
        b"User-Agent: grpc-python\r\nX-Forwarded-Proto: http\r\n"
    )
    first, _ = h2_headers(head, b"http", True, None)
    second, _ = h2_headers(head, b"http", True, None)
    assert first == second == reference(head, b"http", True, None)[0]
    assert set(h2exchange._LINES) == {
        b"Content-Type: application/grpc", b"Host: h", b"User-Agent: grpc-python",
        b"X-Forwarded-Proto: http",
    }  # fmt: skip
    # A kept never-indexed field is still one, and what one list holds is not
    # another's: the lists are new, their fields immutable.
    assert [type(f) for f in second] == [type(f) for f in first]
    assert type(second[7]) is NeverIndexedHeaderTuple
    assert first is not second


def test_the_kept_lines_start_again_when_full() -> None:
    h2exchange._LINES.clear()
    for i in range(h2exchange.LINES_KEPT + 5):
        h2_headers(b"GET / HTTP/1.1\r\nUser-Agent: %d\r\nHost: h\r\n" % i, b"http", False, None)
    assert len(h2exchange._LINES) <= h2exchange.LINES_KEPT
    assert b"User-Agent: %d" % (h2exchange.LINES_KEPT + 4) in h2exchange._LINES


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

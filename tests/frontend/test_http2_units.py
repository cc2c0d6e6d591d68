"""The pure parts of frontend/http2: the rapid-reset guard (time is an
argument) and the header list as the pipeline's request head."""

from __future__ import annotations

import pytest

from pyproxyd import errors
from pyproxyd.frontend.http2.guard import ResetGuard
from pyproxyd.frontend.http2.headers import parse_request


@pytest.mark.parametrize(
    ("events", "abusive_at"),
    [
        # (time, "r" reset | "c" completed): the first reset judged abusive, or None.
        ([(0.0, "r")] * 101, 100),
        ([(0.0, "r")] * 100, None),
        ([(0.0, "c")] * 200 + [(0.0, "r")] * 150, None),  # completes more than it resets
        ([(0.0, "c")] * 50 + [(0.0, "r")] * 102, 100),
        # A window passes: the count starts afresh.
        ([(0.0, "r")] * 100 + [(10.0, "r")] * 100, None),
        ([(0.0, "r")] * 60 + [(9.9, "r")] * 41, 100),
    ],
)
def test_reset_guard(events: list[tuple[float, str]], abusive_at: int | None) -> None:
    guard = ResetGuard(floor=100, window=10.0)
    found = None
    for i, (now, kind) in enumerate(events):
        if kind == "c":
            guard.complete(now)
        elif guard.reset(now) and found is None:
            found = i - sum(1 for _, k in events[:i] if k == "c")
    assert found == abusive_at


def head(*pairs: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/a?b=c"), *pairs]


def test_authority_is_the_host_and_cookies_are_joined() -> None:
    parsed = parse_request(
        head((b":authority", b"example.org"), (b"cookie", b"a=1"), (b"accept", b"*/*"),
             (b"cookie", b"b=2"), (b"x-request-id", b"r1"), (b"x_user", b"forged")),
        8190, 65536,
    )  # fmt: skip
    assert parsed.error is None
    assert (parsed.method, parsed.path) == ("GET", "/a?b=c")
    assert parsed.raw == [(b"host", b"example.org"), (b"accept", b"*/*"),
                          (b"x-request-id", b"r1"), (b"cookie", b"a=1; b=2")]  # fmt: skip
    assert parsed.picked == {b"host": b"example.org", b"x-request-id": b"r1"}


def test_a_host_header_stands_in_for_a_missing_authority() -> None:
    parsed = parse_request(head((b"host", b"h.example")), 8190, 65536)
    assert parsed.picked[b"host"] == b"h.example" and parsed.raw == [(b"host", b"h.example")]


@pytest.mark.parametrize(
    ("pairs", "error"),
    [
        ([(b"x-big", b"v" * 200)], errors.HeadersTooLarge),
        ([(b"x-a", b"v" * 90), (b"x-b", b"v" * 90), (b"x-c", b"v" * 90)], errors.HeadersTooLarge),
        ([(b"authorization", b"a"), (b"authorization", b"b")], errors.BadRequest),
        ([(b"content-length", b"ten")], errors.BadRequest),
    ],
)
def test_refused_heads(pairs: list[tuple[bytes, bytes]], error: type) -> None:
    parsed = parse_request(head((b":authority", b"x"), *pairs), 128, 256)
    assert isinstance(parsed.error, error)


def test_connect_and_extended_connect_are_not_implemented() -> None:
    for pairs in ([(b":method", b"CONNECT"), (b":authority", b"x:443")],
                  [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":path", b"/ws"),
                   (b":scheme", b"https"), (b":authority", b"x")]):  # fmt: skip
        parsed = parse_request(pairs, 8190, 65536)
        assert isinstance(parsed.error, errors.NotImplementedCoding)


def test_a_malformed_list_is_told_apart_from_a_refused_one() -> None:
    """Malformed (RFC 9113 8.1.1: the stream is reset) is not an error the
    gateway answers: the e2e cases are in tests/e2e/test_http2_malformed.py."""
    parsed = parse_request(head((b"x-a", b"1"), (b":authority", b"x")), 8190, 65536)
    assert parsed.malformed == "pseudo-header field b':authority' after a regular one"
    assert parse_request(head(), 8190, 65536).malformed == "neither :authority nor Host"
    fine = parse_request(head((b":authority", b"x"), (b"x-a", b"1")), 8190, 65536)
    assert fine.malformed is None and fine.error is None


def test_a_path_must_be_a_path() -> None:
    bad = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"http://x/"), (b"host", b"x")]
    assert isinstance(parse_request(bad, 8190, 65536).error, errors.BadRequest)
    star = [(b":method", b"OPTIONS"), (b":scheme", b"http"), (b":path", b"*"), (b"host", b"x")]
    assert parse_request(star, 8190, 65536).error is None


@pytest.mark.parametrize(
    "pseudo",
    [
        (b":method", b"GET /evil"),
        (b":method", b""),
        (b":path", b"/a b"),
        (b":path", b"/a\tb"),
        (b":authority", b"user@host"),
        (b":authority", b"host/path"),
        (b":authority", b"a b"),
    ],
)
def test_what_would_break_the_upstream_request_line_is_refused(
    pseudo: tuple[bytes, bytes],
) -> None:
    pairs = dict([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                  (b":authority", b"h:1")])  # fmt: skip
    pairs[pseudo[0]] = pseudo[1]
    parsed = parse_request(list(pairs.items()), 8190, 65536)
    assert isinstance(parsed.error, errors.BadRequest)

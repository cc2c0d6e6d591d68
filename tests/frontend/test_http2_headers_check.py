"""frontend/http2/headers.py's byte-class checks give the verdicts of the
regular expressions they replaced (kept here as the definition), for every
byte in every position that decides: alone, first, last, in the middle."""

from __future__ import annotations

import re

import pytest

from pyproxyd.frontend.http2 import headers
from pyproxyd.frontend.http2.headers import (
    AUTHORITY,
    PATH,
    TOKEN,
    malformed,
    only,
    parse_request,
    valid_authority,
    valid_method,
    valid_name,
    valid_path,
    valid_value,
)

# The definitions (RFC 9110 5.1, 5.5 and 5.6.2; RFC 9113 8.2.1), as the module had them.
TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
PATH_RE = re.compile(rb"[\x21-\x7e\x80-\xff]+")
AUTHORITY_RE = re.compile(rb"[^\x00-\x20\x7f@/?#\\]*")
NAME_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
VALUE_RE = re.compile(rb"(?:[^\x00\r\n \t](?:[^\x00\r\n]*[^\x00\r\n \t])?)?")

EVERY_BYTE = [bytes((b,)) for b in range(256)]


def shapes(byte: bytes) -> list[bytes]:
    """`byte` alone, doubled, and first, last and in the middle of fine bytes."""
    return [byte, byte * 2, byte + b"ab", b"ab" + byte, b"a" + byte + b"b", b"a" + byte * 3 + b"b"]


CASES = [b"", b"a", b"ab", b" ", b"\t", b"a b", b"a\tb"] + [
    s for byte in EVERY_BYTE for s in shapes(byte)
]


def verdicts(data: bytes) -> tuple[bool, ...]:
    return (
        valid_value(data, b"user-agent"),  # one whose values are kept
        valid_path(data),
        valid_authority(data),
        valid_method(data),
        valid_name(data),
        only(data, PATH),
        only(data, AUTHORITY),
        only(data, TOKEN),
    )


def expected(data: bytes) -> tuple[bool, ...]:
    return (
        VALUE_RE.fullmatch(data) is not None,
        PATH_RE.fullmatch(data) is not None,
        AUTHORITY_RE.fullmatch(data) is not None,
        TOKEN_RE.fullmatch(data) is not None,
        NAME_RE.fullmatch(data) is not None,
        PATH_RE.fullmatch(data) is not None or data == b"",
        AUTHORITY_RE.fullmatch(data) is not None,
        TOKEN_RE.fullmatch(data) is not None or data == b"",
    )


KEPT = (headers._NAMES, headers._VALUES, headers._PATHS, headers._AUTHORITIES)


def test_every_byte_in_every_position_gets_the_regex_verdict() -> None:
    for kept in KEPT:
        kept.clear()
    assert len(CASES) > 1500
    for data in CASES:
        assert verdicts(data) == expected(data), data
    # again: now the well-formed ones from what was found well-formed
    assert all(KEPT)
    for data in CASES:
        assert verdicts(data) == expected(data), data


def test_what_is_kept_is_bounded_and_only_short_well_formed_ones() -> None:
    headers._NAMES.clear()
    headers._VALUES.clear()
    assert not valid_name(b"X-Upper")
    assert not valid_value(b" v", b"accept")
    assert not headers._NAMES and not headers._VALUES
    long = b"x" * (headers.KEPT_BYTES + 1)
    assert valid_name(long) and valid_value(long, b"accept")
    assert not headers._NAMES and not headers._VALUES
    for i in range(headers.KEPT + 10):
        assert valid_name(b"x-%d" % i) and valid_value(b"%d" % i, b"accept")
        assert len(headers._NAMES) <= headers.KEPT and len(headers._VALUES) <= headers.KEPT
    assert b"x-%d" % (headers.KEPT + 9) in headers._NAMES
    assert b"%d" % (headers.KEPT + 9) in headers._VALUES
    # one kept stays well-formed; a malformed one like it is still refused after it
    assert valid_name(b"x-1030") and not valid_name(b"x-1030 ")
    assert valid_value(b"1030") and not valid_value(b"1030\n")


def test_secrets_are_checked_but_never_kept() -> None:
    """A token, key, cookie or signed query is checked like any value but
    not kept past its request; what every request repeats is."""
    for kept in KEPT:
        kept.clear()
    head = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"api.example"),
        (b":path", b"/files/1?sig=s3cr3t-signature"),
        (b"authorization", b"Bearer abc.def.ghi"),
        (b"proxy-authorization", b"Basic dXNlcjpwYXNz"),
        (b"x-api-key", b"key-0123456789"),
        (b"cookie", b"session=0123456789"),
        (b"user-agent", b"grpc-python/1.60"),
        (b"content-type", b"application/grpc"),
    ]
    for _ in range(2):  # the second time from what the first one kept
        parsed = parse_request(head, 8192, 65536)
        assert parsed.malformed is None and parsed.error is None
        assert parsed.path == "/files/1?sig=s3cr3t-signature"
    kept = set().union(*KEPT)
    for secret in (b"/files/1?sig=s3cr3t-signature", b"Bearer abc.def.ghi",
                   b"Basic dXNlcjpwYXNz", b"key-0123456789", b"session=0123456789"):  # fmt: skip
        assert secret not in kept
    assert {b"GET", b"https", b"grpc-python/1.60", b"application/grpc"} <= headers._VALUES
    assert b"api.example" in headers._AUTHORITIES
    assert valid_path(b"/files/1") and b"/files/1" in headers._PATHS
    # still refused after all that, kept or not
    assert parse_request([*head[:4], (b"x-api-key", b"key\r\n")], 8192, 65536).malformed
    assert not valid_path(b"/files/1?sig= x")


@pytest.mark.parametrize(
    ("field", "why"),
    [
        ((b"x-a", b" v"), "the value of b'x-a' has NUL, CR, LF or surrounding whitespace"),
        ((b"x-a", b"v\t"), "the value of b'x-a' has NUL, CR, LF or surrounding whitespace"),
        ((b"x-a", b"v\x00w"), "the value of b'x-a' has NUL, CR, LF or surrounding whitespace"),
        ((b"x-a", b"v\rw"), "the value of b'x-a' has NUL, CR, LF or surrounding whitespace"),
        ((b"x-a", b"v\nw"), "the value of b'x-a' has NUL, CR, LF or surrounding whitespace"),
        ((b"X-A", b"v"), "field name b'X-A' is not a lower-case token"),
        ((b"x a", b"v"), "field name b'x a' is not a lower-case token"),
        ((b"", b"v"), "field name b'' is not a lower-case token"),
    ],
)
def test_a_malformed_field_is_named(field: tuple[bytes, bytes], why: str) -> None:
    head = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h")]
    assert malformed([*head, field]) == why
    assert malformed([*head, (b"x-a", b"v \t\x01w")]) is None  # inner whitespace is fine


@pytest.mark.parametrize(
    ("method", "path", "authority", "error"),
    [
        (b"GET", b"/a", b"h:80", None),
        (b"G\xc3T", b"/a", b"h", "the :method is not a token"),
        (b"GET", b"/a b", b"h", "the :path has a space or a control character"),
        (b"GET", b"/a\x7f", b"h", "the :path has a space or a control character"),
        (b"GET", b"/\xff", b"h", None),
        (b"GET", b"/", b"u@h", "the :authority is not a host"),
        (b"GET", b"/", b"h/x", "the :authority is not a host"),
        (b"GET", b"/", b"h\\x", "the :authority is not a host"),
        (b"GET", b"/", b"h\xc3\xa9", None),
    ],
)
def test_the_request_line_parts_are_checked(
    method: bytes, path: bytes, authority: bytes, error: str | None
) -> None:
    parsed = parse_request(
        [(b":method", method), (b":scheme", b"http"), (b":path", path), (b":authority", authority)],
        8190,
        65536,
    )
    assert parsed.malformed is None
    assert (parsed.error.detail if parsed.error is not None else None) == error

"""Compiled by mypyc (pyproxyd/compiled.py).
An HTTP/2 header list as the request head the pipeline reads.

First its form (RFC 9113 8.2 and 8.3), which h2 is told not to check: its
checks are seven generators chained over every field, a few percent of an
h2c request, and they end the whole connection where the RFC makes a
malformed request an error of its stream only (8.1.1: RST_STREAM with
PROTOCOL_ERROR). Here it is one pass, compiled: field names are lower-case
tokens, values carry no NUL, CR or LF and no whitespace at either end,
pseudo-header fields come first, once each, and only the request ones
(:method always; :scheme and :path unless CONNECT; :protocol only with
CONNECT), no connection-specific fields, `te` only as "trailers", Host and
:authority agree when both are there and one of them is.

Then the gateway's own view, the same as for HTTP/1.1 (frontend/connection.py):
`:authority` is the Host, `cookie` fields are joined (RFC 9113 8.2.3),
names with an underscore are dropped, and the sizes are capped by
`server.max_header_size`.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from ... import errors
from ...forwarding import REPEATED_FIELDS
from ..connection import PICKED

# The checks are byte-class tests, not regular expressions: two regex matches
# a field were most of the cost of reading a request head (py-spy, a gRPC
# call). Each class is the set of bytes allowed; tests/frontend/
# test_http2_headers_check.py holds the regular expressions they replace and
# compares verdicts over every byte. bytes.translate deletes the allowed bytes
# in one C loop; `in` tests cost twice as much, compiled, as a translate.
# RFC 9110 5.6.2 tchar.
_TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
TOKEN: Final = _TCHAR + b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
NAME: Final = _TCHAR  # field names lower-case, as RFC 9113 8.2.1 requires
# The request line the upstream gets is built from :method and :path, and its
# Host from :authority: h2 has refused CR, LF and NUL in them, but a space
# would still split an HTTP/1.1 request line, and userinfo or a path in an
# authority is no host.
PATH: Final = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
AUTHORITY: Final = bytes(b for b in range(0x21, 0x100) if b not in b"\x7f@/?#\\")
_NOT_IN_VALUE: Final = b"\x00\r\n"
_IDENTITY: Final = bytes(range(256))  # (a translate without a table builds one each call)
_METHODS: Final = frozenset({b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"})
_CONNECTION: Final = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
# Names, values, paths and authorities found well-formed, up to KEPT of each
# of at most KEPT_BYTES (then that set starts again empty): most requests
# repeat what the ones before them sent, and a set lookup is a tenth of a check.
KEPT: Final = 1024
KEPT_BYTES: Final = 64
# Only these fields' values are kept (forwarding.REPEATED_FIELDS and three
# pseudo-header fields), and paths only without a query: a token, key, cookie
# or signed URL must not stay in the gateway's memory after its request.
KEEP_VALUES_OF: Final = REPEATED_FIELDS | {b":method", b":scheme", b":authority"}
_VALUES: Final[set[bytes]] = set()
_PATHS: Final[set[bytes]] = set()
_AUTHORITIES: Final[set[bytes]] = set()


def only(data: bytes, allowed: bytes) -> bool:
    """Every byte of `data` is one of `allowed` (true of b"")."""
    return not data.translate(_IDENTITY, allowed)


def _keep(kept: set[bytes], data: bytes) -> None:
    if len(data) <= KEPT_BYTES:
        if len(kept) >= KEPT:
            kept.clear()
        kept.add(data)


# What a regular field's name is to the parse (name_kind()):
_INVALID: Final = -1  # not a lower-case token: malformed
_OTHER: Final = 0
_COOKIE: Final = 1  # joined into one field
# Has an underscore: dropped, as on HTTP/1.1 (a CGI backend reads X_User as X-User).
_DROPPED: Final = 2
_HOST: Final = 3
_LENGTH: Final = 4
_AUTH: Final = 5
_EXPECT: Final = 6
_PICKED: Final = 7  # read by the pipeline (connection.PICKED)
_TE: Final = 8  # only "trailers"
_SPECIFIC: Final = 9  # connection-specific: malformed
_NAMES: Final[dict[bytes, int]] = {}  # well-formed names seen, and their kind (KEPT of them)
# The pseudo-header fields of a request, each a bit of a set of those seen.
_METHOD: Final = 1
_SCHEME: Final = 2
_AUTHORITY: Final = 4
_PATH: Final = 8
_PROTOCOL: Final = 16
_PSEUDO_BITS: Final = {b":method": _METHOD, b":scheme": _SCHEME, b":authority": _AUTHORITY,
                       b":path": _PATH, b":protocol": _PROTOCOL}  # fmt: skip


def name_kind(name: bytes) -> int:
    """What a regular field's name is (_INVALID unless a lower-case token)."""
    kind = _NAMES.get(name, _INVALID)
    if kind != _INVALID:
        return kind
    if not name or not only(name, NAME):
        return _INVALID
    if name in _CONNECTION:
        kind = _SPECIFIC
    elif name == b"te":
        kind = _TE
    elif name == b"cookie":
        kind = _COOKIE
    elif name.find(b"_") >= 0:
        kind = _DROPPED
    elif name == b"host":
        kind = _HOST
    elif name == b"content-length":
        kind = _LENGTH
    elif name == b"authorization":
        kind = _AUTH
    elif name == b"expect":
        kind = _EXPECT
    elif name in PICKED:
        kind = _PICKED
    else:
        kind = _OTHER
    if len(name) <= KEPT_BYTES:
        if len(_NAMES) >= KEPT:
            _NAMES.clear()
        _NAMES[name] = kind
    return kind


def valid_name(name: bytes) -> bool:
    """A lower-case token (RFC 9110 5.1, RFC 9113 8.2.1)."""
    return name_kind(name) != _INVALID


def valid_value(value: bytes, name: bytes = b"") -> bool:
    """No NUL, CR or LF, and no space or tab at either end (RFC 9110 5.5, RFC 9113 8.2.1).
    Kept for the next request only when `name` is one of KEEP_VALUES_OF."""
    if not value or value in _VALUES:
        return True
    first = value[0]
    last = value[-1]
    if first == 32 or first == 9 or last == 32 or last == 9:
        return False
    if len(value.translate(_IDENTITY, _NOT_IN_VALUE)) != len(value):
        return False
    if name in KEEP_VALUES_OF:
        _keep(_VALUES, value)
    return True


def valid_method(method: bytes) -> bool:
    return method in _METHODS or (bool(method) and only(method, TOKEN))


def valid_path(path: bytes) -> bool:
    """No space or control character: it goes into an HTTP/1.1 request line."""
    if path in _PATHS:
        return True
    if not path or not only(path, PATH):
        return False
    if path.find(b"?") < 0:  # a query may carry a token or a signature
        _keep(_PATHS, path)
    return True


def valid_authority(authority: bytes) -> bool:
    """A host[:port] and nothing else (empty: none given)."""
    if authority in _AUTHORITIES:
        return True
    if not only(authority, AUTHORITY):
        return False
    _keep(_AUTHORITIES, authority)
    return True


class ParsedHead(NamedTuple):
    method: str
    path: str
    raw: list[tuple[bytes, bytes]]
    picked: dict[bytes, bytes]
    content_length: int | None
    error: errors.GatewayError | None  # answered on the stream instead of the pipeline
    expect_continue: bool  # the client waits for 100 Continue before its body
    malformed: str | None = None  # RFC 9113 8.1.1: the stream is reset (PROTOCOL_ERROR)


def malformed(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why the list is no well-formed HTTP/2 request head, or None."""
    return parse_request(headers, 1 << 62, 1 << 62).malformed


def _malformed(why: str) -> ParsedHead:
    return ParsedHead("", "", [], {}, None, None, False, why)


def parse_request(headers: list[tuple[bytes, bytes]], max_line: int, max_head: int) -> ParsedHead:
    """The request head of a header list, or why it is malformed (`malformed`):
    one pass does both, a field's form checked before it is read."""
    seen = 0  # pseudo-header fields, as _PSEUDO_BITS
    regular = False
    method = b""
    path = b""
    authority: bytes | None = None
    host: bytes | None = None
    raw: list[tuple[bytes, bytes]] = []
    picked: dict[bytes, bytes] = {}
    cookies: list[bytes] = []
    size = 0
    too_large = False
    auths = 0
    clen: int | None = None
    expect = False
    error: errors.GatewayError | None = None
    for name, value in headers:
        if not valid_value(value, name):
            return _malformed(f"the value of {name!r} has NUL, CR, LF or surrounding whitespace")
        line = len(name) + len(value) + 2
        size += line
        if line > max_line:
            too_large = True
        if name and name[0] == 58:  # ":"
            if regular:
                return _malformed(f"pseudo-header field {name!r} after a regular one")
            bit = _PSEUDO_BITS.get(name, 0)
            if not bit:
                return _malformed(f"pseudo-header field {name!r} is not one of a request")
            if seen & bit:
                return _malformed(f"pseudo-header field {name!r} twice")
            seen |= bit
            if bit == _METHOD:
                method = value
            elif bit == _PATH:
                if not value:
                    return _malformed("an empty :path")
                path = value
            elif bit == _AUTHORITY:
                authority = value
            continue
        regular = True
        kind = name_kind(name)
        if kind == _INVALID:
            return _malformed(f"field name {name!r} is not a lower-case token")
        if kind == _SPECIFIC:
            return _malformed(f"connection-specific field {name!r}")
        if kind == _TE:
            if value.lower() != b"trailers":
                return _malformed("te other than trailers")
        elif kind == _HOST:
            if host is not None:
                return _malformed("two Host fields")
            host = value
            continue
        elif kind == _COOKIE:
            cookies.append(value)
            continue
        elif kind == _DROPPED:
            continue
        raw.append((name, value))
        if kind == _LENGTH:
            try:
                clen = int(value)
            except ValueError:
                error = errors.BadRequest("content-length is not a number")
        elif kind == _AUTH:
            auths += 1
        elif kind == _EXPECT:
            expect = value.lower() == b"100-continue"
        elif kind == _PICKED:
            picked[name] = picked[name] + b", " + value if name in picked else value
    if not seen & _METHOD:
        return _malformed("no :method")
    if method == b"CONNECT" and not seen & _PROTOCOL:
        if seen & (_SCHEME | _PATH):
            return _malformed("CONNECT with :scheme or :path")
    elif not seen & _SCHEME or not seen & _PATH:
        return _malformed("no :scheme or no :path")
    elif seen & _PROTOCOL and method != b"CONNECT":
        return _malformed(":protocol without CONNECT")
    if authority is None and host is None:
        return _malformed("neither :authority nor Host")
    if authority is not None and host is not None and authority != host:
        return _malformed(":authority and Host differ")
    if cookies:
        raw.append((b"cookie", b"; ".join(cookies)))
    the_host = authority or host or b""
    if the_host:
        picked[b"host"] = the_host
        raw.insert(0, (b"host", the_host))
    text_method = method.decode("ascii", "replace")
    text_path = path.decode("latin-1")
    if too_large or size > max_head:
        error = errors.HeadersTooLarge()
    elif not valid_method(method):
        error = errors.BadRequest("the :method is not a token")
    elif not valid_authority(the_host):
        error = errors.BadRequest("the :authority is not a host")
    elif text_method == "CONNECT":
        what = "extended CONNECT (RFC 8441)" if seen & _PROTOCOL else "CONNECT"
        error = errors.NotImplementedCoding(f"{what} is not supported over HTTP/2")
    elif not (path.startswith(b"/") or (path == b"*" and text_method == "OPTIONS")):
        error = errors.BadRequest("the :path is not a path")
    elif not valid_path(path):
        error = errors.BadRequest("the :path has a space or a control character")
    elif auths > 1:
        # Which one would the upstream believe? Not necessarily the one verified.
        error = errors.BadRequest("more than one Authorization header")
    return ParsedHead(text_method, text_path, raw, picked, clen, error, expect)

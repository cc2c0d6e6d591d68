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
_PSEUDO: Final = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
_CONNECTION: Final = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
# Names, values, paths and authorities found well-formed, up to KEPT of each
# of at most KEPT_BYTES (then that set starts again empty): most requests
# repeat what the ones before them sent, and a set lookup is a tenth of a check.
KEPT: Final = 1024
KEPT_BYTES: Final = 64
_NAMES: set[bytes] = set()
_VALUES: set[bytes] = set()
_PATHS: set[bytes] = set()
_AUTHORITIES: set[bytes] = set()


def only(data: bytes, allowed: bytes) -> bool:
    """Every byte of `data` is one of `allowed` (true of b"")."""
    return not data.translate(_IDENTITY, allowed)


def _keep(kept: set[bytes], data: bytes) -> None:
    if len(data) <= KEPT_BYTES:
        if len(kept) >= KEPT:
            kept.clear()
        kept.add(data)


def valid_name(name: bytes) -> bool:
    """A lower-case token (RFC 9110 5.1, RFC 9113 8.2.1)."""
    if name in _NAMES:
        return True
    if not name or not only(name, NAME):
        return False
    _keep(_NAMES, name)
    return True


def valid_value(value: bytes) -> bool:
    """No NUL, CR or LF, and no space or tab at either end (RFC 9110 5.5, RFC 9113 8.2.1)."""
    if not value or value in _VALUES:
        return True
    first = value[0]
    last = value[-1]
    if first == 32 or first == 9 or last == 32 or last == 9:
        return False
    if len(value.translate(_IDENTITY, _NOT_IN_VALUE)) != len(value):
        return False
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
    pseudo: set[bytes] = set()
    regular = False
    method = authority = host = None
    for name, value in headers:
        if not valid_value(value):
            return f"the value of {name!r} has NUL, CR, LF or surrounding whitespace"
        if name[:1] == b":":
            if regular:
                return f"pseudo-header field {name!r} after a regular one"
            if name not in _PSEUDO:
                return f"pseudo-header field {name!r} is not one of a request"
            if name in pseudo:
                return f"pseudo-header field {name!r} twice"
            pseudo.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path" and not value:
                return "an empty :path"
            continue
        regular = True
        if not valid_name(name):
            return f"field name {name!r} is not a lower-case token"
        if name in _CONNECTION:
            return f"connection-specific field {name!r}"
        if name == b"te" and value.lower() != b"trailers":
            return "te other than trailers"
        if name == b"host":
            if host is not None:
                return "two Host fields"
            host = value
    if method is None:
        return "no :method"
    if method == b"CONNECT" and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            return "CONNECT with :scheme or :path"
    elif b":scheme" not in pseudo or b":path" not in pseudo:
        return "no :scheme or no :path"
    elif b":protocol" in pseudo and method != b"CONNECT":
        return ":protocol without CONNECT"
    if authority is None and host is None:
        return "neither :authority nor Host"
    if authority is not None and host is not None and authority != host:
        return ":authority and Host differ"
    return None


def parse_request(headers: list[tuple[bytes, bytes]], max_line: int, max_head: int) -> ParsedHead:
    why = malformed(headers)
    if why is not None:
        return ParsedHead("", "", [], {}, None, None, False, why)
    method = path = authority = host = b""
    extended = False
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
        line = len(name) + len(value) + 2
        size += line
        if line > max_line:
            too_large = True
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":
                extended = True
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        if name.find(b"_") >= 0:
            continue  # dropped, as on HTTP/1.1 (a CGI backend reads X_User as X-User)
        if name == b"host":
            host = value
            continue
        raw.append((name, value))
        if name == b"content-length":
            try:
                clen = int(value)
            except ValueError:
                error = errors.BadRequest("content-length is not a number")
        elif name == b"authorization":
            auths += 1
        elif name == b"expect":
            expect = value.lower() == b"100-continue"
        elif name in PICKED:
            picked[name] = picked[name] + b", " + value if name in picked else value
    if cookies:
        raw.append((b"cookie", b"; ".join(cookies)))
    host = authority or host
    if host:
        picked[b"host"] = host
        raw.insert(0, (b"host", host))
    text_method = method.decode("ascii", "replace")
    text_path = path.decode("latin-1")
    if too_large or size > max_head:
        error = errors.HeadersTooLarge()
    elif not valid_method(method):
        error = errors.BadRequest("the :method is not a token")
    elif not valid_authority(host):
        error = errors.BadRequest("the :authority is not a host")
    elif text_method == "CONNECT":
        what = "extended CONNECT (RFC 8441)" if extended else "CONNECT"
        error = errors.NotImplementedCoding(f"{what} is not supported over HTTP/2")
    elif not (path.startswith(b"/") or (path == b"*" and text_method == "OPTIONS")):
        error = errors.BadRequest("the :path is not a path")
    elif not valid_path(path):
        error = errors.BadRequest("the :path has a space or a control character")
    elif auths > 1:
        # Which one would the upstream believe? Not necessarily the one verified.
        error = errors.BadRequest("more than one Authorization header")
    return ParsedHead(text_method, text_path, raw, picked, clen, error, expect)

"""frontend/http2/headers.parse_request, one pass with the names' kinds kept,
against the two passes with regular expressions it replaced (the reference
below, as it was): the same ParsedHead, or the same reason it is malformed,
for random header lists of every shape the checks tell apart."""

from __future__ import annotations

import random
import re

from pyproxyd import errors
from pyproxyd.frontend.connection import PICKED
from pyproxyd.frontend.http2 import headers
from pyproxyd.frontend.http2.headers import ParsedHead, parse_request

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PATH = re.compile(rb"[\x21-\x7e\x80-\xff]+")
_AUTHORITY = re.compile(rb"[^\x00-\x20\x7f@/?#\\]*")
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_VALUE = re.compile(rb"(?:[^\x00\r\n \t](?:[^\x00\r\n]*[^\x00\r\n \t])?)?")
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
_CONNECTION = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)


def ref_malformed(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why the list is no well-formed HTTP/2 request head, or None."""
    pseudo: set[bytes] = set()
    regular = False
    method = authority = host = None
    for name, value in headers:
        if not _VALUE.fullmatch(value):
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
        if not _NAME.fullmatch(name):
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


def ref_parse_request(
    headers: list[tuple[bytes, bytes]], max_line: int, max_head: int
) -> ParsedHead:
    why = ref_malformed(headers)
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
    elif not _TOKEN.fullmatch(method):
        error = errors.BadRequest("the :method is not a token")
    elif not _AUTHORITY.fullmatch(host):
        error = errors.BadRequest("the :authority is not a host")
    elif text_method == "CONNECT":
        what = "extended CONNECT (RFC 8441)" if extended else "CONNECT"
        error = errors.NotImplementedCoding(f"{what} is not supported over HTTP/2")
    elif not (path.startswith(b"/") or (path == b"*" and text_method == "OPTIONS")):
        error = errors.BadRequest("the :path is not a path")
    elif not _PATH.fullmatch(path):
        error = errors.BadRequest("the :path has a space or a control character")
    elif auths > 1:
        # Which one would the upstream believe? Not necessarily the one verified.
        error = errors.BadRequest("more than one Authorization header")
    return ParsedHead(text_method, text_path, raw, picked, clen, error, expect)


PSEUDO = [b":method", b":scheme", b":path", b":authority", b":protocol", b":status", b":x"]
NAMES = [
    *(b"content-type", b"cookie", b"content-length", b"authorization", b"expect"),
    *(b"x_user", b"x-request-id", b"traceparent", b"x-forwarded-for", b"accept"),
    *(b"x-" + b"n" * 70, b"user-agent"),
]
RARE_NAMES = [b"te", b"host"]  # malformed but with one value (trailers) or twice
BAD_NAMES = [b"connection", b"upgrade", b"X-Upper", b"bad name", b""]
VALUES = [
    *(b"", b"v", b"12", b"x1", b"trailers", b"gzip", b"100-continue", b"GET", b"h"),
    *(b"h:80", b"u@h", b"\xc3\xa9", b"v" * 300, b"a b"),
]
BAD_VALUES = [b" v", b"v\t", b"a\x00b", b"a\rb"]


def head(rng: random.Random) -> list[tuple[bytes, bytes]]:
    fields: list[tuple[bytes, bytes]] = []
    if rng.random() < 0.9:  # mostly the usual pseudo-header fields first
        method = rng.choice([b"GET", b"POST", b"CONNECT", b"OPTIONS", b"G T"])
        path = rng.choice([b"/a", b"/a", b"*", b"", b"/a b"])
        fields += [(b":method", method), (b":scheme", b"https"), (b":path", path)]
        if rng.random() < 0.85:
            fields.append((b":authority", rng.choice([b"h", b"h:80", b"u@h", b""])))
    for _ in range(rng.randrange(0, 8)):
        bad = rng.random() < 0.04
        pseudo = rng.random() < 0.03
        rare = rng.random() < 0.05
        name = rng.choice(PSEUDO if pseudo else BAD_NAMES if bad else RARE_NAMES if rare else NAMES)
        value = rng.choice(BAD_VALUES if rng.random() < 0.03 else VALUES)
        if name == b"te" and rng.random() < 0.5:
            value = rng.choice([b"trailers", b"Trailers"])
        at = rng.randrange(len(fields) + 1) if pseudo else len(fields)
        fields.insert(at, (name, value))
    return fields


def same(got: ParsedHead, expected: ParsedHead) -> bool:
    def plain(p: ParsedHead) -> tuple[object, ...]:
        err = p.error
        return (*p[:5], None if err is None else (type(err), err.detail), *p[6:])

    return plain(got) == plain(expected)


def test_one_pass_gives_what_the_two_passes_with_regexes_gave() -> None:
    rng = random.Random(22)
    assert b"host" in PICKED
    kinds = {"malformed": 0, "error": 0, "fine": 0}
    for round_ in range(4000):
        if round_ % 1000 == 0:
            headers._NAMES.clear()  # seen before or not
        fields = head(rng)
        max_line, max_head = rng.choice([(8190, 65536), (100, 65536), (8190, 200)])
        got = parse_request(fields, max_line, max_head)
        expected = ref_parse_request(fields, max_line, max_head)
        assert same(got, expected), fields
        kinds["malformed" if got.malformed else "error" if got.error else "fine"] += 1
    assert min(kinds.values()) > 150, kinds  # every outcome well represented
    assert isinstance(errors.HeadersTooLarge(), errors.GatewayError)

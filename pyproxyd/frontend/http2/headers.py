"""An HTTP/2 header list as the request head the pipeline reads.

h2 has checked the list's form already (pseudo-header fields first and
once, lower-case names, no connection-specific fields). What is left is
the gateway's own view, the same as for HTTP/1.1 (frontend/connection.py):
`:authority` is the Host, `cookie` fields are joined (RFC 9113 8.2.3),
names with an underscore are dropped, and the sizes are capped by
`server.max_header_size`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from ... import errors
from ..connection import PICKED

# The request line the upstream gets is built from :method and :path, and its
# Host from :authority: h2 has refused CR, LF and NUL in them, but a space
# would still split an HTTP/1.1 request line, and userinfo or a path in an
# authority is no host.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PATH = re.compile(rb"[\x21-\x7e\x80-\xff]+")
_AUTHORITY = re.compile(rb"[^\x00-\x20\x7f@/?#\\]*")


class ParsedHead(NamedTuple):
    method: str
    path: str
    raw: list[tuple[bytes, bytes]]
    picked: dict[bytes, bytes]
    content_length: int | None
    error: errors.GatewayError | None  # answered on the stream instead of the pipeline
    expect_continue: bool  # the client waits for 100 Continue before its body


def parse_request(
    headers: Iterable[tuple[bytes, bytes]], max_line: int, max_head: int
) -> ParsedHead:
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

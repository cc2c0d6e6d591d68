"""Compiled by mypyc (pyproxyd/compiled.py).
Whether an HTTP/2 upstream's response head or trailers are well-formed (RFC 9113
8.2 and 8.3.2), in one pass.

h2 is told not to check them (h2conn.client_config): its checks are seven
generators chained over every field (3% of a gRPC call's CPU on the
gateway's client side), and a malformed block raised a ProtocolError that
ended the whole upstream connection with every request on it, where RFC 9113
8.1.1 makes a malformed response an error of its stream only. h2conn resets
that stream (PROTOCOL_ERROR) and its request gets the gateway's 502.

The checks are h2's, for a response (h2 4.4.1 `utilities.validate_headers`
with a client's flags): names are non-empty, of 0x21-0x7e without upper case,
and a colon only as a pseudo-header field's first byte; values have no NUL,
CR or LF and no SP or HTAB at either end; pseudo-header fields come first and
a head has exactly one, `:status` (trailers none); no connection-specific
fields; `te` only as "trailers".
"""

from __future__ import annotations

import re
from typing import Final

_NAME: Final = re.compile(rb"[\x21-\x39\x3b-\x40\x5b-\x7e]+")
_VALUE: Final = re.compile(rb"(?:[^\x00\r\n \t](?:[^\x00\r\n]*[^\x00\r\n \t])?)?")
_CONNECTION: Final = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
# Regular field names found well-formed and not connection-specific: answers
# repeat the same few, and a set lookup is cheaper than the pattern. Bounded.
_GOOD_NAMES: Final[set[bytes]] = set()
_GOOD_NAMES_MAX: Final = 512


def response_malformed(headers: list[tuple[bytes, bytes]], trailers: bool) -> str | None:
    """Why `headers`, a response head (or, with `trailers`, a trailer block),
    is not well-formed, or None."""
    status = False
    regular = False
    for name, value in headers:
        if not _VALUE.fullmatch(value):
            return f"the value of {name!r} has NUL, CR, LF or surrounding whitespace"
        if name[:1] == b":":
            if trailers:
                return f"pseudo-header field {name!r} in trailers"
            if regular:
                return f"pseudo-header field {name!r} after a regular one"
            if name != b":status":
                return f"pseudo-header field {name!r} is not one of a response"
            if status:
                return "two :status fields"
            status = True
            continue
        regular = True
        if name not in _GOOD_NAMES:
            if not _NAME.fullmatch(name):
                return f"field name {name!r} is empty, upper-case or has a forbidden byte"
            if name in _CONNECTION:
                return f"connection-specific field {name!r}"
            if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
                _GOOD_NAMES.add(name)
        if name == b"te" and value.lower() != b"trailers":
            return "te other than trailers"
    if not status and not trailers:
        return "no :status"
    return None

"""Compiled by mypyc (pyproxyd/compiled.py).

How a message says where it ends, judged once for both directions.

A proxy that reads a message's framing one way while the next hop reads it
another is a request-smuggling (or response-splitting) vector. llhttp
already refuses the classic desyncs (Content-Length twice, with
Transfer-Encoding, a coding after `chunked`); these rules cover what it
lets through, and they are the same for a client's request and an
upstream's response:

- `Transfer-Encoding` must be exactly `chunked`: any other coding is not
  something the gateway can re-frame without losing it (nginx answers 501
  to a client and 502 for an upstream);
- a `Connection` header cannot make framing or routing headers hop-by-hop:
  dropping `Content-Length` while forwarding the body is the smuggle.

Requests have a few more rules of their own (one `Host`, one
`Authorization`), checked in `request_problem`.
"""

from __future__ import annotations

from . import errors

# What a Connection header may never remove: the message would lose its
# framing (or its routing) on the way while its bytes still travel.
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})

_CHUNKED = b"chunked"

# Transfer codings registered with IANA (RFC 9112 7): a request using one of
# these besides a final chunked is well-formed but not implemented here.
_KNOWN_CODINGS = frozenset({b"chunked", b"compress", b"deflate", b"gzip", b"x-gzip", b"x-compress"})


def coding_problem(value: bytes) -> errors.GatewayError | None:
    """None when a Transfer-Encoding value is plain `chunked`; else why not.

    A final coding other than chunked leaves the length unknown (RFC 9112
    6.3: 400); chunked after other codings would hand the next hop bytes it
    must decode, so the gateway refuses what it does not implement (501).
    """
    codings = [c.strip().lower() for c in value.split(b",")]
    codings = [c.split(b";", 1)[0].strip() for c in codings if c]
    if codings == [_CHUNKED]:
        return None
    if not codings or codings[-1] != _CHUNKED:
        return errors.BadRequest("Transfer-Encoding must end with chunked")
    if codings.count(_CHUNKED) > 1:
        return errors.BadRequest("chunked applied more than once")
    if all(c in _KNOWN_CODINGS for c in codings):
        return errors.NotImplementedCoding("transfer codings other than chunked are not supported")
    return errors.NotImplementedCoding("unknown transfer coding")


def connection_problem(value: bytes) -> errors.GatewayError | None:
    """A Connection header that names a framing header (FRAMING)."""
    for token in value.split(b","):
        if token.strip().lower() in FRAMING:
            return errors.BadRequest("Connection names a header that frames the message")
    return None


def request_problem(
    version: str,
    hosts: int,
    authorizations: int,
    coding: bytes | None,
    connection: bytes | None,
) -> errors.GatewayError | None:
    """What makes a request head unsafe to forward, or None.

    Counts and values are what the parser saw; Content-Length twice or with
    Transfer-Encoding never gets here (llhttp refuses it).
    """
    if hosts > 1:
        return errors.BadRequest("more than one Host header")
    if hosts == 0 and version != "1.0":
        # RFC 9112 3.2: an HTTP/1.1 request without Host is 400; HTTP/1.0 had none.
        return errors.BadRequest("no Host header")
    if authorizations > 1:
        # Which one would the upstream believe? Not necessarily the one verified.
        return errors.BadRequest("more than one Authorization header")
    if coding is not None:
        problem = coding_problem(coding)
        if problem is not None:
            return problem
    if connection is not None:
        return connection_problem(connection)
    return None


def response_problem(coding: bytes | None, has_length: bool) -> str | None:
    """What makes an upstream's response head unsafe to relay, or None.

    The same rules as for requests: the gateway re-frames every body, so a
    coding it would silently drop, or a length it would have to guess
    between, makes the response a 502 (as nginx: "upstream sent unknown
    Transfer-Encoding", "... Content-Length and Transfer-Encoding").
    """
    if coding is None:
        return None
    if has_length:
        return "upstream sent both Content-Length and Transfer-Encoding"
    if coding_problem(coding) is not None:
        return "upstream sent an unsupported Transfer-Encoding"
    return None


def field_value(line: bytes, start: int) -> bytes:
    """The value of a field line ("Name: value") whose colon is just before
    `start`. The heads the gateway writes put one space there, skipped
    without strip(), which runs only for whitespace at either end."""
    if start < len(line) and line[start] == 32:
        start += 1
    value = line[start:]
    if value and (value[0] <= 32 or value[-1] <= 32):
        value = value.strip()
    return value

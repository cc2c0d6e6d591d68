"""Compiled by mypyc (pyproxyd/compiled.py). The answer's way back: an
upstream response, or the gateway's own error, written to the request's sink.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import errors
from ..errors import GatewayError
from ..forwarding import HOP_BY_HOP_B, filter_response_headers
from ..upstream.http1 import UpstreamResponse
from .interface import Request
from .record import RequestInfo

# The upstream's X-Request-ID is replaced by the request's own.
_RESPONSE_DROP = HOP_BY_HOP_B | {b"x-request-id"}
# Answers up to this size are buffered and leave in one write with their head.
SMALL = 65536


def _response_headers(
    up: UpstreamResponse, ex: RequestInfo
) -> tuple[list[tuple[bytes, bytes]], frozenset[bytes] | None, bytes]:
    """(headers, drop, raw) for Request.respond/start: the upstream's
    headers are filtered as the head is written, in one pass; ours follow."""
    raw = b"X-Request-ID: %s\r\n%s" % (ex.request_id.encode(), ex.limits)
    if up.lists_headers:  # Connection names more headers to drop: the full filter first
        return filter_response_headers(up.headers, _RESPONSE_DROP), None, raw
    return up.headers, _RESPONSE_DROP, raw


def small(request: Request, up: UpstreamResponse) -> bool:
    length = up.content_length
    return (
        length is not None
        and length <= SMALL
        and request.method != "HEAD"
        and up.status not in (204, 304)
    )


def relay_now(request: Request, up: UpstreamResponse, ex: RequestInfo) -> bool:
    """The common case without a coroutine: a small body that is already in."""
    if not small(request, up):
        return False
    body = up.whole_body()
    if body is None:
        return False
    up.release()
    ex.status = up.status
    headers, drop, raw = _response_headers(up, ex)
    request.respond(up.status, headers, body, up.reason, drop, raw)
    return True


async def relay(request: Request, up: UpstreamResponse, ex: RequestInfo) -> None:
    headers, drop, raw = _response_headers(up, ex)
    ex.status = up.status
    length = up.content_length
    if small(request, up):
        # Small bodies: buffered, and the head and body leave in one write.
        chunks = []
        while chunk := await up.read():
            chunks.append(chunk)
        up.release()
        request.respond(up.status, headers, b"".join(chunks), up.reason, drop, raw)
        return
    request.start(up.status, headers, length, up.reason, drop, raw)
    try:
        while chunk := await up.read():
            await request.write(chunk)
    except GatewayError:
        # The upstream broke or stalled mid-body: the status line is gone, so the
        # only honest signal left is to cut the client connection.
        up.abort()
        request.abort()
        return
    up.release()
    request.end()


def send_error(request: Request, err: GatewayError, rid: str, raw: bytes = b"") -> None:
    """The gateway's own answer (errors.render). `raw`: header lines already
    rendered (the rate-limit ones of an admitted request)."""
    headers = [(b"Content-Type", b"application/json"), (b"X-Request-ID", rid.encode())]
    headers.extend(_encoded(err.headers.items()))
    request.respond(err.status, headers, errors.render(err, rid), raw=raw)


def _encoded(pairs: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1", "replace")) for n, v in pairs]

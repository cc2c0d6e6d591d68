"""Compiled by mypyc (pyproxyd/compiled.py). The answer's way back: an
upstream response, or the gateway's own error, written to the request's sink.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import errors
from ..errors import GatewayError
from ..forwarding import HOP_BY_HOP_B, filter_response_headers
from ..middleware.views import Pairs, Reply, ResponseView
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
    chain = ex.chain
    if chain is not None and chain.async_response:
        return False  # its on_response hooks are awaited: relay() does it
    body = up.whole_body()
    if body is None:
        return False
    up.release()
    if chain is not None:
        status, pairs, failure = outgoing(ex, up.status, _chain_headers(up, ex))
        reason = up.reason if status == up.status else ""
        _send(request, ex, status, pairs, body if failure is None else failure, reason)
        return True
    ex.status = up.status
    headers, drop, raw = _response_headers(up, ex)
    request.respond(up.status, headers, body, up.reason, drop, raw)
    return True


async def relay(request: Request, up: UpstreamResponse, ex: RequestInfo) -> None:
    if ex.chain is not None:
        status, pairs, failure = await outgoing_async(ex, up.status, _chain_headers(up, ex))
        if failure is not None:  # a middleware's 500 replaces the upstream's answer
            up.abort()
            _send(request, ex, status, pairs, failure, "")
            return
        headers: list[tuple[bytes, bytes]] = pairs
        drop: frozenset[bytes] | None = HOP_BY_HOP_B
        raw = b""
        ex.status = status
    else:
        headers, drop, raw = _response_headers(up, ex)
        ex.status = status = up.status
    reason = up.reason if status == up.status else ""
    length = up.content_length
    if small(request, up):
        # Small bodies: buffered, and the head and body leave in one write.
        chunks = []
        while chunk := await up.read():
            chunks.append(chunk)
        up.release()
        request.respond(status, headers, b"".join(chunks), reason, drop, raw)
        return
    request.start(status, headers, length, reason, drop, raw)
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


def send_error(request: Request, err: GatewayError, ex: RequestInfo) -> None:
    """The gateway's own answer (errors.render), with the rate-limit header
    lines of an admitted request."""
    if ex.chain is not None:
        status, pairs, failure = outgoing(ex, err.status, _error_headers(err, ex))
        _send(request, ex, status, pairs, errors.render(err, ex.request_id) if failure is None
              else failure, "")  # fmt: skip
        return
    ex.status = err.status
    request.respond(err.status, _error_headers(err, ex), errors.render(err, ex.request_id),
                    raw=ex.limits)  # fmt: skip


async def send_error_async(request: Request, err: GatewayError, ex: RequestInfo) -> None:
    """send_error() on a route whose middlewares' on_response are awaited."""
    status, pairs, failure = await outgoing_async(ex, err.status, _error_headers(err, ex))
    body = errors.render(err, ex.request_id) if failure is None else failure
    _send(request, ex, status, pairs, body, "")


def _error_headers(err: GatewayError, ex: RequestInfo) -> Pairs:
    headers = [(b"Content-Type", b"application/json"), (b"X-Request-ID", ex.request_id.encode())]
    headers.extend(_encoded(err.headers.items()))
    if ex.chain is not None and ex.limits:
        headers.extend(_lines(ex.limits))
    return headers


# -- through the route's middlewares ---------------------------------------------------


def send_reply(request: Request, reply: Reply, ex: RequestInfo) -> None:
    """A middleware's own answer, through the on_response of the steps outside it."""
    status, pairs, failure = outgoing(ex, reply.status, _reply_headers(reply, ex))
    _send(request, ex, status, pairs, reply.body if failure is None else failure, "")


async def send_reply_async(request: Request, reply: Reply, ex: RequestInfo) -> None:
    status, pairs, failure = await outgoing_async(ex, reply.status, _reply_headers(reply, ex))
    _send(request, ex, status, pairs, reply.body if failure is None else failure, "")


def _reply_headers(reply: Reply, ex: RequestInfo) -> Pairs:
    pairs = [*reply.pairs, (b"X-Request-ID", ex.request_id.encode())]  # a copy: replies are shared
    if ex.limits:
        pairs.extend(_lines(ex.limits))
    return pairs


def _chain_headers(up: UpstreamResponse, ex: RequestInfo) -> Pairs:
    pairs = filter_response_headers(up.headers, _RESPONSE_DROP)
    pairs.append((b"X-Request-ID", ex.request_id.encode()))
    if ex.limits:
        pairs.extend(_lines(ex.limits))
    return pairs


def _lines(raw: bytes) -> Pairs:
    """Header lines rendered already ("Name: value\r\n"...) as pairs."""
    out = []
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b": ")
        if sep:
            out.append((name, value))
    return out


def outgoing(ex: RequestInfo, status: int, pairs: Pairs) -> tuple[int, Pairs, bytes | None]:
    """The response after the on_response hooks: (status, headers, None), or
    a hook's failure as the 500 (or 504) that replaces it, with its body."""
    chain, view = ex.chain, ex.call
    assert chain is not None and view is not None
    resp = ResponseView(status, pairs)
    failure: bytes | None = None
    while True:
        try:
            chain.leave(view, resp)
            return resp.status, _framed(status, resp), failure
        except GatewayError as err:  # view.depth is at the failing step: the outer ones follow
            failure = errors.render(err, ex.request_id)
            resp = ResponseView(err.status, _error_headers(err, ex))


async def outgoing_async(
    ex: RequestInfo, status: int, pairs: Pairs
) -> tuple[int, Pairs, bytes | None]:
    chain, view = ex.chain, ex.call
    assert chain is not None and view is not None
    resp = ResponseView(status, pairs)
    failure: bytes | None = None
    while True:
        try:
            await chain.leave_async(view, resp)
            return resp.status, _framed(status, resp), failure
        except GatewayError as err:
            failure = errors.render(err, ex.request_id)
            resp = ResponseView(err.status, _error_headers(err, ex))


def _framed(status: int, resp: ResponseView) -> Pairs:
    """The headers; without the upstream's Content-Length when a middleware
    turned the answer into one that has no body (a HEAD's or a 304's stays)."""
    if resp.status != status and resp.status in (204, 304):
        return [p for p in resp.pairs if p[0].lower() != b"content-length"]
    return resp.pairs


def _send(
    request: Request, ex: RequestInfo, status: int, pairs: Pairs, body: bytes, reason: str
) -> None:
    ex.status = status
    # A middleware cannot frame the message: hop-by-hop names are dropped here.
    request.respond(status, pairs, body, reason, HOP_BY_HOP_B)


def _encoded(pairs: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1", "replace")) for n, v in pairs]

"""Compiled by mypyc (pyproxyd/compiled.py). The answer's way back: an
upstream response, or the gateway's own error, written to the request's sink.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .. import errors
from ..errors import GatewayError
from ..forwarding import HOP_BY_HOP_B, RESPONSE_DROP_B, filter_response_headers
from ..middleware.views import Pairs, Reply, RequestView, ResponseView, header_lines
from ..upstream.http1 import UpstreamResponse
from .interface import Request
from .record import RequestInfo

if TYPE_CHECKING:
    from ..middleware.chain import Chain

# Answers up to this size are buffered and leave in one write with their head.
SMALL = 65536


def _response_headers(
    up: UpstreamResponse, ex: RequestInfo
) -> tuple[list[tuple[bytes, bytes]], frozenset[bytes] | None, bytes]:
    """(headers, drop, raw) for Request.respond/start: the upstream's
    headers are filtered as the head is written, in one pass; ours follow."""
    raw = b"X-Request-ID: %s\r\n%s" % (ex.request_id.encode(), ex.limits)
    if up.lists_headers:  # Connection names more headers to drop: the full filter first
        return filter_response_headers(up.headers, RESPONSE_DROP_B), None, raw
    return up.headers, RESPONSE_DROP_B, raw


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
    call = ex.call
    chain: Chain | None = None
    if call is not None:
        chain = call.chain
        assert chain is not None
        if chain.async_response:
            return False  # its on_response hooks are awaited: relay() does it
    body = up.whole_body()
    if body is None:
        return False
    up.release()
    if ex.grpc:
        note_grpc_status(ex, up.headers)
    status = up.status
    if call is None or chain is None:
        ex.status = status
        headers, drop, raw = _response_headers(up, ex)
        request.respond(status, headers, body, up.reason, drop, raw)
        return True
    # Through the middlewares: the lazy view's way written out in one function
    # (the route runs with a cold instruction cache: each function and line
    # on the way costs its misses a request); the rare ways in others.
    if chain.lazy and not up.lists_headers:
        resp = ResponseView(
            status, None, up.headers, chain.drops[call.depth], ex.limits, ex.request_id
        )
    else:
        resp = _upstream_view(up, ex, call, chain)
    try:  # outgoing(), without its call, for when no hook fails
        chain.leave(call, resp)
    except GatewayError as err:
        _send_failed(request, ex, err)
        return True
    now = ex.status = resp.status
    if now != status:
        _send(request, ex, resp, body, status, up.reason)  # (no body for a 204 or 304)
    elif resp.lazy:
        lines = b"X-Request-ID: %s\r\n%s" % (ex.request_id.encode(), resp.raw)  # resp.lines()
        request.respond(now, resp.base, body, up.reason, resp.drops[0], lines)
    else:
        request.respond(now, resp.pairs, body, up.reason, HOP_BY_HOP_B)
    return True


def _send_failed(request: Request, ex: RequestInfo, err: GatewayError) -> None:
    """A hook failed on an upstream's answer: the 500 (or 504) that replaces
    it, through the on_response of the steps outside the failing one."""
    resp, first = _replacement(err, ex)
    resp, failure = outgoing(ex, resp, first)
    _send(request, ex, resp, first if failure is None else failure, 0, "")


def takes_trailers(request: Request) -> bool:
    """The client said `TE: trailers` (RFC 9110 10.1.4), as gRPC clients do."""
    te = request.first_header("te")
    return te is not None and "trailers" in te.lower()


def _trailers(request: Request, up: UpstreamResponse, ex: RequestInfo) -> Pairs | None:
    """The upstream's trailer fields, when the client takes them: an HTTP/1.1
    client that said `TE: trailers`, any HTTP/2 client. A gRPC call's status
    is noted from them on the way."""
    trailers = up.trailers
    if not trailers:
        return None
    if ex.grpc:
        note_grpc_status(ex, trailers)
    if request.version[:1] == "2" or takes_trailers(request):
        return trailers
    return None


async def relay(request: Request, up: UpstreamResponse, ex: RequestInfo) -> None:
    if ex.grpc:
        note_grpc_status(ex, up.headers)  # a trailers-only answer carries it in its head
    call = ex.call
    if call is not None:
        resp, failure = await outgoing_async(ex, _upstream_view(up, ex, call, _chain(call)))
        if failure is not None:  # a middleware's 500 replaces the upstream's answer
            up.abort()
            _send(request, ex, resp, failure, 0, "")
            return
        status = resp.status
        headers, drop, raw = _final(resp, up.status)
    else:
        status = up.status
        headers, drop, raw = _response_headers(up, ex)
    ex.status = status
    reason = up.reason if status == up.status else ""
    length = up.content_length
    if small(request, up):
        # Small bodies: buffered, and the head and body leave in one write.
        chunks = []
        while chunk := await up.read():
            chunks.append(chunk)
        up.release()
        trailers = _trailers(request, up, ex)
        if trailers is None:
            request.respond(status, headers, b"".join(chunks), reason, drop, raw)
            return
        request.start(status, headers, length, reason, drop, raw)
        await request.write(b"".join(chunks))
        request.trailers(trailers)
        request.end()
        return
    request.start(status, headers, length, reason, drop, raw)
    try:
        while chunk := await up.read():
            await request.write(chunk)
    except GatewayError as err:
        # The upstream broke or stalled mid-body: the status line is gone, so the
        # only honest signal left is to cut the client connection (or, on a
        # gRPC call, to end it with the status in trailers).
        up.abort()
        cut(request, ex, err)
        return
    up.release()
    trailers = _trailers(request, up, ex)
    if trailers is not None:
        request.trailers(trailers)
    request.end()


def note_grpc_status(ex: RequestInfo, fields: Iterable[tuple[bytes, bytes]]) -> None:
    """Record a gRPC call's status from the upstream's head or trailers, for the log."""
    for name, value in fields:
        if len(name) == 11 and name.lower() == b"grpc-status":
            ok = value.isdigit() and len(value) < 4
            ex.grpc_status = int(value) if ok else errors.GRPC_UNKNOWN
            return


def cut(request: Request, ex: RequestInfo, err: GatewayError) -> None:
    """An answer already under way that cannot be completed. A gRPC call
    ends the way a gRPC server would end it, with the status in trailers
    (DEADLINE_EXCEEDED for a deadline passed); anything else, or a client
    that cannot take trailers, is cut (HTTP/1.1 closes the connection,
    HTTP/2 resets the stream)."""
    if ex.grpc and not request.finished and (request.version[:1] == "2" or takes_trailers(request)):
        ex.grpc_status = errors.grpc_status(err.status)
        request.trailers(errors.render_grpc(err)[1:])  # grpc-status, grpc-message
        request.end()
        return
    request.abort()


def send_error(request: Request, err: GatewayError, ex: RequestInfo) -> None:
    """The gateway's own answer (errors.render, or a trailers-only gRPC
    answer on a gRPC request), with the rate-limit header lines of an
    admitted request."""
    status, headers, body = _error_answer(err, ex)
    if ex.call is not None:
        resp, failure = outgoing(ex, ResponseView(status, headers))
        _send(request, ex, resp, body if failure is None else failure, 0, "")
        return
    ex.status = status
    request.respond(status, headers, body, raw=ex.limits)


async def send_error_async(request: Request, err: GatewayError, ex: RequestInfo) -> None:
    """send_error() on a route whose middlewares' on_response are awaited."""
    status, headers, body = _error_answer(err, ex)
    resp, failure = await outgoing_async(ex, ResponseView(status, headers))
    _send(request, ex, resp, body if failure is None else failure, 0, "")


def _error_answer(err: GatewayError, ex: RequestInfo) -> tuple[int, Pairs, bytes]:
    """(status, headers, body) of the gateway's own answer to this request."""
    if ex.grpc:
        ex.grpc_status = errors.grpc_status(err.status)
        headers = errors.render_grpc(err)
        headers.append((b"X-Request-ID", ex.request_id.encode()))
        headers.extend(_encoded(err.headers.items()))
        if ex.call is not None and ex.limits:
            headers.extend(header_lines(ex.limits))
        return 200, headers, b""
    return err.status, _error_headers(err, ex), errors.render(err, ex.request_id)


def _error_headers(err: GatewayError, ex: RequestInfo) -> Pairs:
    headers = [(b"Content-Type", b"application/json"), (b"X-Request-ID", ex.request_id.encode())]
    headers.extend(_encoded(err.headers.items()))
    if ex.call is not None and ex.limits:
        headers.extend(header_lines(ex.limits))
    return headers


# -- through the route's middlewares ---------------------------------------------------


def send_reply(request: Request, reply: Reply, ex: RequestInfo) -> None:
    """A middleware's own answer, through the on_response of the steps outside it."""
    resp, failure = outgoing(ex, ResponseView(reply.status, _reply_headers(reply, ex)))
    _send(request, ex, resp, reply.body if failure is None else failure, 0, "")


async def send_reply_async(request: Request, reply: Reply, ex: RequestInfo) -> None:
    resp, failure = await outgoing_async(ex, ResponseView(reply.status, _reply_headers(reply, ex)))
    _send(request, ex, resp, reply.body if failure is None else failure, 0, "")


def _reply_headers(reply: Reply, ex: RequestInfo) -> Pairs:
    pairs = [*reply.pairs, (b"X-Request-ID", ex.request_id.encode())]  # a copy: replies are shared
    if ex.limits:
        pairs.extend(header_lines(ex.limits))
    return pairs


def _chain(call: RequestView) -> Chain:
    chain: Chain = call.chain
    return chain


def _upstream_view(
    up: UpstreamResponse, ex: RequestInfo, call: RequestView, chain: Chain
) -> ResponseView:
    """An upstream's answer as the chain sees it: lazy (nothing copied) unless
    its Connection header names more to drop or a step needs the list."""
    if chain.lazy and not up.lists_headers:
        drops = chain.response_drops(call.depth)
        return ResponseView(up.status, None, up.headers, drops, ex.limits, ex.request_id)
    raw = b"X-Request-ID: %s\r\n%s" % (ex.request_id.encode(), ex.limits)
    pairs = filter_response_headers(up.headers, RESPONSE_DROP_B)
    pairs.extend(header_lines(raw))
    return ResponseView(up.status, pairs)


def outgoing(
    ex: RequestInfo, resp: ResponseView, failure: bytes | None = None
) -> tuple[ResponseView, bytes | None]:
    """The response after the on_response hooks, and None; or, when a hook
    failed, the 500 (or 504) that replaces it, and its body. `failure`: the
    body of `resp` when it already replaces a failed one."""
    call = ex.call
    assert call is not None
    chain = _chain(call)
    while True:
        try:
            chain.leave(call, resp)
            return resp, failure
        except GatewayError as err:  # call.depth is at the failing step: the outer ones follow
            resp, failure = _replacement(err, ex)


async def outgoing_async(ex: RequestInfo, resp: ResponseView) -> tuple[ResponseView, bytes | None]:
    call = ex.call
    assert call is not None
    chain = _chain(call)
    failure: bytes | None = None
    while True:
        try:
            await chain.leave_async(call, resp)
            return resp, failure
        except GatewayError as err:
            resp, failure = _replacement(err, ex)


def _replacement(err: GatewayError, ex: RequestInfo) -> tuple[ResponseView, bytes]:
    """A hook's fault: the error answer that replaces the response, and its body."""
    status, headers, body = _error_answer(err, ex)
    return ResponseView(status, headers), body


def _final(resp: ResponseView, status: int) -> tuple[Pairs, frozenset[bytes] | None, bytes]:
    """(headers, drop, raw) for Request.respond/start. A middleware cannot
    frame the message: hop-by-hop names are dropped here. `status`: the
    upstream's (0 for an answer of the gateway's own)."""
    now = resp.status
    changed = now != status
    if resp.lazy:
        if not (changed and now in (204, 304)):
            return resp.base, resp.drops[0], resp.lines()
        resp.at = -1  # every step has run: the list as the last one left it
    pairs = resp.pairs
    if status and changed and now in (204, 304):
        # Now without a body: the upstream's Content-Length would announce one.
        pairs = [p for p in pairs if p[0].lower() != b"content-length"]
    return pairs, HOP_BY_HOP_B, b""


def _send(
    request: Request,
    ex: RequestInfo,
    resp: ResponseView,
    body: bytes,
    status: int,
    reason: str,
) -> None:
    now = ex.status = resp.status
    headers, drop, raw = _final(resp, status)
    request.respond(now, headers, body, reason if now == status else "", drop, raw)


def _encoded(pairs: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1", "replace")) for n, v in pairs]

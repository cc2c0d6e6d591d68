"""Compiled by mypyc (pyproxyd/compiled.py). The pipeline's decisions for
one request, written once: route, identity, rate limit, the upstream head.

Each step is a plain function that returns the next step's result. A step
that has to wait (a JWKS refetch, a Redis limiter, a delay-mode turn, a
WebSocket) returns the rest of the pipeline as an awaitable instead: a
coroutine that awaits, then calls the very next step. So `prepare()` gives
either a `Plan` at once (most requests: the handler can answer them without
a task) or a `Pending` to await, and no decision is taken twice either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping
from inspect import isawaitable
from typing import TYPE_CHECKING, Any

from .. import errors
from ..bodies import chunked, limited
from ..errors import UnknownKey
from ..forwarding import filter_request_headers, forwarded_for
from ..middleware.cors import is_preflight
from ..middleware.views import Reply, RequestView
from ..routing import normalise_path
from ..websocket import proxy_websocket
from .interface import Request
from .record import RequestInfo

if TYPE_CHECKING:
    from ..auth.identity import Identity
    from ..auth.route import TokenMemo
    from ..snapshot import Route, Snapshot, Upstream


class Plan:
    """Where a request goes and the head it goes with (the Host line is the
    target's unless the route preserves the client's)."""

    __slots__ = ("body", "head", "host_line", "sync", "timeout", "upstream", "whole")

    def __init__(
        self,
        upstream: Upstream,
        head: bytes,
        host_line: bytes | None,
        body: AsyncIterator[bytes] | None,
        timeout: float | None,
        sync: bool = True,
        whole: bytes | None = None,
    ) -> None:
        self.upstream = upstream
        self.head = head  # request line and headers, without Host and the final CRLF
        self.host_line = host_line
        self.body = body  # framed for the upstream, or None
        self.timeout = timeout  # the route's, over the whole exchange
        self.sync = sync  # False when a middleware's on_response must be awaited
        # The whole body, already in, for an HTTP/2 upstream (then `body` is None):
        # it goes with the HEADERS, without a reader task or HTTP/1.1 framing.
        self.whole = whole

    @property
    def immediate(self) -> bool:
        """Nothing to stream, no route timeout, nothing to await on the way
        back: it can go without a task."""
        return self.body is None and self.timeout is None and self.sync

    def head_for(self, host_header: bytes) -> bytes:
        return self.head + (self.host_line or host_header) + b"\r\n"


# The rest of the pipeline, once something has been awaited: the plan, a
# middleware's answer, or None when the request was answered on the way (a
# WebSocket).
Pending = Awaitable["Plan | Reply | None"]


class LazyQuery:
    """Parses the query string only when a route has a query predicate."""

    __slots__ = ("_request",)

    def __init__(self, request: Request):
        self._request = request

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._request.query.get(name, default)


def prepare(request: Request, snap: Snapshot, ex: RequestInfo) -> Plan | Reply | Pending:
    """Route, identify, rate-limit and build the upstream request head."""
    headers = request.lazy_headers
    # The claims predicate needs the verified token while matching; the memo
    # verifies it at most once for matching and the route's own check.
    memo = snap.auth.memo(headers) if snap.auth.claim_routes else None
    if memo is not None and memo.refresh is not None:
        return _refetched(request, snap, ex, headers, memo)
    return _routed(request, snap, ex, headers, memo)


async def settle(step: Plan | Reply | Pending) -> Plan | Reply | None:
    """A step's result, awaited if it is a pending one."""
    if isinstance(step, Plan | Reply):
        return step
    return await step


async def _refetched(
    request: Request,
    snap: Snapshot,
    ex: RequestInfo,
    headers: Mapping[str, str],
    memo: TokenMemo,
) -> Plan | Reply | None:
    assert memo.refresh is not None
    await memo.refresh()  # a kid we do not know yet: refetch the JWKS first
    return await settle(_routed(request, snap, ex, headers, memo))


def _routed(
    request: Request,
    snap: Snapshot,
    ex: RequestInfo,
    headers: Mapping[str, str],
    memo: TokenMemo | None,
) -> Plan | Reply | Pending:
    route, params = match(request, snap, ex, headers, memo)
    chain = route.chain
    if chain is not None and chain.cors is not None and is_preflight(request.method, headers):
        # Browsers send preflights without credentials: answered before auth and
        # limits, through the on_response of the steps outside the cors one.
        assert ex.call is not None
        ex.call.depth = chain.cors_at
        return chain.cors.preflight(ex.call)
    try:
        identity = identify(route, headers, memo, ex)
    except UnknownKey as err:
        if err.refresh is None:
            raise
        return _rekeyed(err.refresh, request, snap, ex, headers, route, params)
    return _identified(request, snap, ex, route, params, identity)


async def _rekeyed(
    refresh: Any,
    request: Request,
    snap: Snapshot,
    ex: RequestInfo,
    headers: Mapping[str, str],
    route: Route,
    params: dict[str, str],
) -> Plan | Reply | None:
    await refresh()  # a rotated key: refetch the JWKS once, then check again
    identity = identify(route, headers, None, ex)
    return await settle(_identified(request, snap, ex, route, params, identity))


def _identified(
    request: Request,
    snap: Snapshot,
    ex: RequestInfo,
    route: Route,
    params: dict[str, str],
    identity: Identity | None,
) -> Plan | Reply | Pending:
    limits = route.limits
    if limits is not None:  # 429/503 raise; a shared store or delay mode is awaited
        admitted = limits.admit(request, identity, ex.client_ip, ex.path, ex.started)
        if not isinstance(admitted, bytes):
            return _admitted(admitted, request, snap, ex, route, params, identity)
        ex.limits = admitted
    return plan(request, snap, ex, route, params, identity)


async def _admitted(
    admitted: Awaitable[bytes],
    request: Request,
    snap: Snapshot,
    ex: RequestInfo,
    route: Route,
    params: dict[str, str],
    identity: Identity | None,
) -> Plan | Reply | None:
    ex.limits = await admitted
    return await settle(plan(request, snap, ex, route, params, identity))


def match(
    request: Request,
    snap: Snapshot,
    ex: RequestInfo,
    headers: Mapping[str, str],
    memo: TokenMemo | None,
) -> tuple[Route, dict[str, str]]:
    """The route of the request and its path parameters (NoRoute if none);
    ex.path and ex.query on the way."""
    raw_path, sep, query = request.raw_path.partition("?")
    path = normalise_path(raw_path)
    ex.path = path
    if sep:
        ex.query = query
    query_view: Mapping[str, str] = LazyQuery(request)  # type: ignore[assignment]
    found = snap.router.match(request.method, path, headers, query_view, memo)
    if found is None:
        raise errors.NoRoute(f"no route for {request.method} {path}")
    route: Route = found.rule.target
    ex.route = route.id
    chain = route.chain
    if chain is not None:  # the view, made here: a function less on the request's way
        ex.call = RequestView(
            request.method, path, query, None, ex.client_ip, route.id, ex.request_id,
            None, None, len(chain.steps), request, chain,
        )  # fmt: skip
    return route, found.params


def identify(
    route: Route, headers: Mapping[str, str], memo: TokenMemo | None, ex: RequestInfo
) -> Identity | None:
    """The route's auth check (raises its 401/403, or UnknownKey); notes the consumer."""
    if route.auth is None:
        return None
    identity = route.auth(headers, memo)
    if identity is not None and identity.consumer is not None:
        ex.consumer = identity.consumer.name
    return identity


def plan(
    request: Request,
    snap: Snapshot,
    ex: RequestInfo,
    route: Route,
    params: dict[str, str],
    identity: Identity | None,
) -> Plan | Reply | Pending:
    """The upstream and the request head for it, past the route's
    middlewares; for a WebSocket, the coroutine that proxies it."""
    upstream = None
    if route.upstream is not None or route.split is not None:
        upstream = route.pick_upstream(request, identity, ex.client_ip)  # sticky: by its key
        ex.upstream = upstream.name
        if ex.grpc and not upstream.http2:
            raise errors.GrpcOverHttp1()
        if upstream.key is not None:
            ex.target_key = upstream.target_key(request, identity, ex.client_ip)

    length = request.content_length
    if length is not None and length > snap.server.client_max_body_size:
        raise errors.PayloadTooLarge(
            f"request body of {length} bytes is over {snap.server.client_max_body_size}"
        )

    kept, seen = filter_request_headers(request.raw_headers, snap.drop_request_headers)
    target_path = route.path_fn(ex.path, params)
    chain = route.chain
    if chain is None:
        assert upstream is not None
        return head(request, snap, ex, route, upstream, kept, seen, target_path, identity)
    view = ex.call
    assert view is not None
    view.bind(kept, target_path, ex.upstream or None)
    if identity is not None:
        view.claims = identity.claims
        view.consumer = ex.consumer or None
    outcome = chain.enter(view)
    if outcome is not None:
        if isinstance(outcome, Reply):
            return outcome
        return _entered_later(
            outcome, request, snap, ex, route, upstream, kept, seen, target_path, identity
        )
    # _entered(), written out: a function less on the way of every request.
    if upstream is None:
        raise errors.GatewayError(f"route {route.id!r} has no upstream and nothing answered")
    headers, extra = view.upstream_fields(chain.drop, request.content_length)
    return head(request, snap, ex, route, upstream, headers, seen, target_path, identity, extra)


async def _entered_later(
    outcome: Awaitable[Reply | None],
    request: Request,
    snap: Snapshot,
    ex: RequestInfo,
    route: Route,
    upstream: Upstream | None,
    kept: list[tuple[bytes, bytes]],
    seen: dict[bytes, list[bytes]],
    target_path: str,
    identity: Identity | None,
) -> Plan | Reply | None:
    reply = await outcome
    if reply is not None:
        return reply
    if upstream is None:
        raise errors.GatewayError(f"route {route.id!r} has no upstream and nothing answered")
    view = ex.call
    assert view is not None and route.chain is not None
    headers, extra = view.upstream_fields(route.chain.drop, request.content_length)
    step = head(request, snap, ex, route, upstream, headers, seen, target_path, identity, extra)
    return await step if isawaitable(step) else step


def head(
    request: Request,
    snap: Snapshot,
    ex: RequestInfo,
    route: Route,
    upstream: Upstream,
    kept: list[tuple[bytes, bytes]],
    seen: dict[bytes, list[bytes]],
    target_path: str,
    identity: Identity | None,
    extra: bytes = b"",
) -> Plan | Pending:
    """The request head for the upstream; `extra`: header lines, rendered,
    that follow `kept`."""
    if ex.query is not None:
        target_path = f"{target_path}?{ex.query}"

    host = request.host
    lines = [f"{request.method} {target_path} HTTP/1.1\r\n".encode()]
    for name, value in kept:  # joined below: no formatting nor bytes object a header
        lines.append(name)
        lines.append(b": ")
        lines.append(value)
        lines.append(b"\r\n")
    if len(extra):
        lines.append(extra)
    if identity is not None and identity.forward:
        lines.append(identity.forward)  # forward_claims, prebuilt per verified token
    proto = b"https" if request.secure else b"http"
    peer = ex.peer
    if peer in snap.server.trusted:
        proto = seen.get(b"x-forwarded-proto", (proto,))[0]
        host = seen.get(b"x-forwarded-host", (host.encode(),))[0].decode("latin-1")
    lines.append(
        b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\n"
        b"X-Request-ID: %s\r\ntraceparent: %s\r\n"
        % (
            forwarded_for(peer, ex.xff, snap.server.trusted).encode(),
            proto,
            host.encode("latin-1", "replace"),
            ex.request_id.encode(),
            ex.parent.encode(),
        )
    )
    body: AsyncIterator[bytes] | None = None
    whole: bytes | None = None
    length = request.content_length
    if request.body is not None:
        limit = snap.server.client_max_body_size
        if upstream.http2:
            whole = request.body.whole()
            if whole is not None and len(whole) > limit:
                raise errors.PayloadTooLarge(f"request body is over {limit} bytes")
        if whole is None:
            body = limited(request, limit)
            if length is None:
                lines.append(b"Transfer-Encoding: chunked\r\n")
                body = chunked(body)
    text = b"".join(lines)
    host_line = (
        b"Host: %s\r\n" % request.host.encode("latin-1", "replace") if route.preserve_host else None
    )
    if request.upgrade and _is_websocket(seen):
        return proxy_websocket(request, upstream, text, host_line, ex)
    chain = route.chain
    return Plan(upstream, text, host_line, body, route.timeout,
                chain is None or not chain.async_response, whole)  # fmt: skip


def _is_websocket(seen: dict[bytes, list[bytes]]) -> bool:
    upgrade = seen.get(b"upgrade")
    return bool(upgrade) and upgrade[0].strip().lower() == b"websocket"  # type: ignore[index]

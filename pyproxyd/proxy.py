"""Forward one request: route it, stream it upstream, stream the answer back.

The one handler of the client listeners (frontend/). It reads the snapshot
once, so a request sees one config from start to end even when a reload swaps
it meanwhile.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterable, Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any, NoReturn

from . import errors
from .auth.identity import Identity
from .bodies import chunked, limited
from .errors import ClientGone, GatewayError, UnknownKey
from .forwarding import (
    HOP_BY_HOP_B,
    client_address,
    filter_request_headers,
    filter_response_headers,
    forwarded_for,
)
from .frontend.request import ClientRequest
from .observe.logging import get_logger
from .observe.metrics import RequestMetrics
from .resilience.breaker import STATE_NAMES, Ticket
from .routing import normalise_path
from .snapshot import Route, Snapshot, SnapshotHolder, Upstream
from .tracing import request_id, traceparent
from .upstream.connection import UpstreamConnection
from .upstream.http1 import UpstreamResponse, exchange, resume, start
from .websocket import proxy_websocket

if TYPE_CHECKING:
    from .auth.route import TokenMemo
    from .observe.logging import AccessLog

log = get_logger("pyproxyd.proxy")

# The upstream's X-Request-ID is replaced by the request's own.
_RESPONSE_DROP = HOP_BY_HOP_B | {b"x-request-id"}
# What _prepare hands to _forward: upstream, request head, Host line, body, route timeout.
_Plan = tuple["Upstream", bytes, bytes | None, AsyncIterator[bytes] | None, float | None]
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class LazyQuery:
    """Parses the query string only when a route has a query predicate."""

    __slots__ = ("_request",)

    def __init__(self, request: ClientRequest):
        self._request = request

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._request.query.get(name, default)


class RequestInfo:
    """Per-request facts the log line and the forwarder share."""

    __slots__ = (
        "client_ip",
        "consumer",
        "limits",
        "parent",
        "path",
        "peer",
        "query",
        "request_id",
        "route",
        "started",
        "status",
        "target_key",
        "trace_id",
        "upstream",
        "xff",
    )

    def __init__(self, started: float = 0.0) -> None:
        self.started = started  # loop time at arrival: the request's one clock read
        self.request_id = ""
        self.trace_id = ""
        self.route = ""
        self.upstream = ""
        self.path = ""
        self.client_ip = ""
        self.consumer = ""  # the consumer the request's credential or X-Client-ID named
        self.limits = b""  # rate-limit response header lines, rendered
        self.status = 0
        self.target_key: int | None = None  # hashed client key, for ip_hash / hash:<key>
        # What the upstream request head is built from:
        self.peer = ""  # the client's socket address
        self.xff: tuple[str, ...] = ()  # its X-Forwarded-For, when it sent one
        self.parent = ""  # the traceparent sent upstream
        self.query: str | None = None  # the query string, when the target had a "?"


class Proxy:
    """The handler of the client listeners (frontend.connection.Handler).

    The common request (no body, nothing to await while deciding, an idle
    upstream connection, an answer that arrives whole) never becomes a task:
    `__call__` writes it upstream and `_InFlight` relays the answer from the
    upstream connection's callback. Wherever a request leaves that path, a
    task (`_run`) takes it on from that very step through the ordinary awaits,
    so each decision (rate limit, target, breaker ticket) is still made once.
    (Measured: wrk's req/s did not move, as uvloop spreads task wake-ups over a
    batch of events; what it bought is no parked task per idle client
    connection, 5.5 -> 4.1 KiB each.)
    """

    __slots__ = ("access_log", "holder", "loop", "metrics")

    def __init__(self, holder: SnapshotHolder, access_log: AccessLog):
        self.holder = holder
        self.access_log = access_log
        self.metrics = RequestMetrics()
        self.loop = asyncio.get_event_loop()

    def __call__(self, request: ClientRequest) -> None:
        started = self.loop.time()
        # uvloop's loop.time() ticks in whole milliseconds: durations need a finer clock.
        clock = perf_counter()
        snap = self.holder.current
        ex = RequestInfo(started)
        self.metrics.in_flight += 1
        ex.request_id = request_id(request.pick(b"x-request-id"))
        ex.trace_id, ex.parent = traceparent(request.pick(b"traceparent"))
        ex.peer = peer = request.remote or ""
        xff_value = request.pick(b"x-forwarded-for")
        if xff_value is not None:
            ex.xff = (xff_value,)
        ex.client_ip = client_address(peer, ex.xff, snap.server.trusted)
        try:
            try:
                stage = self._prepare_now(request, snap, ex)
                if stage is None:  # an await comes before any decision: all of it in a task
                    stage = self._prepare(request, snap, ex)
                elif type(stage) is tuple and stage[3] is None and stage[4] is None:
                    self._start(request, stage, ex, snap, clock)
                    return
            except (GatewayError, ClientGone):
                raise
            except Exception as exc:  # a bug: a 500 JSON, logged, and the request still counted
                log.error("internal_error", error=repr(exc), request_id=ex.request_id)
                raise GatewayError() from exc
        except GatewayError as err:
            self._failed(request, ex, err)
            self._finish(request, ex, clock, snap)
            return
        except ClientGone:
            ex.status = 499
            self._finish(request, ex, clock, snap)
            return
        self._spawn(request, ex, snap, clock, stage, None)

    def refused(self, method: str, target: str, peer: str, err: GatewayError, rid: str) -> None:
        """A request the frontend answered itself (frontend.connection.Refused):
        logged and counted like any other, under route "(none)"."""
        ex = RequestInfo(self.loop.time())
        ex.request_id = rid
        ex.status = err.status
        ex.peer = ex.client_ip = peer
        ex.path = target.partition("?")[0][:1024]
        self.metrics.observe("(none)", "(none)", err.status, 0.0)
        if self.holder.current.logging.access_log:
            try:
                self.access_log.request(method, ex, 0.0)
            except Exception as e:  # a logging fault must never fail the request
                _log_fault(e)

    def _spawn(
        self,
        request: ClientRequest,
        ex: RequestInfo,
        snap: Snapshot,
        clock: float,
        stage: _Plan | Awaitable[_Plan | None],
        first: _First | None,
    ) -> None:
        task = self.loop.create_task(self._run(request, ex, snap, clock, stage, first))
        request.cancel = task.cancel  # (and the reference that keeps the task alive)

    async def _run(
        self,
        request: ClientRequest,
        ex: RequestInfo,
        snap: Snapshot,
        clock: float,
        stage: _Plan | Awaitable[_Plan | None],
        first: _First | None,
    ) -> None:
        try:
            try:
                plan = stage if type(stage) is tuple else await stage  # type: ignore[misc]
                if plan is not None:
                    upstream, head_common, host_line, body, timeout = plan
                    await self._forward(
                        request, upstream, head_common, host_line, body, timeout, ex, first
                    )
            except (GatewayError, ClientGone, asyncio.CancelledError):
                raise
            except Exception as exc:
                log.error("internal_error", error=repr(exc), request_id=ex.request_id)
                raise GatewayError() from exc
        except GatewayError as err:
            self._failed(request, ex, err)
        except ClientGone:
            ex.status = 499  # the client went away (nginx's convention)
        except asyncio.CancelledError:
            ex.status = 499
            self._finish(request, ex, clock, snap, counted=False)
            raise
        self._finish(request, ex, clock, snap)

    def _failed(self, request: ClientRequest, ex: RequestInfo, err: GatewayError) -> None:
        if err.internal:
            # What the client is not told (addresses, errnos) is for the operator.
            log.warning(
                "upstream_error",
                request_id=ex.request_id,
                route=ex.route or None,
                upstream=ex.upstream or None,
                status=err.status,
                error=err.detail,
            )
        if request.started:
            request.abort()  # too late for an error response: cut the connection
            return
        ex.status = err.status
        try:
            send_error(request, err, ex.request_id, ex.limits)
        except ClientGone:
            ex.status = 499

    def _finish(
        self,
        request: ClientRequest,
        ex: RequestInfo,
        clock: float,
        snap: Snapshot,
        counted: bool = True,
    ) -> None:
        elapsed = perf_counter() - clock
        metrics = self.metrics
        metrics.in_flight -= 1
        route = ex.route or "(none)"
        metrics.observe(route, ex.upstream or "(none)", ex.status, elapsed)
        if counted:
            metrics.bytes(route, request.received, request.sent)
        if snap.logging.access_log:  # read per request: a reload may switch it
            try:
                self.access_log.request(request.method, ex, elapsed * 1000.0)
            except Exception as e:  # a logging fault must never fail the request
                _log_fault(e)
        request.conn.done(request)

    # -- deciding: route, identity, limits, the upstream request head ---------------

    def _prepare_now(
        self,
        request: ClientRequest,
        snap: Snapshot,
        ex: RequestInfo,
    ) -> _Plan | Awaitable[_Plan | None] | None:
        """_prepare() when nothing needs awaiting: the plan. None when something
        would have to be awaited before any decision is taken (then _prepare()
        does it all); an awaitable for the rest when the wait comes after one
        (a rate limit's delay) or the request becomes a WebSocket."""
        if snap.auth.claim_routes:
            return None  # (the claims predicate may need a JWKS refetch to match)
        headers = request.lazy_headers
        route, params = self._match(request, snap, ex, headers, None)
        try:
            identity = _identify(route, headers, None, ex)
        except UnknownKey as err:
            if err.refresh is None:
                raise
            return None  # a rotated key: _prepare() refetches the JWKS
        limits = route.limits
        if limits is not None:
            if not limits.instant:
                return None  # a shared store (Redis) is awaited
            admitted = limits.admit(request, identity, ex.client_ip, ex.path, ex.started)
            if not isinstance(admitted, bytes):
                return self._admitted(admitted, request, snap, ex, route, params, identity)
            ex.limits = admitted
        return self._plan(request, snap, ex, route, params, identity)

    def _match(
        self,
        request: ClientRequest,
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
        match = snap.router.match(request.method, path, headers, query_view, memo)
        if match is None:
            raise errors.NoRoute(f"no route for {request.method} {path}")
        route: Route = match.rule.target
        ex.route = route.id
        return route, match.params

    async def _prepare(
        self,
        request: ClientRequest,
        snap: Snapshot,
        ex: RequestInfo,
    ) -> _Plan | None:
        """Route, authenticate, rate-limit and build the upstream request head,
        awaiting whatever it takes; None when it is answered already (a WebSocket)."""
        headers = request.lazy_headers
        # The claims predicate needs the verified token while matching; the memo
        # verifies it at most once for matching and the route's own check.
        memo = snap.auth.memo(headers) if snap.auth.claim_routes else None
        if memo is not None and memo.refresh is not None:
            await memo.refresh()  # a kid we do not know yet: refetch the JWKS first
        route, params = self._match(request, snap, ex, headers, memo)
        try:
            identity = _identify(route, headers, memo, ex)
        except UnknownKey as err:
            if err.refresh is None:
                raise
            await err.refresh()  # a rotated key: refetch the JWKS once, then retry
            identity = _identify(route, headers, None, ex)
        if route.limits is not None:  # 429/503 raise; delay mode waits its turn here
            limits = route.limits.admit(request, identity, ex.client_ip, ex.path, ex.started)
            ex.limits = limits if isinstance(limits, bytes) else await limits
        return await _proxied(self._plan(request, snap, ex, route, params, identity))

    async def _admitted(
        self,
        admitted: Awaitable[bytes],
        request: ClientRequest,
        snap: Snapshot,
        ex: RequestInfo,
        route: Route,
        params: dict[str, str],
        identity: Identity | None,
    ) -> _Plan | None:
        ex.limits = await admitted  # delay mode: this request's turn
        return await _proxied(self._plan(request, snap, ex, route, params, identity))

    def _plan(
        self,
        request: ClientRequest,
        snap: Snapshot,
        ex: RequestInfo,
        route: Route,
        params: dict[str, str],
        identity: Identity | None,
    ) -> _Plan | Coroutine[Any, Any, None]:
        """The upstream and the request head for it; for a WebSocket, the
        coroutine that proxies it."""
        upstream = route.pick_upstream(request, identity, ex.client_ip)  # sticky: by its key
        ex.upstream = upstream.name
        if upstream.key is not None:
            ex.target_key = upstream.target_key(request, identity, ex.client_ip)

        length = request.content_length
        if length is not None and length > snap.server.client_max_body_size:
            raise errors.PayloadTooLarge(
                f"request body of {length} bytes is over {snap.server.client_max_body_size}"
            )

        kept, seen = filter_request_headers(request.raw_headers, snap.drop_request_headers)
        target_path = route.path_fn(ex.path, params)
        if ex.query is not None:
            target_path = f"{target_path}?{ex.query}"

        host = request.host
        lines = [f"{request.method} {target_path} HTTP/1.1\r\n".encode()]
        lines.extend(b"%s: %s\r\n" % hv for hv in kept)
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
        if request.body is not None:
            body = limited(request, snap.server.client_max_body_size)
            if length is None:
                lines.append(b"Transfer-Encoding: chunked\r\n")
                body = chunked(body)
        head_common = b"".join(lines)
        host_line = (
            b"Host: %s\r\n" % request.host.encode("latin-1", "replace")
            if route.preserve_host
            else None
        )

        if request.upgrade and _is_websocket(seen):
            return proxy_websocket(request, upstream, head_common, host_line, ex)
        return upstream, head_common, host_line, body, route.timeout

    # -- the upstream exchange ------------------------------------------------------

    def _start(
        self, request: ClientRequest, plan: _Plan, ex: RequestInfo, snap: Snapshot, clock: float
    ) -> None:
        """The first try of a body-less request, without a task: on an idle
        connection the head goes upstream now and _InFlight waits for the answer."""
        upstream, head_common, host_line, _, _ = plan
        now = ex.started
        if upstream.budget is not None:
            upstream.budget.request(now)
        skip: set[int] = set()
        chosen = _choose(upstream, skip, now, 0, ex.target_key)
        if chosen is None:
            _no_target(upstream, now)
        index, ticket = chosen
        target = upstream.targets[index]
        pool = target.pool
        head = head_common + (host_line or target.host_header) + b"\r\n"
        begun = start(pool, head, request.method == "HEAD")
        if begun is None:  # no idle connection: connect (or wait for one) in a task
            self._spawn(request, ex, snap, clock, plan, _First(index, ticket, skip))
            return
        conn, reused = begun
        timeout = (
            pool.settings.read_timeout if upstream.read_timeout is None else upstream.read_timeout
        )
        _InFlight(self, request, ex, snap, clock, plan, index, ticket, skip, conn, reused, timeout)

    async def _forward(
        self,
        request: ClientRequest,
        upstream: Upstream,
        head_common: bytes,
        host_line: bytes | None,
        body: AsyncIterator[bytes] | None,
        timeout: float | None,
        ex: RequestInfo,
        first: _First | None,
    ) -> None:
        if timeout is not None:  # the route's timeout covers the whole exchange
            try:
                async with asyncio.timeout(timeout):
                    await self._forward(
                        request, upstream, head_common, host_line, body, None, ex, first
                    )
            except TimeoutError:
                if request.started:
                    request.abort()
                    return
                raise errors.UpstreamTimeout(f"route timeout of {timeout:g}s passed") from None
            return
        sent = perf_counter()
        up = await self._send(request, upstream, head_common, host_line, body, ex, first)
        self.metrics.upstream_answered(upstream.name, perf_counter() - sent)
        try:
            if not _relay_now(request, up, ex):
                await _relay(request, up, ex)
        except BaseException:
            up.abort()
            raise

    async def _send(
        self,
        request: ClientRequest,
        upstream: Upstream,
        head_common: bytes,
        host_line: bytes | None,
        body: AsyncIterator[bytes] | None,
        ex: RequestInfo,
        first: _First | None,
    ) -> UpstreamResponse:
        """Try targets until one answers, within what is safe to repeat.

        Targets out of rotation (ejected, failing their checks) are skipped, each
        retry goes to a target not tried yet and needs the upstream's retry
        budget, and every try needs a ticket from the circuit breaker, whose
        outcome is known when the response head arrives. All of them use the
        time the request arrived (its one clock read); only the failure paths,
        off the fast path, read the clock again. `first` is a try _start()
        began already.
        """
        now = ex.started or self.loop.time()
        if first is None:
            if upstream.budget is not None:
                upstream.budget.request(now)
            skip: set[int] = set()
        else:
            skip = first.skip
        is_head = request.method == "HEAD"
        idempotent = request.method in IDEMPOTENT and body is None
        last: GatewayError | None = None
        for attempt in range(upstream.retries + 1):
            began = first
            first = None
            if began is not None:
                index, ticket = began.index, began.ticket
            else:
                chosen = _choose(upstream, skip, now, attempt, ex.target_key)
                if chosen is None:
                    break
                index, ticket = chosen
            target = upstream.targets[index]
            health = target.health
            head = head_common + (host_line or target.host_header) + b"\r\n"
            try:
                if began is not None and began.conn is not None:
                    up = await resume(target.pool, began.conn, head, is_head, began.timeout,
                                      began.reused, began.deadline)  # fmt: skip
                else:
                    up = await exchange(
                        target.pool, head, body, is_head=is_head, read_timeout=upstream.read_timeout
                    )
            except errors.UpstreamConnectError as err:
                last, retry, passive = err, True, True  # never sent: always safe elsewhere
            except errors.BadGateway as err:
                last, retry, passive = err, idempotent and not err.response_started, False
            except errors.UpstreamTimeout as err:
                last, retry, passive = err, idempotent and not err.response_started, True
            except asyncio.CancelledError:
                if ticket is not None:
                    # The route's timeout (the client is still there) is the upstream's
                    # failure; a client that left says nothing about the upstream.
                    transport = request.transport
                    if transport is not None and not transport.is_closing():
                        ticket.done(False, self.loop.time())
                    else:
                        ticket.abandon()
                raise
            except BaseException:
                if ticket is not None:
                    ticket.abandon()  # the client's side failed (its body), not the upstream
                raise
            else:
                _answered(ticket, health, up.status, now)
                return up
            failed_at = self.loop.time()
            if ticket is not None:
                ticket.done(False, failed_at)
            if passive and health is not None:
                health.failed(failed_at, last.message)
            if not retry:
                raise last
        if last is None:
            _no_target(upstream, now)
        raise last


class _First:
    """A first try _start() began: its target and ticket, and the connection
    with the head written (None when it found no idle one)."""

    __slots__ = ("conn", "deadline", "index", "reused", "skip", "ticket", "timeout")

    def __init__(self, index: int, ticket: Ticket | None, skip: set[int]) -> None:
        self.index = index
        self.ticket = ticket
        self.skip = skip
        self.conn: UpstreamConnection | None = None
        self.reused = False
        self.timeout = 0.0
        self.deadline = 0.0


class _InFlight(_First):
    """A request whose head is upstream, waiting for the answer in callbacks.

    It stands in for the future UpstreamConnection wakes (done, set_result,
    set_exception: the connection wakes it after parsing a read, the pool's
    Deadlines on a read timeout). A whole small answer is relayed right there;
    anything else (a partial or large body, an error, a timeout) goes on in a
    task from this very try, which it hands over as the `first` try.
    """

    __slots__ = ("clock", "ex", "fired", "plan", "proxy", "request", "sent", "snap")

    def __init__(
        self,
        proxy: Proxy,
        request: ClientRequest,
        ex: RequestInfo,
        snap: Snapshot,
        clock: float,
        plan: _Plan,
        index: int,
        ticket: Ticket | None,
        skip: set[int],
        conn: UpstreamConnection,
        reused: bool,
        timeout: float,
    ) -> None:
        self.index = index
        self.ticket = ticket
        self.skip = skip
        self.conn = conn
        self.reused = reused
        self.timeout = timeout
        self.deadline = deadline = conn._loop.time() + timeout
        self.proxy = proxy
        self.request = request
        self.ex = ex
        self.snap = snap
        self.clock = clock
        self.plan = plan
        self.fired = False
        self.sent = perf_counter()
        request.cancel = self.cancel
        if conn._error is not None:
            # The head could not be written (a keep-alive connection already
            # closing): no read will ever wake this, so the task (and its
            # replay on a fresh connection) takes over now.
            self.set_result(None)
            return
        conn._waiter = self  # type: ignore[assignment]
        conn.deadline = deadline
        conn._pool.deadlines.watch(conn)

    def done(self) -> bool:
        return self.fired

    def set_exception(self, exc: BaseException) -> None:
        self.set_result(None)  # a read timeout: resume() raises it at once

    def set_result(self, _: object) -> None:
        self.fired = True
        conn = self.conn
        assert conn is not None
        request = self.request
        if conn._head_done and conn._body_done and conn._error is None:
            up = UpstreamResponse(conn._pool, conn, self.timeout)
            if _small(request, up):
                try:
                    self._relay(up)
                except Exception as exc:  # a bug: never out into the connection's callback
                    log.error("internal_error", error=repr(exc), request_id=self.ex.request_id)
                    up.abort()
                    request.abort()
                    self.ex.status = 500
                    self.proxy._finish(request, self.ex, self.clock, self.snap)
                return
        self.proxy._spawn(request, self.ex, self.snap, self.clock, self.plan, self)

    def _relay(self, up: UpstreamResponse) -> None:
        proxy, ex = self.proxy, self.ex
        upstream = self.plan[0]
        _answered(self.ticket, upstream.targets[self.index].health, up.status, ex.started)
        proxy.metrics.upstream_answered(upstream.name, perf_counter() - self.sent)
        try:
            _relay_now(self.request, up, ex)
        except ClientGone:
            ex.status = 499
        proxy._finish(self.request, ex, self.clock, self.snap)

    def cancel(self) -> None:
        """The client left while the upstream works on its request."""
        if self.fired:
            return
        self.fired = True
        conn = self.conn
        assert conn is not None
        if conn._waiter is self:
            conn._waiter = None
        conn.abort()
        conn._pool.release(conn, reusable=False)
        if self.ticket is not None:
            self.ticket.abandon()  # a client that left says nothing about the upstream
        self.ex.status = 499
        self.proxy._finish(self.request, self.ex, self.clock, self.snap, counted=False)


def _identify(
    route: Route, headers: Mapping[str, str], memo: TokenMemo | None, ex: RequestInfo
) -> Identity | None:
    """The route's auth check (raises its 401/403, or UnknownKey); notes the consumer."""
    if route.auth is None:
        return None
    identity = route.auth(headers, memo)
    if identity is not None and identity.consumer is not None:
        ex.consumer = identity.consumer.name
    return identity


async def _proxied(plan: _Plan | Coroutine[Any, Any, None]) -> _Plan | None:
    """_plan()'s answer awaited: the plan, or None once a WebSocket was proxied."""
    if isinstance(plan, tuple):
        return plan
    await plan
    return None


def _choose(
    upstream: Upstream, skip: set[int], now: float, attempt: int, key: int | None
) -> tuple[int, Ticket | None] | None:
    """The target of a try and its breaker ticket; None when no try is left
    (raises CircuitOpen when the first one finds the breaker open)."""
    index = upstream.pick(skip, now, key)
    if index is None:
        return None
    budget = upstream.budget
    if attempt and budget is not None and not budget.retry(now):
        return None  # retries would multiply the outage: answer with the last failure
    breaker = upstream.breaker
    ticket = None
    if breaker is not None:
        ticket = breaker.allow(now)
        if ticket is None:
            if attempt:
                return None
            raise errors.CircuitOpen(
                f"the circuit breaker of upstream {upstream.name!r} is "
                f"{STATE_NAMES[breaker.state]}",
                headers={"Retry-After": str(breaker.retry_after(now))},
            )
    return index, ticket


def _answered(ticket: Ticket | None, health: Any, status: int, now: float) -> None:
    if ticket is not None:
        ticket.answered(status, now)
    if health is not None and health.fails:
        health.succeeded()


def _no_target(upstream: Upstream, now: float) -> NoReturn:
    if upstream.health is not None:
        upstream.health.no_healthy(now)
    raise errors.NoHealthyTarget(f"upstream {upstream.name!r} has no target in rotation")


def _response_headers(
    up: UpstreamResponse, ex: RequestInfo
) -> tuple[list[tuple[bytes, bytes]], frozenset[bytes] | None, bytes]:
    """(headers, drop, raw) for ClientRequest.respond/start: the upstream's
    headers are filtered as the head is written, in one pass; ours follow."""
    raw = b"X-Request-ID: %s\r\n%s" % (ex.request_id.encode(), ex.limits)
    if up.lists_headers:  # Connection names more headers to drop: the full filter first
        return filter_response_headers(up.headers, _RESPONSE_DROP), None, raw
    return up.headers, _RESPONSE_DROP, raw


def _small(request: ClientRequest, up: UpstreamResponse) -> bool:
    length = up.content_length
    return (
        length is not None
        and length <= 65536
        and request.method != "HEAD"
        and up.status not in (204, 304)
    )


def _relay_now(request: ClientRequest, up: UpstreamResponse, ex: RequestInfo) -> bool:
    """The common case without a coroutine: a small body that is already in."""
    if not _small(request, up):
        return False
    body = up.whole_body()
    if body is None:
        return False
    up.release()
    ex.status = up.status
    headers, drop, raw = _response_headers(up, ex)
    request.respond(up.status, headers, body, up.reason, drop, raw)
    return True


async def _relay(request: ClientRequest, up: UpstreamResponse, ex: RequestInfo) -> None:
    headers, drop, raw = _response_headers(up, ex)
    ex.status = up.status
    length = up.content_length
    if _small(request, up):
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


def _is_websocket(seen: dict[bytes, list[bytes]]) -> bool:
    upgrade = seen.get(b"upgrade")
    return bool(upgrade) and upgrade[0].strip().lower() == b"websocket"  # type: ignore[index]


def send_error(
    request: ClientRequest,
    err: GatewayError,
    rid: str,
    raw: bytes = b"",
) -> None:
    """`raw`: header lines already rendered (the rate-limit ones of an admitted request)."""
    headers = [(b"Content-Type", b"application/json"), (b"X-Request-ID", rid.encode())]
    headers.extend(_encoded(err.headers.items()))
    request.respond(err.status, headers, errors.render(err, rid), raw=raw)


def _encoded(pairs: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1", "replace")) for n, v in pairs]


_faults: dict[str, int] = {}


def _log_fault(err: Exception) -> None:
    """Report a failing access log once per kind of error, not once per request."""
    kind = type(err).__name__
    _faults[kind] = _faults.get(kind, 0) + 1
    if _faults[kind] == 1:
        print(f"pyproxyd: access log failed: {err!r}", file=sys.stderr)

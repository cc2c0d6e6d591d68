"""Compiled by mypyc (pyproxyd/compiled.py). The entry point of the pipeline:
the one handler of every frontend.

It reads the snapshot once, so a request sees one config from start to end
even when a reload swaps it meanwhile; then prepare -> forward -> relay,
and the access log and metrics at the end.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from time import perf_counter
from typing import TYPE_CHECKING

from ..errors import ClientGone, GatewayError
from ..forwarding import client_address, is_grpc
from ..middleware.views import Reply
from ..observe.logging import get_logger
from ..observe.metrics import RequestMetrics
from ..resilience.breaker import Ticket
from ..tracing import request_id, traceparent
from ..upstream.http1 import InFlight, UpstreamResponse
from .forward import First, answered, choose, forward, no_target
from .interface import Request
from .prepare import Pending, Plan, prepare, settle
from .record import RequestInfo
from .relay import cut, relay_now, send_error, send_error_async, send_reply, send_reply_async, small

if TYPE_CHECKING:
    from ..middleware.chain import Chain
    from ..observe.logging import AccessLog
    from ..snapshot import Snapshot, SnapshotHolder, Target

log = get_logger("pyproxyd.proxy")


class Proxy:
    """The handler of the frontends (frontend.connection.Handler).

    The common request (no body, nothing to await while deciding, an idle
    upstream connection, an answer that arrives whole) never becomes a task:
    `__call__` writes it upstream and `_Awaiting` relays the answer from the
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

    def __call__(self, request: Request) -> None:
        started = self.loop.time()
        # uvloop's loop.time() ticks in whole milliseconds: durations need a finer clock.
        clock = perf_counter()
        snap = self.holder.current
        ex = RequestInfo(started)
        self.metrics.in_flight += 1
        ex.request_id = request_id(request.pick(b"x-request-id"))
        ex.trace_id, ex.parent = traceparent(request.pick(b"traceparent"))
        ex.peer = peer = request.peer
        xff_value = request.pick(b"x-forwarded-for")
        if xff_value is not None:
            ex.xff = (xff_value,)
        ex.client_ip = client_address(peer, ex.xff, snap.server.trusted)
        ex.version = request.version
        ex.grpc = is_grpc(request.picked.get(b"content-type"))
        try:
            try:
                step = prepare(request, snap, ex)
                if isinstance(step, Plan):
                    if step.immediate:
                        self._start(request, step, ex, snap, clock)
                        return
                elif isinstance(step, Reply) and not _awaits(ex):
                    send_reply(request, step, ex)  # a middleware answered
                    self._finish(request, ex, clock, snap)
                    return
            except (GatewayError, ClientGone):
                raise
            except Exception as exc:  # a bug: a 500 JSON, logged, and the request still counted
                log.error("internal_error", error=repr(exc), request_id=ex.request_id)
                raise GatewayError() from exc
        except GatewayError as err:
            if _awaits(ex):  # the error goes back through awaited on_response hooks
                self._spawn(request, ex, snap, clock, _raise(err), None)
                return
            self._failed(request, ex, err)
            self._finish(request, ex, clock, snap)
            return
        except ClientGone:
            ex.status = 499
            self._finish(request, ex, clock, snap)
            return
        self._spawn(request, ex, snap, clock, step, None)

    def refused(
        self, method: str, target: str, peer: str, err: GatewayError, rid: str, version: str = "1.1"
    ) -> None:
        """A request a frontend answered itself (frontend.connection.Refused):
        logged and counted like any other, under route "(none)"."""
        ex = RequestInfo(self.loop.time())
        ex.request_id = rid
        ex.status = err.status
        ex.peer = ex.client_ip = peer
        ex.path = target.partition("?")[0][:1024]
        ex.version = version
        self.metrics.observe("(none)", "(none)", err.status, 0.0)
        if self.holder.current.logging.access_log:
            try:
                self.access_log.request(method, ex, 0.0)
            except Exception as e:  # a logging fault must never fail the request
                _log_fault(e)

    # -- the first try without a task ------------------------------------------------

    def _start(
        self, request: Request, plan: Plan, ex: RequestInfo, snap: Snapshot, clock: float
    ) -> None:
        """The first try of a body-less request, without a task: on an idle
        connection the head goes upstream now and _Awaiting waits for the answer."""
        upstream = plan.upstream
        now = ex.started
        if upstream.budget is not None:
            upstream.budget.request(now)
        skip: set[int] = set()
        chosen = choose(upstream, skip, now, 0, ex.target_key)
        if chosen is None:
            no_target(upstream, now)
        index, ticket = chosen
        target = upstream.targets[index]
        pool = target.pool
        timeout = (
            pool.settings.read_timeout if upstream.read_timeout is None else upstream.read_timeout
        )
        flight = _Awaiting(
            self, request, ex, snap, clock, plan, target, ticket, skip,
            plan.head_for(target.host_header), timeout,
        )  # fmt: skip
        if not flight.begin():  # no idle connection: connect (or wait for one) in a task
            self._spawn(request, ex, snap, clock, plan, First(target, ticket, skip))
            return
        request.cancel = flight.cancel_request
        flight.arm()

    # -- the task, wherever the request left the callbacks ------------------------------

    def _spawn(
        self,
        request: Request,
        ex: RequestInfo,
        snap: Snapshot,
        clock: float,
        step: Plan | Reply | Pending,
        first: First | None,
    ) -> None:
        task = self.loop.create_task(self._run(request, ex, snap, clock, step, first))
        request.cancel = task.cancel  # (and the reference that keeps the task alive)

    async def _run(
        self,
        request: Request,
        ex: RequestInfo,
        snap: Snapshot,
        clock: float,
        step: Plan | Reply | Awaitable[Plan | Reply | None],
        first: First | None,
    ) -> None:
        try:
            try:
                plan = await settle(step)
                if isinstance(plan, Plan):
                    await forward(request, plan, ex, first, self.metrics)
                elif isinstance(plan, Reply):
                    await send_reply_async(request, plan, ex)
            except (GatewayError, ClientGone, asyncio.CancelledError):
                raise
            except Exception as exc:
                log.error("internal_error", error=repr(exc), request_id=ex.request_id)
                raise GatewayError() from exc
        except GatewayError as err:
            if _awaits(ex) and not request.started:
                try:
                    await send_error_async(request, err, ex)
                except ClientGone:
                    ex.status = 499
            else:
                self._failed(request, ex, err)
        except ClientGone:
            ex.status = 499  # the client went away (nginx's convention)
        except asyncio.CancelledError:
            ex.status = 499
            self._finish(request, ex, clock, snap, counted=False)
            raise
        self._finish(request, ex, clock, snap)

    # -- the end of every request ------------------------------------------------------

    def _failed(self, request: Request, ex: RequestInfo, err: GatewayError) -> None:
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
            cut(request, ex, err)  # too late for an error response
            return
        try:
            send_error(request, err, ex)
        except ClientGone:
            ex.status = 499

    def _finish(
        self,
        request: Request,
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
        call = ex.call
        if call is not None:
            chain: Chain = call.chain
            chain.spent += call.spent
            if call.failed is not None:
                metrics.middleware_failed(route, call.failed)
        if snap.logging.access_log:  # read per request: a reload may switch it
            try:
                self.access_log.request(request.method, ex, elapsed * 1000.0)
            except Exception as e:  # a logging fault must never fail the request
                _log_fault(e)
        request.handled()


class _Awaiting(InFlight):
    """A request whose head is upstream, waiting for the answer in callbacks.

    The exchange wakes it once (`woke`): a whole small answer is relayed
    right there; anything else (a partial or large body, an error, a
    timeout) goes on in a task from this very try, handed over as a First.
    """

    __slots__ = ("clock", "ex", "plan", "proxy", "request", "sent", "skip", "snap", "target",
                 "ticket")  # fmt: skip

    def __init__(
        self,
        proxy: Proxy,
        request: Request,
        ex: RequestInfo,
        snap: Snapshot,
        clock: float,
        plan: Plan,
        target: Target,
        ticket: Ticket | None,
        skip: set[int],
        head: bytes,
        timeout: float,
    ) -> None:
        super().__init__(target.pool, head, request.method == "HEAD",
                         timeout)  # fmt: skip
        self.proxy = proxy
        self.request = request
        self.ex = ex
        self.snap = snap
        self.clock = clock
        self.plan = plan
        self.target = target
        self.ticket = ticket
        self.skip = skip
        self.sent = perf_counter()

    def woke(self) -> None:
        request = self.request
        if self.complete:
            up = self.response()
            if small(request, up):
                try:
                    self._relay(up)
                except Exception as exc:  # a bug: never out into the connection's callback
                    log.error("internal_error", error=repr(exc), request_id=self.ex.request_id)
                    up.abort()
                    request.abort()
                    self.ex.status = 500
                    self.proxy._finish(request, self.ex, self.clock, self.snap)
                return
        first = First(self.target, self.ticket, self.skip)
        first.flight = self
        self.proxy._spawn(request, self.ex, self.snap, self.clock, self.plan, first)

    def _relay(self, up: UpstreamResponse) -> None:
        proxy, ex = self.proxy, self.ex
        upstream = self.plan.upstream
        answered(self.ticket, self.target.health, up.status, ex.started)
        proxy.metrics.upstream_answered(upstream.name, perf_counter() - self.sent)
        try:
            relay_now(self.request, up, ex)
        except ClientGone:
            ex.status = 499
        proxy._finish(self.request, ex, self.clock, self.snap)

    def cancel_request(self) -> None:
        """The client left while the upstream works on its request."""
        if not self.cancel():
            return
        if self.ticket is not None:
            self.ticket.abandon()  # a client that left says nothing about the upstream
        self.ex.status = 499
        self.proxy._finish(self.request, self.ex, self.clock, self.snap, counted=False)


def _awaits(ex: RequestInfo) -> bool:
    """Whether the request's answer must pass on_response hooks that are awaited."""
    call = ex.call
    if call is None:
        return False
    chain: Chain = call.chain
    return chain.async_response


async def _raise(err: GatewayError) -> Plan | None:
    raise err


_faults: dict[str, int] = {}


def _log_fault(err: Exception) -> None:
    """Report a failing access log once per kind of error, not once per request."""
    kind = type(err).__name__
    _faults[kind] = _faults.get(kind, 0) + 1
    if _faults[kind] == 1:
        print(f"pyproxyd: access log failed: {err!r}", file=sys.stderr)

"""Compiled by mypyc (pyproxyd/compiled.py). An upstream exchange for a
planned request: choose a target, ask its breaker, try, retry within the
budget, note health, then relay the answer.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import TYPE_CHECKING, Any, NoReturn

from .. import errors
from ..errors import GatewayError
from ..resilience.breaker import STATE_NAMES, Ticket
from ..upstream.h2exchange import parse_grpc_timeout
from ..upstream.h2exchange import send as h2_send
from ..upstream.http1 import InFlight, UpstreamResponse, exchange
from .interface import Request
from .prepare import Plan
from .record import RequestInfo
from .relay import cut, relay, relay_now, takes_trailers

if TYPE_CHECKING:
    from ..observe.metrics import RequestMetrics
    from ..snapshot import Target, Upstream

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class First:
    """A first try begun before any task: its target and breaker ticket, and
    the exchange under way on an idle connection (None when none was idle)."""

    __slots__ = ("flight", "skip", "target", "ticket")

    def __init__(self, target: Target, ticket: Ticket | None, skip: set[int]) -> None:
        self.target = target  # the Target itself: a discovered set may change meanwhile
        self.ticket = ticket
        self.skip = skip
        self.flight: InFlight | None = None


def choose(
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


def answered(ticket: Ticket | None, health: Any, status: int, now: float) -> None:
    if ticket is not None:
        ticket.answered(status, now)
    if health is not None and health.fails:
        health.succeeded()


def no_target(upstream: Upstream, now: float) -> NoReturn:
    if upstream.health is not None:
        upstream.health.no_healthy(now)
    raise errors.NoHealthyTarget(f"upstream {upstream.name!r} has no target in rotation")


async def forward(
    request: Request,
    plan: Plan,
    ex: RequestInfo,
    first: First | None,
    metrics: RequestMetrics,
) -> None:
    """The exchange and the relay of its answer, within the route's timeout
    (or a gRPC client's grpc-timeout, when it is shorter)."""
    timeout = plan.timeout
    call = grpc_call(request) if ex.grpc else None
    if call is not None and call.timeout is not None:
        timeout = call.timeout if timeout is None else min(timeout, call.timeout)
    if timeout is not None:  # the route's timeout covers the whole exchange
        if call is not None:
            call.deadline = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout(timeout):
                await _forward(request, plan, ex, first, metrics, call)
        except TimeoutError:
            err = errors.UpstreamTimeout(f"route timeout of {timeout:g}s passed")
            if request.started:
                cut(request, ex, err)
                return
            raise err from None
        return
    await _forward(request, plan, ex, first, metrics, call)


class GrpcCall:
    """A gRPC request's deadline: the client's grpc-timeout, capped by the
    route's timeout; an HTTP/2 upstream is told what is left of it."""

    __slots__ = ("deadline", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout  # the client's grpc-timeout, in seconds
        self.deadline: float | None = None  # loop time


def grpc_call(request: Request) -> GrpcCall:
    """A gRPC request's call, with the client's grpc-timeout if it sent one."""
    value = request.first_header("grpc-timeout")
    return GrpcCall(parse_grpc_timeout(value) if value is not None else None)


async def _forward(
    request: Request,
    plan: Plan,
    ex: RequestInfo,
    first: First | None,
    metrics: RequestMetrics,
    call: GrpcCall | None,
) -> None:
    sent = perf_counter()
    up = await send(request, plan, ex, first, call)
    metrics.upstream_answered(plan.upstream.name, perf_counter() - sent)
    try:
        if not relay_now(request, up, ex):
            await relay(request, up, ex)
    except BaseException:
        up.abort()
        raise


async def send(
    request: Request, plan: Plan, ex: RequestInfo, first: First | None, call: GrpcCall | None = None
) -> UpstreamResponse:
    """Try targets until one answers, within what is safe to repeat.

    Targets out of rotation (ejected, failing their checks) are skipped, each
    retry goes to a target not tried yet and needs the upstream's retry
    budget, and every try needs a ticket from the circuit breaker, whose
    outcome is known when the response head arrives. All of them use the
    time the request arrived (its one clock read); only the failure paths,
    off the fast path, read the clock again. `first` is a try begun already.
    """
    upstream = plan.upstream
    # (the loop is asked for on the failure paths only: get_running_loop()
    # makes a getpid() system call each time)
    now = ex.started or asyncio.get_running_loop().time()
    if first is None:
        if upstream.budget is not None:
            upstream.budget.request(now)
        skip: set[int] = set()
    else:
        skip = first.skip
    is_head = request.method == "HEAD"
    idempotent = request.method in IDEMPOTENT and plan.body is None
    last: GatewayError | None = None
    for attempt in range(upstream.retries + 1):
        began = first
        first = None
        if began is not None:
            target, ticket = began.target, began.ticket
        else:
            chosen = choose(upstream, skip, now, attempt, ex.target_key)
            if chosen is None:
                break
            index, ticket = chosen
            target = upstream.targets[index]
        health = target.health
        try:
            h2 = target.pool.h2
            up: UpstreamResponse
            if h2 is not None:
                up = await h2_send(
                    h2,
                    plan.head_for(target.host_header),
                    plan.body,
                    whole=plan.whole,
                    te_trailers=call is not None or takes_trailers(request),
                    grpc_deadline=call.deadline if call is not None else None,
                    read_timeout=upstream.read_timeout,
                )
            elif began is not None and began.flight is not None:
                up = await began.flight.resume()
            else:
                up = await exchange(
                    target.pool,
                    plan.head_for(target.host_header),
                    plan.body,
                    is_head=is_head,
                    read_timeout=upstream.read_timeout,
                )
        except errors.UpstreamConnectError as unsent:
            last, retry, passive = unsent, True, True  # never sent: always safe elsewhere
        except errors.BadGateway as broke:
            last, retry, passive = broke, idempotent and not broke.response_started, False
        except errors.UpstreamTimeout as late:
            last, retry, passive = late, idempotent and not late.response_started, True
        except asyncio.CancelledError:
            if ticket is not None:
                # The route's timeout (the client is still there) is the upstream's
                # failure; a client that left says nothing about the upstream.
                if request.client_connected:
                    ticket.done(False, asyncio.get_running_loop().time())
                else:
                    ticket.abandon()
            raise
        except BaseException:
            if ticket is not None:
                ticket.abandon()  # the client's side failed (its body), not the upstream
            raise
        else:
            answered(ticket, health, up.status, now)
            return up
        failed_at = asyncio.get_running_loop().time()
        if ticket is not None:
            ticket.done(False, failed_at)
        if passive and health is not None:
            health.failed(failed_at, last.detail)
        if not retry:
            raise last
    if last is None:
        no_target(upstream, now)
    raise last

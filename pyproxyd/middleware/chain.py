"""Compiled by mypyc (pyproxyd/compiled.py). A route's middlewares, compiled
into a plain tuple of steps, and the two walks through them: `enter` (each
on_request, outermost first) and `leave` (each on_response of the steps
entered, innermost first).

A hook is called the same way whether it is a plain function or a coroutine
function: a plain result continues the walk at once, an awaitable one
hands the rest of the walk to a coroutine (so a chain of plain hooks never
makes a task). Whatever a hook does wrong becomes a GatewayError here, in
one place: an exception or a result that is not a response is a 500, a hook
that has not returned within the chain's timeout is a 504.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable
from inspect import isawaitable
from time import monotonic
from time import perf_counter as _perf_counter
from types import MethodType
from typing import Any, Final

from .. import errors
from ..forwarding import RESPONSE_DROP_B
from ..observe.logging import get_logger
from .edit import HeaderEdit
from .views import Reply, RequestView, ResponseView, to_reply

log = get_logger("pyproxyd.middleware")

RequestHook = Callable[[RequestView], Any]
# One request in SAMPLE is timed for pyproxyd_middleware_seconds_total (Final:
# a constant in the compiled code, not a module lookup per request).
SAMPLE: Final = 8
# Final: a C static, where a plain import is a lookup in the module's dict a call.
perf_counter: Final = _perf_counter
ResponseHook = Callable[[RequestView, ResponseView], Any]


class Step:
    """One middleware of a chain: its name, its type and its two hooks."""

    __slots__ = (
        "adds", "edit_in", "edit_out", "kind", "name", "on_request", "on_response", "removes",
        "request_fn", "request_self", "response_async", "response_fn", "response_self",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        kind: str,
        on_request: RequestHook | None,
        on_response: ResponseHook | None,
        response_async: bool = False,
        removes: frozenset[bytes] = frozenset(),
        adds: frozenset[bytes] = frozenset(),
        edit_in: HeaderEdit | None = None,
        edit_out: HeaderEdit | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.on_request = on_request
        self.on_response = on_response
        self.response_async = response_async  # on_response is a coroutine function
        # A `headers` step's response names (lower case): those it removes
        # (and replaces), and those it adds, for the lazy response view.
        self.removes = removes
        self.adds = adds
        # A `headers` step's edits: the walks call them as native methods in
        # place of its hooks (which do the same through a Python-level call).
        self.edit_in = edit_in
        self.edit_out = edit_out
        # A hook that is a bound method (a python middleware's object) is
        # called as its function with the object: one layer less a call, as
        # method_vectorcall copies the arguments to prepend `self`.
        self.request_fn, self.request_self = _unbound(on_request)
        self.response_fn, self.response_self = _unbound(on_response)


def _unbound(hook: Any) -> tuple[Any, Any]:
    """(function, object) of a bound method; (hook, None) for anything else."""
    if isinstance(hook, MethodType):
        return hook.__func__, hook.__self__
    return hook, None


class Chain:
    """The steps of one route, outermost first."""

    __slots__ = (
        "async_response", "cors", "cors_at", "drop", "drops", "lazy", "names", "spent",
        "steps", "timeout", "untimed",
    )  # fmt: skip

    def __init__(
        self,
        steps: tuple[Step, ...],
        timeout: float,
        cors: Any = None,
        drop: frozenset[bytes] = frozenset(),
    ) -> None:
        self.steps = steps
        self.drop = drop  # names the gateway sets itself, dropped from what on_request left
        self.names = tuple(s.name for s in steps)
        self.timeout = timeout  # a hook that has not returned by then: 504
        self.async_response = any(s.response_async for s in steps)
        # The first cors step answers preflights, before auth and limits.
        self.cors = cors
        self.cors_at = next((i for i, s in enumerate(steps) if s.kind == "cors"), -1)
        self.drops = _drops(steps)
        self.lazy = _lazy(steps)
        # Seconds its requests spent in it, in all: the sampler turns the
        # growth into pyproxyd_middleware_seconds_total (no lookup per request).
        # One request in SAMPLE is timed and counts SAMPLE times (the first
        # one included): reading the clock four times a request was a fifth
        # of what a chain of two cheap middlewares costs.
        self.spent = 0.0
        self.untimed = 1  # requests until the next timed one (the first is)

    def response_drops(self, depth: int) -> tuple[frozenset[bytes], ...]:
        """For a response that passes the steps below `depth`: [i] is what
        steps i..depth-1 remove from the upstream's headers, hop-by-hop ones
        and its X-Request-ID included."""
        return self.drops[depth]

    # -- on the way in -------------------------------------------------------------

    def enter(self, view: RequestView) -> Reply | Awaitable[Reply | None] | None:
        """Run each on_request; a Reply when one answered (view.depth then
        counts the steps outside it), else None with every step entered.
        Kept small (the timed walk is another function): the request path
        runs with a cold instruction cache, so its code size is its cost."""
        left = self.untimed - 1
        if left:
            self.untimed = left
            view.weight = 0
            return self._walk(view, 0)
        self.untimed = SAMPLE
        view.weight = SAMPLE
        return self._timed(view, 0)

    def _timed(self, view: RequestView, start: int) -> Reply | Awaitable[Reply | None] | None:
        started = perf_counter()
        try:
            return self._walk(view, start)
        finally:
            view.spent += (perf_counter() - started) * view.weight

    async def _enter_async(
        self, view: RequestView, i: int, pending: Awaitable[Any]
    ) -> Reply | None:
        step = self.steps[i]
        started = perf_counter() if view.weight else 0.0
        try:
            result = await self._awaited(step, view, pending)
        finally:
            if view.weight:
                view.spent += (perf_counter() - started) * view.weight
        if result is not None:
            return _reply(step, view, result)
        outcome = self._timed(view, i + 1) if view.weight else self._walk(view, i + 1)
        return await outcome if isawaitable(outcome) else outcome

    def _walk(self, view: RequestView, start: int) -> Reply | Awaitable[Reply | None] | None:
        # view.depth is set to a step's index only where the walk stops there
        # (a fault, an answer, an await), and to len(steps) at the end: not a
        # store a step.
        steps = self.steps
        for i in range(start, len(steps)):
            step = steps[i]
            edit = step.edit_in
            if edit is not None:
                try:
                    edit.apply_request(view)
                except Exception as exc:
                    view.depth = i
                    raise failed(step, view, exc) from exc
                continue
            hook = step.on_request
            if hook is None:
                continue
            try:
                owner = step.request_self
                result = hook(view) if owner is None else step.request_fn(owner, view)
            except errors.GatewayError:
                view.depth = i
                raise
            except Exception as exc:
                view.depth = i
                raise failed(step, view, exc) from exc
            if result is None:
                continue
            view.depth = i
            if isawaitable(result):
                return self._enter_async(view, i, result)
            return _reply(step, view, result)
        view.depth = len(steps)
        return None

    async def _awaited(self, step: Step, view: RequestView, pending: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(pending, self.timeout)
        except TimeoutError:
            report(step, view, None)
            raise errors.UpstreamTimeout(
                f"middleware {step.name!r} did not return within {self.timeout:g}s"
            ) from None
        except errors.GatewayError:
            raise
        except Exception as exc:
            raise failed(step, view, exc) from exc

    # -- on the way out ------------------------------------------------------------

    def leave(self, view: RequestView, resp: ResponseView) -> None:
        """Each on_response of the steps entered, innermost first, where
        nothing can be awaited (the chain has no async on_response). On a
        failure view.depth is left at the failing step: the 500 that follows
        passes only the steps outside it."""
        if not view.weight:
            self._leave(view, resp)
            return
        started = perf_counter()
        try:
            self._leave(view, resp)
        finally:
            view.spent += (perf_counter() - started) * view.weight

    def _leave(self, view: RequestView, resp: ResponseView) -> None:
        # _edit_out() and _call_out() written out: a native call less a step.
        steps = self.steps
        i = view.depth
        while i > 0:
            i -= 1
            step = steps[i]
            edit = step.edit_out
            if edit is not None:
                resp.at = i
                try:
                    edit.apply_response(resp, view)
                except Exception as exc:
                    view.depth = i
                    raise failed(step, view, exc) from exc
                continue
            hook = step.on_response
            if hook is None:
                continue
            resp.at = i
            try:
                owner = step.response_self
                result = hook(view, resp) if owner is None else step.response_fn(owner, view, resp)
            except errors.GatewayError:
                view.depth = i
                raise
            except Exception as exc:
                view.depth = i
                raise failed(step, view, exc) from exc
            if result is not None and isawaitable(result):
                _discard(result)
                view.depth = i
                raise failed(step, view, TypeError("on_response returned an awaitable "
                                                   "from a plain function"))  # fmt: skip

    async def leave_async(self, view: RequestView, resp: ResponseView) -> None:
        """leave(), awaiting the hooks that are coroutines."""
        started = perf_counter() if view.weight else 0.0
        try:
            steps = self.steps
            i = view.depth
            while i > 0:
                i -= 1
                step = steps[i]
                edit = step.edit_out
                if edit is not None:
                    _edit_out(step, edit, i, view, resp)
                    continue
                hook = step.on_response
                if hook is None:
                    continue
                result = _call_out(step, hook, i, view, resp)
                if result is not None and isawaitable(result):
                    try:
                        await self._awaited(step, view, result)
                    except errors.GatewayError:
                        view.depth = i
                        raise
        finally:
            if view.weight:
                view.spent += (perf_counter() - started) * view.weight


# What the gateway itself adds to an upstream's answer before the chain sees it.
_GATEWAY_ADDS = frozenset({b"x-request-id", b"ratelimit", b"ratelimit-policy"})


def _drops(steps: tuple[Step, ...]) -> tuple[tuple[frozenset[bytes], ...], ...]:
    """[depth][i]: RESPONSE_DROP_B and the names steps i..depth-1 remove."""
    table = []
    for depth in range(len(steps) + 1):
        row = [RESPONSE_DROP_B]
        for i in range(depth - 1, -1, -1):
            row.append(row[-1] | steps[i].removes)
        table.append(tuple(reversed(row)))
    return tuple(table)


def _lazy(steps: tuple[Step, ...]) -> bool:
    """Whether an upstream's answer can stay a lazy view (views.ResponseView):
    only when no `headers` step removes a name that the gateway or a step
    inside it adds, since the lazy view applies removals to the upstream's
    headers alone."""
    added = _GATEWAY_ADDS
    for step in reversed(steps):  # innermost first, as responses pass
        if step.removes & added:
            return False
        added = added | step.adds
    return True


def _call_out(step: Step, hook: ResponseHook, i: int, view: RequestView, resp: ResponseView) -> Any:
    """One on_response; on a fault view.depth stays at this step, so the
    500 that follows passes only the steps outside it."""
    resp.at = i
    try:
        owner = step.response_self
        return hook(view, resp) if owner is None else step.response_fn(owner, view, resp)
    except errors.GatewayError:
        view.depth = i
        raise
    except Exception as exc:
        view.depth = i
        raise failed(step, view, exc) from exc


def _edit_out(step: Step, edit: HeaderEdit, i: int, view: RequestView, resp: ResponseView) -> None:
    """_call_out() for a `headers` step's response edit."""
    resp.at = i
    try:
        edit.apply_response(resp, view)
    except Exception as exc:
        view.depth = i
        raise failed(step, view, exc) from exc


def _reply(step: Step, view: RequestView, result: Any) -> Reply:
    try:
        return to_reply(result)
    except (TypeError, ValueError) as exc:
        raise failed(step, view, exc) from None


def _discard(result: Any) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()  # a coroutine never awaited: no "never awaited" warning


# -- what the operator is told -------------------------------------------------------

_last_logged: dict[tuple[str, str, str], float] = {}


def failed(step: Step, view: RequestView, exc: BaseException) -> errors.GatewayError:
    """The 500 a middleware's fault gets; the fault is counted and logged."""
    report(step, view, exc)
    # The exception's text stays in the log: it may hold anything.
    return errors.GatewayError(f"middleware {step.name!r} failed")


def report(step: Step, view: RequestView, exc: BaseException | None) -> None:
    """Count a fault, and log it with its traceback once per distinct error
    and second (a middleware failing every request must not flood the log)."""
    view.failed = step.name  # counted by the metrics when the request ends
    what = "timeout" if exc is None else repr(exc)[:300]
    seen = (step.name, type(exc).__name__, what)
    now = monotonic()
    if now - _last_logged.get(seen, -2.0) < 1.0:
        return
    _last_logged[seen] = now
    if len(_last_logged) > 1024:
        _last_logged.clear()
    fields: dict[str, Any] = {
        "middleware": step.name,
        "route": view.route,
        "request_id": view.request_id,
        "error": what,
    }
    if exc is not None:
        fields["traceback"] = "".join(traceback.format_exception(exc)).rstrip()
    log.error("middleware_error" if exc is not None else "middleware_timeout", **fields)

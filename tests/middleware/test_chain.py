"""The onion walk over hand-built steps: order, depth (whose on_response
runs after an answer or a fault), faults turned into 500/504, and hooks
that return awaitables."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from pyproxyd import errors
from pyproxyd.middleware.chain import Chain, Step
from pyproxyd.middleware.views import Reply, RequestView, ResponseView
from tests.middleware import request_view


class Recorder:
    """Steps whose hooks write "NAME.in" / "NAME.out" to one shared list."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def step(
        self,
        name: str,
        answer: Any = None,
        *,
        request: bool = True,
        response: bool = True,
        kind: str = "python",
    ) -> Step:
        def on_request(view: RequestView) -> Any:
            self.calls.append(f"{name}.in")
            return answer

        def on_response(view: RequestView, resp: ResponseView) -> None:
            self.calls.append(f"{name}.out")

        return Step(name, kind, on_request if request else None, on_response if response else None)


def chain(*steps: Step, timeout: float = 5.0) -> Chain:
    return Chain(steps, timeout)


def started(c: Chain) -> RequestView:
    """A view as the pipeline makes one: every step's on_response would run."""
    return request_view(depth=len(c.steps))


def resp() -> ResponseView:
    return ResponseView(200, [])


def raising(name: str, exc: BaseException) -> Step:
    def on_request(view: RequestView) -> None:
        raise exc

    return Step(name, "python", on_request, None)


# -- order --------------------------------------------------------------------------


def test_on_request_outermost_first_and_on_response_in_reverse() -> None:
    r = Recorder()
    c = chain(r.step("a"), r.step("b"), r.step("c"))
    view = started(c)
    assert c.enter(view) is None
    assert view.depth == 3
    c.leave(view, resp())
    assert r.calls == ["a.in", "b.in", "c.in", "c.out", "b.out", "a.out"]


def test_steps_without_a_hook_are_passed() -> None:
    r = Recorder()
    c = chain(r.step("a", response=False), r.step("b", request=False), r.step("c"))
    view = started(c)
    assert c.enter(view) is None
    c.leave(view, resp())
    assert r.calls == ["a.in", "c.in", "c.out", "b.out"]


def test_before_the_chain_starts_every_on_response_runs() -> None:
    # auth and limits fail before enter(): their 401/429 still pass every step (CORS).
    r = Recorder()
    c = chain(r.step("a"), r.step("b"))
    view = started(c)
    c.leave(view, ResponseView(401, []))
    assert r.calls == ["b.out", "a.out"]


def test_names_cors_position_and_async_flag_are_compiled_once() -> None:
    r = Recorder()

    async def later(view: RequestView, resp: ResponseView) -> None:
        return None

    c = chain(
        r.step("a"),
        r.step("cors", kind="cors"),
        Step("late", "python", None, later, response_async=True),
    )
    assert c.names == ("a", "cors", "late")
    assert c.cors_at == 1
    assert c.async_response
    assert chain(r.step("a")).cors_at == -1
    assert not chain(r.step("a")).async_response


# -- a step that answers ------------------------------------------------------------


def test_an_answer_ends_the_walk_and_only_the_outer_steps_see_the_response() -> None:
    r = Recorder()
    c = chain(r.step("a"), r.step("b", {"status": 403, "body": "no"}), r.step("c"))
    view = started(c)
    reply = c.enter(view)
    assert isinstance(reply, Reply)
    assert (reply.status, reply.body) == (403, b"no")
    assert view.depth == 1
    c.leave(view, ResponseView(403, []))
    assert r.calls == ["a.in", "b.in", "a.out"]
    assert view.failed is None


def test_the_outermost_step_answering_leaves_nothing_to_run() -> None:
    r = Recorder()
    c = chain(r.step("a", Reply(204, [], b"")), r.step("b"))
    view = started(c)
    assert isinstance(c.enter(view), Reply)
    assert view.depth == 0
    c.leave(view, resp())
    assert r.calls == ["a.in"]


# -- faults -------------------------------------------------------------------------


def test_an_exception_is_a_500_naming_the_middleware_not_the_error() -> None:
    r = Recorder()
    c = chain(r.step("a"), raising("boom-1", RuntimeError("secret detail")), r.step("c"))
    view = started(c)
    with pytest.raises(errors.GatewayError) as caught:
        c.enter(view)
    assert type(caught.value) is errors.GatewayError
    assert (caught.value.status, caught.value.code) == (500, "internal_error")
    assert caught.value.message == "middleware 'boom-1' failed"
    assert "secret" not in caught.value.message
    assert view.failed == "boom-1"
    assert view.depth == 1  # the 500 passes only the steps outside it
    c.leave(view, ResponseView(500, []))
    assert r.calls == ["a.in", "a.out"]


@pytest.mark.parametrize(
    "answer",
    [
        42,
        "ok",
        {"status": "200"},
        {"status": 200, "body": 3},
        {"status": 200, "headers": {"A": "\n"}},
    ],
    ids=["int", "str", "str-status", "int-body", "crlf-header"],
)
def test_a_result_that_is_not_a_response_is_a_500(answer: object) -> None:
    r = Recorder()
    c = chain(r.step("a"), r.step("odd", answer), r.step("c"))
    view = started(c)
    with pytest.raises(errors.GatewayError) as caught:
        c.enter(view)
    assert caught.value.status == 500
    assert caught.value.message == "middleware 'odd' failed"
    assert (view.failed, view.depth) == ("odd", 1)


def test_a_gateway_error_from_a_hook_keeps_its_own_status() -> None:
    r = Recorder()
    c = chain(r.step("a"), raising("deny", errors.Unauthorized("who are you")))
    view = started(c)
    with pytest.raises(errors.Unauthorized):
        c.enter(view)
    assert view.depth == 1
    assert view.failed is None  # not a middleware fault


def test_an_on_response_fault_leaves_depth_at_the_failing_step() -> None:
    r = Recorder()

    def broken(view: RequestView, resp: ResponseView) -> None:
        raise KeyError("x")

    c = chain(r.step("a"), Step("bad-out", "python", None, broken), r.step("c"))
    view = started(c)
    assert c.enter(view) is None
    with pytest.raises(errors.GatewayError) as caught:
        c.leave(view, resp())
    assert caught.value.status == 500
    assert (view.failed, view.depth) == ("bad-out", 1)
    c.leave(view, ResponseView(500, []))  # the 500 that follows
    assert r.calls == ["a.in", "c.in", "c.out", "a.out"]


def test_a_plain_on_response_returning_an_awaitable_is_a_500_and_is_closed() -> None:
    made: list[Coroutine[Any, Any, None]] = []

    async def work() -> None:
        return None

    def sneaky(view: RequestView, resp: ResponseView) -> Any:
        made.append(work())
        return made[-1]

    r = Recorder()
    c = chain(r.step("a"), Step("sneaky", "python", None, sneaky))
    view = started(c)
    with pytest.raises(errors.GatewayError) as caught:
        c.leave(view, resp())
    assert caught.value.message == "middleware 'sneaky' failed"
    assert (view.failed, view.depth) == ("sneaky", 1)
    assert inspect.getcoroutinestate(made[0]) == inspect.CORO_CLOSED  # never left dangling
    assert r.calls == []


def test_a_fault_is_logged_with_its_traceback_once_a_second(log_file: Path) -> None:
    c = chain(raising("noisy-1", ValueError("bad input 1")))
    for _ in range(3):
        with pytest.raises(errors.GatewayError):
            c.enter(started(c))
    other = chain(raising("noisy-1", ValueError("bad input 2")))
    with pytest.raises(errors.GatewayError):
        other.enter(started(other))
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    events = [e for e in lines if e["event"] == "middleware_error"]
    assert [e["error"] for e in events] == [
        "ValueError('bad input 1')",
        "ValueError('bad input 2')",
    ]
    assert events[0]["middleware"] == "noisy-1"
    assert events[0]["route"] == "api"
    assert "Traceback" in events[0]["traceback"]
    assert "bad input 1" in events[0]["traceback"]


class Audit:
    """A middleware object, as a factory returns one: its hooks are bound
    methods, which the chain calls as their functions with the object."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_request(self, view: RequestView) -> None:
        self.calls.append(("in", self, view))

    def on_response(self, view: RequestView, resp: ResponseView) -> None:
        self.calls.append(("out", self, view, resp))


class AsyncAudit(Audit):
    async def on_request(self, view: RequestView) -> Reply:  # type: ignore[override]
        await asyncio.sleep(0)
        self.calls.append(("in", self, view))
        return Reply(202, [], b"from a method")


def test_bound_method_hooks_get_their_object_and_the_views() -> None:
    audit = Audit()
    c = chain(Step("audit", "python", audit.on_request, audit.on_response))
    view = started(c)
    assert c.enter(view) is None
    out = resp()
    c.leave(view, out)
    assert audit.calls == [("in", audit, view), ("out", audit, view, out)]


def test_a_bound_method_that_raises_is_a_500_naming_its_middleware() -> None:
    class Broken(Audit):
        def on_response(self, view: RequestView, resp: ResponseView) -> None:
            raise RuntimeError("boom")

    broken = Broken()
    c = chain(Step("broken", "python", broken.on_request, broken.on_response))
    view = started(c)
    assert c.enter(view) is None
    with pytest.raises(errors.GatewayError, match="middleware 'broken' failed"):
        c.leave(view, resp())
    assert view.failed == "broken"
    assert view.depth == 0


async def test_an_async_bound_method_answers_with_its_object() -> None:
    audit = AsyncAudit()
    c = chain(Step("audit", "python", audit.on_request, None))
    view = started(c)
    pending = c.enter(view)
    assert inspect.isawaitable(pending)
    reply = await pending
    assert isinstance(reply, Reply) and reply.status == 202 and reply.body == b"from a method"
    assert audit.calls == [("in", audit, view)]


# -- awaitable results --------------------------------------------------------------


async def test_an_async_hook_continues_the_walk_after_it_returns() -> None:
    r = Recorder()

    async def slow(view: RequestView) -> None:
        await asyncio.sleep(0)
        r.calls.append("slow.in")
        view.headers["X-Slow"] = "1"

    c = chain(r.step("a"), Step("slow", "python", slow, None), r.step("c"))
    view = started(c)
    pending = c.enter(view)
    assert inspect.isawaitable(pending)
    assert r.calls == ["a.in"]  # the rest waits for the hook
    assert await pending is None
    assert view.depth == 3
    assert view.pairs == [(b"X-Slow", b"1")]
    c.leave(view, resp())
    assert r.calls == ["a.in", "slow.in", "c.in", "c.out", "a.out"]


async def test_a_plain_hook_returning_a_future_is_awaited_too() -> None:
    r = Recorder()
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    c = chain(Step("fut", "python", lambda view: fut, None), r.step("b"))
    view = started(c)
    pending = c.enter(view)
    assert inspect.isawaitable(pending)
    fut.set_result(None)
    assert await pending is None
    assert r.calls == ["b.in"]


async def test_two_async_hooks_in_a_row_both_run() -> None:
    seen: list[str] = []

    def hook(name: str) -> Any:
        async def on_request(view: RequestView) -> None:
            await asyncio.sleep(0)
            seen.append(name)

        return on_request

    c = chain(Step("x", "python", hook("x"), None), Step("y", "python", hook("y"), None))
    view = started(c)
    pending = c.enter(view)
    assert inspect.isawaitable(pending)
    assert await pending is None
    assert seen == ["x", "y"]
    assert view.depth == 2


async def test_an_async_answer_is_a_reply_with_the_depth_of_its_step() -> None:
    r = Recorder()

    async def answer(view: RequestView) -> dict[str, Any]:
        return {"status": 202, "headers": [("X-Async", "1")], "body": b"queued"}

    c = chain(r.step("a"), Step("async-answer", "python", answer, None), r.step("c"))
    view = started(c)
    pending = c.enter(view)
    assert inspect.isawaitable(pending)
    reply = await pending
    assert isinstance(reply, Reply)
    assert (reply.status, reply.pairs, reply.body) == (202, [(b"X-Async", b"1")], b"queued")
    assert view.depth == 1
    assert r.calls == ["a.in"]


async def test_an_async_hook_that_raises_is_a_500() -> None:
    async def boom(view: RequestView) -> None:
        raise RuntimeError("inside")

    r = Recorder()
    c = chain(r.step("a"), Step("async-boom", "python", boom, None))
    view = started(c)
    pending = c.enter(view)
    assert inspect.isawaitable(pending)
    with pytest.raises(errors.GatewayError) as caught:
        await pending
    assert caught.value.message == "middleware 'async-boom' failed"
    assert (view.failed, view.depth) == ("async-boom", 1)


async def test_an_async_result_that_is_not_a_response_is_a_500() -> None:
    async def odd(view: RequestView) -> object:
        return object()

    c = chain(Step("async-odd", "python", odd, None))
    view = started(c)
    pending = c.enter(view)
    assert inspect.isawaitable(pending)
    with pytest.raises(errors.GatewayError) as caught:
        await pending
    assert caught.value.status == 500
    assert view.failed == "async-odd"


async def test_a_hook_that_never_returns_is_a_504_after_the_chain_timeout() -> None:
    never = asyncio.Event()

    async def hang(view: RequestView) -> None:
        await never.wait()

    r = Recorder()
    c = chain(r.step("a"), Step("hang-in", "python", hang, None), r.step("c"), timeout=0.05)
    view = started(c)
    pending = c.enter(view)
    assert inspect.isawaitable(pending)
    with pytest.raises(errors.UpstreamTimeout) as caught:
        await pending
    assert (caught.value.status, caught.value.code) == (504, "upstream_timeout")
    assert (view.failed, view.depth) == ("hang-in", 1)
    assert r.calls == ["a.in"]


async def test_leave_async_awaits_coroutine_hooks_in_reverse_order() -> None:
    r = Recorder()

    async def late(view: RequestView, resp: ResponseView) -> None:
        await asyncio.sleep(0)
        r.calls.append("late.out")
        resp.status = 299

    c = chain(r.step("a"), Step("late", "python", None, late, response_async=True), r.step("c"))
    view = started(c)
    assert c.enter(view) is None
    response = resp()
    await c.leave_async(view, response)
    assert r.calls == ["a.in", "c.in", "c.out", "late.out", "a.out"]
    assert response.status == 299


async def test_leave_async_past_the_timeout_is_a_504_with_depth_at_the_step() -> None:
    never = asyncio.Event()

    async def hang(view: RequestView, resp: ResponseView) -> None:
        await never.wait()

    r = Recorder()
    c = chain(
        r.step("a"),
        Step("hang-out", "python", None, hang, response_async=True),
        r.step("c"),
        timeout=0.05,
    )
    view = started(c)
    with pytest.raises(errors.UpstreamTimeout):
        await c.leave_async(view, resp())
    assert (view.failed, view.depth) == ("hang-out", 1)
    assert r.calls == ["c.out"]


async def test_leave_async_turns_an_exception_into_a_500() -> None:
    async def boom(view: RequestView, resp: ResponseView) -> None:
        raise RuntimeError("x")

    c = chain(Step("a", "python", None, None), Step("boom-out", "python", None, boom))
    view = started(c)
    with pytest.raises(errors.GatewayError) as caught:
        await c.leave_async(view, resp())
    assert caught.value.status == 500
    assert (view.failed, view.depth) == ("boom-out", 1)


def test_time_inside_middlewares_is_counted() -> None:
    r = Recorder()
    c = chain(r.step("a"))
    view = started(c)
    c.enter(view)
    c.leave(view, resp())
    assert view.spent > 0


def test_one_request_in_sample_is_timed_and_counts_for_sample() -> None:
    from pyproxyd.middleware.chain import SAMPLE

    r = Recorder()
    c = chain(r.step("a"))
    views = []
    for _ in range(2 * SAMPLE):
        view = started(c)
        c.enter(view)
        c.leave(view, resp())
        views.append(view)
    assert [v.weight for v in views[:2]] == [SAMPLE, 0]  # the first request is timed
    assert sum(1 for v in views if v.weight) == 2
    assert all((v.spent > 0) == bool(v.weight) for v in views)

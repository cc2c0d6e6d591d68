"""An upstream's answer passes the chain as a lazy view (nothing copied,
removals as sets, additions as rendered lines) when the chain allows it; the
client must get exactly the headers the eager walk over a list would give."""

from __future__ import annotations

from typing import Any

import pytest

from pyproxyd.forwarding import RESPONSE_DROP_B, filter_response_headers
from pyproxyd.middleware.builtins import headers_step
from pyproxyd.middleware.chain import Chain, Step
from pyproxyd.middleware.models import HeadersMiddleware
from pyproxyd.middleware.views import RequestView, ResponseView, header_lines
from tests.middleware import request_view

UPSTREAM = [
    (b"Server", b"nginx"),
    (b"Connection", b"keep-alive"),
    (b"X-Request-ID", b"upstream-id"),
    (b"Content-Type", b"text/plain"),
    (b"X-Up", b"1"),
    (b"Content-Length", b"2"),
]
RAW = b"X-Request-ID: req-1\r\nRateLimit: limit=10, remaining=9\r\n"


def headers(name: str, **response: Any) -> Step:
    cfg = HeadersMiddleware.model_validate({"type": "headers", "response": response})
    return headers_step(name, cfg, frozenset())


def reader(seen: list[list[tuple[str, str]]]) -> Step:
    """A python-like step that reads resp.headers (which makes the list)."""

    def on_response(view: RequestView, resp: ResponseView) -> None:
        seen.append(resp.headers.all())
        resp.headers["X-Py"] = "seen"

    return Step("py", "python", None, on_response)


def client_gets(chain: Chain, lazy: bool) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The headers the client gets, walking lazily or over a list, and
    whether the view was still lazy when written."""
    view = request_view(depth=len(chain.steps))
    if lazy:
        resp = ResponseView(200, None, UPSTREAM, chain.response_drops(view.depth), RAW)
    else:
        pairs = filter_response_headers(UPSTREAM, RESPONSE_DROP_B)
        pairs.extend(header_lines(RAW))
        resp = ResponseView(200, pairs)
    chain.leave(view, resp)
    if resp.lazy:
        kept = [h for h in resp.base if h[0].lower() not in resp.drops[0]]
        return kept + header_lines(resp.raw), True
    return resp.pairs, False


CHAINS = {
    "built-ins only": lambda seen: [
        headers("outer", set={"X-Frame": "DENY"}, remove=["X-Up"]),
        headers("inner", set={"Server": "gw"}, add={"Via": "1.1 gw"}),
    ],
    "a python step between": lambda seen: [
        headers("outer", remove=["Content-Type"], add={"X-Outer": "o"}),
        reader(seen),
        headers("inner", set={"X-Inner": "i"}, remove=["Server"]),
    ],
    "a python step innermost": lambda seen: [
        headers("outer", set={"X-Outer": "o"}, remove=["X-Up"]),
        reader(seen),
    ],
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_the_lazy_walk_gives_what_the_eager_walk_gives(name: str) -> None:
    seen_lazy: list[list[tuple[str, str]]] = []
    seen_eager: list[list[tuple[str, str]]] = []
    lazy, _ = client_gets(Chain(tuple(CHAINS[name](seen_lazy)), 30.0), lazy=True)
    eager, was_lazy = client_gets(Chain(tuple(CHAINS[name](seen_eager)), 30.0), lazy=False)
    assert not was_lazy
    assert lazy == eager
    assert seen_lazy == seen_eager  # a python step sees the same list either way


def test_built_in_steps_alone_never_make_the_list() -> None:
    chain = Chain(tuple(CHAINS["built-ins only"]([])), 30.0)
    got, still_lazy = client_gets(chain, lazy=True)
    assert still_lazy
    assert (b"Server", b"gw") in got and (b"Server", b"nginx") not in got
    assert (b"X-Request-ID", b"upstream-id") not in got and (
        b"Connection",
        b"keep-alive",
    ) not in got


@pytest.mark.parametrize(
    ("steps", "removed"),
    [
        # an outer step removes what an inner one adds
        (lambda: [headers("outer", remove=["Via"]), headers("inner", add={"Via": "gw"})], b"via"),
        # a step removes what the gateway adds
        (lambda: [headers("hide", remove=["X-Request-ID"])], b"x-request-id"),
        (lambda: [headers("hide", remove=["RateLimit"])], b"ratelimit"),
    ],
)
def test_a_chain_that_removes_what_it_adds_is_walked_over_a_list(
    steps: Any, removed: bytes
) -> None:
    chain = Chain(tuple(steps()), 30.0)
    assert not chain.lazy
    got, _ = client_gets(chain, lazy=False)
    assert removed not in [n.lower() for n, _ in got]


@pytest.mark.parametrize("name", list(CHAINS))
def test_a_status_without_body_set_on_a_lazy_view_keeps_every_steps_headers(name: str) -> None:
    """A python step that only sets 204: the list is made after the walk,
    with what every step removed and added (the outermost one's too)."""
    from pyproxyd.proxy.relay import _final

    def no_content(view: RequestView, resp: ResponseView) -> None:
        resp.status = 204

    steps = [*CHAINS[name]([]), Step("empty", "python", None, no_content)]
    chain = Chain(tuple(steps), 30.0)
    lazy = ResponseView(200, None, UPSTREAM, chain.response_drops(len(steps)), RAW)
    pairs = filter_response_headers(UPSTREAM, RESPONSE_DROP_B)
    pairs.extend(header_lines(RAW))
    eager = ResponseView(200, pairs)
    chain.leave(request_view(depth=len(steps)), lazy)
    chain.leave(request_view(depth=len(steps)), eager)
    got, want = _final(lazy, 200)[0], _final(eager, 200)[0]
    assert got == want and (b"Content-Length", b"2") not in got

"""Compiled by mypyc (pyproxyd/compiled.py). The built-in middlewares that need
no code of the user's: `headers`, `redirect` and `respond` (cors.py has
`cors`). Each is turned into a Step whose hooks work on the header byte
pairs directly; nothing is looked up by name per request. A `headers`
step also hands the chain its two HeaderEdits (edit.py), which the chain
calls as native methods instead of its hooks."""

from __future__ import annotations

from .chain import Step
from .edit import HeaderEdit
from .models import HeadersMiddleware, RedirectMiddleware, RespondMiddleware
from .template import Template, header_value
from .views import Pairs, Reply, RequestView, ResponseView


def headers_step(name: str, cfg: HeadersMiddleware, reserved: frozenset[bytes]) -> Step:
    """`reserved`: request headers the gateway sets itself (X-Forwarded-*,
    forward_claims, ...); naming one in request.set or add is a config error,
    so a built-in never needs its output checked per request."""
    for key, names in (("set", cfg.request.set), ("add", cfg.request.add)):
        for header in names:
            if header.lower().encode() in reserved:
                raise ValueError(
                    f"middlewares.{name}.request.{key}: {header!r} is a header the gateway "
                    "sets itself on the way upstream"
                )
    request, response = HeaderEdit(cfg.request), HeaderEdit(cfg.response)

    def on_request(view: RequestView) -> None:
        request.apply(view.pairs, view)

    def on_response(view: RequestView, resp: ResponseView) -> None:
        response.apply_response(resp, view)

    return Step(
        name,
        "headers",
        on_request if request else None,
        on_response if response else None,
        removes=response.drop,
        adds=response.names(),
        edit_in=request if request else None,
        edit_out=response if response else None,
    )


def redirect_step(name: str, cfg: RedirectMiddleware) -> Step:
    to, status = Template(cfg.to), cfg.status

    def on_request(view: RequestView) -> Reply:
        location = to.render(view)
        if view.query:
            location += ("&" if "?" in location else "?") + view.query
        return Reply(status, [(b"Location", header_value(location))], b"")

    return Step(name, "redirect", on_request, None)


def respond_step(name: str, cfg: RespondMiddleware) -> Step:
    body = cfg.body.encode()
    pairs: Pairs = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in cfg.headers.items()]
    if body and not any(n.lower() == b"content-type" for n, _ in pairs):
        pairs.insert(0, (b"Content-Type", cfg.content_type.encode("latin-1")))
    reply = Reply(cfg.status, pairs, body)  # shared: the writer copies the pairs

    def on_request(view: RequestView) -> Reply:
        return reply

    return Step(name, "respond", on_request, None)

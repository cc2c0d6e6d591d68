"""Compiled by mypyc (pyproxyd/compiled.py). The built-in middlewares that need
no code of the user's: `headers`, `redirect` and `respond` (cors.py has
`cors`). Each is turned into a Step whose hooks work on the header byte
pairs directly; nothing is looked up by name per request."""

from __future__ import annotations

from .chain import Step
from .models import HeaderOps, HeadersMiddleware, RedirectMiddleware, RespondMiddleware
from .template import Template, header_value
from .views import Pairs, Reply, RequestView, ResponseView


class HeaderEdit:
    """One direction's changes: remove (and the names set), then set, then add."""

    __slots__ = ("added", "drop", "fixed", "fixed_raw", "lengths")

    def __init__(self, ops: HeaderOps) -> None:
        self.drop = frozenset(n.lower().encode() for n in [*ops.remove, *ops.set])
        # A name of another length cannot match: most are passed without lower().
        self.lengths = frozenset(len(n) for n in self.drop)
        # set and add both append once the names set are gone; set first.
        added = [
            (name.encode("latin-1"), Template(value))
            for name, value in [*ops.set.items(), *ops.add.items()]
        ]
        # Without a placeholder a value is rendered once, here.
        self.fixed: tuple[tuple[bytes, bytes], ...] | None = None
        self.fixed_raw = b""
        if all(t.constant is not None for _, t in added):
            self.fixed = tuple((n, header_value(t.constant or "")) for n, t in added)
            self.fixed_raw = b"".join(b"%s: %s\r\n" % pair for pair in self.fixed)
        self.added = tuple(added)

    def names(self) -> frozenset[bytes]:
        return frozenset(n.lower() for n, _ in self.added)

    def __bool__(self) -> bool:
        return bool(self.drop or self.added)

    def apply(self, pairs: Pairs, view: RequestView) -> None:
        drop = self.drop
        if drop:
            # In place, from the end: nothing is allocated when no name matches.
            lengths = self.lengths
            i = len(pairs)
            while i:
                i -= 1
                name = pairs[i][0]
                if len(name) in lengths and name.lower() in drop:
                    del pairs[i]
        fixed = self.fixed
        if fixed is not None:
            pairs.extend(fixed)
            return
        for name, template in self.added:
            pairs.append((name, header_value(template.render(view))))

    def apply_response(self, resp: ResponseView, view: RequestView) -> None:
        if not resp.lazy:
            self.apply(resp.pairs, view)
            return
        # Lazy: the chain's drops remove this step's names from the upstream's
        # headers; what it adds goes on as rendered lines.
        if self.fixed is not None:
            resp.raw += self.fixed_raw
            return
        for name, template in self.added:
            resp.raw += b"%s: %s\r\n" % (name, header_value(template.render(view)))


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

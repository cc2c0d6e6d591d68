"""Compiled by mypyc (pyproxyd/compiled.py). The `cors` middleware: the CORS
protocol of the Fetch standard.

A preflight (OPTIONS with Origin and Access-Control-Request-Method) is
answered by the gateway before auth and rate limits, allowed or not, and
never reaches the upstream. Every other response of the route, the
gateway's own errors included, carries the CORS headers when its Origin is
allowed, so a browser script can read a 401 or a 429. With credentials the
origin is echoed, never `*`; any answer that depends on Origin says
`Vary: Origin`.
"""

from __future__ import annotations

from collections.abc import Mapping

from .chain import Step
from .models import CorsMiddleware
from .views import Pairs, Reply, RequestView, ResponseView

_VARY_ORIGIN = (b"Vary", b"Origin")
_VARY_PREFLIGHT = (
    b"Vary",
    b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
)


def is_preflight(method: str, headers: Mapping[str, str]) -> bool:
    return (
        method == "OPTIONS"
        and headers.get("origin") is not None
        and headers.get("access-control-request-method") is not None
    )


class Cors:
    """The compiled policy of one `cors` middleware."""

    __slots__ = (
        "any",
        "credentials",
        "echo_headers",
        "exact",
        "expose",
        "headers",
        "max_age",
        "methods",
        "wildcards",
    )  # fmt: skip

    def __init__(self, cfg: CorsMiddleware) -> None:
        self.any = "*" in cfg.allow_origins
        self.exact = frozenset(o.lower() for o in cfg.allow_origins if "*" not in o)
        # "https://*.example.org[:port]" -> ("https://", ".example.org[:port]")
        self.wildcards = tuple(
            (o[: o.index("*")].lower(), o[o.index("*") + 1 :].lower())
            for o in cfg.allow_origins
            if o != "*" and "*" in o
        )
        self.credentials = cfg.allow_credentials
        self.methods = ", ".join(cfg.allow_methods).encode()
        self.echo_headers = "*" in cfg.allow_headers
        self.headers = ", ".join(h for h in cfg.allow_headers if h != "*").encode()
        self.expose = ", ".join(cfg.expose_headers).encode()
        self.max_age = None if cfg.max_age is None else str(int(cfg.max_age)).encode()

    def allows(self, origin: str) -> bool:
        if self.any:
            return True
        low = origin.lower()
        if low in self.exact:
            return True
        for scheme, suffix in self.wildcards:
            if (
                low.startswith(scheme)
                and low.endswith(suffix)
                and len(low) > len(scheme) + len(suffix)
                and ":" not in low[len(scheme) : len(low) - len(suffix)]
                and "/" not in low[len(scheme) :]
            ):
                return True
        return False

    def _origin_value(self, origin: str) -> bytes:
        if self.any and not self.credentials:
            return b"*"
        return origin.encode("latin-1", "replace")

    def _varies(self) -> bool:
        return not (self.any and not self.credentials)

    def preflight(self, view: RequestView) -> Reply:
        """The answer to a preflight: 204, with the Access-Control-* headers
        only when its origin is allowed."""
        origin = view.client.get("origin") or ""
        pairs: Pairs = [_VARY_PREFLIGHT]
        if self.allows(origin):
            pairs.append((b"Access-Control-Allow-Origin", self._origin_value(origin)))
            if self.credentials:
                pairs.append((b"Access-Control-Allow-Credentials", b"true"))
            pairs.append((b"Access-Control-Allow-Methods", self.methods))
            asked = view.client.get("access-control-request-headers")
            allowed = (
                asked.encode("latin-1", "replace")
                if self.echo_headers and asked
                else (self.headers)
            )
            if allowed:
                pairs.append((b"Access-Control-Allow-Headers", allowed))
            if self.max_age is not None:
                pairs.append((b"Access-Control-Max-Age", self.max_age))
        return Reply(204, pairs, b"")

    def on_response(self, view: RequestView, resp: ResponseView) -> None:
        pairs = resp.pairs
        # The gateway owns CORS on this route: an upstream's own answer would
        # make a second Access-Control-Allow-Origin, which browsers refuse.
        i = len(pairs)
        while i:
            i -= 1
            if pairs[i][0][:15].lower() == b"access-control-":
                del pairs[i]
        origin = view.client.get("origin")
        if self._varies():
            pairs.append(_VARY_ORIGIN)
        if origin is None or not self.allows(origin):
            return
        pairs.append((b"Access-Control-Allow-Origin", self._origin_value(origin)))
        if self.credentials:
            pairs.append((b"Access-Control-Allow-Credentials", b"true"))
        if self.expose:
            pairs.append((b"Access-Control-Expose-Headers", self.expose))


def cors_step(name: str, cfg: CorsMiddleware) -> tuple[Step, Cors]:
    cors = Cors(cfg)
    return Step(name, "cors", None, cors.on_response), cors

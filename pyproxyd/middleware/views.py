"""Compiled by mypyc (pyproxyd/compiled.py). What a `python` middleware sees:
the request view (`req`), the response view (`resp`) and the header list
both use. docs/middleware.md is their reference.

Header names and values are `str` on this side and latin-1 bytes on the
wire; a name or value that could split a message (not a token, CR, LF,
NUL) is refused with ValueError when it is set, so no middleware can
inject a header line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .headers import HeaderList, check_name, check_value

Pairs = list[tuple[bytes, bytes]]


class RequestView:
    """`req`: the request as a middleware sees it. `headers` are the ones
    going upstream, changeable in `on_request`; the rest is read-only."""

    __slots__ = (
        "_headers",
        "claims",
        "client",
        "client_ip",
        "consumer",
        "depth",
        "failed",
        "host",
        "method",
        "pairs",
        "path",
        "query",
        "request_id",
        "route",
        "spent",
        "target",
        "upstream",
    )  # fmt: skip

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        host: str,
        client_ip: str,
        route: str,
        request_id: str,
        claims: Mapping[str, Any] | None,
        consumer: str | None,
        depth: int,
    ) -> None:
        self.method = method
        self.path = path  # normalised, without the query
        self.query = query  # the raw query string, "" when none
        self.host = host
        self.client_ip = client_ip
        self.route = route
        self.request_id = request_id
        self.claims = claims  # of a verified JWT, else None
        self.consumer = consumer
        self.upstream: str | None = None  # set once the upstream is picked
        self.target = path  # the path after the route's strip_prefix/rewrite ({path})
        # The client's own headers, as it sent them ({header:NAME}).
        self.client: Mapping[str, str] = {}
        self.pairs: Pairs = []  # the headers going upstream (bound before on_request)
        self._headers: HeaderList | None = None
        # How many of the chain's steps were entered: their on_response run,
        # in reverse. All of them until the chain starts, so that an error of
        # auth or limits still passes every on_response (CORS on a 401).
        self.depth = depth
        self.spent = 0.0  # seconds inside middlewares, for the metrics
        self.failed: str | None = None  # the middleware that failed, for the metrics

    @property
    def headers(self) -> HeaderList:
        h = self._headers
        if h is None:
            h = self._headers = HeaderList(self.pairs)
        return h

    @property
    def wrote(self) -> bool:
        """Whether a middleware changed the headers through `headers`."""
        h = self._headers
        return h is not None and (h.changed or h.pairs is not self.pairs)

    def __repr__(self) -> str:
        return f"<request {self.method} {self.path} route={self.route} id={self.request_id}>"


class ResponseView:
    """`resp`: the response on its way to the client; `status` and `headers`
    can be changed in `on_response` (the body streams past untouched)."""

    __slots__ = ("_headers", "_status", "pairs")

    def __init__(self, status: int, pairs: Pairs) -> None:
        self._status = status
        self.pairs = pairs
        self._headers: HeaderList | None = None

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        # Checked here, in the hook that sets it: a bad one is that middleware's
        # 500, not a status line the client cannot parse.
        if not isinstance(value, int) or isinstance(value, bool) or not 200 <= value <= 599:
            raise ValueError(f"resp.status must be an int 200-599, not {value!r}")
        self._status = value

    @property
    def headers(self) -> HeaderList:
        h = self._headers
        if h is None:
            h = self._headers = HeaderList(self.pairs)
        return h

    def __repr__(self) -> str:
        return f"<response {self.status}>"


class Reply:
    """An answer a middleware gives instead of the upstream's."""

    __slots__ = ("body", "pairs", "status")

    def __init__(self, status: int, pairs: Pairs, body: bytes) -> None:
        self.status = status
        self.pairs = pairs
        self.body = body


def to_reply(value: Any) -> Reply:
    """A python middleware's answer: an object or a dict with `status`,
    `headers` (a mapping or pairs) and `body` (bytes or str). TypeError or
    ValueError when it is not one."""
    if isinstance(value, Reply):
        return value
    if isinstance(value, Mapping):
        status, headers, body = value.get("status"), value.get("headers"), value.get("body", b"")
    else:
        status = getattr(value, "status", None)
        headers, body = getattr(value, "headers", None), getattr(value, "body", b"")
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise TypeError(f"not a response: {type(value).__name__} (status must be an int 200-599)")
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    pairs = [(check_name(str(n)), check_value(str(v))) for n, v in items]
    if body is None:
        body = b""
    elif isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"a response body must be bytes or str, not {type(body).__name__}")
    return Reply(status, pairs, bytes(body))

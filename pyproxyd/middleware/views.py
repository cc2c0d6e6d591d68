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

from ..compiled import mypyc_attr
from .headers import HeaderList, check_name, check_value

Pairs = list[tuple[bytes, bytes]]


# A freed view's memory is kept for the next one (one is made a request).
@mypyc_attr(free_list_len=1)
class RequestView:
    """`req`: the request as a middleware sees it. `headers` are the ones
    going upstream, changeable in `on_request`; the rest is read-only."""

    __slots__ = (
        "_headers",
        "_host",
        "_lines",
        "_pairs",
        "_source",
        "chain",
        "claims",
        "client_ip",
        "consumer",
        "depth",
        "failed",
        "method",
        "path",
        "query",
        "request_id",
        "route",
        "spent",
        "target",
        "upstream",
        "weight",
    )  # fmt: skip

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        host: str | None,
        client_ip: str,
        route: str,
        request_id: str,
        claims: Mapping[str, Any] | None,
        consumer: str | None,
        depth: int,
        source: Any = None,
        chain: Any = None,
    ) -> None:
        self.method = method
        self.path = path  # normalised, without the query
        self.query = query  # the raw query string, "" when none
        # None: the request's Host, read only if a middleware asks (a decode
        # per request that a chain of built-ins never needs).
        self._host = host
        self.client_ip = client_ip
        self.route = route
        self.request_id = request_id
        self.claims = claims  # of a verified JWT, else None
        self.consumer = consumer
        self.upstream: str | None = None  # set once the upstream is picked
        self.target = path  # the path after the route's strip_prefix/rewrite ({path})
        # What `client` reads: the request (proxy.interface.Request), or a mapping.
        self._source = source
        # The route's middleware.chain.Chain, which runs this view; not named
        # as a type here, or observe/ (which reads proxy.record, which names
        # this view) would import in a circle.
        self.chain = chain
        # The headers going upstream: the pipeline's own list, bound before
        # on_request (an empty one is made only if something reads it before).
        self._pairs: Pairs | None = None
        self._headers: HeaderList | None = None
        # Header lines the built-in `headers` steps added after `_pairs`
        # (edit.HeaderEdit.apply_request, which reads and writes these fields itself),
        # rendered ("Name: value\r\n"...): they go upstream as they are, one
        # piece of the head; anything that reads the list puts them in it first.
        self._lines = b""
        # How many of the chain's steps were entered: their on_response run,
        # in reverse. All of them until the chain starts, so that an error of
        # auth or limits still passes every on_response (CORS on a 401).
        self.depth = depth
        self.spent = 0.0  # seconds inside middlewares, for the metrics
        # How many requests its timing stands for: the chain times one in
        # SAMPLE (chain.py); a request answered before the chain ran is timed alone.
        self.weight = 1
        self.failed: str | None = None  # the middleware that failed, for the metrics

    @property
    def host(self) -> str:
        host = self._host
        if host is None:
            source: Any = self._source
            host = self._host = source.host if source is not None else ""
        return host

    @host.setter
    def host(self, value: str) -> None:
        self._host = value

    @property
    def pairs(self) -> Pairs:
        pairs = self._pairs
        if pairs is None:
            pairs = self._pairs = []
        if len(self._lines):
            pairs.extend(header_lines(self._lines))
            self._lines = b""
        return pairs

    @pairs.setter
    def pairs(self, value: Pairs) -> None:
        self._pairs = value

    @property
    def headers(self) -> HeaderList:
        h = self._headers
        if h is None:
            h = self._headers = HeaderList(self.pairs)
        elif len(self._lines):
            _ = self.pairs  # the pending lines go into the list, which `h` shares
        return h

    def bind(self, pairs: Pairs, target: str, upstream: str | None) -> None:
        """What the pipeline knows once the upstream is picked, before on_request:
        the list going upstream (not through `pairs`: nothing waits to join it
        yet), the path for the upstream and the upstream's name."""
        self._pairs = pairs
        self.target = target
        self.upstream = upstream

    def upstream_fields(self, drop: frozenset[bytes], length: int | None) -> tuple[Pairs, bytes]:
        """Past every on_request: the list going upstream, and the rendered
        lines the built-in steps added after it (edit.HeaderEdit.apply_request
        writes `_lines`). What a python middleware wrote through `headers` is
        checked again: it cannot forge the headers the gateway sets itself
        (`drop`: forward_claims, X-Forwarded-*, ...) nor frame the body (the
        client's Content-Length, `length`, stays). The built-in steps cannot
        name those at all (compile time). One call for both cases: the plain
        one is a few loads."""
        h = self._headers
        if h is None or not (h.changed or h.pairs is not self.pairs):
            pairs = self._pairs
            if pairs is None:
                pairs = self.pairs  # (which takes the lines in)
            return pairs, self._lines
        headers = [p for p in self.pairs if p[0].lower() not in drop]
        if length is not None:
            headers.append((b"Content-Length", b"%d" % length))
        return headers, b""

    @property
    def client(self) -> Mapping[str, str]:
        """The client's own headers, as it sent them ({header:NAME}, CORS)."""
        source = self._source
        if source is None:
            return {}
        if isinstance(source, Mapping):
            return source
        return source.lazy_headers

    def __repr__(self) -> str:
        return f"<request {self.method} {self.path} route={self.route} id={self.request_id}>"


# Acyclic: nothing a response view holds (header lists of byte pairs, sets,
# bytes) can lead back to it, so it is left out of the garbage collector's
# lists; its freed memory is kept for the next one (one is made a request).
@mypyc_attr(acyclic=True, free_list_len=1)
class ResponseView:
    """`resp`: the response on its way to the client; `status` and `headers`
    can be changed in `on_response` (the body streams past untouched).

    An upstream's answer starts lazy: its header list is not copied, the
    names to leave out of it are a set per step (`drops`, built by the
    chain), and what the gateway and the built-in `headers` steps add are
    rendered lines (`raw`): written out as the plain route writes its
    answer. The list of pairs is made only when something asks for it (a
    python middleware's `resp.headers`, cors)."""

    __slots__ = ("_headers", "_pairs", "_status", "at", "base", "drops", "raw", "rid")

    def __init__(
        self,
        status: int,
        pairs: Pairs | None,
        base: Pairs | None = None,
        drops: tuple[frozenset[bytes], ...] = (),
        raw: bytes = b"",
        rid: str = "",
    ) -> None:
        self._status = status
        self._pairs = pairs
        self.base: Pairs = [] if base is None else base  # the upstream's list, never changed
        # drops[i]: the names the steps from i inward remove (and hop-by-hop).
        self.drops = drops
        # The X-Request-ID the gateway adds first (when not ""), and the header
        # lines added after it so far, rendered: lines() joins them once, at
        # the end, so a step adding lines to an empty `raw` copies nothing.
        self.rid = rid
        self.raw = raw
        self.at = 0  # the step whose on_response runs (set by the chain; -1: all have)
        self._headers: HeaderList | None = None

    @property
    def lazy(self) -> bool:
        return self._pairs is None

    @property
    def pairs(self) -> Pairs:
        pairs = self._pairs
        if pairs is None:
            # The steps inside the running one have removed their names.
            drop = self.drops[self.at + 1]
            pairs = [h for h in self.base if h[0].lower() not in drop]
            pairs.extend(header_lines(self.lines()))
            self._pairs = pairs
        return pairs

    def add_lines(self, lines: bytes) -> None:
        """Rendered header lines added to a lazy response."""
        raw = self.raw
        self.raw = lines if not len(raw) else raw + lines

    def lines(self) -> bytes:
        """What the gateway and the steps added to a lazy response, rendered."""
        if not len(self.rid):
            return self.raw
        return b"X-Request-ID: %s\r\n%s" % (self.rid.encode(), self.raw)

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


def header_lines(raw: bytes) -> Pairs:
    """Header lines rendered already ("Name: value\\r\\n"...) as pairs."""
    out = []
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b": ")
        if sep:
            out.append((name, value))
    return out


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

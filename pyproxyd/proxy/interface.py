"""Compiled by mypyc (pyproxyd/compiled.py). What a frontend hands the pipeline.

The pipeline (prepare -> forward -> relay, under handler.Proxy) never knows
which protocol a request came in on. A frontend (HTTP/1.1 in frontend/,
HTTP/2 next) parses bytes into a subclass of `Request` and calls the
handler with it; the same object is the response sink the answer goes to.

A frontend subclass provides:

- the request: `method`, `raw_path` (origin-form target, query included),
  `version`, `raw_headers` (name/value byte pairs as received, names in any
  case), `picked` (the lower-cased PICKED headers, repeats joined with
  ", "), `body` (an async iterator of de-framed chunks, or None), its
  `content_length` (None when unknown), `upgrade`, `secure`, `peer` (the
  client's address) and `local` (the listener's "host:port", the Host of
  last resort);
- the sink: `respond()` a whole answer, or `start()` a head, `await
  write()` body chunks, `trailers()` and `end()`; `abort()` cuts the
  exchange when an answer cannot be completed honestly (HTTP/1.1 closes the
  connection, HTTP/2 resets the stream). `started`, `finished` and `sent`
  say how far it got;
- `handled()`, called exactly once when the pipeline is through with the
  request (the HTTP/1.1 frontend then goes on with the next one);
  `client_connected` for the pipeline's question whether a failure was the
  client's; and `tunnel()` for protocols that can switch to a byte tunnel
  (a WebSocket upgrade), None elsewhere.

The handler, for its part, may set `cancel`: the frontend calls it when the
client leaves before `handled()` (nginx's 499).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

Headers = Sequence[tuple[bytes, bytes]]


class Request:
    """One request and the sink of its answer (see the module docstring)."""

    __slots__ = (
        "_cookies",
        "_headers",
        "_query",
        "body",
        "cancel",
        "content_length",
        "finished",
        "method",
        "peer",
        "picked",
        "raw_headers",
        "raw_path",
        "secure",
        "sent",
        "started",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: str,
        raw_path: str,
        version: str,
        raw_headers: list[tuple[bytes, bytes]],
        picked: dict[bytes, bytes],
        body: Any,
        content_length: int | None,
        upgrade: bool,
        secure: bool,
        peer: str,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.raw_headers = raw_headers
        self.picked = picked  # frontend.connection.PICKED: host, x-request-id, ... (lower-case)
        self.body = body  # AsyncIterator[bytes] with a `total` of bytes received, or None
        self.content_length = content_length
        self.upgrade = upgrade
        self.secure = secure
        self.peer = peer
        self._headers: CIMultiDictProxy[str] | None = None
        self._query: MultiDictProxy[str] | None = None
        self._cookies: dict[str, str] | None = None
        self.started = False  # the status line (head) is written
        self.finished = False  # the whole answer is written
        self.sent = 0  # answer body bytes written
        self.cancel: Callable[[], object] | None = None  # set by the handler

    # -- what the frontend provides ------------------------------------------------

    @property
    def local(self) -> str:
        raise NotImplementedError

    @property
    def client_connected(self) -> bool:
        raise NotImplementedError

    def respond(
        self,
        status: int,
        headers: Headers,
        body: bytes,
        reason: str = "",
        drop: frozenset[bytes] | None = None,
        raw: bytes = b"",
    ) -> None:
        """A whole answer at once. `drop`: lower-case names to leave out of
        `headers` (an upstream's hop-by-hop ones, filtered as they are
        written); `raw`: header lines already rendered, added as they are."""
        raise NotImplementedError

    def start(
        self,
        status: int,
        headers: Headers,
        length: int | None,
        reason: str = "",
        drop: frozenset[bytes] | None = None,
        raw: bytes = b"",
    ) -> None:
        """The head of a streamed answer (`length` None: not known yet)."""
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        """One body chunk; returns once the client can take more."""
        raise NotImplementedError

    def trailers(self, headers: Headers) -> None:
        """Trailer fields, after the last chunk and before end()."""
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def handled(self) -> None:
        raise NotImplementedError

    def tunnel(self) -> Any:
        """The frontend connection to tunnel bytes through after an upgrade, or None."""
        return None

    # -- views, built once and only if asked ----------------------------------------

    @property
    def host(self) -> str:
        host = self.picked.get(b"host")
        return host.decode("latin-1") if host else self.local

    def pick(self, name: bytes) -> str | None:
        """One of the picked headers (lower-case name), repeats joined with ", "."""
        value = self.picked.get(name)
        return None if value is None else value.decode("latin-1")

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        h = self._headers
        if h is None:
            h = self._headers = CIMultiDictProxy(
                CIMultiDict(
                    [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.raw_headers]
                )
            )
        return h

    @property
    def lazy_headers(self) -> Mapping[str, str]:
        """`headers`, built only if something actually looks one up."""
        return _LazyHeaders(self)

    def first_header(self, name: str) -> str | None:
        """The first value of a header, scanning the raw pairs (a lookup or two
        per request, Authorization, X-Client-ID, cost less than the mapping)."""
        built = self._headers
        if built is not None:
            return built.get(name)
        target = name.lower().encode("latin-1", "replace")  # ("?" is in no header name)
        size = len(target)
        for n, v in self.raw_headers:
            if len(n) == size and n.lower() == target:
                return v.decode("latin-1")
        return None

    @property
    def query(self) -> MultiDictProxy[str]:
        q = self._query
        if q is None:
            _, _, qs = self.raw_path.partition("?")
            q = self._query = MultiDictProxy(MultiDict(parse_qsl(qs, keep_blank_values=True)))
        return q

    @property
    def cookies(self) -> dict[str, str]:
        c = self._cookies
        if c is None:
            c = {}
            for value in self.headers.getall("Cookie", ()):
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(value)
                except CookieError:
                    continue
                c.update({k: m.value for k, m in jar.items()})
            self._cookies = c
        return c

    @property
    def remote(self) -> str:
        return self.peer

    @property
    def received(self) -> int:
        body = self.body
        return int(body.total) if body is not None else 0

    def body_chunks(self) -> AsyncIterator[bytes]:
        assert self.body is not None
        chunks: AsyncIterator[bytes] = self.body
        return chunks


class _LazyHeaders(Mapping[str, str]):
    __slots__ = ("_request",)

    def __init__(self, request: Request) -> None:
        self._request = request

    def __getitem__(self, name: str) -> str:
        return self._request.headers[name]

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        value = self._request.first_header(name)
        return default if value is None else value

    def getall(self, name: str, default: Sequence[str] = ()) -> Sequence[str]:
        return self._request.headers.getall(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._request.headers)

    def __len__(self) -> int:
        return len(self._request.headers)

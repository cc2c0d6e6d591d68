"""ClientRequest.lazy_headers: lookups without building the header mapping."""

from __future__ import annotations

from pyproxyd.frontend.connection import Frontend
from pyproxyd.frontend.request import ClientRequest

RAW = [
    (b"Host", b"gw.test"),
    (b"X-Client-ID", b"first"),
    (b"x-client-id", b"second"),
    (b"Authorization", b"Bearer t\xe9"),
]


def request() -> ClientRequest:
    # A connection with no transport (the frontend needs a running loop:
    # the tests are async): headers never touch it.
    front = Frontend(lambda r: None, header_timeout=1, keepalive_timeout=1, max_header_size=8190)
    return ClientRequest(
        front.protocol(False)(), "GET", "/", "1.1", list(RAW), {}, True, None, False, None
    )


async def test_get_scans_the_raw_pairs_like_the_mapping_answers() -> None:
    lazy = request().lazy_headers
    assert lazy.get("X-Client-ID") == "first"  # the first one, as a multidict's get()
    assert lazy.get("AUTHORIZATION") == "Bearer t\u00e9"  # latin-1, any case
    assert lazy.get("X-Missing") is None
    assert lazy.get("X-Missing", "d") == "d"


async def test_get_agrees_with_the_built_mapping() -> None:
    req = request()
    lazy = req.lazy_headers
    before = [lazy.get(n) for n in ("x-client-id", "Authorization", "host", "nope")]
    assert req._headers is None  # nothing was built for those lookups
    assert lazy.getall("X-Client-ID") == ["first", "second"]  # this one builds it
    assert req._headers is not None
    after = [lazy.get(n) for n in ("x-client-id", "Authorization", "host", "nope")]
    assert before == after == ["first", "Bearer t\u00e9", "gw.test", None]

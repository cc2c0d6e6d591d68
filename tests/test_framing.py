"""framing.py: the rules a message's framing must meet, both directions."""

from __future__ import annotations

import pytest

from pyproxyd import errors
from pyproxyd.forwarding import connection_tokens, filter_request_headers
from pyproxyd.framing import coding_problem, connection_problem, request_problem, response_problem


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b" chunked ", b"chunked;x=1"])
def test_plain_chunked_is_fine(value: bytes) -> None:
    assert coding_problem(value) is None


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"gzip", errors.BadRequest),  # the length is unknown: 400
        (b"chunked, gzip", errors.BadRequest),
        (b"", errors.BadRequest),
        (b"chunked, chunked", errors.BadRequest),
        (b"gzip, chunked", errors.NotImplementedCoding),  # known, but not passed on
        (b"x-custom, chunked", errors.NotImplementedCoding),
    ],
)
def test_other_codings_are_refused(value: bytes, kind: type[errors.GatewayError]) -> None:
    problem = coding_problem(value)
    assert type(problem) is kind
    assert problem.status == (501 if kind is errors.NotImplementedCoding else 400)


@pytest.mark.parametrize(
    "value", [b"content-length", b"close, Content-Length", b"transfer-encoding", b"host"]
)
def test_connection_cannot_name_framing(value: bytes) -> None:
    assert isinstance(connection_problem(value), errors.BadRequest)
    # and whatever reads Connection tokens never treats them as hop-by-hop
    assert not connection_tokens((value,)) & {b"content-length", b"transfer-encoding", b"host"}


def test_connection_still_names_other_headers() -> None:
    assert connection_problem(b"close, x-foo") is None
    kept, _ = filter_request_headers(
        [(b"Connection", b"x-foo, content-length"), (b"X-Foo", b"1"), (b"Content-Length", b"3")],
        frozenset({b"connection"}),
    )
    assert kept == [(b"Content-Length", b"3")]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("1.1", 1, 0, None, None), None),
        (("1.1", 1, 1, b"chunked", b"keep-alive"), None),
        (("1.0", 0, 0, None, None), None),  # HTTP/1.0 had no Host
        (("1.1", 0, 0, None, None), "no Host header"),
        (("1.1", 2, 0, None, None), "more than one Host header"),
        (("1.1", 1, 2, None, None), "more than one Authorization header"),
        (("1.1", 1, 0, b"gzip", None), "Transfer-Encoding must end with chunked"),
        (("1.1", 1, 0, None, b"Host"), "Connection names a header that frames the message"),
    ],
)
def test_request_problem(
    args: tuple[str, int, int, bytes | None, bytes | None], expected: str | None
) -> None:
    problem = request_problem(*args)
    assert (problem.message if problem is not None else None) == expected


@pytest.mark.parametrize(
    ("coding", "has_length", "refused"),
    [
        (None, True, False),
        (None, False, False),
        (b"chunked", False, False),
        (b"chunked", True, True),
        (b"gzip, chunked", False, True),
        (b"gzip", False, True),
    ],
)
def test_response_problem(coding: bytes | None, has_length: bool, refused: bool) -> None:
    assert (response_problem(coding, has_length) is not None) is refused

"""Header rules and the client address (pure functions)."""

from __future__ import annotations

import pytest

from pyproxyd.forwarding import (
    HOP_BY_HOP_B,
    MEMO,
    REPLACED_B,
    TrustedProxies,
    client_address,
    filter_request_headers,
    filter_response_headers,
    forwarded_for,
    names_more_headers,
)
from pyproxyd.tracing import request_id, traceparent

TRUSTED = TrustedProxies.parse(["127.0.0.1/32", "10.0.0.0/8", "::1", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.9", [], "203.0.113.9"),
        # an untrusted peer's X-Forwarded-For is ignored (spoofing)
        ("203.0.113.9", ["1.2.3.4"], "203.0.113.9"),
        # a trusted peer: the right-most untrusted hop is the client
        ("127.0.0.1", ["1.2.3.4"], "1.2.3.4"),
        ("127.0.0.1", ["6.6.6.6, 1.2.3.4, 10.1.1.1"], "1.2.3.4"),
        ("127.0.0.1", ["6.6.6.6", "1.2.3.4, 10.1.1.1"], "1.2.3.4"),
        # every hop trusted: the left-most is the best we know
        ("127.0.0.1", ["10.0.0.5, 10.0.0.6"], "10.0.0.5"),
        ("::1", ["2001:db8::7"], "2001:db8::7"),
        ("fd00::3", ["[2001:db8::7]:4711"], "2001:db8::7"),
        ("127.0.0.1", ["1.2.3.4:5678"], "1.2.3.4"),
    ],
)
def test_client_address(peer: str, xff: list[str], expected: str) -> None:
    assert client_address(peer, xff, TRUSTED) == expected


def test_trusted_proxies_match_addresses_and_networks() -> None:
    assert "127.0.0.1" in TRUSTED
    assert "10.200.3.4" in TRUSTED
    assert "fd00::1234" in TRUSTED
    assert "11.0.0.1" not in TRUSTED
    assert "not-an-ip" not in TRUSTED


def test_forwarded_for_keeps_only_a_trusted_chain() -> None:
    assert forwarded_for("127.0.0.1", ["1.2.3.4"], TRUSTED) == "1.2.3.4, 127.0.0.1"
    assert forwarded_for("203.0.113.9", ["1.2.3.4"], TRUSTED) == "203.0.113.9"


def test_request_headers_drop_hop_by_hop_and_connection_listed() -> None:
    raw = [
        (b"Host", b"gw"),
        (b"Connection", b"keep-alive, X-Secret"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Secret", b"1"),
        (b"TE", b"trailers"),
        (b"Proxy-Authorization", b"Basic x"),
        (b"Cookie", b"a=1"),
        (b"Cookie", b"b=2"),
        (b"X-User-ID", b"forged"),
        (b"Accept", b"*/*"),
    ]
    kept, seen = filter_request_headers(raw, HOP_BY_HOP_B | REPLACED_B | {b"x-user-id"})
    assert kept == [(b"Cookie", b"a=1"), (b"Cookie", b"b=2"), (b"Accept", b"*/*")]
    assert seen[b"host"] == [b"gw"]
    assert b"x-user-id" in seen


def test_response_headers_keep_repeats_and_drop_hop_by_hop() -> None:
    headers = [
        (b"Set-Cookie", b"a=1"),
        (b"X-Internal", b"yes"),  # listed by the Connection header that follows
        (b"Set-Cookie", b"b=2"),
        (b"Connection", b"close, X-Internal"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Encoding", b"gzip"),
    ]
    assert filter_response_headers(headers) == [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Encoding", b"gzip"),
    ]


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("abc-123", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("", False),
        (None, False),
        ("caf\u00e9", False),
    ],
)
def test_request_id(incoming: str | None, kept: bool) -> None:
    rid = request_id(incoming)
    assert (rid == incoming) is kept
    assert 1 <= len(rid) <= 128


def test_traceparent_keeps_a_valid_trace_with_a_new_parent() -> None:
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    trace_id, out = traceparent(incoming)
    assert trace_id == "0af7651916cd43dd8448eb211c80319c"
    version, tid, parent, flags = out.split("-")
    assert (version, tid, flags) == ("00", trace_id, "01")
    assert parent != "b7ad6b7169203331" and len(parent) == 16


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "garbage",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
    ],
)
def test_traceparent_starts_a_new_trace_when_invalid(bad: str | None) -> None:
    trace_id, out = traceparent(bad)
    assert len(trace_id) == 32 and trace_id != "0" * 32
    assert out.startswith(f"00-{trace_id}-") and out.endswith("-01")


def test_range_checks_are_remembered_and_bounded() -> None:
    trusted = TrustedProxies.parse(["10.0.0.0/8", "fd00::/8"])
    assert "10.1.2.3" in trusted and "10.1.2.3" in trusted
    assert "203.0.113.9" not in trusted and "203.0.113.9" not in trusted
    assert "not an ip" not in trusted
    assert trusted._memo == {"10.1.2.3": True, "203.0.113.9": False, "not an ip": False}
    for i in range(MEMO + 10):
        assert f"192.0.{i // 256 % 256}.{i % 256}" not in trusted
    assert len(trusted._memo) <= MEMO
    assert "10.9.9.9" in trusted  # still right after the memo started over


def test_connection_values_that_name_more_headers() -> None:
    assert not names_more_headers(b"keep-alive")
    assert not names_more_headers(b"Close")
    assert not names_more_headers(b"keep-alive, close")
    assert names_more_headers(b"close, X-Internal")
    assert names_more_headers(b"Upgrade")

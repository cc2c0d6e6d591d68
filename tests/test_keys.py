"""Client keys: spec -> function of (request, identity, client_ip), table tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from multidict import CIMultiDict

from pyproxyd.auth.identity import Consumer, Identity
from pyproxyd.keys import claim_text, compile_key


@dataclass
class Req:
    """A request as keys see it: headers (case-insensitive) and cookies."""

    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    cookies: dict[str, str] = field(default_factory=dict)


REQ = Req(
    CIMultiDict({"X-Client-ID": "c-42", "X-Empty": "", "Api-Version": "v2"}),
    {"session": "abc", "blank": ""},
)
JWT = Identity(
    {"sub": "alice", "plan": "pro", "groups": ["a", "b"], "n": 3, "ok": True},
    Consumer("alice", "vip"),
)
KEYED = Identity(None, Consumer("acme", "free"))
IP = "203.0.113.9"


@pytest.mark.parametrize(
    ("spec", "identity", "expected"),
    [
        ("ip", None, IP),
        ("header:X-Client-ID", None, "c-42"),
        ("header:x-client-id", None, "c-42"),  # header names are case-insensitive
        ("header:X-Missing", None, None),
        ("header:X-Empty", None, None),  # empty counts as absent
        ("cookie:session", None, "abc"),
        ("cookie:Session", None, None),  # cookie names are not
        ("cookie:blank", None, None),
        ("claim:sub", JWT, "alice"),
        ("claim:plan", JWT, "pro"),
        ("claim:groups", JWT, '["a","b"]'),
        ("claim:n", JWT, "3"),
        ("claim:ok", JWT, "true"),
        ("claim:missing", JWT, None),
        ("claim:sub", None, None),  # no verified token
        ("claim:sub", KEYED, None),  # an API key has no claims
        ("consumer", JWT, "alice"),
        ("consumer", KEYED, "acme"),
        ("consumer", None, None),
        ("consumer", Identity({"sub": "x"}), None),
        (["header:X-Missing", "consumer", "ip"], KEYED, "acme"),
        (["header:X-Client-ID", "consumer", "ip"], KEYED, "c-42"),
        (["claim:tenant", "cookie:blank", "ip"], JWT, IP),
        (["header:X-Missing", "claim:missing"], JWT, None),
        (["ip"], None, IP),
    ],
)
def test_keys(spec: str | list[str], identity: Identity | None, expected: str | None) -> None:
    assert compile_key(spec)(REQ, identity, IP) == expected


def test_no_client_ip_is_no_ip_key() -> None:
    assert compile_key("ip")(REQ, None, "") is None


@pytest.mark.parametrize("spec", ["", "ipv4", "header:", "claim", "cookie", "foo:bar", []])
def test_invalid_specs_are_refused(spec: Any) -> None:
    with pytest.raises(ValueError):
        compile_key(spec)


def test_compile_once_call_many() -> None:
    key = compile_key(["header:X-Client-ID", "ip"])
    other = Req(CIMultiDict({"X-Client-ID": "zzz"}))
    assert [key(REQ, None, IP), key(other, None, IP), key(Req(), None, IP)] == ["c-42", "zzz", IP]


@pytest.mark.parametrize(
    ("value", "text"),
    [("a", "a"), (1, "1"), (1.5, "1.5"), (False, "false"), ({"b": 1, "a": 2}, '{"a":2,"b":1}')],
)
def test_claim_text(value: Any, text: str) -> None:
    assert claim_text(value) == text

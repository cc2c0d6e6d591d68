"""The `cors` policy: which origins it allows, and the headers of its
preflight answers and of every other response (the Fetch standard's rules)."""

from __future__ import annotations

from typing import Any

import pytest

from pyproxyd.middleware.cors import Cors, cors_step, is_preflight
from pyproxyd.middleware.models import CorsMiddleware
from pyproxyd.middleware.views import Pairs, ResponseView
from tests.middleware import request_view

SPEC = dict(
    allow_origins=["https://app.example.com", "https://*.example.org", "http://localhost:3000"],
    allow_methods=["GET", "post", "DELETE"],
    allow_headers=["Authorization", "Content-Type"],
    expose_headers=["X-Request-ID", "RateLimit"],
    allow_credentials=True,
    max_age="10m",
)


def cors(**overrides: Any) -> Cors:
    return Cors(CorsMiddleware.model_validate({"type": "cors", **SPEC, **overrides}))


def preflight(policy: Cors, origin: str, asked: str | None = None) -> dict[str, str]:
    client = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    if asked is not None:
        client["Access-Control-Request-Headers"] = asked
    reply = policy.preflight(request_view(method="OPTIONS", client=client))
    assert (reply.status, reply.body) == (204, b"")
    names = [n.lower() for n, _ in reply.pairs]
    assert len(names) == len(set(names)), reply.pairs  # each header once
    return {n.decode(): v.decode() for n, v in reply.pairs}


def respond(policy: Cors, origin: str | None, pairs: Pairs | None = None) -> Pairs:
    view = request_view(client={} if origin is None else {"Origin": origin})
    resp = ResponseView(200, pairs if pairs is not None else [(b"Content-Type", b"text/plain")])
    policy.on_response(view, resp)
    return resp.pairs


# -- which origins ------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.com",
        "HTTPS://APP.Example.COM",  # scheme and host are case-insensitive
        "http://localhost:3000",
        "https://a.example.org",
        "https://a.b.c.example.org",  # any depth
        "https://A.Example.ORG",
    ],
)
def test_allowed_origins(origin: str) -> None:
    assert cors().allows(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "https://example.org",  # the apex is not a subdomain
        "https://.example.org",  # nothing before the dot
        "https://evilexample.org",
        "https://evil-example.org",
        "https://example.org.evil.com",
        "http://a.example.org",  # another scheme
        "http://app.example.com",
        "https://app.example.com:8443",  # another port
        "https://a.example.org:8443",
        "http://localhost:3001",
        "http://localhost",
        "https://localhost:3000",
        "https://app.example.com.evil.com",
        "https://x/.example.org",  # a path is no origin
        "https://x:1.example.org",
        "null",
        "",
    ],
)
def test_refused_origins(origin: str) -> None:
    assert not cors().allows(origin)


def test_a_wildcard_with_a_port_needs_that_port() -> None:
    policy = cors(allow_origins=["https://*.example.org:8443"])
    assert policy.allows("https://a.b.example.org:8443")
    assert not policy.allows("https://a.example.org")
    assert not policy.allows("https://a.example.org:9443")
    assert not policy.allows("https://example.org:8443")


def test_star_allows_every_origin() -> None:
    policy = cors(allow_origins=["*"], allow_credentials=False)
    for origin in ["https://anything.test", "http://localhost:1", "null"]:
        assert policy.allows(origin)


# -- preflight ----------------------------------------------------------------------


def test_is_preflight_needs_options_origin_and_a_requested_method() -> None:
    both = {"origin": "https://a.test", "access-control-request-method": "PUT"}
    assert is_preflight("OPTIONS", both)
    assert not is_preflight("GET", both)
    assert not is_preflight("OPTIONS", {"origin": "https://a.test"})
    assert not is_preflight("OPTIONS", {"access-control-request-method": "PUT"})


def test_an_allowed_preflight_with_credentials_echoes_the_origin() -> None:
    got = preflight(cors(), "https://a.example.org", asked="authorization")
    assert got == {
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        "Access-Control-Allow-Origin": "https://a.example.org",
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": "GET, POST, DELETE",
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Max-Age": "600",
    }


def test_a_refused_preflight_gets_no_access_control_headers() -> None:
    got = preflight(cors(), "https://evil.test", asked="authorization")
    assert got == {"Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}


def test_star_without_credentials_answers_star() -> None:
    got = preflight(cors(allow_origins=["*"], allow_credentials=False), "https://x.test")
    assert got["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in got


def test_star_with_credentials_echoes_the_origin_never_star() -> None:
    policy = cors(allow_origins=["*"], allow_credentials=True)
    got = preflight(policy, "https://x.test")
    assert got["Access-Control-Allow-Origin"] == "https://x.test"
    assert got["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in got["Vary"]


def test_allow_headers_star_echoes_the_requested_headers() -> None:
    policy = cors(allow_headers=["*"])
    got = preflight(policy, "https://app.example.com", asked="x-trace, content-type")
    assert got["Access-Control-Allow-Headers"] == "x-trace, content-type"


def test_allow_headers_star_with_nothing_requested_sends_none() -> None:
    got = preflight(cors(allow_headers=["*"]), "https://app.example.com")
    assert "Access-Control-Allow-Headers" not in got


def test_allow_headers_star_beside_names_falls_back_to_the_names() -> None:
    policy = cors(allow_headers=["*", "X-Client-ID"])
    assert preflight(policy, "https://app.example.com")["Access-Control-Allow-Headers"] == (
        "X-Client-ID"
    )
    got = preflight(policy, "https://app.example.com", asked="x-other")
    assert got["Access-Control-Allow-Headers"] == "x-other"


def test_no_allow_headers_sends_none() -> None:
    got = preflight(cors(allow_headers=[]), "https://app.example.com", asked="x-other")
    assert "Access-Control-Allow-Headers" not in got


@pytest.mark.parametrize(("max_age", "want"), [("10m", "600"), ("1h", "3600"), (90, "90")])
def test_max_age_is_whole_seconds(max_age: object, want: str) -> None:
    assert (
        preflight(cors(max_age=max_age), "https://app.example.com")["Access-Control-Max-Age"]
        == want
    )


def test_no_max_age_sends_none() -> None:
    got = preflight(cors(max_age=None), "https://app.example.com")
    assert "Access-Control-Max-Age" not in got


def test_default_methods() -> None:
    policy = Cors(CorsMiddleware(type="cors", allow_origins=["https://a.test"]))
    got = preflight(policy, "https://a.test")
    assert got["Access-Control-Allow-Methods"] == "GET, HEAD, POST"
    assert "Access-Control-Allow-Credentials" not in got


# -- every other response -----------------------------------------------------------


def test_an_allowed_origin_gets_origin_credentials_expose_and_vary() -> None:
    assert respond(cors(), "https://app.example.com") == [
        (b"Content-Type", b"text/plain"),
        (b"Vary", b"Origin"),
        (b"Access-Control-Allow-Origin", b"https://app.example.com"),
        (b"Access-Control-Allow-Credentials", b"true"),
        (b"Access-Control-Expose-Headers", b"X-Request-ID, RateLimit"),
    ]


def test_a_refused_origin_gets_only_vary() -> None:
    assert respond(cors(), "https://evil.test") == [
        (b"Content-Type", b"text/plain"),
        (b"Vary", b"Origin"),
    ]


def test_no_origin_gets_only_vary() -> None:
    # A cache must not serve this answer to a browser that sends an Origin.
    assert respond(cors(), None) == [(b"Content-Type", b"text/plain"), (b"Vary", b"Origin")]


def test_star_without_credentials_sends_star_and_no_vary() -> None:
    policy = cors(allow_origins=["*"], allow_credentials=False, expose_headers=[])
    assert respond(policy, "https://x.test") == [
        (b"Content-Type", b"text/plain"),
        (b"Access-Control-Allow-Origin", b"*"),
    ]


def test_star_with_credentials_echoes_the_origin_on_responses() -> None:
    pairs = respond(cors(allow_origins=["*"], allow_credentials=True), "https://x.test")
    assert (b"Access-Control-Allow-Origin", b"https://x.test") in pairs
    assert (b"Access-Control-Allow-Origin", b"*") not in pairs
    assert (b"Vary", b"Origin") in pairs


def test_the_upstreams_own_access_control_headers_are_removed() -> None:
    upstream: Pairs = [
        (b"access-control-allow-origin", b"*"),
        (b"X-Keep", b"1"),
        (b"Access-Control-Allow-Credentials", b"false"),
        (b"ACCESS-CONTROL-EXPOSE-HEADERS", b"X-Secret"),
    ]
    pairs = respond(cors(), "https://app.example.com", upstream)
    assert pairs == [
        (b"X-Keep", b"1"),
        (b"Vary", b"Origin"),
        (b"Access-Control-Allow-Origin", b"https://app.example.com"),
        (b"Access-Control-Allow-Credentials", b"true"),
        (b"Access-Control-Expose-Headers", b"X-Request-ID, RateLimit"),
    ]


def test_the_upstreams_access_control_headers_go_for_a_refused_origin_too() -> None:
    upstream: Pairs = [(b"Access-Control-Allow-Origin", b"*")]
    assert respond(cors(), "https://evil.test", upstream) == [(b"Vary", b"Origin")]


def test_an_upstream_vary_is_kept_beside_origin() -> None:
    pairs = respond(cors(), "https://app.example.com", [(b"Vary", b"Accept-Encoding")])
    assert [v for n, v in pairs if n == b"Vary"] == [b"Accept-Encoding", b"Origin"]


def test_no_expose_headers_sends_none() -> None:
    pairs = respond(cors(expose_headers=[]), "https://app.example.com")
    assert not any(n == b"Access-Control-Expose-Headers" for n, _ in pairs)


def test_cors_step_runs_on_response_only() -> None:
    step, policy = cors_step("cors", CorsMiddleware.model_validate({"type": "cors", **SPEC}))
    assert (step.name, step.kind, step.on_request) == ("cors", "cors", None)
    assert step.on_response == policy.on_response

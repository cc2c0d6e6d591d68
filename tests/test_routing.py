"""Table tests for pyproxyd.routing: normalisation, the trie, predicates, explain."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from multidict import CIMultiDict, MultiDict

from pyproxyd.errors import BadRequest
from pyproxyd.routing import (
    Candidate,
    Match,
    Router,
    RouteRule,
    compile_rewrite,
    normalise_path,
    strip_segments,
)

NO_HEADERS: CIMultiDict[str] = CIMultiDict()
NO_QUERY: MultiDict[str] = MultiDict()


def winner(
    router: Router,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    claims: Mapping[str, Any] | None = None,
) -> str | None:
    m = router.match(
        method,
        path,
        CIMultiDict(headers or {}),
        MultiDict(query or {}),
        (lambda: claims) if claims is not None else None,
    )
    return m.rule.id if m is not None else None


# ------------------------------------------------------------ normalisation

NORMALISED = [
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/a/b/", "/a/b/"),  # a trailing slash is kept
    ("/a/./b", "/a/b"),
    ("/a/../b", "/b"),
    ("/a/b/..", "/a/"),  # RFC 3986 5.2.4: a final dot-segment leaves a "/"
    ("/a/b/.", "/a/b/"),
    ("/a/..", "/"),
    ("/.", "/"),
    ("/public/../admin", "/admin"),
    ("/a//b", "/a/b"),
    ("//a///b//", "/a/b/"),
    ("/a/%2e%2e/b", "/b"),
    ("/a/%2E/b", "/a/b"),
    # %2F is not a separator: one segment, for matching and upstream alike
    ("/public/..%2Fadmin", "/public/..%2Fadmin"),
    ("/public%2F..%2Fadmin", "/public%2F..%2Fadmin"),
    ("/public/%2e%2e%2fadmin", "/public/..%2Fadmin"),
    ("/a%2Fb", "/a%2Fb"),
    ("/a%2f%2Fb", "/a%2F%2Fb"),
    ("/a/..%2F..%2Fb", "/a/..%2F..%2Fb"),
    ("/%7Euser", "/~user"),
    ("/%7euser", "/~user"),
    ("/%41%62%2D%5F%2e", "/Ab-_."),
    ("/a%3ab", "/a%3Ab"),  # a reserved escape stays encoded, hex upper-cased
    ("/a%3Ab", "/a%3Ab"),
    ("/100%25", "/100%25"),  # "%25" is not decoded, so nothing is decoded twice
    ("/a%20b", "/a%20b"),
    ("/caf\u00e9", "/caf%C3%A9"),  # raw non-ASCII is percent-encoded as UTF-8
    ('/a"b<c>', "/a%22b%3Cc%3E"),
    ("/a\\b", "/a%5Cb"),
    ("/\udcff", "/%FF"),  # a server's surrogateescape-decoded byte goes back as that byte
    ("/a/...", "/a/..."),  # not a dot-segment
    ("/a/..b/.c", "/a/..b/.c"),
    ("/.well-known/acme", "/.well-known/acme"),
    ("/a;b=c/d:e@f/!$&'()*+,", "/a;b=c/d:e@f/!$&'()*+,"),  # sub-delims, ":" and "@" stay
]


@pytest.mark.parametrize(("raw", "expected"), NORMALISED)
def test_normalise_path(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), NORMALISED)
def test_normalise_path_is_idempotent(raw: str, expected: str) -> None:
    # What is sent upstream, normalised again, must not change (no double decoding).
    assert normalise_path(normalise_path(raw)) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "/..",
        "/../a",
        "/a/../../b",
        "/a/b/../../..",
        "/%2e%2e",
        "/%2E%2E/etc/passwd",
        "",  # not starting with "/"
        "a/b",
        "*",  # asterisk-form is not a path
        "http://example.com/a",
        "/a%zz",  # bad escapes
        "/a%4",
        "/a%",
        "/a%g0",
        "/a%+1",  # int("+1", 16) would accept this
        "/a%00b",  # encoded NUL
        "/a b",  # space, controls
        "/a\tb",
        "/a\nb",
        "/a\x00b",
        "/a\x7fb",
        "/\ud800",  # a lone surrogate is not UTF-8
    ],
)
def test_normalise_path_rejects(raw: str) -> None:
    with pytest.raises(BadRequest):
        normalise_path(raw)


@pytest.mark.parametrize(
    "raw", ["/", "/api/v1/users/42", "/a/b/", "/a-b_c~d.e/f;g=h", "/a/.b", "/a/b.c"]
)
def test_normalise_path_fast_path_returns_the_same_string(raw: str) -> None:
    fresh = "".join(list(raw))  # a distinct object, so `is` proves no copy was made
    assert normalise_path(fresh) is fresh


# --------------------------------------------------------- trie specificity

SPEC_RULES = [
    RouteRule("users-v2", "/api/users/**", headers=(("api-version", "v2"),)),
    RouteRule("users-any", "/api/users/**"),
    RouteRule("user-by-id", "/api/users/{id}", methods=frozenset({"GET"})),
    RouteRule("api", "/api/**"),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected"),
    [
        ("GET", "/api/users/7", {}, "user-by-id"),
        ("POST", "/api/users/7", {}, "users-any"),  # {id} loses on method: back to **
        ("POST", "/api/users/7", {"Api-Version": "v2"}, "users-v2"),
        ("GET", "/api/users/7", {"Api-Version": "v2"}, "user-by-id"),  # more specific first
        ("GET", "/api/users", {}, "users-any"),
        ("GET", "/api/orders", {}, "api"),
        ("GET", "/api", {}, "api"),
        ("GET", "/other", {}, None),
    ],
)
def test_spec_example(method: str, path: str, headers: dict[str, str], expected: str) -> None:
    assert winner(Router(SPEC_RULES), method, path, headers) == expected


SPECIFICITY_RULES = [
    # Listed least specific first, so that file order cannot be what decides.
    RouteRule("all", "/**"),
    RouteRule("a-rest", "/a/**"),
    RouteRule("a-b-rest", "/a/b/**"),
    RouteRule("a-var", "/a/{x}"),
    RouteRule("a-exact", "/a/exact"),
    RouteRule("a-var-c", "/a/{x}/c"),
    RouteRule("a-b-c", "/a/b/c"),
    RouteRule("var-z", "/{x}/z"),
    RouteRule("root", "/"),
]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/a/exact", "a-exact"),  # exact beats {var}
        ("/a/other", "a-var"),  # {var} beats **
        # Segment by segment, leftmost first: the literal "b" of /a/b/** beats {x}
        # even though ** matches zero segments here.
        ("/a/b", "a-b-rest"),
        ("/a/b/c", "a-b-c"),
        ("/a/q/c", "a-var-c"),
        ("/a/b/c/d", "a-b-rest"),  # longer ** prefix beats shorter
        ("/a/q/c/d", "a-rest"),
        ("/a/z", "a-var"),  # segment by segment: exact "a" beats "{x}" at the first segment
        ("/q/z", "var-z"),
        ("/a", "a-rest"),  # ** matches its own prefix
        ("/a/", "a-rest"),  # {x} needs a non-empty segment
        ("/", "root"),
        ("/q", "all"),
    ],
)
def test_most_specific_pattern_wins(path: str, expected: str) -> None:
    assert winner(Router(SPECIFICITY_RULES), "GET", path) == expected


@pytest.mark.parametrize(
    ("path", "matches"),
    [
        ("/api/users", True),
        ("/api/users/", True),
        ("/api/users/7", True),
        ("/api/users/7/x/y", True),
        ("/api/usersx", False),
        ("/api", False),
        ("/", False),
    ],
)
def test_double_star_matches_its_prefix_and_everything_below(path: str, matches: bool) -> None:
    router = Router([RouteRule("users", "/api/users/**")])
    assert (winner(router, "GET", path) == "users") is matches


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/a", "/a", True),
        ("/a", "/a/", False),  # the trailing slash is significant for exact patterns
        ("/a/", "/a/", True),
        ("/a/", "/a", False),
        ("/a/{x}", "/a/", False),  # {var} and * match one non-empty segment
        ("/a/*", "/a/", False),
        ("/a/*", "/a/b", True),
        ("/a/*", "/a/b/c", False),
        ("/", "/", True),
        ("/", "/a", False),
        ("/**", "/", True),
        ("/**", "/a/b", True),
    ],
)
def test_pattern_shapes(pattern: str, path: str, matches: bool) -> None:
    assert (winner(Router([RouteRule("r", pattern)]), "GET", path) == "r") is matches


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        ("POST", {}, "exact-post"),
        ("GET", {}, "var-get"),  # backtracks from the exact branch to the {x} branch
        ("PUT", {"X-Beta": "1"}, "beta-rest"),
        ("PUT", {}, "a-rest"),  # everything more specific refused
    ],
)
def test_backtracking_to_less_specific_on_predicate_failure(
    method: str, headers: dict[str, str], expected: str
) -> None:
    router = Router(
        [
            RouteRule("a-rest", "/a/**"),
            RouteRule("var-get", "/a/{x}/c", methods=frozenset({"GET"})),
            RouteRule("exact-post", "/a/b/c", methods=frozenset({"POST"})),
            RouteRule("beta-rest", "/a/b/**", headers=(("x-beta", "1"),)),
        ]
    )
    assert winner(router, method, "/a/b/c", headers) == expected


def test_backtracking_leaves_an_exact_branch_whose_rest_refuses() -> None:
    # /a/b/** is walked first (exact "b"), its rule refuses, then /a/{x}/c is tried.
    router = Router(
        [
            RouteRule("b-beta", "/a/b/**", headers=(("x-beta", "1"),)),
            RouteRule("var-c", "/a/{x}/c"),
        ]
    )
    assert winner(router, "GET", "/a/b/c") == "var-c"
    assert winner(router, "GET", "/a/b/c", {"X-Beta": "1"}) == "b-beta"


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([RouteRule("var", "/a/{x}"), RouteRule("star", "/a/*")], "var"),
        ([RouteRule("star", "/a/*"), RouteRule("var", "/a/{x}")], "star"),
        ([RouteRule("first", "/a/b"), RouteRule("second", "/a/b")], "first"),
        (
            [
                RouteRule("first-refuses", "/a/b", methods=frozenset({"POST"})),
                RouteRule("second", "/a/b"),
                RouteRule("third", "/a/b"),
            ],
            "second",
        ),
    ],
)
def test_file_order_decides_at_the_same_specificity(rules: list[RouteRule], expected: str) -> None:
    assert winner(Router(rules), "GET", "/a/b") == expected


@pytest.mark.parametrize(
    ("pattern", "raw", "expected"),
    [
        ("/v1/user/{id}", "/v1/user/7", {"id": "7"}),
        ("/t/{tenant}/f/{name}", "/t/acme/f/a.txt", {"tenant": "acme", "name": "a.txt"}),
        ("/a/*/{x}", "/a/skip/kept", {"x": "kept"}),  # * is not captured
        ("/t/{tenant}/**", "/t/acme/x/y", {"tenant": "acme"}),
        ("/t/{tenant}/**", "/t/acme", {"tenant": "acme"}),
        ("/v1/user/{id}", "/v1/user/%7Eann", {"id": "~ann"}),  # from the normalised path
        ("/v1/user/{id}", "/v1/user/a%3ab", {"id": "a%3Ab"}),
        ("/v1/user/{id}", "/v1/x/../user/42", {"id": "42"}),
        ("/exact", "/exact", {}),
    ],
)
def test_captured_params(pattern: str, raw: str, expected: dict[str, str]) -> None:
    m = Router([RouteRule("r", pattern)]).match("GET", normalise_path(raw), NO_HEADERS, NO_QUERY)
    assert m is not None
    assert m.params == expected


def test_each_match_gets_its_own_params_dict() -> None:
    router = Router([RouteRule("r", "/u/{id}")])
    first = router.match("GET", "/u/1", NO_HEADERS, NO_QUERY)
    assert first is not None
    first.params["id"] = "changed"
    again = router.match("GET", "/u/1", NO_HEADERS, NO_QUERY)
    assert again is not None and again.params == {"id": "1"}


def test_match_returns_the_rule_and_its_target() -> None:
    payload = object()
    rule = RouteRule("r", "/x", target=payload)
    m = Router([rule]).match("GET", "/x", NO_HEADERS, NO_QUERY)
    assert isinstance(m, Match)
    assert m.rule is rule and m.rule.target is payload


@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        ("/caf\u00e9", "/caf%C3%A9"),  # literals are compared in normal form
        ("/%7Euser", "/~user"),
        ("/a%3ab", "/a%3Ab"),
        ("/a%2fb", "/a%2Fb"),  # an encoded "/" is part of a segment
    ],
)
def test_literal_segments_are_normalised_like_paths(pattern: str, path: str) -> None:
    router = Router([RouteRule("r", pattern)])
    assert winner(router, "GET", normalise_path(path)) == "r"


@pytest.mark.parametrize(
    "pattern",
    [
        "api/users",
        "",
        "/a/**/b",
        "/a/{x}/{x}",
        "/a/{}",
        "/a/{1x}",
        "/a/{x",
        "/a/b*",
        "/a/***",
        "/a//b",  # can never match a normalised path
        "/a/../b",
        "/a/./b",
        "/a/%2e%2e/b",
        "/a b",
        "/a%zz",
    ],
)
def test_invalid_patterns_raise_value_error(pattern: str) -> None:
    with pytest.raises(ValueError, match="path pattern"):
        Router([RouteRule("bad", pattern)])


# -------------------------------------------------------------- predicates


@pytest.mark.parametrize(
    ("method", "expected"),
    [("GET", "read"), ("HEAD", "read"), ("POST", "write"), ("DELETE", "fallback")],
)
def test_methods_predicate(method: str, expected: str) -> None:
    router = Router(
        [
            RouteRule("read", "/r", methods=frozenset({"GET", "HEAD"})),
            RouteRule("write", "/r", methods=frozenset({"POST", "PUT"})),
            RouteRule("fallback", "/r"),
        ]
    )
    assert winner(router, method, "/r") == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Tenant": "acme"}, "tenant"),
        ({"x-tenant": "acme"}, "tenant"),  # names are case-insensitive
        ({"X-TENANT": "acme"}, "tenant"),
        ({"X-Tenant": "ACME"}, None),  # values are not
        ({"X-Tenant": "ACME", "X-Debug": "1"}, "debug"),
        ({"X-Tenant": "acme", "X-Debug": "1"}, "tenant"),
        ({"X-Debug": ""}, "debug"),  # "*": present, whatever the value
        ({"X-Debug": "yes"}, "debug"),
        ({}, None),
    ],
)
def test_headers_predicate(headers: dict[str, str], expected: str | None) -> None:
    router = Router(
        [
            RouteRule("tenant", "/h", headers=(("x-tenant", "acme"),)),
            RouteRule("debug", "/h", headers=(("x-debug", None),)),
        ]
    )
    assert winner(router, "GET", "/h", headers) == expected


def test_all_header_predicates_must_hold() -> None:
    router = Router([RouteRule("both", "/h", headers=(("a", "1"), ("b", None)))])
    assert winner(router, "GET", "/h", {"A": "1", "B": "x"}) == "both"
    assert winner(router, "GET", "/h", {"A": "1"}) is None
    assert winner(router, "GET", "/h", {"B": "x"}) is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"v": "2"}, "v2"),
        ({"v": "3"}, None),
        ({"v": "3", "debug": "1"}, "debug"),
        ({"debug": ""}, "debug"),  # "*": present, even empty (?debug)
        ({"V": "2"}, None),  # query names are case-sensitive
        ({}, None),
    ],
)
def test_query_predicate(query: dict[str, str], expected: str | None) -> None:
    router = Router(
        [
            RouteRule("v2", "/q", query=(("v", "2"),)),
            RouteRule("debug", "/q", query=(("debug", None),)),
        ]
    )
    assert winner(router, "GET", "/q", query=query) == expected


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"groups": "employees"}, "internal"),  # equal
        ({"groups": ["staff", "employees"]}, "internal"),  # contained in a list claim
        ({"groups": ["staff"]}, "public"),
        ({"groups": "employees-and-more"}, "public"),
        ({"sub": "x"}, "public"),  # claim missing
        ({"level": 5}, "level-5"),  # compared as str
        ({"level": [4, 5]}, "level-5"),
        ({"admin": True}, "admin"),  # a JSON boolean reads as "true"
        ({"admin": False}, "public"),
    ],
)
def test_claims_predicate(claims: dict[str, Any], expected: str) -> None:
    router = Router(
        [
            RouteRule("internal", "/c", claims=(("groups", "employees"),)),
            RouteRule("level-5", "/c", claims=(("level", "5"),)),
            RouteRule("admin", "/c", claims=(("admin", "true"),)),
            RouteRule("public", "/c"),
        ]
    )
    assert winner(router, "GET", "/c", claims=claims) == expected


@pytest.mark.parametrize("claims_fn", [None, lambda: None], ids=["no-callable", "no-token"])
def test_claims_predicate_fails_without_verified_claims(claims_fn: Any) -> None:
    router = Router(
        [RouteRule("internal", "/c", claims=(("groups", "employees"),)), RouteRule("pub", "/**")]
    )
    m = router.match("GET", "/c", NO_HEADERS, NO_QUERY, claims_fn)
    assert m is not None and m.rule.id == "pub"


class CountingClaims:
    def __init__(self, claims: Mapping[str, Any] | None) -> None:
        self.claims = claims
        self.calls = 0

    def __call__(self) -> Mapping[str, Any] | None:
        self.calls += 1
        return self.claims


def test_claims_callable_is_called_at_most_once_per_match() -> None:
    # Three claim rules on three different nodes all refuse: one call.
    router = Router(
        [
            RouteRule("exact", "/a/b", claims=(("g", "1"),)),
            RouteRule("var", "/a/{x}", claims=(("g", "2"),)),
            RouteRule("rest", "/a/**", claims=(("g", "3"),)),
            RouteRule("rest-also", "/a/**", claims=(("h", "3"),)),
        ]
    )
    claims = CountingClaims({"g": "0"})
    assert router.match("GET", "/a/b", NO_HEADERS, NO_QUERY, claims) is None
    assert claims.calls == 1
    router.explain("GET", "/a/b", NO_HEADERS, NO_QUERY, claims)
    assert claims.calls == 2  # once more for the second call, not once per rule


def test_claims_callable_is_not_called_when_no_candidate_needs_it() -> None:
    router = Router(
        [
            RouteRule("plain", "/a/b"),
            RouteRule("claimed", "/a/**", claims=(("g", "1"),)),  # never reached
            RouteRule("post-only", "/p", methods=frozenset({"POST"}), claims=(("g", "1"),)),
            RouteRule("p-rest", "/p/**"),
        ]
    )
    claims = CountingClaims({"g": "1"})
    assert winner_with(router, "GET", "/a/b", claims) == "plain"
    assert winner_with(router, "GET", "/nowhere", claims) is None
    # The method refuses first, so the token is never needed.
    assert winner_with(router, "GET", "/p", claims) == "p-rest"
    assert claims.calls == 0
    assert winner_with(router, "GET", "/a/c", claims) == "claimed"
    assert claims.calls == 1


def winner_with(router: Router, method: str, path: str, claims: CountingClaims) -> str | None:
    m = router.match(method, path, NO_HEADERS, NO_QUERY, claims)
    return m.rule.id if m is not None else None


# ----------------------------------------------------------------- explain


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected_match", "expected"),
    [
        (
            "GET",
            "/api/users/7",
            {},
            "user-by-id",
            [
                ("user-by-id", "/api/users/{id}", "selected"),
                ("users-v2", "/api/users/**", "less specific than the winner"),
                ("users-any", "/api/users/**", "less specific than the winner"),
                ("api", "/api/**", "less specific than the winner"),
            ],
        ),
        (
            "POST",
            "/api/users/7",
            {},
            "users-any",
            [
                ("user-by-id", "/api/users/{id}", "method POST not in [GET]"),
                ("users-v2", "/api/users/**", "header api-version: expected 'v2', got None"),
                ("users-any", "/api/users/**", "selected"),
                ("api", "/api/**", "less specific than the winner"),
            ],
        ),
        (
            "POST",
            "/api/users/7",
            {"Api-Version": "v2"},
            "users-v2",
            [
                ("user-by-id", "/api/users/{id}", "method POST not in [GET]"),
                ("users-v2", "/api/users/**", "selected"),
                ("users-any", "/api/users/**", "same pattern as the winner, later in file order"),
                ("api", "/api/**", "less specific than the winner"),
            ],
        ),
        (
            "GET",
            "/api/orders",  # rules whose path does not match are not listed
            {},
            "api",
            [("api", "/api/**", "selected")],
        ),
        ("GET", "/elsewhere", {}, None, []),
    ],
)
def test_explain_lists_winner_and_losers_with_reasons(
    method: str,
    path: str,
    headers: dict[str, str],
    expected_match: str | None,
    expected: list[tuple[str, str, str]],
) -> None:
    ex = Router(SPEC_RULES).explain(method, path, CIMultiDict(headers), NO_QUERY)
    assert (ex.match.rule.id if ex.match is not None else None) == expected_match
    assert ex.candidates == [Candidate(*c) for c in expected]


def test_explain_without_a_winner_gives_every_reason() -> None:
    router = Router(
        [
            RouteRule("hdr", "/x/{id}", headers=(("x-k", None),)),
            RouteRule("qry", "/x/**", query=(("v", "2"),)),
            RouteRule("clm", "/x/**", claims=(("groups", "employees"),)),
            RouteRule("clm2", "/**", claims=(("groups", "admins"),)),
        ]
    )
    ex = router.explain(
        "GET", "/x/1", NO_HEADERS, MultiDict({"v": "3"}), lambda: {"groups": ["staff"]}
    )
    assert ex.match is None
    assert [c.outcome for c in ex.candidates] == [
        "header x-k: expected present, got None",
        "query v: expected '2', got '3'",
        "claim groups: expected 'employees', got ['staff']",
        "claim groups: expected 'admins', got ['staff']",
    ]
    no_token = router.explain("GET", "/x/1", NO_HEADERS, MultiDict({"v": "2"}), lambda: None)
    assert no_token.candidates[1].outcome == "selected"
    assert no_token.match is not None and no_token.match.rule.id == "qry"


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/api/users/7", {}),
        ("POST", "/api/users/7", {}),
        ("POST", "/api/users/7", {"Api-Version": "v2"}),
        ("GET", "/api", {}),
        ("GET", "/nope", {}),
    ],
)
def test_explain_agrees_with_match(method: str, path: str, headers: dict[str, str]) -> None:
    router = Router(SPEC_RULES)
    h = CIMultiDict(headers)
    assert router.explain(method, path, h, NO_QUERY).match == router.match(
        method, path, h, NO_QUERY
    )


# ------------------------------------------------------------------- table


def test_table_lists_routes_in_specificity_order() -> None:
    router = Router(
        [
            RouteRule("api", "/api/**"),
            RouteRule("by-id", "/api/users/{id}", methods=frozenset({"PUT", "GET"})),
            RouteRule("me", "/api/users/me", headers=(("x-debug", None), ("x-v", "2"))),
            RouteRule("health", "/healthz", query=(("full", None),), claims=(("g", "ops"),)),
        ]
    )
    rows = router.table()
    assert [r["id"] for r in rows] == ["me", "by-id", "api", "health"]
    assert rows[0] == {
        "id": "me",
        "pattern": "/api/users/me",
        "methods": None,
        "headers": {"x-debug": "*", "x-v": "2"},
        "query": {},
        "claims": {},
        "file_order": 2,
    }
    assert rows[1]["methods"] == ["GET", "PUT"]
    assert rows[3]["query"] == {"full": "*"} and rows[3]["claims"] == {"g": "ops"}
    assert len(router) == 4


# ------------------------------------------------------------------- scale


def big_rules(n_services: int) -> list[RouteRule]:
    rules = []
    for s in range(n_services):
        rules += [
            RouteRule(f"{s}-v2", f"/svc{s}/v1/items/{{id}}", headers=(("x-v", "2"),)),
            RouteRule(f"{s}-items", f"/svc{s}/v1/items/{{id}}", methods=frozenset({"GET"})),
            RouteRule(f"{s}-health", f"/svc{s}/v1/health"),
            RouteRule(f"{s}-orders", f"/svc{s}/v1/users/{{uid}}/orders/*"),
            RouteRule(f"{s}-all", f"/svc{s}/**"),
        ]
    return rules


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected", "params"),
    [
        ("GET", "/svc0/v1/items/1", {}, "0-items", {"id": "1"}),
        ("GET", "/svc1999/v1/items/9", {"X-V": "2"}, "1999-v2", {"id": "9"}),
        ("POST", "/svc1234/v1/items/9", {}, "1234-all", {}),
        ("GET", "/svc777/v1/health", {}, "777-health", {}),
        ("GET", "/svc42/v1/users/u1/orders/o2", {}, "42-orders", {"uid": "u1"}),
        ("GET", "/svc1500/anything/else", {}, "1500-all", {}),
        ("GET", "/svc2000/v1/health", {}, None, None),
    ],
)
def test_router_of_10000_routes(
    big_router: Router,
    method: str,
    path: str,
    headers: dict[str, str],
    expected: str | None,
    params: dict[str, str] | None,
) -> None:
    assert len(big_router) == 10_000
    m = big_router.match(method, path, CIMultiDict(headers), NO_QUERY)
    assert (m.rule.id if m else None) == expected
    assert (m.params if m else None) == params


@pytest.fixture(scope="module")
def big_router() -> Router:
    return Router(big_rules(2000))


class CountingHeaders(CIMultiDict[str]):
    gets = 0

    def get(self, key: str, default: Any = None) -> Any:
        CountingHeaders.gets += 1
        return super().get(key, default)


def test_lookup_only_evaluates_rules_on_the_request_path(big_router: Router) -> None:
    # 2,000 rules have a header predicate; a lookup consults only the one whose
    # path pattern matches, which is what keeps the cost flat as routes grow.
    CountingHeaders.gets = 0
    m = big_router.match("GET", "/svc1999/v1/items/9", CountingHeaders(), NO_QUERY)
    assert m is not None and m.rule.id == "1999-items"
    assert CountingHeaders.gets == 1


# ---------------------------------------------------------- upstream paths


@pytest.mark.parametrize(
    ("path", "n", "expected"),
    [
        ("/api/users/7", 1, "/users/7"),
        ("/api/users/7", 2, "/7"),
        ("/api/users/", 1, "/users/"),  # the trailing slash is kept
        ("/api", 1, "/"),
        ("/api/", 1, "/"),
        ("/a/b", 2, "/"),
        ("/a/b", 5, "/"),
        ("/", 1, "/"),
        ("/a/b", 0, "/a/b"),
    ],
)
def test_strip_segments(path: str, n: int, expected: str) -> None:
    assert strip_segments(path, n) == expected


@pytest.mark.parametrize(
    ("template", "params", "expected"),
    [
        ("/users/{id}", {"id": "7"}, "/users/7"),
        ("/t/{tenant}/u/{id}", {"tenant": "acme", "id": "7"}, "/t/acme/u/7"),
        ("/u/{id}/{id}", {"id": "7"}, "/u/7/7"),
        ("/static", {}, "/static"),
        ("/lit/{{x}}", {}, "/lit/{x}"),
        ("/u/{id}", {"id": "a%3Ab"}, "/u/a%3Ab"),  # inserted as is, not re-encoded
    ],
)
def test_compile_rewrite(template: str, params: dict[str, str], expected: str) -> None:
    assert compile_rewrite(template)(params) == expected


@pytest.mark.parametrize(
    "template", ["/u/{0}", "/u/{}", "/u/{a.b}", "/u/{a!r}", "/u/{a:>3}", "/u/{a", "/u/{\u00e9}"]
)
def test_compile_rewrite_rejects_anything_but_bare_names(template: str) -> None:
    with pytest.raises(ValueError, match="rewrite template"):
        compile_rewrite(template)

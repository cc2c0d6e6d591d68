"""Templates of header values and redirect targets, rendered from the
request view, and header_value's cleaning of what they render."""

from __future__ import annotations

import re

import pytest

from pyproxyd.middleware.models import PLACEHOLDERS, check_template
from pyproxyd.middleware.template import Template, header_value
from tests.middleware import request_view

VIEW = dict(
    method="POST",
    path="/api/items/7",
    query="a=1&b=2",
    host="gw.example.com:8443",
    client_ip="198.51.100.9",
    route="items",
    request_id="0af7651916cd43dd",
)


def render(text: str, **kw: object) -> str:
    return Template(text).render(request_view(**{**VIEW, **kw}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("{route}", "items"),
        ("{request_id}", "0af7651916cd43dd"),
        ("{client_ip}", "198.51.100.9"),
        ("{method}", "POST"),
        ("{host}", "gw.example.com:8443"),
        ("{query}", "a=1&b=2"),
    ],
)
def test_each_placeholder_renders_its_field(text: str, want: str) -> None:
    assert render(text) == want


def test_every_plain_placeholder_is_covered_above() -> None:
    assert set(PLACEHOLDERS) == {
        "path",
        "route",
        "request_id",
        "client_ip",
        "method",
        "host",
        "query",
    }


def test_path_is_the_target_after_strip_prefix_not_the_client_path() -> None:
    view = request_view(**VIEW)  # type: ignore[arg-type]
    view.target = "/items/7"  # what prepare.py sets after strip_prefix = 1
    assert (
        Template("https://docs.example.com{path}").render(view)
        == "https://docs.example.com/items/7"
    )


def test_path_defaults_to_the_request_path() -> None:
    assert render("{path}") == "/api/items/7"


def test_literals_and_placeholders_mix_in_order() -> None:
    assert render("{method} {route} via {client_ip}!") == "POST items via 198.51.100.9!"


def test_header_placeholder_reads_the_client_header_case_insensitively() -> None:
    assert render("ua={header:User-Agent}", client={"user-agent": "curl/8"}) == "ua=curl/8"


def test_a_missing_header_is_empty() -> None:
    assert render("[{header:X-Absent}]", client={"other": "x"}) == "[]"


def test_claim_placeholder_reads_the_verified_claim() -> None:
    assert render("user {claim:sub}", claims={"sub": "alice"}) == "user alice"


@pytest.mark.parametrize("claims", [None, {}, {"sub": None}], ids=["no-token", "absent", "null"])
def test_a_missing_claim_is_empty(claims: dict[str, object] | None) -> None:
    assert render("[{claim:sub}]", claims=claims) == "[]"


def test_a_list_claim_is_joined_with_commas() -> None:
    assert render("{claim:roles}", claims={"roles": ["admin", "ops", 3]}) == "admin,ops,3"
    assert render("{claim:roles}", claims={"roles": []}) == ""


def test_scalar_claims_render_as_json_would_spell_booleans() -> None:
    claims = {"admin": True, "guest": False, "level": 3}
    assert render("{claim:admin}/{claim:guest}/{claim:level}", claims=claims) == "true/false/3"


def test_doubled_braces_are_literal_braces() -> None:
    assert render("{{route}}={route}") == "{route}=items"
    assert Template("}}{{").constant == "}{"


def test_a_template_without_placeholders_is_a_constant() -> None:
    assert Template("max-age=31536000").constant == "max-age=31536000"
    assert Template("{route}").constant is None
    assert Template("").constant == ""


@pytest.mark.parametrize(
    "text", ["{nope}", "{route:x}", "{route!r}", "{claim}", "{header}", "{claim!r:sub}", "{0}"]
)
def test_config_refuses_an_unknown_placeholder(text: str) -> None:
    with pytest.raises(ValueError, match="unknown placeholder"):
        check_template(text)


@pytest.mark.parametrize("text", ["{route", "route}", "{{route}"])
def test_config_refuses_unbalanced_braces(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{text!r}: ")):
        check_template(text)


def test_config_accepts_what_renders() -> None:
    text = "{path}{route}{request_id}{client_ip}{method}{host}{query}{claim:a}{header:B}{{}}"
    assert check_template(text) == text


# -- header_value -------------------------------------------------------------------


def test_control_characters_become_spaces_so_no_header_line_is_injected() -> None:
    assert header_value("a\r\nX-Injected: 1") == b"a  X-Injected: 1"
    assert header_value("a\0b\x7fc\x1bd") == b"a b c d"


def test_tab_and_latin1_text_are_kept() -> None:
    assert header_value("a\tcafé") == "a\tcafé".encode("latin-1")


def test_text_beyond_latin1_is_replaced_not_an_error() -> None:
    assert header_value("日本") == b"??"


def test_a_claim_with_crlf_renders_to_a_clean_value() -> None:
    rendered = render("{claim:name}", claims={"name": "eve\r\nX-Admin: yes"})
    assert header_value(rendered) == b"eve  X-Admin: yes"

"""HeaderList, the response views and to_reply: what a python middleware
touches, over the byte pairs the gateway sends."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pyproxyd.middleware.views import HeaderList, Reply, ResponseView, to_reply
from tests.middleware import request_view


def headers(*pairs: tuple[bytes, bytes]) -> HeaderList:
    return HeaderList(list(pairs))


# -- HeaderList -------------------------------------------------------------------


def test_get_is_case_insensitive_and_gives_the_first_value() -> None:
    h = headers((b"X-Tag", b"one"), (b"x-tag", b"two"))
    assert h["x-TAG"] == "one"
    assert h.get("X-TAG") == "one"
    assert h.get("absent") is None
    with pytest.raises(KeyError):
        h["absent"]


def test_set_replaces_every_value_of_the_name_whatever_its_case() -> None:
    pairs = [(b"A", b"1"), (b"X-Tag", b"one"), (b"B", b"2"), (b"x-tag", b"two")]
    h = HeaderList(pairs)
    h["X-TAG"] = "three"
    assert pairs == [(b"A", b"1"), (b"B", b"2"), (b"X-TAG", b"three")]  # the list itself


def test_add_appends_beside_the_existing_values() -> None:
    h = headers((b"Via", b"1.0 a"))
    h.add("via", "1.1 b")
    assert h.getall("VIA") == ["1.0 a", "1.1 b"]
    assert h.pairs == [(b"Via", b"1.0 a"), (b"via", b"1.1 b")]


def test_getall_lists_every_value_in_order_and_nothing_for_an_absent_name() -> None:
    h = headers((b"Set-Cookie", b"a=1"), (b"Other", b"x"), (b"set-cookie", b"b=2"))
    assert h.getall("set-cookie") == ["a=1", "b=2"]
    assert h.getall("absent") == []


def test_del_removes_every_value_and_raises_keyerror_when_absent() -> None:
    h = headers((b"X-Debug", b"1"), (b"Keep", b"k"), (b"x-debug", b"2"))
    del h["x-DEBUG"]
    assert h.pairs == [(b"Keep", b"k")]
    with pytest.raises(KeyError):
        del h["X-Debug"]


def test_remove_says_whether_there_was_one() -> None:
    h = headers((b"Server", b"upstream"), (b"server", b"again"))
    assert h.remove("SERVER") is True
    assert h.pairs == []
    assert h.remove("Server") is False


def test_iteration_gives_each_name_once_in_first_seen_spelling() -> None:
    h = headers((b"Via", b"a"), (b"X-One", b"1"), (b"via", b"b"))
    assert list(h) == ["Via", "X-One"]
    assert len(h) == 2
    assert "VIA" in h and "x-one" in h and "absent" not in h
    assert 1 not in h  # not a str: no header of that name
    assert dict(h) == {"Via": "a", "X-One": "1"}


def test_all_lists_every_pair_with_repeats() -> None:
    h = headers((b"Via", b"a"), (b"via", b"b"))
    assert h.all() == [("Via", "a"), ("via", "b")]


def test_latin1_values_round_trip() -> None:
    h = headers()
    h["X-Name"] = "café"
    assert h.pairs == [(b"X-Name", "café".encode("latin-1"))]
    assert h["x-name"] == "café"


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\0b"])
def test_a_value_that_could_split_the_message_is_refused(value: str) -> None:
    h = headers((b"Keep", b"k"))
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        h["X-Bad"] = value
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        h.add("X-Bad", value)
    assert h.pairs == [(b"Keep", b"k")]  # nothing half-done


@pytest.mark.parametrize("name", ["", "X Bad", "X-Bad:", "X-Bad\r\n", "X(Bad)", "Ünïcode"])
def test_a_name_that_is_not_a_token_is_refused(name: str) -> None:
    h = headers()
    with pytest.raises(ValueError, match="not a valid header name"):
        h[name] = "v"
    with pytest.raises(ValueError, match="not a valid header name"):
        h.add(name, "v")
    assert h.pairs == []


def test_a_non_str_value_is_set_as_its_text() -> None:
    h = headers()
    h["X-Count"] = 3  # type: ignore[assignment]
    assert h.pairs == [(b"X-Count", b"3")]


# -- the views ----------------------------------------------------------------------


def test_request_view_headers_edit_the_pairs_going_upstream() -> None:
    pairs = [(b"Accept", b"*/*")]
    view = request_view(pairs=pairs)
    view.headers["X-Gateway"] = "pyproxyd"
    del view.headers["accept"]
    assert pairs == [(b"X-Gateway", b"pyproxyd")]
    assert view.headers is view.headers  # built once


def test_response_view_status_and_headers_are_changeable() -> None:
    pairs = [(b"Server", b"upstream")]
    resp = ResponseView(200, pairs)
    resp.status = 201
    resp.headers.remove("server")
    resp.headers.add("X-Done", "yes")
    assert (resp.status, pairs) == (201, [(b"X-Done", b"yes")])


# -- to_reply -----------------------------------------------------------------------


def test_a_dict_is_a_reply() -> None:
    reply = to_reply({"status": 418, "headers": {"X-Tea": "pot"}, "body": "short"})
    assert (reply.status, reply.pairs, reply.body) == (418, [(b"X-Tea", b"pot")], b"short")


def test_an_object_is_a_reply_and_header_pairs_are_accepted() -> None:
    answer = SimpleNamespace(status=503, headers=[("Retry-After", "5"), ("Via", "x")], body=b"no")
    reply = to_reply(answer)
    assert (reply.status, reply.pairs, reply.body) == (
        503,
        [(b"Retry-After", b"5"), (b"Via", b"x")],
        b"no",
    )


def test_body_and_headers_default_to_empty() -> None:
    for answer in ({"status": 204}, SimpleNamespace(status=204), {"status": 200, "body": None}):
        reply = to_reply(answer)
        assert (reply.pairs, reply.body) == ([], b"")


def test_a_str_body_is_sent_as_utf8_and_bytes_likes_are_taken() -> None:
    assert to_reply({"status": 200, "body": "été"}).body == "été".encode()
    assert to_reply({"status": 200, "body": bytearray(b"ab")}).body == b"ab"
    assert to_reply({"status": 200, "body": memoryview(b"cd")}).body == b"cd"


def test_a_reply_is_passed_through() -> None:
    reply = Reply(200, [], b"")
    assert to_reply(reply) is reply


@pytest.mark.parametrize(
    "answer",
    [
        {"status": "200"},
        {"status": True},
        {"status": 199},
        {"status": 600},
        {"body": "no status"},
        SimpleNamespace(status=200.0),
        "a string",
        42,
    ],
    ids=["str", "bool", "199", "600", "missing", "float", "plain-str", "int"],
)
def test_a_bad_status_is_not_a_response(answer: object) -> None:
    with pytest.raises(TypeError, match="not a response"):
        to_reply(answer)


@pytest.mark.parametrize("body", [123, ["a"], {"a": 1}])
def test_a_bad_body_type_is_refused(body: object) -> None:
    with pytest.raises(TypeError, match="body must be bytes or str"):
        to_reply({"status": 200, "body": body})


def test_a_reply_header_that_could_split_the_message_is_refused() -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        to_reply({"status": 200, "headers": {"X-A": "1\r\nX-B: 2"}})
    with pytest.raises(ValueError, match="not a valid header name"):
        to_reply({"status": 200, "headers": {"X A": "1"}})

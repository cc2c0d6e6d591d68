"""The package's import graph has no circles (issue 19), beyond a module and
the sibling it hands itself to, which name each other's types only."""

from __future__ import annotations

from scripts.import_graph import cycles, graph

# Each pair names the other's type only (under TYPE_CHECKING): the connection
# is handed its pool, the request its connection. The upstream HTTP/2
# connection is in two such pairs, so they are one circle: it is handed its
# pool, and hands itself to its streams (h2stream types it as the class, so
# that compiled code reaches its attributes directly).
TYPE_ONLY_PAIRS = [
    ["pyproxyd.frontend.connection", "pyproxyd.frontend.request"],
    ["pyproxyd.frontend.http2.connection", "pyproxyd.frontend.http2.stream"],
    ["pyproxyd.upstream.connection", "pyproxyd.upstream.pool"],
    ["pyproxyd.upstream.h2conn", "pyproxyd.upstream.h2pool", "pyproxyd.upstream.h2stream"],
]


def test_no_import_cycles_at_run_time() -> None:
    assert cycles(graph(types=False)) == []


def test_type_level_cycles_are_only_the_known_pairs() -> None:
    assert sorted(cycles(graph(types=True))) == TYPE_ONLY_PAIRS


def test_the_graph_sees_a_cycle() -> None:
    # The check itself: a made-up circle is found.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

"""Decisions are tallied per request and reach the prometheus counter on export."""

from __future__ import annotations

from pyproxyd.observe.metrics import RATELIMIT
from pyproxyd.ratelimit.report import ALLOWED, DELAYED, REJECTED, PolicyStats


def _value(route: str, result: str) -> float:
    return RATELIMIT.labels(route, "p-export", "gold", result)._value.get()


def test_export_adds_only_what_was_counted_since_the_last_export() -> None:
    stats = PolicyStats("p-export", "token_bucket")
    before = {r: _value("r-export", r) for r in ("allowed", "rejected", "delayed")}
    for _ in range(5):
        stats.count("r-export", "gold", "k1", ALLOWED)
    stats.count("r-export", "gold", "k2", REJECTED)
    assert _value("r-export", "allowed") == before["allowed"]  # tallied, not yet exported
    stats.export()
    assert _value("r-export", "allowed") == before["allowed"] + 5
    assert _value("r-export", "rejected") == before["rejected"] + 1
    stats.count("r-export", "gold", "k1", DELAYED)
    stats.export()
    stats.export()  # nothing new: nothing added twice
    assert _value("r-export", "allowed") == before["allowed"] + 5
    assert _value("r-export", "delayed") == before["delayed"] + 1
    assert stats.keys["k1"] == [6, 0] and stats.keys["k2"] == [0, 1]

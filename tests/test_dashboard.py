"""etc/grafana/pyproxyd-dashboard.json: importable, and only metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from pyproxyd.observe import metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "etc" / "grafana" / "pyproxyd-dashboard.json"

# The series names each metric type exposes, after the family name.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip


def defined_series() -> set[str]:
    """Every series name pyproxyd/observe/metrics.py can expose."""
    names: set[str] = set()
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for family in obj.describe():
                names.update(family.name + s for s in SUFFIXES[family.type])
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords dropped)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range and subquery windows
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\$\{?\w+\}?", "", e)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows hold their panels
    return out


def expressions(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (p["title"], t["expr"])
        for p in all_panels(dash)
        for t in p.get("targets", [])
        if "expr" in t
    ]


def test_metric_name_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(x_bucket{route=~"$route"}'
        "[$__rate_interval]))) / on (route) group_left sum without (a) (y_total offset 5m)"
        ' and z == bool 1 unless count(w{s="a{b}"})'
    )
    assert metric_names(expr) == {"x_bucket", "y_total", "z", "w"}


def test_defined_series_come_from_the_module() -> None:
    names = defined_series()
    assert "pyproxyd_requests_total" in names
    assert "pyproxyd_request_duration_seconds_bucket" in names
    assert "pyproxyd_requests_in_flight" in names
    assert "pyproxyd_requests" not in names  # a counter's samples end in _total


def test_every_expression_uses_only_defined_metrics() -> None:
    dash = load()
    defined = defined_series()
    exprs = expressions(dash)
    assert len(exprs) >= 15
    for title, expr in exprs:
        used = metric_names(expr)
        assert used, f"{title!r}: no metric in {expr!r}"
        unknown = used - defined
        assert not unknown, f"{title!r} uses metrics metrics.py does not define: {unknown}"
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
            assert m and m.group(1) in defined, query


def test_datasource_is_a_variable() -> None:
    dash = load()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    refs = ["${datasource}", "$datasource", "${DS_PROMETHEUS}"]
    for p in all_panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] in refs, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] in refs, p["title"]
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] in refs
    # No datasource uid of someone's Grafana baked in anywhere.
    uids = re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD.read_text())
    assert set(uids) <= {*refs, "-- Grafana --", "pyproxyd-overview"}


def test_route_and_upstream_variables_are_used() -> None:
    dash = load()
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "route", "upstream"} <= names
    text = " ".join(e for _, e in expressions(dash))
    assert '$route"' in text and '$upstream"' in text


LATENCY = "sum by (le) (rate(pyproxyd_request_duration_seconds_bucket"


@pytest.mark.parametrize(
    ("topic", "needle"),
    [
        ("request rate", "rate(pyproxyd_requests_total"),
        ("5xx ratio", 'status=~"5.."'),
        ("p50", f"histogram_quantile(0.5, {LATENCY}"),
        ("p95", f"histogram_quantile(0.95, {LATENCY}"),
        ("p99", f"histogram_quantile(0.99, {LATENCY}"),
        ("upstream response time", "pyproxyd_upstream_response_seconds_bucket"),
        ("connections busy/idle", "sum by (upstream, state) (pyproxyd_upstream_connections"),
        ("502", 'status="502"'),
        ("504", 'status="504"'),
        ("circuit states", "pyproxyd_circuit_state"),
        ("ejected targets", "pyproxyd_upstream_target_ejected"),
        ("rejections per policy and tier", "sum by (policy, tier) (rate(pyproxyd_ratelimit"),
        ("reloads by result", "sum by (result) (increase(pyproxyd_config_reloads_total"),
        ("in flight", "pyproxyd_requests_in_flight"),
    ],
)
def test_panels_cover(topic: str, needle: str) -> None:
    text = "\n".join(e for _, e in expressions(load()))
    assert needle in text, topic


def test_panel_layout_is_importable() -> None:
    dash = load()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    assert dash.get("id") is None  # import assigns the id
    ids = [p["id"] for p in all_panels(dash)]
    assert len(ids) == len(set(ids))
    for p in all_panels(dash):
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), p["title"]

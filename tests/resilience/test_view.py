"""Merging workers' /admin/upstreams views (pure)."""

from __future__ import annotations

from typing import Any

from pyproxyd.resilience.view import merge_views


def target(label: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "url": f"http://{label}",
        "target": label,
        "weight": 1,
        "available": True,
        "ejected": False,
        "healthy": None,
        "busy": 0,
        "idle": 0,
        "queued": 0,
        "opened_total": 0,
    }
    row.update(fields)
    return row


def upstream(*targets: dict[str, Any], circuit: str | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "circuit": {"state": circuit, "requests": 1} if circuit else None,
        "retry_budget": fields.get("budget"),
        "no_healthy_total": fields.get("no_healthy", 0),
        "targets": list(targets),
    }


def test_counts_add_up_across_workers() -> None:
    a = {"app": upstream(target("t1", busy=1, idle=2, opened_total=3), no_healthy=1)}
    b = {"app": upstream(target("t1", busy=4, idle=0, opened_total=5), no_healthy=2)}
    merged = merge_views([a, b])
    t = merged["app"]["targets"][0]
    assert (t["busy"], t["idle"], t["opened_total"]) == (5, 2, 8)
    assert merged["app"]["no_healthy_total"] == 3


def test_a_target_out_of_rotation_in_any_worker_is_out() -> None:
    ok = target("t1", ejected=False, ejected_for=0.0, ejections_total=0, consecutive_fails=0)
    out = target("t1", available=False, ejected=True, ejected_for=7.5, ejections_total=1,
                 consecutive_fails=5)  # fmt: skip
    for views in ([{"u": upstream(ok)}, {"u": upstream(out)}],
                  [{"u": upstream(out)}, {"u": upstream(ok)}]):  # fmt: skip
        t = merge_views(views)["u"]["targets"][0]
        assert t["available"] is False and t["ejected"] is True
        assert t["ejected_for"] == 7.5 and t["consecutive_fails"] == 5
        assert t["ejections_total"] == 1


def test_health_is_down_when_any_worker_saw_it_down() -> None:
    up, down = target("t", healthy=True), target("t", healthy=False, last_check_error="refused")
    for views in ([{"u": upstream(up)}, {"u": upstream(down)}],
                  [{"u": upstream(down)}, {"u": upstream(up)}]):  # fmt: skip
        t = merge_views(views)["u"]["targets"][0]
        assert t["healthy"] is False and t["last_check_error"] == "refused"
    assert merge_views([{"u": upstream(up)}, {"u": upstream(up)}])["u"]["targets"][0]["healthy"]


def test_the_worst_circuit_shows() -> None:
    views = [{"u": upstream(circuit=s)} for s in ("closed", "open", "half_open")]
    assert merge_views(views)["u"]["circuit"]["state"] == "open"
    views = [{"u": upstream(circuit=s)} for s in ("half_open", "closed")]
    assert merge_views(views)["u"]["circuit"]["state"] == "half_open"
    assert merge_views([{"u": upstream()}, {"u": upstream()}])["u"]["circuit"] is None


def test_retry_budgets_add_up() -> None:
    a = {"u": upstream(budget={"window_requests": 10, "retries_total": 1})}
    b = {"u": upstream(budget={"window_requests": 5, "retries_total": 2})}
    budget = merge_views([a, b])["u"]["retry_budget"]
    assert budget == {"window_requests": 15, "retries_total": 3}


def test_views_from_different_configs_merge_by_name() -> None:
    old = {"app": upstream(target("t1", idle=1)), "gone": upstream(target("g"))}
    new = {"app": upstream(target("t1", idle=1), target("t2", idle=4)), "new": upstream()}
    merged = merge_views([old, new])
    assert sorted(merged) == ["app", "gone", "new"]
    assert [(t["target"], t["idle"]) for t in merged["app"]["targets"]] == [("t1", 2), ("t2", 4)]


def test_the_inputs_are_not_changed() -> None:
    a = {"app": upstream(target("t1", idle=1))}
    merge_views([a, {"app": upstream(target("t1", idle=2))}])
    assert a["app"]["targets"][0]["idle"] == 1


def test_no_views_merge_to_nothing() -> None:
    assert merge_views([]) == {}

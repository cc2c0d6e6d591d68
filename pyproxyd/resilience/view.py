"""The operator's view of the upstreams, as /admin/upstreams shows it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..snapshot import Snapshot


def upstreams_view(snap: Snapshot, now: float) -> dict[str, Any]:
    """Per upstream: its circuit and retry budget; per target: in rotation or not, why,
    and its pool's busy/idle connections."""
    out: dict[str, Any] = {}
    for up in snap.upstreams.values():
        targets = []
        for t in up.targets:
            pool = t.pool
            row: dict[str, Any] = {
                "url": t.url,
                "target": t.label,
                "weight": t.weight,
                "available": True,
                "ejected": False,
                "healthy": None,  # None: no active checks
                "busy": pool.busy,
                "idle": pool.idle,
                "queued": pool.queued,
                "opened_total": pool.opened_total,
                "protocol": pool.settings.protocol,
                "streams": pool.streams,  # requests under way on HTTP/2 connections
            }
            if t.health is not None:
                row.update(t.health.snapshot(now))
            targets.append(row)
        breaker = up.breaker
        out[up.name] = {
            "circuit": breaker.snapshot(now) if breaker is not None else None,
            "retry_budget": up.budget.snapshot(now) if up.budget is not None else None,
            "no_healthy_total": up.health.no_healthy_total if up.health is not None else 0,
            "targets": targets,
        }
    for key, obj in snap.state.items():  # discovered upstreams: their source, and when
        if isinstance(key, tuple) and key[0] == "discovery" and key[1] in out:
            out[key[1]]["discovery"] = obj.describe()
    return out


def discovery_ready(snap: Snapshot) -> bool:
    """Every discovered upstream answered once (or waited long enough)."""
    return all(
        obj.ready()
        for key, obj in snap.state.items()
        if isinstance(key, tuple) and key[0] == "discovery"
    )


_SEVERITY = {"closed": 0, "half_open": 1, "open": 2}
_SUMMED = ("busy", "idle", "queued", "opened_total", "streams", "ejections_total")


def merge_views(views: list[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' views as one, the way an operator reads a single process's.

    Counts add up (connections, retries, ejections); a target is ejected, down
    or out of rotation when it is so in any worker, and waits for the longest
    ejection; an upstream shows the worst circuit any worker has (open, then
    half-open). Upstreams and targets are matched by name, so views taken
    mid-reload, from workers on different configs, still merge.
    """
    out: dict[str, Any] = {}
    for view in views:
        for name, up in view.items():
            into = out.get(name)
            if into is None:
                out[name] = {**up, "targets": [dict(t) for t in up["targets"]]}
                continue
            into["no_healthy_total"] += up["no_healthy_total"]
            into["circuit"] = _worse(into["circuit"], up["circuit"])
            if into["retry_budget"] is not None and up["retry_budget"] is not None:
                budget = into["retry_budget"]
                into["retry_budget"] = {k: budget[k] + v for k, v in up["retry_budget"].items()}
            targets = {t["target"]: t for t in into["targets"]}
            for t in up["targets"]:
                merged = targets.get(t["target"])
                if merged is None:
                    into["targets"].append(dict(t))
                else:
                    _merge_target(merged, t)
    return out


def _worse(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    if a is None or b is None:
        return a or b
    return b if _SEVERITY.get(b["state"], 0) > _SEVERITY.get(a["state"], 0) else a


def _merge_target(into: dict[str, Any], t: dict[str, Any]) -> None:
    for key in _SUMMED:
        if key in t:
            into[key] = into.get(key, 0) + t[key]
    into["available"] = into["available"] and t["available"]
    into["ejected"] = into["ejected"] or t["ejected"]
    if "ejected_for" in t:
        into["ejected_for"] = max(into.get("ejected_for", 0.0), t["ejected_for"])
    if "consecutive_fails" in t:
        into["consecutive_fails"] = max(into.get("consecutive_fails", 0), t["consecutive_fails"])
    if t["healthy"] is False or into["healthy"] is None:
        into["healthy"] = t["healthy"]
    if t.get("last_check_error") and not into.get("last_check_error"):
        into["last_check_error"] = t["last_check_error"]

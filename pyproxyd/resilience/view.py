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
    return out

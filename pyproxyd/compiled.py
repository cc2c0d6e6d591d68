"""Which modules setup.py may compile with mypyc, and which this process runs compiled."""

from __future__ import annotations

import importlib
from pathlib import Path

# The request path: what runs per request or per header. Not here: modules
# with async generators (mypyc cannot compile them: bodies.py), config and
# CLI code (runs once), and anything tests patch at module level.
MODULES = (
    "pyproxyd.forwarding",
    "pyproxyd.frontend.connection",
    "pyproxyd.frontend.request",
    "pyproxyd.proxy",
    "pyproxyd.routing",
    "pyproxyd.tracing",
    "pyproxyd.upstream.balance",
    "pyproxyd.upstream.connection",
    "pyproxyd.upstream.http1",
    "pyproxyd.upstream.pool",
    "pyproxyd.observe.logging",
    "pyproxyd.observe.metrics",
    "pyproxyd.snapshot",
    "pyproxyd.ratelimit.algorithms",
    "pyproxyd.ratelimit.local",
    "pyproxyd.ratelimit.policy",
    "pyproxyd.auth.jwt",
    "pyproxyd.auth.route",
    "pyproxyd.auth.identity",
    "pyproxyd.resilience.breaker",
    "pyproxyd.resilience.retry",
    "pyproxyd.split",
)


# An installed wheel writes its .py files after its .so files, so a newer .py
# means an unbuilt edit only in a checkout (where scripts/compile.sh builds).
IN_CHECKOUT = (Path(__file__).resolve().parents[1] / "setup.py").exists()


def status() -> tuple[list[str], list[str]]:
    """(compiled, stale): modules loaded from an extension, and, in a checkout,
    those of them whose .py is newer than the build (an edit the running code
    does not have)."""
    compiled, stale = [], []
    for name in MODULES:
        file = Path(importlib.import_module(name).__file__ or "")
        if file.suffix in (".so", ".pyd"):
            compiled.append(name)
            source = file.with_name(name.rsplit(".", 1)[-1] + ".py")
            if IN_CHECKOUT and source.exists() and source.stat().st_mtime > file.stat().st_mtime:
                stale.append(name)
    return compiled, stale

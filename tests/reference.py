"""The reference configuration the tests read, and where else it may be checked.

docs/gateway.toml (with docs/jwks.json beside it) is the repository's own
copy of every config key, so a fresh clone tests on its own. The team's spec
of the same configuration lives outside the repository; when PYPROXYD_SPEC
names its gateway.toml (scripts/test.sh sets it when the spec folder sits
beside the checkout), the tests that take `REFERENCE_CONFIGS` check it too.
No test names a path outside the repository (tests/test_standalone.py).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "gateway.toml"

# Optional: checked when given, never needed.
SPEC = Path(os.environ["PYPROXYD_SPEC"]) if os.environ.get("PYPROXYD_SPEC") else None

REFERENCE_CONFIGS = [REFERENCE, *([SPEC] if SPEC is not None and SPEC.is_file() else [])]


def config_id(path: Path) -> str:
    """A short test id: "docs" for the repository's copy, "spec" for the spec's."""
    return "docs" if path == REFERENCE else "spec"

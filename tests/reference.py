"""The reference configuration the tests read, and where else it may be checked.

docs/gateway.toml (with docs/jwks.json beside it) is the repository's own
copy of every config key, so a fresh clone tests on its own. The team's spec
folder, when a checkout sits beside it (../shared/spec), holds the same
configuration; the tests that take `REFERENCE_CONFIGS` check it too, but only
when it is there. This is the one module of the suite allowed to name a path
outside the repository (tests/test_standalone.py enforces that).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "gateway.toml"

# Optional: checked when present, never needed.
SPEC = REPO.parent / "shared" / "spec" / "gateway.toml"

REFERENCE_CONFIGS = [REFERENCE, *([SPEC] if SPEC.is_file() else [])]


def config_id(path: Path) -> str:
    """A short test id: "docs" for the repository's copy, "spec" for the spec's."""
    return "docs" if path == REFERENCE else "spec"

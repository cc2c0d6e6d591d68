"""Suite-wide checks. scripts/test.sh runs the suite twice: on the source, and
with the request path compiled by mypyc (PYPROXYD_EXPECT_COMPILED=1), where a
build that silently fell back to the .py files must not pass as compiled."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from pyproxyd.observe import logging as plog


def pytest_sessionstart(session: pytest.Session) -> None:
    from pyproxyd.compiled import MODULES, status

    compiled, stale = status()
    want = os.environ.get("PYPROXYD_EXPECT_COMPILED")
    if want == "1" and (sorted(compiled) != sorted(MODULES) or stale):
        raise pytest.UsageError(
            f"expected the mypyc build: compiled {compiled}, stale {stale} (scripts/compile.sh)"
        )
    if want == "0" and compiled:
        raise pytest.UsageError(f"expected pure Python, found compiled {compiled}")


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """The gateway's log (JSON lines) goes to this file for the test's length."""
    path = tmp_path / "gateway.log"
    stream = plog.configure("json", "info", str(path))
    yield path
    stream.close()
    structlog.reset_defaults()
    plog._output.update(stream=sys.stdout, json=True, level=20)

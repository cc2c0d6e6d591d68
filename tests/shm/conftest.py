"""The zone fixture of the shared-state tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyproxyd.shm.zone import MIN_SIZE, Zone


@pytest.fixture
def zone() -> Iterator[Zone]:
    """A fresh zone of the smallest size, closed after the test."""
    z = Zone.create(MIN_SIZE)
    try:
        yield z
    finally:
        z.close()

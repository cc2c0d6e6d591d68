"""Breakers and passive ejection shared through the zone: two workers' objects, one state."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyproxyd.resilience.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerSettings
from pyproxyd.shm.resilience import share_breaker, share_health
from pyproxyd.shm.zone import MIN_SIZE, Zone
from pyproxyd.upstream.health import HealthSettings, TargetHealth

SETTINGS = BreakerSettings(consecutive_failures=3, timeout=5.0, max_requests=1, interval=0.0)


@pytest.fixture
def zones() -> Iterator[tuple[Zone, Zone]]:
    """One zone as two workers see it (each its own descriptor, so its own locks)."""
    a = Zone.create(MIN_SIZE)
    b = Zone.attach(a.fd)
    try:
        yield a, b
    finally:
        b.close()
        a.close()


def two_breakers(zones: tuple[Zone, Zone], settings: BreakerSettings = SETTINGS) -> list[Breaker]:
    return [share_breaker(z, lambda: Breaker(settings, 0.0, name="app")) for z in zones]


def test_failures_in_two_workers_open_one_circuit(zones: tuple[Zone, Zone]) -> None:
    a, b = two_breakers(zones)
    for breaker, now in ((a, 1.0), (b, 1.1), (a, 1.2)):
        ticket = breaker.allow(now)
        assert ticket is not None
        ticket.done(False, now)
    assert b.allow(1.3) is None  # opened by a's third failure: b refuses at once
    assert b.retry_after(1.3) == 5  # opened at 1.2 for 5 s
    assert a.current_state(1.3) == b.current_state(1.3) == OPEN
    assert sum(x.transitions.get((CLOSED, OPEN), 0) for x in (a, b)) == 1


def test_half_open_lets_one_probe_through_for_the_instance(zones: tuple[Zone, Zone]) -> None:
    a, b = two_breakers(zones)
    for _ in range(3):
        t = a.allow(0.0)
        assert t is not None
        t.done(False, 0.0)
    probe = b.allow(6.0)  # timeout over: Half-Open, max_requests = 1
    assert probe is not None and b.state == HALF_OPEN
    assert a.allow(6.0) is None  # the probe's slot is taken, in the other worker too
    probe.done(True, 6.1)
    assert a.current_state(6.2) == CLOSED
    assert a.allow(6.2) is not None


def test_an_outcome_from_before_the_circuit_opened_is_ignored_everywhere(
    zones: tuple[Zone, Zone],
) -> None:
    a, b = two_breakers(zones)
    slow = b.allow(0.0)  # began before the circuit opened
    for _ in range(3):
        t = a.allow(0.0)
        assert t is not None
        t.done(False, 0.0)
    assert slow is not None
    slow.done(True, 0.5)  # an older generation: does not close it
    assert a.current_state(0.6) == OPEN


def test_other_settings_are_another_breaker(zones: tuple[Zone, Zone]) -> None:
    a, _ = two_breakers(zones)
    (other,) = two_breakers((zones[1],), BreakerSettings(consecutive_failures=4))
    for _ in range(3):
        t = a.allow(0.0)
        assert t is not None
        t.done(False, 0.0)
    assert other.allow(0.0) is not None


def test_passive_failures_count_across_workers_and_eject_in_all(
    zones: tuple[Zone, Zone],
) -> None:
    settings = HealthSettings(max_fails=3, eject_for=10.0)
    a, b = (
        share_health(z, lambda: TargetHealth(settings, "app", "h:1"), "http://h:1") for z in zones
    )
    a.failed(1.0)
    b.failed(1.1)
    assert a.available(1.2) and b.available(1.2)
    assert b.fails == 2  # available() refreshed it: the proxy reads it after a response
    b.succeeded()  # a response resets the run for the instance
    for h, now in ((a, 2.0), (b, 2.1), (a, 2.2)):
        h.failed(now)
    assert not b.available(2.3) and not a.available(2.3)
    assert a.ejections_total + b.ejections_total == 1
    assert b.available(12.3)  # eject_for over: tried again
    a.succeeded()
    assert b.snapshot(12.4)["consecutive_fails"] == 0 and not b.ejected

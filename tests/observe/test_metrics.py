"""RequestMetrics' batched tallies land in prometheus exactly as observe() would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram

from pyproxyd.observe import metrics
from pyproxyd.observe.metrics import BUCKETS, RequestMetrics


def _samples(hist: Histogram, **labels: str) -> dict[str, float]:
    out = {}
    for family in hist.collect():
        for s in family.samples:
            if all(s.labels.get(k) == v for k, v in labels.items()) and not s.name.endswith(
                "_created"
            ):
                out[s.name + str(sorted((k, v) for k, v in s.labels.items() if k == "le"))] = (
                    s.value
                )
    return out


def test_flushed_tallies_equal_observe_for_every_bucket_edge() -> None:
    values = [*BUCKETS, 0.0, 0.0004, 99.0, *(b * 1.0001 for b in BUCKETS)]
    values += [random.Random(7).uniform(0, 40) for _ in range(500)]
    reference = Histogram("ref_seconds", "", ["route", "upstream"], buckets=BUCKETS,
                          registry=CollectorRegistry())  # fmt: skip
    m = RequestMetrics()
    before = _samples(metrics.DURATION, route="r-edge", upstream="u-edge")
    for v in values:
        reference.labels("r-edge", "u-edge").observe(v)
        m.observe("r-edge", "u-edge", 200, v)
    assert _samples(metrics.DURATION, route="r-edge", upstream="u-edge") == before  # not yet
    m.flush()
    got = _samples(metrics.DURATION, route="r-edge", upstream="u-edge")
    want = _samples(reference, route="r-edge", upstream="u-edge")
    assert {k.replace("pyproxyd_request_duration", "ref"): v for k, v in got.items()} == want


def test_counters_bytes_and_in_flight_arrive_on_flush_and_tallies_restart() -> None:
    m = RequestMetrics()
    child = metrics.REQUESTS.labels("r-count", "u-count", "503")
    before = child._value.get()
    bytes_out = metrics.BYTES_OUT.labels("r-count")
    out_before = bytes_out._value.get()
    for _ in range(3):
        m.observe("r-count", "u-count", 503, 0.01)
        m.bytes("r-count", 0, 100)
    m.in_flight = 4
    m.flush()
    assert child._value.get() == before + 3
    assert bytes_out._value.get() == out_before + 300
    assert metrics.IN_FLIGHT._value.get() == 4
    m.flush()  # nothing new: nothing added twice
    assert child._value.get() == before + 3
    m.in_flight = 0
    m.flush()
    assert metrics.IN_FLIGHT._value.get() == 0

"""SharedStore: the same decisions as LocalStore, exact across processes, never wedged."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from typing import Any

import pytest

from pyproxyd.ratelimit.algorithms import Algorithm, LeakyBucket, SlidingWindow, TokenBucket
from pyproxyd.ratelimit.local import LocalStore
from pyproxyd.shm.limits import SharedStore, log_table
from pyproxyd.shm.zone import LIMITS, LOG_CAPS, Zone, key_hash

FORK = mp.get_context("fork")


ALGOS: list[tuple[Algorithm, int | None]] = [
    (TokenBucket(2.0, 5), None),
    (LeakyBucket(4.0, 3, delay=True), None),
    (LeakyBucket(4.0, 3, delay=False), None),
    (SlidingWindow(5, 2.0), 5),
]


@pytest.mark.parametrize(("algo", "log_limit"), ALGOS)
def test_decides_as_the_in_process_store(
    zone: Zone, algo: Algorithm, log_limit: int | None
) -> None:
    local = LocalStore()
    shared = SharedStore(zone, "p", log_limit)
    # a burst, a pause, keys interleaved, refunds of allowed requests
    times = [0.0] * 8 + [0.1, 0.2, 0.25, 0.9, 1.4, 1.4, 2.05, 2.3, 2.3, 2.31, 5.0, 5.0]
    for i, now in enumerate(times):
        for key in ("a", "b") if i % 3 else ("a",):
            d_local, t_local = local.take(key, algo, now)
            d_shared, t_shared = shared.take(key, algo, now)
            assert d_shared == d_local, (i, key, now)
            if d_local.allowed and i % 4 == 1:
                local.give_back(key, algo, t_local, now)
                shared.give_back(key, algo, t_shared, now)
    for key in ("a", "b"):
        assert shared.peek(key) == local._states.get(key)


def test_two_views_of_one_zone_share_the_bucket(zone: Zone) -> None:
    other = Zone.attach(zone.fd)
    try:
        tb = TokenBucket(1.0, 3)
        a, b = SharedStore(zone, "p"), SharedStore(other, "p")
        got = [s.take("k", tb, 0.0)[0].allowed for s in (a, b, a, b)]
        assert got == [True, True, True, False]
        assert SharedStore(other, "q").take("k", tb, 0.0)[0].allowed  # another policy
    finally:
        other.close()


def test_time_never_runs_backwards_for_a_key(zone: Zone) -> None:
    """A worker whose loop clock is a little behind another's appends in order."""
    store = SharedStore(zone, "p", 3)
    sw = SlidingWindow(3, 1.0)
    store.take("k", sw, 10.005)
    decision, token = store.take("k", sw, 10.002)
    assert decision.allowed and token == 10.005
    assert store.peek("k") == [10.005, 10.005]


def test_a_window_log_lives_in_the_smallest_class_that_holds_its_limit(zone: Zone) -> None:
    assert log_table(zone, 1) is zone.tables[LIMITS + 2]
    assert log_table(zone, LOG_CAPS[1]) is zone.tables[LIMITS + 3]
    assert log_table(zone, LOG_CAPS[1] + 1) is zone.tables[LIMITS + 4]
    with pytest.raises(ValueError, match="at most"):
        log_table(zone, LOG_CAPS[-1] + 1)
    store = SharedStore(zone, "big", 1000)
    sw = SlidingWindow(1000, 60.0)
    assert sum(store.take("k", sw, 1.0 + i / 1e4)[0].allowed for i in range(1005)) == 1000
    assert len(store.peek("k")) == 1000


def test_a_full_zone_evicts_and_stays_bounded(zone: Zone) -> None:
    store = SharedStore(zone, "p")
    tb = TokenBucket(1.0, 1)
    capacity = zone.tables[LIMITS].capacity
    for i in range(capacity * 2):
        store.take(f"k{i}", tb, float(i))
    assert store.evicted >= capacity  # every key past the capacity evicted one
    # the most recent keys are still counted
    assert not store.take(f"k{capacity * 2 - 1}", tb, float(capacity * 2 - 1))[0].allowed


# -- processes ----------------------------------------------------------------------


def _hammer(
    fd: int, algo: Algorithm, log_limit: int | None, n: int, out: Any, go: Any = None
) -> None:
    zone = Zone.attach(fd)
    store = SharedStore(zone, "stress", log_limit)
    allowed = 0
    if go is not None:
        go.wait()  # all at once: the decisions overlap
    for _ in range(n):
        # one instant for all: the count is the burst alone, whatever the timing
        allowed += store.take("one-key", algo, 100.0)[0].allowed
    out.put(allowed)


@pytest.mark.parametrize(
    ("algo", "log_limit", "expected"),
    [
        (TokenBucket(1.0, 5000), None, 5000),
        (LeakyBucket(1.0, 4999, delay=True), None, 5000),
        (SlidingWindow(1000, 60.0), 1000, 1000),
    ],
)
def test_processes_hammering_one_key_count_exactly(
    zone: Zone, algo: Algorithm, log_limit: int | None, expected: int
) -> None:
    out, go = FORK.Queue(), FORK.Barrier(4)
    procs = [
        FORK.Process(target=_hammer, args=(zone.fd, algo, log_limit, 3000, out, go))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    counts = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    assert sum(counts) == expected  # 12,000 tries: exactly the burst/limit let through


def _hold_lock(fd: int, key: str, ready: Any) -> None:
    zone = Zone.attach(fd)
    base = zone.tables[LIMITS].bucket(key_hash(b"p\0" + key.encode()))
    zone.lock(base)
    ready.set()
    signal.pause()  # killed while holding it


def test_a_process_killed_holding_a_lock_does_not_wedge_the_others(zone: Zone) -> None:
    ready = FORK.Event()
    holder = FORK.Process(target=_hold_lock, args=(zone.fd, "k", ready))
    holder.start()
    try:
        assert ready.wait(30)
        base = zone.tables[LIMITS].bucket(key_hash(b"p\0k"))
        assert zone.held(base)  # a non-blocking attempt finds it taken
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
        holder.join(10)
    out = FORK.Queue()
    taker = FORK.Process(target=_hammer, args=(zone.fd, TokenBucket(1.0, 2), None, 3, out))
    taker.start()
    assert out.get(timeout=30) == 2  # the lock was released when its holder died
    taker.join(10)
    assert SharedStore(zone, "p").take("k", TokenBucket(1.0, 1), 0.0)[0].allowed


def test_a_remembered_slot_taken_by_another_key_is_not_reused(zone: Zone) -> None:
    """A store remembers where a key was; another worker may have evicted it since."""
    mine, other = SharedStore(zone, "p"), SharedStore(Zone.attach(zone.fd), "p")
    tb = TokenBucket(1.0, 1)
    assert mine.take("a", tb, 0.0)[0].allowed
    assert not mine.take("a", tb, 0.0)[0].allowed  # from the remembered slot
    table = zone.tables[LIMITS]
    bucket = table.bucket(key_hash(b"p\0a"))
    crowd = [
        k
        for k in (f"c{i}" for i in range(200_000))
        if table.bucket(key_hash(b"p\0" + k.encode())) == bucket
    ]
    for t, k in enumerate(crowd[:8]):  # newer than "a": it is the one evicted
        assert other.take(k, tb, 1.0 + t)[0].allowed
    assert other.evicted == 1 and other.peek("a") is None
    assert mine.take("a", tb, 20.0)[0].allowed  # afresh, in a slot of its own
    assert [other.peek(k) is not None for k in crowd[:8]].count(True) == 7

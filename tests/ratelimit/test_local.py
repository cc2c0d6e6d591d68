from __future__ import annotations

from pyproxyd.ratelimit.algorithms import LeakyBucket, SlidingWindow, TokenBucket
from pyproxyd.ratelimit.local import LocalStore


def test_keys_are_independent() -> None:
    store = LocalStore()
    tb = TokenBucket(1.0, 1)
    assert store.take("a", tb, 0.0)[0].allowed
    assert not store.take("a", tb, 0.0)[0].allowed
    assert store.take("b", tb, 0.0)[0].allowed


def test_idle_keys_expire_without_a_timer() -> None:
    store = LocalStore()
    tb = TokenBucket(10.0, 2)
    for i in range(1000):
        store.take(f"k{i}", tb, 0.0)
    assert len(store) == 1000
    # Much later, requests drop idle keys from the LRU end (two a request on average).
    for i in range(600):
        store.take("busy", tb, 10.0 + i)
    assert len(store) <= 1
    assert store.evicted == 0


def test_hard_cap_evicts_least_recently_used() -> None:
    store = LocalStore(max_keys=100)
    tb = TokenBucket(1.0, 1)
    store.take("keep", tb, 0.0)
    for i in range(500):
        store.take(f"scan{i}", tb, 0.0)
        if i % 10 == 0:
            store.take("keep", tb, 0.0)  # refused, but recently used
    assert len(store) == 100
    assert store.evicted == 401
    assert not store.take("keep", tb, 0.0)[0].allowed  # its state survived the scan
    assert "LocalStore [100 keys | 401 evicted]" in repr(store)


def test_give_back() -> None:
    store = LocalStore()
    lb = LeakyBucket(1.0, 0)
    d, token = store.take("a", lb, 0.0)
    assert d.allowed
    store.give_back("a", lb, token, 0.0)
    assert len(store) == 0
    assert store.take("a", lb, 0.0)[0].allowed
    store = LocalStore()  # one store per policy, so one algorithm a store
    sw = SlidingWindow(1, 10.0)
    d, token = store.take("w", sw, 1.0)
    assert not store.take("w", sw, 2.0)[0].allowed
    store.give_back("w", sw, token, 2.0)
    assert store.take("w", sw, 2.0)[0].allowed
    store.give_back("missing", sw, 0.0, 2.0)

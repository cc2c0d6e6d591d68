"""h2stream.StreamDeadlines: the read timeouts of a pool's stream waits under
one timer. Time is an argument (`expire(now)`); the loop is only asked to
arm timers, and never run."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from pyproxyd.upstream import h2stream
from pyproxyd.upstream.h2stream import StreamDeadlines


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_waits_end_with_false_at_their_deadline_in_order(
    loop: asyncio.AbstractEventLoop,
) -> None:
    d = StreamDeadlines()
    futs = [loop.create_future() for _ in range(3)]
    for at, fut in zip((1.0, 2.0, 3.0), futs, strict=True):
        assert d.add(loop, fut, at) is None  # queued: no timer of its own
    assert d.expire(0.5) == 1.0
    assert not any(f.done() for f in futs)
    assert d.expire(2.0) == 3.0
    assert [f.done() and f.result() for f in futs] == [False, False, False]
    assert [f.done() for f in futs] == [True, True, False]
    assert d.expire(3.0) is None
    assert len(d) == 0


def test_a_wait_that_ended_first_is_left_alone_and_dropped(
    loop: asyncio.AbstractEventLoop,
) -> None:
    d = StreamDeadlines()
    answered, cancelled, waiting = (loop.create_future() for _ in range(3))
    for at, fut in ((1.0, answered), (1.5, cancelled), (2.0, waiting)):
        d.add(loop, fut, at)
    answered.set_result(True)  # the response came
    cancelled.cancel()  # the client left
    assert d.expire(1.9) == 2.0  # the ended ones are gone without a look at the clock
    assert answered.result() is True and cancelled.cancelled() and not waiting.done()
    assert len(d) == 1


def test_an_earlier_deadline_than_the_last_gets_a_timer_of_its_own(
    loop: asyncio.AbstractEventLoop,
) -> None:
    d = StreamDeadlines()
    late, early = loop.create_future(), loop.create_future()
    assert d.add(loop, late, 60.0) is None
    handle = d.add(loop, early, 5.0)  # another timeout on the same pool
    assert isinstance(handle, asyncio.TimerHandle) and handle.when() == 5.0
    handle.cancel()
    assert len(d) == 1
    assert d.expire(59.0) == 60.0 and not late.done()


def test_ended_waits_do_not_pile_up(loop: asyncio.AbstractEventLoop) -> None:
    d = StreamDeadlines()
    at = 0.0
    open_ones = []
    for i in range(h2stream.COMPACT_AT * 20):
        fut = loop.create_future()
        at += 0.001
        d.add(loop, fut, 60.0 + at)
        if i % 10 == 0:
            open_ones.append(fut)  # one in ten still waits
        else:
            fut.set_result(True)
        assert len(d) <= max(h2stream.COMPACT_AT, 2 * len(open_ones)) + 1
    assert d.expire(0.0) is not None
    assert not any(f.done() for f in open_ones)
    assert d.expire(1000.0) is None
    assert all(f.result() is False for f in open_ones)

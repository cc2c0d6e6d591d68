"""The supervisor's hub and a worker's RelaySource (discovery/relay.py), in one
process: a real etcd, the hub made from pyproxyd's own compile, workers'
subscriptions over the real Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from harness.etcd_server import EtcdAdmin, EtcdMember, etcd_member
from pyproxyd.compile import compile_snapshot
from pyproxyd.config_load import load
from pyproxyd.discovery import Found
from pyproxyd.discovery.build import close_clients
from pyproxyd.discovery.relay import Hub, RelaySource, feed_id
from pyproxyd.snapshot import Snapshot
from tests.discovery.test_etcd import Recorder

PREFIX = "/t/relay/"


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdMember]:
    with etcd_member(tmp_path / "etcd") as member:
        yield member


def compiled(tmp_path: Path, etcd: EtcdMember, prefix: str = PREFIX) -> Snapshot:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[etcd]
endpoints = ["{etcd.url}"]
timeout = "1s"
[upstreams.app]
discovery = {{ etcd = "{prefix}" }}
[[routes]]
id = "app"
path = "/**"
upstream = "app"
"""
    )
    return compile_snapshot(load(path))


@contextlib.asynccontextmanager
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    h = Hub(tmp_path / "discovery.sock")
    await h.start()
    try:
        yield h
    finally:
        await h.close()
        await close_clients()


@contextlib.asynccontextmanager
async def relayed(source: RelaySource) -> AsyncIterator[Recorder]:
    rec = Recorder()
    task = asyncio.create_task(source.run(rec))
    try:
        yield rec
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def urls(instances: list[Found] | None) -> set[str] | None:
    return None if instances is None else {f.url for f in instances}


async def test_every_subscriber_gets_every_whole_set(tmp_path: Path, etcd: EtcdMember) -> None:
    admin = EtcdAdmin([etcd.url])
    admin.put(f"{PREFIX}a", "127.0.0.1:8001")
    fid = feed_id("app", {"etcd": PREFIX})
    async with hub(tmp_path) as h:
        h.configure(compiled(tmp_path, etcd))
        assert list(h.feeds) == [fid]
        one = RelaySource(str(h.path), fid, "etcd " + PREFIX)
        two = RelaySource(str(h.path), fid, "etcd " + PREFIX)
        async with relayed(one) as r1, relayed(two) as r2:
            for rec in (r1, r2):
                await rec.wait(lambda rec=rec: rec.urls == {"http://127.0.0.1:8001"}, 3, "first")
            assert h.ready()
            # What a worker's compile asks for, without a loop of its own.
            first = await asyncio.to_thread(one.first)
            assert (urls(first[0]), first[1]) == ({"http://127.0.0.1:8001"}, None)
            admin.put(f"{PREFIX}b", "127.0.0.1:8002")
            admin.delete(f"{PREFIX}a")
            for rec in (r1, r2):
                await rec.wait(lambda rec=rec: rec.urls == {"http://127.0.0.1:8002"}, 2, "change")
            assert r1.sets == r2.sets  # the same sets, in the same order

            # etcd gone: the relayed sources hear the failure, the set stays.
            etcd.stop()
            for rec in (r1, r2):
                await rec.wait(lambda rec=rec: bool(rec.failures), 5, "failure relayed")
            assert r1.urls == r2.urls == {"http://127.0.0.1:8002"}
            assert (await asyncio.to_thread(two.first))[1] is not None


async def test_a_worker_ahead_of_its_supervisor_waits_for_the_feed(
    tmp_path: Path, etcd: EtcdMember
) -> None:
    admin = EtcdAdmin([etcd.url])
    admin.put("/t/other/x", "127.0.0.1:8009")
    fid = feed_id("app", {"etcd": "/t/other/"})
    async with hub(tmp_path) as h:
        h.configure(compiled(tmp_path, etcd))
        source = RelaySource(str(h.path), fid, "etcd /t/other/")
        assert await asyncio.to_thread(source.first) == (None, None)  # not known yet
        async with relayed(source) as rec:
            await asyncio.sleep(0.1)
            assert rec.sets == []
            # The supervisor's reload: the old prefix's feed stops, the new one starts.
            h.configure(compiled(tmp_path, etcd, "/t/other/"))
            assert list(h.feeds) == [fid]
            await rec.wait(lambda: rec.urls == {"http://127.0.0.1:8009"}, 3, "after configure")


def test_first_without_a_hub_is_no_answer(tmp_path: Path) -> None:
    source = RelaySource(str(tmp_path / "absent.sock"), "x", "etcd /x/")
    assert source.first(timeout=0.5) == (None, None)

"""etcd discovery against a real etcd (Debian's etcd-server): the client's
calls, the source following puts, deletes, leases, compaction, outages and a
member failover, and the value formats registries write."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from harness.etcd_server import (
    EtcdAdmin,
    EtcdMember,
    TcpProxy,
    etcd_cluster,
    etcd_member,
)
from harness.gateway import free_port
from pyproxyd.discovery import Found
from pyproxyd.discovery.etcd import EtcdAuthError, EtcdClient, EtcdUnavailable, Event, prefix_end
from pyproxyd.discovery.etcd_source import EtcdSource, parse_instance


class Recorder:
    """A Report that keeps every call and lets a test wait for a state."""

    def __init__(self) -> None:
        self.sets: list[list[Found]] = []
        self.seen_at: list[float] = []
        self.failures: list[str] = []
        self.skips: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def found(self, instances: list[Found]) -> None:
        self.sets.append(list(instances))
        self.seen_at.append(time.monotonic())
        self._changed.set()

    def failed(self, reason: str) -> None:
        self.failures.append(reason)
        self._changed.set()

    def skipped(self, key: str, reason: str) -> None:
        self.skips.append((key, reason))
        self._changed.set()

    @property
    def urls(self) -> set[str] | None:
        return {f.url for f in self.sets[-1]} if self.sets else None

    async def wait(self, done: Callable[[], bool], timeout: float, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not done() and (left := deadline - time.monotonic()) > 0:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        assert done(), f"{what}: sets {self.sets[-3:]}, failures {self.failures[-3:]}"


@contextlib.asynccontextmanager
async def running(source: EtcdSource) -> AsyncIterator[Recorder]:
    rec = Recorder()
    task = asyncio.create_task(source.run(rec))
    try:
        yield rec
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled(), "run() ended on its own"


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    with etcd_member(tmp_path_factory.mktemp("etcd")) as member:
        yield member


@pytest.fixture
def admin(etcd: EtcdMember) -> EtcdAdmin:
    return EtcdAdmin([etcd.url])


@pytest.fixture
async def client(etcd: EtcdMember) -> AsyncIterator[EtcdClient]:
    c = EtcdClient([etcd.url], timeout=1)
    yield c
    await c.close()


# ------------------------------------------------------------------ client


async def test_range_get_and_put_if_revision(client: EtcdClient, admin: EtcdAdmin) -> None:
    p = "/t/range/"
    admin.put(p + "a", "127.0.0.1:1")
    rev_b = admin.put(p + "b", b"\xff\x00bytes")
    admin.put("/t/range0", "just past the prefix")  # prefix_end("/t/range/") == "/t/range0"
    rev, kvs = await client.range_prefix(p)
    assert kvs == [(p + "a", b"127.0.0.1:1"), (p + "b", b"\xff\x00bytes")]
    assert rev >= rev_b

    _, value, mod = await client.get(p + "b")
    assert (value, mod) == (b"\xff\x00bytes", rev_b)
    _, value, mod = await client.get(p + "absent")
    assert (value, mod) == (None, 0)

    new = await client.put_if_revision(p + "b", b"v2", rev_b)
    assert new is not None and new > rev_b
    assert await client.put_if_revision(p + "b", b"v3", rev_b) is None
    assert (await client.get(p + "b"))[1:] == (b"v2", new)
    # 0: only while the key is absent
    assert await client.put_if_revision(p + "c", b"first", 0) is not None
    assert await client.put_if_revision(p + "c", b"second", 0) is None
    assert (await client.get(p + "c"))[1] == b"first"


def ranges_served(etcd: EtcdMember) -> int:
    with urllib.request.urlopen(etcd.url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("etcd_debugging_mvcc_range_total "):
                return int(float(line.split()[1]))
    raise AssertionError("no etcd_debugging_mvcc_range_total")


async def test_a_prefix_is_read_in_pages_at_one_revision(
    etcd: EtcdMember, admin: EtcdAdmin
) -> None:
    p = "/t/pages/"
    put_at = {f"{p}{i:03d}": admin.put(f"{p}{i:03d}", f"127.0.0.1:{7000 + i}") for i in range(10)}
    admin.put("/t/pages0", "just past the prefix")
    client = EtcdClient([etcd.url], timeout=1, page_size=3)
    try:
        before = ranges_served(etcd)
        rev, kvs = await client.range_prefix(p)
        assert ranges_served(etcd) - before == 4  # 3 + 3 + 3 + 1
        assert [k for k, _ in kvs] == sorted(put_at)
        assert kvs[9] == (f"{p}009", b"127.0.0.1:7009")

        # Keys written while the pages are read (after the last key, so a page
        # read at a later revision would pick them up) are not in the set: it
        # is the prefix as it was at `rev`.
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set() and i < 500:
                key = f"{p}w{i:04d}"
                put_at[key] = admin.put(key, "127.0.0.1:7999")
                i += 1

        client.page_size = 1
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            await asyncio.sleep(0.05)
            rev, kvs = await client.range_prefix(p)
        finally:
            stop.set()
            await asyncio.to_thread(thread.join)
        assert [k for k, _ in kvs] == sorted(k for k, r in put_at.items() if r <= rev)
        assert any(r > rev for r in put_at.values())  # writes did land during the read
    finally:
        await client.close()


async def test_two_writers_from_one_revision_one_wins(client: EtcdClient, etcd: EtcdMember) -> None:
    other = EtcdClient([etcd.url], timeout=1)
    try:
        for i in range(10):
            key = f"/t/race/{i}"
            await client.put(key, b"start")
            _, _, mod = await client.get(key)
            a, b = await asyncio.gather(
                client.put_if_revision(key, b"a", mod), other.put_if_revision(key, b"b", mod)
            )
            assert (a is None) != (b is None), (a, b)
            assert (await client.get(key))[1] == (b"a" if a is not None else b"b")
    finally:
        await other.close()


async def test_watch_resumes_history_in_order(client: EtcdClient, admin: EtcdAdmin) -> None:
    # 400 revisions of 1 KiB values come back as one line of about 600 KiB:
    # longer than aiohttp's readline takes.
    p = "/t/history/"
    first = admin.put(p + "0", "x" * 1024)
    for i in range(1, 400):
        # (a delete of a key that is there: one of an absent key makes no revision)
        admin.put(f"{p}{i % 7}", "x" * 1024) if i % 5 else admin.delete(f"{p}{(i - 1) % 7}")
    events: list[Event] = []
    watch = client.watch_prefix(p, first)
    async with asyncio.timeout(5):
        assert await anext(watch) == []
        while len(events) < 400:
            events += await anext(watch)
    await watch.aclose()
    assert [e.mod_revision for e in events] == list(range(first, first + 400))
    assert [e.type for e in events[:6]] == ["put"] * 5 + ["delete"]
    assert events[5].value == b""


async def test_unreachable_names_the_endpoints() -> None:
    ports = [free_port(), free_port()]
    c = EtcdClient([url(p) for p in ports], timeout=0.5)
    try:
        with pytest.raises(EtcdUnavailable) as info:
            await c.range_prefix("/x/")
        assert all(f"127.0.0.1:{p}" in str(info.value) for p in ports)
        with pytest.raises(EtcdUnavailable):
            await anext(c.watch_prefix("/x/", 1))
    finally:
        await c.close()


async def test_auth(tmp_path: Path) -> None:
    with etcd_member(tmp_path) as member:
        admin = EtcdAdmin([member.url])
        admin.etcdctl("user", "add", "root:rootpw")
        admin.etcdctl("user", "grant-role", "root", "root")
        admin.etcdctl("auth", "enable")
        bad = EtcdClient([member.url], timeout=1, username="root", password="wrong")
        anonymous = EtcdClient([member.url], timeout=1)
        good = EtcdClient([member.url], timeout=1, username="root", password="rootpw")
        try:
            with pytest.raises(EtcdAuthError, match=rf"{member.url} refused user 'root'"):
                await bad.get("/k")
            with pytest.raises(EtcdAuthError, match=member.url):
                await anonymous.get("/k")
            rev = await good.put("/auth/k", b"v")
            watch = good.watch_prefix("/auth/", rev)
            async with asyncio.timeout(5):
                assert await anext(watch) == []  # established
                assert [e.value for e in await anext(watch)] == [b"v"]
            await watch.aclose()
        finally:
            for c in (bad, anonymous, good):
                await c.close()


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"
    assert prefix_end(b"") == b"\0"


# ----------------------------------------------------------- value formats

PARSE_OK = [
    ("10.0.0.1:8080", Found("http://10.0.0.1:8080")),  # go-zero
    (" 10.0.0.1:8080\n", Found("http://10.0.0.1:8080")),
    ("svc.internal:80", Found("http://svc.internal:80")),
    ("[::1]:9000", Found("http://[::1]:9000")),
    ("http://10.0.0.1:8080", Found("http://10.0.0.1:8080")),
    ("http://10.0.0.1:8080/", Found("http://10.0.0.1:8080")),
    ("https://api.internal", Found("https://api.internal:443")),
    ("HTTP://Host:81", Found("http://host:81")),
    ('{"url": "https://10.0.0.2:8443", "weight": 5}', Found("https://10.0.0.2:8443", 5)),
    ('{"address": "10.0.0.3:9000"}', Found("http://10.0.0.3:9000")),
    ('{"address": "http://10.0.0.3:9000", "weight": "3"}', Found("http://10.0.0.3:9000", 3)),
    ('{"Op": 0, "Addr": "10.0.0.4:50051"}', Found("http://10.0.0.4:50051")),  # etcd naming
    (  # kratos: the first http(s) entry; its query says nothing a target needs
        '{"id": "x", "name": "user", "version": "v1", "metadata": {},'
        ' "endpoints": ["grpc://10.0.0.5:9000", "http://10.0.0.5:8000?isSecure=false"]}',
        Found("http://10.0.0.5:8000"),
    ),
]

PARSE_BAD = [
    ("", "empty"),
    ("   ", "empty"),
    ("10.0.0.1", "no port"),
    ("10.0.0.1:0", "port 0"),
    ("10.0.0.1:70000", "invalid address"),
    ("10.0.0.1:http", "invalid address"),
    ("grpc://10.0.0.1:9000", "scheme"),
    ("http://10.0.0.1:80/api", "path"),
    ("http://user:pw@10.0.0.1:80", "user"),
    ("bad host:80", "invalid host"),
    ('{"url": "http://a:1"', "invalid JSON"),
    ("[1, 2]", "not an object"),
    ('["http://a:1"]', "not an object"),
    ('"http://a:1"', "not an object"),
    ("[::1]", "no port"),
    ("{}", 'without "url"'),
    ('{"url": 5}', "not a string"),
    ('{"endpoints": ["grpc://10.0.0.5:9000"]}', "no http"),
    ('{"endpoints": "http://a:1"}', "not a list"),
    ('{"url": "http://a:1", "weight": 0}', "weight 0"),
    ('{"url": "http://a:1", "weight": -2}', "weight -2"),
    ('{"url": "http://a:1", "weight": 10001}', "weight 10001"),
    ('{"url": "http://a:1", "weight": 1.5}', "not an integer"),
    ('{"url": "http://a:1", "weight": true}', "not an integer"),
    (b"\xff\xfe", "not UTF-8"),
]


@pytest.mark.parametrize(("value", "want"), PARSE_OK)
def test_parse_instance(value: str, want: Found) -> None:
    assert parse_instance("/services/user/7587870966574505223", value) == (want, "")
    assert parse_instance("/k", value.encode()) == (want, "")


@pytest.mark.parametrize(("value", "reason"), PARSE_BAD)
def test_parse_instance_refuses(value: str | bytes, reason: str) -> None:
    found, why = parse_instance("/k", value)
    assert found is None
    assert reason in why, why


# ------------------------------------------------------------------ source


async def test_source_follows_puts_and_deletes(client: EtcdClient, admin: EtcdAdmin) -> None:
    p = "/t/follow/"
    admin.put(p + "1", "127.0.0.1:1001")
    admin.put(p + "2", '{"url": "http://127.0.0.1:1002", "weight": 4}')
    admin.put(p + "bad", "not an address")
    source = EtcdSource(client, p)
    assert source.name == "etcd /t/follow/"
    async with running(source) as rec:
        await rec.wait(lambda: bool(rec.sets), 2, "first read")
        assert rec.sets[0] == [Found(url(1001)), Found(url(1002), 4)]
        assert [key for key, _ in rec.skips] == [p + "bad"]

        admin.put(p + "3", "127.0.0.1:1003")
        await rec.wait(lambda: rec.urls == {url(1001), url(1002), url(1003)}, 1, "a put")
        admin.delete(p + "1")
        await rec.wait(lambda: rec.urls == {url(1002), url(1003)}, 1, "a delete")
        admin.put(p + "2", "garbage:")  # a value that stops parsing takes its instance out
        await rec.wait(lambda: rec.urls == {url(1003)}, 1, "a bad put")
        assert rec.skips[-1][0] == p + "2"
        admin.put(p + "bad", "127.0.0.1:1003")  # the same instance twice is one target
        admin.put(p + "4", "127.0.0.1:1004")
        await rec.wait(lambda: rec.urls == {url(1003), url(1004)}, 1, "dedup")
        assert len(rec.sets[-1]) == 2
        assert rec.failures == []


async def test_an_expired_lease_removes_the_instance(client: EtcdClient, admin: EtcdAdmin) -> None:
    p = "/t/lease/"
    admin.put(p + "static", "127.0.0.1:2000")
    async with running(EtcdSource(client, p)) as rec:
        await rec.wait(lambda: rec.urls == {url(2000)}, 2, "first read")
        lease = admin.grant(1)  # go-zero: grant, put --lease, keep alive (we don't)
        admin.put(f"{p}{lease:x}", "127.0.0.1:2001", lease=lease)
        await rec.wait(lambda: rec.urls == {url(2000), url(2001)}, 1, "registered")
        await rec.wait(lambda: rec.urls == {url(2000)}, 5, "lease expired")


async def test_compaction_during_a_disconnect_rereads(etcd: EtcdMember, admin: EtcdAdmin) -> None:
    p = "/t/compact/"
    admin.put(p + "a", "127.0.0.1:3001")
    admin.put(p + "b", "127.0.0.1:3002")
    proxy = await TcpProxy(etcd.client_port).start()
    client = EtcdClient([proxy.url], timeout=1)
    reads = 0
    range_prefix = client.range_prefix

    async def counting(prefix: str) -> tuple[int, list[tuple[str, bytes]]]:
        nonlocal reads
        reads += 1
        return await range_prefix(prefix)

    client.range_prefix = counting  # type: ignore[method-assign]
    try:
        async with running(EtcdSource(client, p)) as rec:
            await rec.wait(lambda: rec.urls == {url(3001), url(3002)}, 2, "first read")
            await proxy.stop()
            await rec.wait(lambda: bool(rec.failures), 3, "the cut noticed")
            assert rec.urls == {url(3001), url(3002)}  # the last set stays
            admin.delete(p + "a")
            admin.put(p + "c", "127.0.0.1:3003")
            admin.compact()
            await proxy.start()
            await rec.wait(lambda: rec.urls == {url(3002), url(3003)}, 5, "after compaction")
            assert reads == 2
    finally:
        await proxy.stop()
        await client.close()


async def test_unreachable_then_back(tmp_path: Path) -> None:
    member = EtcdMember(tmp_path)  # ports chosen, not started: etcd down at start
    client = EtcdClient([member.url], timeout=0.5)
    try:
        async with running(EtcdSource(client, "/t/outage/")) as rec:
            await rec.wait(lambda: bool(rec.failures), 2, "down at start")
            assert member.url in rec.failures[0]
            assert rec.sets == []
            member.start()
            admin = EtcdAdmin([member.url])
            admin.put("/t/outage/1", "127.0.0.1:4001")
            await rec.wait(lambda: rec.urls == {url(4001)}, 5, "up")

            member.stop()
            failures = len(rec.failures)
            await rec.wait(lambda: len(rec.failures) > failures, 3, "down again")
            sets = len(rec.sets)
            assert rec.urls == {url(4001)}
            member.start()
            await rec.wait(lambda: len(rec.sets) > sets, 5, "restored")
            assert rec.urls == {url(4001)}
            admin.put("/t/outage/2", "127.0.0.1:4002")
            await rec.wait(lambda: rec.urls == {url(4001), url(4002)}, 1, "watching again")
    finally:
        member.stop()
        await client.close()


async def test_member_failover_misses_nothing(tmp_path: Path) -> None:
    p = "/t/failover/"
    with etcd_cluster(tmp_path) as cluster:
        # Writes go through the members that stay; the client starts on m0.
        admin = EtcdAdmin(cluster.endpoints[1:])
        client = EtcdClient(cluster.endpoints, timeout=1)
        written: dict[int, float] = {}  # port -> when its put returned
        expected: set[str] = set()
        stop = threading.Event()

        def writer() -> None:
            # Every put, and a delete of the one two before: a missed event
            # of either kind leaves the final set wrong.
            i = 0
            while not stop.is_set() or i < 60:
                port = 5000 + i
                admin.put(f"{p}{i:04d}", f"127.0.0.1:{port}")
                written[port] = time.monotonic()
                expected.add(url(port))
                if i >= 2 and i % 2 == 0:
                    admin.delete(f"{p}{i - 2:04d}")
                    expected.discard(url(port - 2))
                i += 1
                time.sleep(0.01)

        try:
            async with running(EtcdSource(client, p)) as rec:
                await rec.wait(lambda: bool(rec.sets), 3, "first read")
                thread = threading.Thread(target=writer)
                thread.start()
                await rec.wait(lambda: len(rec.sets) > 5, 3, "changes flowing")
                await asyncio.to_thread(cluster.members[0].stop)
                killed = time.monotonic()
                await asyncio.sleep(2)  # changes keep coming while the watch moves
                stop.set()
                await asyncio.to_thread(thread.join)
                await rec.wait(lambda: rec.urls == expected, 5, "every change seen")

                # Odd ports are never deleted: the first one written after the kill.
                port_after = min(p for p, t in written.items() if t > killed and p % 2)
                seen = next(
                    at for s, at in zip(rec.sets, rec.seen_at, strict=True)
                    if url(port_after) in {f.url for f in s}
                )  # fmt: skip
                assert seen - killed < 5, f"watching again after {seen - killed:.2f} s"
        finally:
            stop.set()
            await client.close()


async def test_a_frozen_member_is_left_and_nothing_missed(tmp_path: Path) -> None:
    """SIGSTOP: the member's sockets stay open and silent (no FIN, no RST), the
    way a hung VM or a partition looks. The watch must notice, move on and
    resume from its revision."""
    p = "/t/frozen/"
    with etcd_cluster(tmp_path) as cluster:
        frozen = cluster.members[0]  # the client watches through m0 first
        assert frozen.proc is not None
        admin = EtcdAdmin(cluster.endpoints[1:])
        client = EtcdClient(cluster.endpoints, timeout=1)
        expected: set[str] = set()
        written: dict[int, float] = {}
        try:
            async with running(EtcdSource(client, p)) as rec:
                for i in range(3):
                    admin.put(f"{p}{i:04d}", f"127.0.0.1:{6000 + i}")
                    expected.add(url(6000 + i))
                await rec.wait(lambda: rec.urls == expected, 3, "watching")
                os.kill(frozen.proc.pid, signal.SIGSTOP)
                stopped = time.monotonic()
                for i in range(3, 40):  # changes keep coming through m1 and m2
                    port = 6000 + i
                    await asyncio.to_thread(admin.put, f"{p}{i:04d}", f"127.0.0.1:{port}")
                    written[port] = time.monotonic()
                    expected.add(url(port))
                    if i % 3 == 0:
                        await asyncio.to_thread(admin.delete, f"{p}{i - 3:04d}")
                        expected.discard(url(port - 3))
                    await asyncio.sleep(0.1)
                await rec.wait(lambda: rec.urls == expected, 5, "every change seen")
                first = min(p for p in written if p % 3)  # multiples of 3 are deleted later
                seen = next(
                    at for s, at in zip(rec.sets, rec.seen_at, strict=True)
                    if url(first) in {f.url for f in s}
                )  # fmt: skip
                print(f"frozen member left: first change seen {seen - stopped:.2f} s after SIGSTOP")
                assert seen - stopped < 5, f"watching again after {seen - stopped:.2f} s"
                # The member is back: the watch stays where it is and still follows.
                os.kill(frozen.proc.pid, signal.SIGCONT)
                admin.put(f"{p}last", "127.0.0.1:6999")
                await rec.wait(lambda: url(6999) in (rec.urls or ()), 2, "after SIGCONT")
        finally:
            if frozen.proc is not None:
                os.kill(frozen.proc.pid, signal.SIGCONT)  # then killed by PID as the others
            await client.close()

"""A real etcd behind the real gateway: instances registered with leases
(the way go-zero registers them) become targets and leave without a reload,
and the fleet's config comes from etcd.config_key, written by `pyproxyd push`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.backends import Backend, wait_for
from harness.etcd_server import EtcdAdmin, EtcdMember, etcd_member
from harness.gateway import config, gateway, url
from pyproxyd.server import Gateway

PREFIX = "/services/app/"
KEY = "/pyproxyd/config"


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdMember]:
    with etcd_member(tmp_path / "etcd") as member:
        yield member


def discovered(etcd: EtcdMember, extra: str = "") -> str:
    return config(
        f"""
[etcd]
endpoints = ["{etcd.url}"]
timeout = "2s"
[upstreams.app]
discovery = {{ etcd = "{PREFIX}" }}
retries = 0
[[routes]]
id = "app"
path = "/**"
upstream = "app"
{extra}
"""
    )


async def names(gw: Gateway, n: int) -> list[tuple[int, str]]:
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(url(gw, "/echo")) as r:
                out.append((r.status, r.headers.get("X-Backend", "")))
    return out


async def until(check: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_leased_instances_come_and_go_without_a_reload(
    tmp_path: Path, etcd: EtcdMember
) -> None:
    admin = EtcdAdmin([etcd.url])
    async with Backend(name="a") as a, Backend(name="b") as b:
        lease_a = admin.grant(30)
        admin.put(f"{PREFIX}{lease_a}", f"127.0.0.1:{a.port}", lease=lease_a)
        async with gateway(tmp_path, discovered(etcd)) as gw:

            async def only_a() -> bool:
                return {n for _, n in await names(gw, 4)} == {"a"}

            await until(only_a)
            lease_b = admin.grant(2)  # b registers with a short lease, then stops renewing
            admin.put(f"{PREFIX}{lease_b}", json.dumps({"url": b.url, "weight": 1}), lease=lease_b)

            async def both() -> bool:
                return {n for _, n in await names(gw, 6)} == {"a", "b"}

            await until(both, 1.5)  # within 1 s of the change (and a margin for the host)

            # The lease expires: b leaves, and no request fails on the way.
            async def only_a_again() -> bool:
                got = await names(gw, 4)
                assert all(status == 200 for status, _ in got)
                return {n for _, n in got} == {"a"}

            await until(only_a_again, 10.0)


async def test_twenty_register_cycles_fail_no_request(tmp_path: Path, etcd: EtcdMember) -> None:
    admin = EtcdAdmin([etcd.url])
    async with Backend(name="stays") as stays, Backend(name="flaps") as flaps:
        admin.put(f"{PREFIX}stays", f"127.0.0.1:{stays.port}")
        async with gateway(tmp_path, discovered(etcd)) as gw:

            async def served() -> bool:
                return (await names(gw, 1))[0][0] == 200

            await until(served)
            stop = asyncio.Event()
            statuses: list[int] = []

            async def load() -> None:
                async with aiohttp.ClientSession() as s:
                    for _ in range(2000):  # bounded
                        if stop.is_set():
                            return
                        async with s.get(url(gw, "/echo")) as r:
                            statuses.append(r.status)
                            await r.read()

            task = asyncio.create_task(load())
            for _ in range(20):
                admin.put(f"{PREFIX}flaps", f"127.0.0.1:{flaps.port}")
                await asyncio.sleep(0.05)
                admin.delete(f"{PREFIX}flaps")
                await asyncio.sleep(0.05)
            stop.set()
            await task
    assert statuses and all(s == 200 for s in statuses), sorted(set(statuses))


async def test_an_unreachable_etcd_keeps_the_last_instances(
    tmp_path: Path, etcd: EtcdMember, log_file: Path
) -> None:
    admin = EtcdAdmin([etcd.url])
    async with Backend(name="a") as a:
        admin.put(f"{PREFIX}a", f"127.0.0.1:{a.port}")
        async with gateway(tmp_path, discovered(etcd)) as gw:

            async def served() -> bool:
                return (await names(gw, 1))[0] == (200, "a")

            await until(served)
            etcd.stop()
            await asyncio.sleep(0.5)
            assert await names(gw, 5) == [(200, "a")] * 5
    events = [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
    assert events.count("discovery_unavailable") == 1


def push(cfg: Path, doc: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyproxyd", "push", "-c", str(cfg), str(doc)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def shared(etcd: EtcdMember, backend_url: str) -> str:
    return config(
        f"""
[etcd]
endpoints = ["{etcd.url}"]
timeout = "2s"
config_key = "{KEY}"
[upstreams.app]
targets = [{{ url = "{backend_url}" }}]
[[routes]]
id = "file-route"
path = "/file/**"
upstream = "app"
strip_prefix = 1
"""
    )


DOC = """
[[routes]]
id = "from-etcd"
path = "/{prefix}/**"
upstream = "app"
strip_prefix = 1
"""


async def test_push_changes_every_instance_watching_the_key(
    tmp_path: Path, etcd: EtcdMember
) -> None:
    async with Backend(name="a") as a:
        cfg = tmp_path / "gw.toml"
        cfg.write_text(shared(etcd, a.url))
        doc = tmp_path / "doc.toml"
        doc.write_text(DOC.format(prefix="v1"))
        done = await asyncio.to_thread(push, cfg, doc)
        assert done.returncode == 0, done.stderr
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
        async with (
            gateway(tmp_path / "one", shared(etcd, a.url)) as one,
            gateway(tmp_path / "two", shared(etcd, a.url)) as two,
            aiohttp.ClientSession() as s,
        ):

            async def status(gw: Gateway, path: str) -> int:
                async with s.get(url(gw, path)) as r:
                    return r.status

            async def both(path: str, code: int) -> bool:
                return await status(one, path) == code and await status(two, path) == code

            async def v1() -> bool:
                return await both("/v1/echo", 200)

            await until(v1)
            # The document replaced the file's routes.
            assert await status(one, "/file/echo") == 404
            doc.write_text(DOC.format(prefix="v2"))
            done = await asyncio.to_thread(push, cfg, doc)
            assert done.returncode == 0, done.stderr

            async def v2() -> bool:
                return await both("/v2/echo", 200) and await both("/v1/echo", 404)

            await until(v2, 1.5)
            async with s.get(f"http://127.0.0.1:{one.admin_port}/admin/config") as r:
                body = await r.json()
            assert body["config_key"] == KEY
            assert body["config_revision"] == int(done.stdout.rsplit(" ", 1)[1])


async def test_an_invalid_document_keeps_the_old_config(tmp_path: Path, etcd: EtcdMember) -> None:
    admin = EtcdAdmin([etcd.url])
    async with Backend(name="a") as a:
        admin.put(KEY, DOC.format(prefix="v1"))
        async with gateway(tmp_path, shared(etcd, a.url)) as gw, aiohttp.ClientSession() as s:

            async def v1() -> bool:
                async with s.get(url(gw, "/v1/echo")) as r:
                    return r.status == 200

            await until(v1)
            admin.put(KEY, DOC.format(prefix="v2").replace('"app"', '"nope"'))

            async def reported() -> bool:
                async with s.get(f"http://127.0.0.1:{gw.admin_port}/admin/config") as r:
                    return bool((await r.json())["last_reload_error"])

            await until(reported)
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/admin/config") as r:
                errors = (await r.json())["last_reload_error"]
            assert errors == [f"{KEY}: routes[0].upstream: unknown upstream 'nope' (line 5)"]
            assert await v1()


SLOW = """
[middlewares.slow]
type = "python"
factory = "slowmw:make"
[[routes]]
id = "slow"
path = "/slow/**"
upstream = "app"
middlewares = ["slow"]
"""


def test_push_refuses_an_invalid_document_a_stale_revision_and_no_etcd(
    tmp_path: Path, etcd: EtcdMember
) -> None:
    admin = EtcdAdmin([etcd.url])
    cfg = tmp_path / "gw.toml"
    text = shared(etcd, "http://127.0.0.1:1")
    cfg.write_text(text.replace("[server]\n", '[server]\npython_path = ["mw"]\n', 1))
    (tmp_path / "mw").mkdir()
    # A factory that takes a while: the window in which another push lands.
    (tmp_path / "mw" / "slowmw.py").write_text(
        "import time\nclass M:\n    def on_request(self, req):\n        return None\n"
        "def make(options):\n    time.sleep(1.5)\n    return M()\n"
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nworkers = 2\n" + DOC.format(prefix="x").replace('"app"', '"nope"'))
    done = push(cfg, bad)
    assert done.returncode == 1
    assert f"{bad}: server: only the tables" in done.stderr
    assert f"{bad}: routes[0].upstream: unknown upstream 'nope'" in done.stderr
    assert admin.etcdctl("get", KEY).strip() == ""  # nothing written

    slow = tmp_path / "slow.toml"
    slow.write_text(SLOW)
    racing = subprocess.Popen(
        [sys.executable, "-m", "pyproxyd", "push", "-c", str(cfg), str(slow)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.8)  # it has read the key's revision and is validating
        other = tmp_path / "other.toml"
        other.write_text(DOC.format(prefix="other"))
        assert push(cfg, other).returncode == 0  # this one wins
        _, err = racing.communicate(timeout=60)
    finally:
        if racing.poll() is None:
            racing.kill()
    assert racing.returncode == 2, err
    assert "changed since it was read" in err
    assert "/other/" in admin.etcdctl("get", KEY)

    etcd.stop()
    done = push(cfg, other)
    assert done.returncode == 2
    assert "cannot read" in done.stderr


# -- workers: the supervisor watches the key for its workers --------------------------------


async def fresh_statuses(port: int, path: str, n: int = 24) -> list[int]:
    """n requests at once, each on a new connection: the kernel spreads them
    over the workers (SO_REUSEPORT), so n of them reach every worker."""

    async def one() -> int:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
            return r.status

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_with_workers_a_push_reaches_every_worker_and_a_bad_one_none(
    tmp_path: Path, etcd: EtcdMember
) -> None:
    from tests.e2e.test_workers import instance

    admin = EtcdAdmin([etcd.url])
    async with Backend(name="a") as a:
        body = shared(etcd, a.url).split("[etcd]", 1)[1]
        admin.put(KEY, DOC.format(prefix="v1"))
        async with instance(tmp_path, 3, "[etcd]" + body) as inst:
            # The workers started on the document, not on the file alone.
            assert await fresh_statuses(inst.port, "/v1/echo") == [200] * 24
            assert await fresh_statuses(inst.port, "/file/echo") == [404] * 24
            # Written straight to the key (`push` is a process start slower): timed from
            # the write.
            pushed = time.monotonic()
            revision = admin.put(KEY, DOC.format(prefix="v2"))
            while True:
                started = time.monotonic() - pushed
                v2 = await fresh_statuses(inst.port, "/v2/echo")
                v1 = await fresh_statuses(inst.port, "/v1/echo")
                if v2 == [200] * 24 and v1 == [404] * 24:
                    break
                assert started < 5, (v1, v2)
            print(f"every worker on v2 {started:.3f} s after the write")
            assert started < 1.0  # every worker within 1 s of the write

            # An invalid document: reported once by the supervisor, no worker tries it.
            admin.put(KEY, DOC.format(prefix="v3").replace('"app"', '"nope"'))
            async with aiohttp.ClientSession() as s:

                async def reported() -> bool:
                    async with s.get(f"http://127.0.0.1:{inst.admin}/admin/config") as r:
                        return bool((await r.json())["last_reload_error"])

                await until(reported)
                async with s.get(f"http://127.0.0.1:{inst.admin}/admin/config") as r:
                    cfg_view = await r.json()
            assert cfg_view["last_reload_error"] == [
                f"{KEY}: routes[0].upstream: unknown upstream 'nope' (line 5)"
            ]
            assert cfg_view["config_revision"] == revision
            assert await fresh_statuses(inst.port, "/v2/echo") == [200] * 24
            assert await fresh_statuses(inst.port, "/v3/echo") == [404] * 24

            # A worker that dies is restarted on the document serving, not the file's.
            killed = inst.workers[0]
            os.kill(killed, signal.SIGKILL)
            await wait_for(lambda: len(inst.workers) == 3 and killed not in inst.workers, 20)
            await inst.gw.wait_ready(inst.admin, timeout=30)
            assert await fresh_statuses(inst.port, "/v2/echo") == [200] * 24
        lines = [json.loads(x) for x in inst.gw.output.decode().splitlines() if x.startswith("{")]
        events = [x["event"] for x in lines]
        assert events.count("worker_config_reloaded") == 3  # v2, once in each worker
        assert "worker_config_reload_failed" not in events
        assert events.count("config_reload_failed") == 1  # v3, once, by the supervisor


def watchers(etcd: EtcdMember) -> int:
    """The watches etcd holds open now (its own gauge)."""
    with urllib.request.urlopen(etcd.url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("etcd_debugging_mvcc_watcher_total "):
                return int(float(line.split()[1]))
    raise AssertionError("no etcd_debugging_mvcc_watcher_total")


async def worker_sets(admin_port: int) -> list[set[str]]:
    """Each worker's targets of `app`, from the supervisor's /admin/upstreams."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{admin_port}/admin/upstreams") as r,
    ):
        body = await r.json()
    return [{t["url"] for t in w["upstreams"]["app"]["targets"]} for w in body["workers"]]


async def test_with_workers_one_watch_and_every_worker_the_same_targets(
    tmp_path: Path, etcd: EtcdMember
) -> None:
    from tests.e2e.test_workers import instance

    admin = EtcdAdmin([etcd.url])
    async with Backend(name="a") as a, Backend(name="b") as b:
        admin.put(f"{PREFIX}a", f"127.0.0.1:{a.port}")
        admin.put(f"{PREFIX}b", f"127.0.0.1:{b.port}")
        # A long etcd.timeout: /readyz must come from the answer, not from the wait.
        body = discovered(etcd).split("[etcd]", 1)[1].replace('timeout = "2s"', 'timeout = "20s"')
        started = time.monotonic()
        async with instance(tmp_path, 3, "[etcd]" + body) as inst:
            assert time.monotonic() - started < 15
            assert watchers(etcd) == 1  # the supervisor's, relayed to 3 workers
            a_url, b_url = f"http://127.0.0.1:{a.port}", f"http://127.0.0.1:{b.port}"
            assert await worker_sets(inst.admin) == [{a_url, b_url}] * 3
            assert await fresh_statuses(inst.port, "/echo") == [200] * 24

            admin.delete(f"{PREFIX}b")
            changed = time.monotonic()
            while await worker_sets(inst.admin) != [{a_url}] * 3:
                assert time.monotonic() - changed < 1.0, await worker_sets(inst.admin)
                await asyncio.sleep(0.02)

            # A restarted worker starts with the set the others serve.
            killed = inst.workers[0]
            os.kill(killed, signal.SIGKILL)
            await wait_for(lambda: len(inst.workers) == 3 and killed not in inst.workers, 20)
            await inst.gw.wait_ready(inst.admin, timeout=30)
            assert await worker_sets(inst.admin) == [{a_url}] * 3
            assert await fresh_statuses(inst.port, "/echo") == [200] * 24
            assert watchers(etcd) == 1
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{inst.admin}/metrics") as r,
            ):
                text = await r.text()
            # Counted once for the instance, not once per worker.
            assert 'pyproxyd_discovery_updates_total{result="applied",upstream="app"} 2.0' in text
            assert 'pyproxyd_discovery_targets{upstream="app"} 1.0' in text
        lines = [json.loads(x) for x in inst.gw.output.decode().splitlines() if x.startswith("{")]
        changes = [x for x in lines if x["event"] == "discovery_changed"]
        # Logged once per instance: the first answer, then b leaving.
        assert [(c["added"], c["removed"]) for c in changes] == [
            (sorted([a_url, b_url]), []),
            ([], [b_url]),
        ]


async def test_with_workers_dns_is_asked_once_per_instance(tmp_path: Path) -> None:
    from harness.dns_server import DnsServer
    from tests.e2e.test_workers import instance

    dns = await DnsServer().start()
    try:
        async with Backend(name="a") as a:
            dns.set_a("svc.test", ["127.0.0.1"], ttl=1)
            body = f"""
[dns]
nameservers = ["{dns.address}"]
[upstreams.app]
discovery = {{ dns = "svc.test:{a.port}" }}
[[routes]]
id = "app"
path = "/**"
upstream = "app"
"""
            async with instance(tmp_path, 3, body) as inst:
                target = f"http://127.0.0.1:{a.port}"
                assert await worker_sets(inst.admin) == [{target}] * 3
                before = dns.queries("svc.test", "A")
                await asyncio.sleep(3.2)
                asked = dns.queries("svc.test", "A") - before
                # TTL 1 s: about 3 questions from the one resolver (3 workers asking: 9).
                assert 2 <= asked <= 5, asked
                assert await fresh_statuses(inst.port, "/echo") == [200] * 24
    finally:
        await dns.close()

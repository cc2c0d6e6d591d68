"""`server.workers > 1` acts as one instance: limits, breakers and ejection are shared.

The real supervisor and its workers (`pyproxyd run`), real backends. Fresh
connections are spread over the workers by the kernel (SO_REUSEPORT); one
keep-alive connection stays on one worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from harness.backends import Backend, wait_for
from harness.gateway import GatewayProcess, children, free_port

HEAD = """
[server]
listen = ["127.0.0.1:{port}"]
workers = {workers}
shared_zone_size = "2MiB"
[admin]
listen = "127.0.0.1:{admin}"
[logging]
access_log = false
"""

LIMITED = """
[upstreams.app]
targets = [{{ url = "{backend}" }}]
[rate_limits.per_client]
algorithm = "{algorithm}"
{numbers}
key = "header:X-Client"
[[routes]]
id = "limited"
path = "/l/**"
upstream = "app"
strip_prefix = 1
rate_limit = "per_client"
"""

BURST = 12
NUMBERS = {
    "token_bucket": f'rate = "1/h"\nburst = {BURST}',
    "leaky_bucket": f'rate = "1/h"\nburst = {BURST - 1}\nmode = "reject"',
    "sliding_window": f'limit = {BURST}\nwindow = "1h"',
}


class Instance:
    def __init__(self, gw: GatewayProcess, port: int, admin: int) -> None:
        self.gw = gw
        self.port = port
        self.admin = admin

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def workers(self) -> list[int]:
        assert self.gw.proc is not None
        return children(self.gw.proc.pid)


@asynccontextmanager
async def instance(tmp_path: Path, workers: int, body: str) -> AsyncIterator[Instance]:
    port, admin = free_port(), free_port()
    path = tmp_path / "gateway.toml"
    path.write_text(HEAD.format(port=port, admin=admin, workers=workers) + body)
    async with GatewayProcess(path) as gw:
        await gw.wait_ready(admin, timeout=30)
        inst = Instance(gw, port, admin)
        assert len(inst.workers) == workers
        yield inst
        assert await gw.stop() == 0


async def fresh(url: str, **kwargs: object) -> tuple[int, bytes]:
    """One request on a new connection (any worker may take it)."""
    async with aiohttp.ClientSession() as s, s.get(url, **kwargs) as r:  # type: ignore[arg-type]
        return r.status, await r.read()


@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("algorithm", sorted(NUMBERS))
async def test_one_keep_alive_client_gets_the_whole_burst(
    tmp_path: Path, workers: int, algorithm: str
) -> None:
    """Not burst / workers, as when each worker kept its own share."""
    async with Backend() as b:
        body = LIMITED.format(backend=b.url, algorithm=algorithm, numbers=NUMBERS[algorithm])
        async with instance(tmp_path, workers, body) as inst, aiohttp.ClientSession() as s:
            statuses = []
            for _ in range(BURST + 8):
                async with s.get(inst.url("/l/echo"), headers={"X-Client": "one"}) as r:
                    await r.read()
                    statuses.append(r.status)
            assert statuses.count(200) == BURST  # rate 1/h: nothing refills meanwhile
            assert statuses[BURST:] == [429] * 8


@pytest.mark.parametrize("workers", [2, 4])
async def test_clients_on_fresh_connections_share_one_bucket(tmp_path: Path, workers: int) -> None:
    async with Backend() as b:
        numbers = NUMBERS["token_bucket"]
        body = LIMITED.format(backend=b.url, algorithm="token_bucket", numbers=numbers)
        async with instance(tmp_path, workers, body) as inst:
            got = await asyncio.gather(
                *(fresh(inst.url("/l/echo"), headers={"X-Client": "k"}) for _ in range(BURST * 3))
            )
            assert [s for s, _ in got].count(200) == BURST
            assert b.hits == BURST
            # another key has its own bucket, on every worker
            other = [await fresh(inst.url("/l/echo"), headers={"X-Client": "j"}) for _ in range(4)]
            assert [s for s, _ in other] == [200] * 4


async def test_a_worker_killed_mid_traffic_is_restarted_onto_the_same_buckets(
    tmp_path: Path,
) -> None:
    burst = 40
    async with Backend() as b:
        numbers = f'rate = "1/h"\nburst = {burst}'
        body = LIMITED.format(backend=b.url, algorithm="token_bucket", numbers=numbers)
        async with instance(tmp_path, 2, body) as inst:
            statuses: list[int] = []

            async def traffic(n: int) -> None:
                for _ in range(n):
                    try:
                        status, _ = await fresh(inst.url("/l/echo"), headers={"X-Client": "k"})
                    except aiohttp.ClientError:
                        continue  # the killed worker's connection
                    statuses.append(status)

            before = inst.workers
            loader = asyncio.create_task(traffic(30))
            await wait_for(lambda: len(statuses) >= 10, timeout=20)
            os.kill(before[0], signal.SIGKILL)  # mid-traffic, perhaps mid-decision
            await loader
            assert inst.gw.proc is not None
            await wait_for(
                lambda: len(inst.workers) == 2 and before[0] not in inst.workers, timeout=20
            )
            await inst.gw.wait_ready(inst.admin, timeout=30)
            await traffic(60)  # about half of these on the new worker
            allowed = statuses.count(200)
            # a request the killed worker admitted may have lost its answer with it
            assert burst - 1 <= allowed <= burst
            assert b.hits <= burst
            assert statuses[-20:] == [429] * 20


async def test_a_failing_upstream_opens_the_circuit_in_every_worker(tmp_path: Path) -> None:
    body = """
[upstreams.app]
targets = [{{ url = "{backend}" }}]
retries = 0
[upstreams.app.circuit_breaker]
consecutive_failures = 3
min_requests = 1000
timeout = "1h"
[[routes]]
id = "r"
path = "/r/**"
upstream = "app"
strip_prefix = 1
"""
    async with Backend() as b, instance(tmp_path, 4, body.format(backend=b.url)) as inst:
        answers = [await fresh(inst.url("/r/status/503")) for _ in range(20)]
        opened = [json.loads(x).get("error") if x else None for _s, x in answers]
        first = opened.index("circuit_open")
        # 3 failures, +1 for a request in flight when the third came back
        assert 3 <= b.hits <= 4 and first == b.hits
        assert opened[first:] == ["circuit_open"] * (20 - first)
        assert {s for s, _ in answers} == {503}
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{inst.admin}/admin/upstreams") as r,
        ):
            ups = await r.json()
        states = {w["upstreams"]["app"]["circuit"]["state"] for w in ups["workers"]}
        assert states == {"open"}
        transitions = [
            w["upstreams"]["app"]["circuit"]["transitions"].get("closed->open", 0)
            for w in ups["workers"]
        ]
        assert sum(transitions) == 1  # opened once, by one worker, for all


async def test_passive_ejection_counts_failures_across_workers(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    body = f"""
[upstreams.app]
targets = [{{ url = "{down}" }}]
retries = 0
[upstreams.app.health]
max_fails = 3
eject_for = "1h"
[[routes]]
id = "r"
path = "/r/**"
upstream = "app"
strip_prefix = 1
"""
    async with instance(tmp_path, 4, body) as inst:
        answers = [await fresh(inst.url("/r/x")) for _ in range(16)]
        errors = [json.loads(x)["error"] for _s, x in answers]
        assert errors[:3] == ["bad_gateway"] * 3  # connection refused, three in a row
        assert errors[3:] == ["no_healthy_target"] * 13  # ejected in every worker at once


async def test_the_zone_is_a_memfd_every_worker_maps(tmp_path: Path) -> None:
    """Nothing named in /dev/shm or a temp folder: a killed instance leaves nothing."""
    async with Backend() as b:
        body = LIMITED.format(backend=b.url, algorithm="token_bucket", numbers='rate = "1/s"')
        async with instance(tmp_path, 2, body) as inst:
            for pid in inst.workers:
                maps = Path(f"/proc/{pid}/maps").read_text()
                assert "/memfd:pyproxyd-zone (deleted)" in maps
            assert not [n for n in os.listdir("/dev/shm") if "pyproxyd" in n]


async def test_a_reload_carries_the_shared_buckets_over_as_in_one_process(
    tmp_path: Path,
) -> None:
    """Same policy (name, algorithm, mode, key): the same buckets, new numbers applied;
    another algorithm: fresh buckets. As the in-process carry-over."""
    async with Backend() as b:
        body = LIMITED.format(backend=b.url, algorithm="token_bucket", numbers='rate = "1/h"')
        async with instance(tmp_path, 2, body) as inst:
            path = tmp_path / "gateway.toml"
            head = path.read_text().replace(body, "")

            async def allowed(n: int) -> int:
                got = [
                    await fresh(inst.url("/l/echo"), headers={"X-Client": "k"}) for _ in range(n)
                ]
                return [s for s, _ in got].count(200)

            async def reload(new_body: str) -> None:
                path.write_text(head + new_body)
                assert inst.gw.proc is not None
                inst.gw.proc.send_signal(signal.SIGHUP)

            async def quota_everywhere(quota: str) -> None:
                """Until 8 fresh connections in a row (both workers) show the new limit."""
                row = 0
                while row < 8:
                    async with (
                        aiohttp.ClientSession() as s,
                        s.get(inst.url("/l/echo"), headers={"X-Client": "probe"}) as r,
                    ):
                        row = row + 1 if r.headers.get("X-RateLimit-Limit") == quota else 0
                    await asyncio.sleep(0.02)

            assert await allowed(4) == 1  # burst: one second of 1/h, so 1
            await reload(body.replace('rate = "1/h"', 'rate = "1/h"\nburst = 3'))
            await asyncio.wait_for(quota_everywhere("3"), 15)
            assert await allowed(6) == 2  # the request counted before still is: 2 more, not 3
            await reload(body.replace("token_bucket", "leaky_bucket").replace(
                'rate = "1/h"', 'rate = "1/h"\nburst = 4\nmode = "reject"'))  # fmt: skip
            await asyncio.wait_for(quota_everywhere("5"), 15)
            assert await allowed(8) == 5  # another algorithm counts afresh: burst 4 + 1

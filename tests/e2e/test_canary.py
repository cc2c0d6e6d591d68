"""Canary and version routing through the real gateway and two real backends."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from harness.backends import Backend
from harness.gateway import config, gateway, url

ROUTES = """
[upstreams.v1]
targets = [{{ url = "{v1}" }}]
[upstreams.v2]
targets = [{{ url = "{v2}" }}]

[[routes]]
id = "users-v2-by-header"
path = "/api/**"
headers = {{ "Api-Version" = "v2" }}
upstream = "v2"
strip_prefix = 1

[[routes]]
id = "users"
path = "/api/**"
strip_prefix = 1
split = [{{ upstream = "v1", weight = {w1} }}, {{ upstream = "v2", weight = {w2} }}]
hash_on = {hash_on}
"""


def toml(v1: Backend, v2: Backend, w2: int, hash_on: str = '"random"', **kw: bool) -> str:
    return config(ROUTES.format(v1=v1.url, v2=v2.url, w1=100 - w2, w2=w2, hash_on=hash_on), **kw)


def ip(i: int) -> str:
    return f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"


async def sides(s: aiohttp.ClientSession, target: str, headers: list[dict[str, str]]) -> list[str]:
    """X-Backend of one request per headers dict, 16 at a time on one keep-alive session."""
    sem = asyncio.Semaphore(16)

    async def one(h: dict[str, str]) -> str:
        async with sem, s.get(target, headers=h) as r:
            await r.read()
            assert r.status == 200
            return r.headers["X-Backend"]

    return await asyncio.gather(*(one(h) for h in headers))


def by_ip(ips: range) -> list[dict[str, str]]:
    return [{"X-Forwarded-For": ip(i)} for i in ips]


async def metrics(s: aiohttp.ClientSession, admin_port: int | None) -> str:
    """The admin /metrics text (the registry is per process: compare before and after)."""
    async with s.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
        return await r.text()


def requests_total(text: str, route: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pyproxyd_requests_total" and sample.labels["route"] == route:
                out[sample.labels["upstream"]] += int(sample.value)
    return out


async def test_random_95_5_split_and_per_upstream_metrics(tmp_path: Path) -> None:
    async with (
        Backend(name="v1") as v1,
        Backend(name="v2") as v2,
        gateway(tmp_path, toml(v1, v2, 5)) as gw,
        aiohttp.ClientSession() as s,
    ):
        before = await metrics(s, gw.admin_port)
        got = Counter(await sides(s, url(gw, "/api/echo"), [{}] * 4000))
        after = await metrics(s, gw.admin_port)
    assert 0.035 <= got["v2"] / 4000 <= 0.065, got
    assert got["v1"] + got["v2"] == 4000
    assert (v1.hits, v2.hits) == (got["v1"], got["v2"])
    # the chosen upstream is a label of pyproxyd_requests_total
    counted = requests_total(after, "users") - requests_total(before, "users")
    assert counted == Counter(v1=got["v1"], v2=got["v2"])


async def test_sticky_by_ip_via_trusted_x_forwarded_for(tmp_path: Path) -> None:
    async with (
        Backend(name="v1") as v1,
        Backend(name="v2") as v2,
        gateway(tmp_path, toml(v1, v2, 5, hash_on='"ip"')) as gw,
        aiohttp.ClientSession() as s,
    ):
        target = url(gw, "/api/echo")
        first = await sides(s, target, by_ip(range(2000)))
        again = await sides(s, target, by_ip(range(2000)))
        split = gw.snapshot.routes[1].split
        assert split is not None
        expected = [split.side_of(ip(i)).name for i in range(2000)]
        # no X-Forwarded-For: the peer, 127.0.0.1, is the key: one side for all of them
        local = set(await sides(s, target, [{}] * 50))
    assert first == again == expected  # the same IP always lands on the same side
    assert 0.03 <= first.count("v2") / 2000 <= 0.07, first.count("v2")
    assert len(local) == 1


async def test_live_weight_edit_moves_no_v2_client_back(tmp_path: Path) -> None:
    async with (
        Backend(name="v1") as v1,
        Backend(name="v2") as v2,
        gateway(tmp_path, toml(v1, v2, 5, hash_on='"ip"')) as gw,
        aiohttp.ClientSession() as s,
    ):
        target = url(gw, "/api/echo")
        at5 = await sides(s, target, by_ip(range(2000)))
        (tmp_path / "gateway.toml").write_text(toml(v1, v2, 20, hash_on='"ip"'))
        assert await gw.reloader.reload()
        at20 = await sides(s, target, by_ip(range(2000)))
    back = [i for i in range(2000) if at5[i] == "v2" and at20[i] == "v1"]
    assert back == []  # every client that saw v2 at 5% still sees it at 20%
    assert at20.count("v2") > at5.count("v2")
    assert 0.17 <= at20.count("v2") / 2000 <= 0.23, at20.count("v2")


async def test_version_header_route_beats_the_split(tmp_path: Path) -> None:
    async with (
        Backend(name="v1") as v1,
        Backend(name="v2") as v2,
        gateway(tmp_path, toml(v1, v2, 5, hash_on='"ip"')) as gw,
        aiohttp.ClientSession() as s,
    ):
        target = url(gw, "/api/echo")
        before = await metrics(s, gw.admin_port)
        plain = await sides(s, target, by_ip(range(300)))
        pinned_v1 = [i for i in range(300) if plain[i] == "v1"]
        versioned = [{"X-Forwarded-For": ip(i), "Api-Version": "v2"} for i in pinned_v1]
        assert set(await sides(s, target, versioned)) == {"v2"}
        after = await metrics(s, gw.admin_port)
    route = "users-v2-by-header"
    counted = requests_total(after, route) - requests_total(before, route)
    assert counted == Counter(v2=len(pinned_v1))


async def test_absent_sticky_key_falls_back_to_random(tmp_path: Path) -> None:
    async with (
        Backend(name="v1") as v1,
        Backend(name="v2") as v2,
        gateway(tmp_path, toml(v1, v2, 50, hash_on='["header:X-User", "cookie:uid"]')) as gw,
        aiohttp.ClientSession() as s,
    ):
        target = url(gw, "/api/echo")
        keyless = Counter(await sides(s, target, [{}] * 400))
        user = set(await sides(s, target, [{"X-User": "alice"}] * 40))
        cookie = set(await sides(s, target, [{"Cookie": "uid=bob"}] * 40))
    assert 140 < keyless["v2"] < 260, keyless  # random, not one side for everyone
    assert len(user) == 1 and len(cookie) == 1


async def test_ip_hash_pins_each_client_to_one_target(tmp_path: Path) -> None:
    async with Backend(name="a") as a, Backend(name="b") as b:
        body = f"""
[upstreams.app]
targets = [{{ url = "{a.url}" }}, {{ url = "{b.url}" }}]
balance = "ip_hash"
[upstreams.hdr]
targets = [{{ url = "{a.url}" }}, {{ url = "{b.url}", weight = 3 }}]
balance = "hash:header:X-Client"
[[routes]]
id = "ip"
path = "/ip/**"
upstream = "app"
strip_prefix = 1
[[routes]]
id = "hdr"
path = "/hdr/**"
upstream = "hdr"
strip_prefix = 1
"""
        async with gateway(tmp_path, config(body)) as gw, aiohttp.ClientSession() as s:
            first = await sides(s, url(gw, "/ip/echo"), by_ip(range(400)))
            again = await sides(s, url(gw, "/ip/echo"), by_ip(range(400)))
            clients = [{"X-Client": f"c{i}"} for i in range(800)]
            hdr = await sides(s, url(gw, "/hdr/echo"), clients)
            assert hdr == await sides(s, url(gw, "/hdr/echo"), clients)
    assert first == again
    assert 0.4 < first.count("a") / 400 < 0.6  # both targets get clients
    assert 0.68 < hdr.count("b") / 800 < 0.82  # weight 3 of 4


async def test_access_log_names_the_chosen_upstream(tmp_path: Path, log_file: Path) -> None:
    async with (
        Backend(name="v1") as v1,
        Backend(name="v2") as v2,
        gateway(tmp_path, toml(v1, v2, 50, access_log=True)) as gw,
        aiohttp.ClientSession() as s,
    ):
        headers = [{"X-Request-ID": f"r{i}"} for i in range(100)]
        got = await sides(s, url(gw, "/api/echo"), headers)
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    logged = {e["request_id"]: e["upstream"] for e in lines if e["event"] == "request"}
    assert logged == {f"r{i}": got[i] for i in range(100)}
    assert set(logged.values()) == {"v1", "v2"}

"""Discovered targets through the real gateway: a real DNS server on a
loopback port, real backends on 127.0.0.1 and 127.0.0.2 (one port, as the
A records of a name share it), and changes followed without a reload."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from harness.dns_server import DnsServer
from harness.gateway import config, gateway, url
from pyproxyd.server import Gateway

NAME = "svc.test"


def common_port() -> int:
    """A port free on both 127.0.0.1 and 127.0.0.2."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.2", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no port free on both loopback addresses")


@asynccontextmanager
async def named_backend(host: str, port: int) -> AsyncIterator[list[str]]:
    """An upstream on host:port that answers with its address; the paths it saw."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text=host)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield seen
    finally:
        await runner.cleanup()


def toml(dns: DnsServer, port: int, extra: str = "") -> str:
    return config(
        f"""
[dns]
nameservers = ["{dns.address}"]
[upstreams.svc]
discovery = {{ dns = "{NAME}:{port}" }}
retries = 0
{extra}
[[routes]]
id = "svc"
path = "/**"
upstream = "svc"
"""
    )


async def answers(gw: Gateway, n: int) -> list[tuple[int, str]]:
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(url(gw, "/x")) as r:
                out.append((r.status, await r.text()))
    return out


async def admin(gw: Gateway, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{gw.admin_port}{path}") as r,
    ):
        return r.status, await r.json()


async def until(check: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_dns_targets_are_followed_without_a_reload(tmp_path: Path) -> None:
    port = common_port()
    dns = await DnsServer().start()
    try:
        dns.set_a(NAME, ["127.0.0.1", "127.0.0.2"], ttl=1)
        async with (
            named_backend("127.0.0.1", port),
            named_backend("127.0.0.2", port),
            gateway(tmp_path, toml(dns, port)) as gw,
        ):

            async def both() -> bool:
                return {t for _, t in await answers(gw, 6)} == {"127.0.0.1", "127.0.0.2"}

            await until(both)
            _, view = await admin(gw, "/admin/upstreams")
            assert view["upstreams"]["svc"]["discovery"]["source"] == f"dns {NAME}:{port}"
            assert len(view["upstreams"]["svc"]["targets"]) == 2

            dns.set_a(NAME, ["127.0.0.2"], ttl=1)  # one instance leaves

            async def one() -> bool:
                return {t for _, t in await answers(gw, 6)} == {"127.0.0.2"}

            await until(one)
            # Every request during and after the change was answered.
            assert all(status == 200 for status, _ in await answers(gw, 20))
    finally:
        await dns.close()


async def test_a_failing_resolver_keeps_the_last_targets(tmp_path: Path, log_file: Path) -> None:
    port = common_port()
    dns = await DnsServer().start()
    try:
        dns.set_a(NAME, ["127.0.0.1"], ttl=1)
        async with named_backend("127.0.0.1", port), gateway(tmp_path, toml(dns, port)) as gw:

            async def served() -> bool:
                return (await answers(gw, 1))[0] == (200, "127.0.0.1")

            await until(served)
            dns.fail(NAME, "servfail")

            async def unreachable() -> bool:
                _, view = await admin(gw, "/admin/upstreams")
                return not view["upstreams"]["svc"]["discovery"]["reachable"]

            await until(unreachable)
            assert await answers(gw, 5) == [(200, "127.0.0.1")] * 5
            dns.fail(NAME, None)

            async def restored() -> bool:
                _, view = await admin(gw, "/admin/upstreams")
                return bool(view["upstreams"]["svc"]["discovery"]["reachable"])

            await until(restored)
    finally:
        await dns.close()
    events = [json.loads(line)["event"] for line in log_file.read_text().splitlines()]
    assert events.count("discovery_unavailable") == 1  # once per outage, not per retry
    assert events.count("discovery_restored") == 1


async def test_a_name_with_no_instances_answers_503_and_says_why(
    tmp_path: Path, log_file: Path
) -> None:
    port = common_port()
    dns = await DnsServer().start()
    try:
        dns.fail(NAME, "drop")  # no answer yet: not ready
        async with gateway(tmp_path, toml(dns, port)) as gw:
            status, body = await admin(gw, "/readyz")
            assert (status, body["status"]) == (503, "waiting_for_discovery")
            dns.fail(NAME, None)  # NXDOMAIN: an answer (no targets), not a failure

            async def answered() -> bool:
                _, view = await admin(gw, "/admin/upstreams")
                return bool(view["upstreams"]["svc"]["discovery"]["answered"])

            await until(answered, timeout=10.0)
            assert (await admin(gw, "/readyz"))[0] == 200
            async with aiohttp.ClientSession() as s, s.get(url(gw, "/x")) as r:
                assert r.status == 503
                assert (await r.json())["error"] == "no_healthy_target"
    finally:
        await dns.close()
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(e["event"] == "discovery_empty" and e["upstream"] == "svc" for e in lines)

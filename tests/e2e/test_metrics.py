"""/metrics on the admin listener, in Prometheus text format."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from harness.backends import Backend
from harness.gateway import config, fetch, gateway, one_route, url


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


async def test_requests_durations_and_pool_gauges(tmp_path: Path) -> None:
    async with Backend() as b:
        toml = config(one_route(b.url, "metered", "/m"))
        async with gateway(tmp_path, toml) as gw:
            metrics_url = f"http://127.0.0.1:{gw.admin_port}/metrics"
            _, _, before = await fetch(metrics_url)
            for _ in range(3):
                await fetch(url(gw, "/m/echo"))
            await fetch(url(gw, "/m/status/503"))
            await fetch(url(gw, "/nowhere"))
            status, headers, after = await fetch(metrics_url)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    old, new = before.decode(), after.decode()

    def delta(name: str, **labels: str) -> float:
        return value(new, name, **labels) - value(old, name, **labels)

    ok = {"route": "metered", "upstream": "app", "status": "200"}
    assert delta("pyproxyd_requests_total", **ok) == 3
    assert delta("pyproxyd_requests_total", route="metered", upstream="app", status="503") == 1
    assert delta("pyproxyd_requests_total", route="(none)", upstream="(none)", status="404") == 1
    assert delta("pyproxyd_request_duration_seconds_count", route="metered", upstream="app") == 4
    target = f"127.0.0.1:{b.port}"
    assert value(new, "pyproxyd_upstream_connections", upstream="app", target=target,
                 state="idle") == 1  # fmt: skip
    assert delta("pyproxyd_upstream_connections_opened_total", upstream="app", target=target) == 1
    assert delta("pyproxyd_response_body_bytes_total", route="metered") > 0


async def test_body_bytes_in_and_out(tmp_path: Path) -> None:
    async with Backend() as b:
        toml = config(one_route(b.url, "bytes", "/b"))
        async with gateway(tmp_path, toml) as gw:
            metrics_url = f"http://127.0.0.1:{gw.admin_port}/metrics"
            _, _, before = await fetch(metrics_url)
            await fetch(url(gw, "/b/echo"), "POST", data=b"x" * 5000)
            await fetch(url(gw, "/b/download/300000"))  # streamed, chunked
            await fetch(url(gw, "/b/download/1000?length=1"))  # buffered
            _, _, after = await fetch(metrics_url)
    old, new = before.decode(), after.decode()
    got_in = value(new, "pyproxyd_request_body_bytes_total", route="bytes") - value(
        old, "pyproxyd_request_body_bytes_total", route="bytes"
    )
    got_out = value(new, "pyproxyd_response_body_bytes_total", route="bytes") - value(
        old, "pyproxyd_response_body_bytes_total", route="bytes"
    )
    assert got_in == 5000
    assert got_out > 301000  # both downloads plus the echo's JSON
    assert got_out < 301000 + 5000


async def test_circuit_in_flight_and_upstream_time(tmp_path: Path) -> None:
    async with Backend() as b:
        toml = config(
            f"""
[upstreams.flaky]
targets = [{{ url = "{b.url}" }}]
retries = 0
[upstreams.flaky.circuit_breaker]
consecutive_failures = 2
timeout = "60s"
[[routes]]
id = "flaky"
path = "/f/**"
upstream = "flaky"
strip_prefix = 1
"""
        )
        async with gateway(tmp_path, toml) as gw:
            metrics_url = f"http://127.0.0.1:{gw.admin_port}/metrics"
            _, _, before = await fetch(metrics_url)
            for _ in range(3):
                await fetch(url(gw, "/f/status/503"))
            _, _, after = await fetch(metrics_url)
    old, new = before.decode(), after.decode()
    assert value(new, "pyproxyd_circuit_state", upstream="flaky") == 2  # open
    transitions = {"upstream": "flaky", "from": "closed", "to": "open"}
    assert value(new, "pyproxyd_circuit_transitions_total", **transitions) == 1
    # two answers came from the upstream; the third was refused by the open circuit
    count = "pyproxyd_upstream_response_seconds_count"
    assert value(new, count, upstream="flaky") - value(old, count, upstream="flaky") == 2
    assert value(new, "pyproxyd_requests_in_flight") == 0  # every proxied request finished


async def test_config_reloads_are_counted_by_result(tmp_path: Path) -> None:
    async with Backend() as b:
        toml = config(one_route(b.url, "metered", "/m"))
        async with gateway(tmp_path, toml) as gw:
            metrics_url = f"http://127.0.0.1:{gw.admin_port}/metrics"
            _, _, before = await fetch(metrics_url)
            reloader = gw.reloader
            (tmp_path / "gateway.toml").write_text(toml + "\n# edited\n")
            assert await reloader.reload()
            (tmp_path / "gateway.toml").write_text(toml + "[[routes]]\nid = 1\n")
            assert not await reloader.reload()
            assert not await reloader.reload()
            _, _, after = await fetch(metrics_url)
    old, new = before.decode(), after.decode()
    for result, times in (("success", 1), ("error", 2)):
        name = "pyproxyd_config_reloads_total"
        assert value(new, name, result=result) - value(old, name, result=result) == times

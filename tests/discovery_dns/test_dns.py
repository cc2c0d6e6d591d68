"""DNS discovery against a real DNS server on a loopback port (harness/dns_server.py),
and table tests of the pure parts (TTL clamping, backoff, SRV selection, parsing)
with no sockets and no sleeping.

Waits are bounded: each test waits for a report with a deadline, never for a
fixed sleep, except where a window of time is what is measured (query counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from harness.dns_server import DnsServer
from pyproxyd.discovery import Found
from pyproxyd.discovery.dns import (
    BACKOFF_CAP,
    MAX_TTL,
    MIN_TTL,
    DnsSource,
    LookupFailed,
    SrvRecord,
    clamp_ttl,
    merge,
    next_backoff,
    parse_nameserver,
    parse_spec,
    select_srv,
    url_of,
)

# ------------------------------------------------------------------ pure parts


@pytest.mark.parametrize(
    ("ttl", "want"),
    [(0, MIN_TTL), (0.2, MIN_TTL), (1, 1.0), (30, 30.0), (300, MAX_TTL), (86400, MAX_TTL)],
)
def test_ttl_is_clamped_to_1s_5min(ttl: float, want: float) -> None:
    assert clamp_ttl(ttl) == want


def test_backoff_starts_at_1s_doubles_and_caps_at_30s() -> None:
    waits, prev = [], None
    for _ in range(8):
        prev = next_backoff(prev)
        waits.append(prev)
    assert waits == [1, 2, 4, 8, 16, BACKOFF_CAP, BACKOFF_CAP, BACKOFF_CAP]


def srv(priority: int, weight: int, port: int, target: str) -> SrvRecord:
    return SrvRecord(priority, weight, port, target)


@pytest.mark.parametrize(
    ("records", "want"),
    [
        ([], []),
        # only the lowest priority value counts, whatever the order
        (
            [srv(20, 5, 1, "c."), srv(10, 3, 80, "a."), srv(10, 1, 81, "b.")],
            [srv(10, 3, 80, "a."), srv(10, 1, 81, "b.")],
        ),
        # weight 0 next to weighted records: the smallest share, 1
        ([srv(1, 0, 80, "a."), srv(1, 60, 80, "b.")], [srv(1, 1, 80, "a."), srv(1, 60, 80, "b.")]),
        # all weights 0: equal shares
        ([srv(1, 0, 80, "a."), srv(1, 0, 81, "b.")], [srv(1, 1, 80, "a."), srv(1, 1, 81, "b.")]),
        # "." is "decidedly not available", and does not fall back to priority 2
        ([srv(1, 5, 80, "."), srv(2, 5, 80, "b.")], []),
    ],
)
def test_srv_selection(records: list[SrvRecord], want: list[SrvRecord]) -> None:
    assert select_srv(records) == want


def test_merge_sums_weights_of_one_url_and_sorts() -> None:
    got = merge([Found("http://10.0.0.2:80", 5), Found("http://10.0.0.1:80"),
                 Found("http://10.0.0.2:80", 2)])  # fmt: skip
    assert got == [Found("http://10.0.0.1:80", 1), Found("http://10.0.0.2:80", 7)]


def test_urls_bracket_ipv6_and_normalise_it() -> None:
    assert url_of("http", "10.0.0.1", 80) == "http://10.0.0.1:80"
    assert url_of("https", "2001:0db8:0:0::1", 443) == "https://[2001:db8::1]:443"


@pytest.mark.parametrize(
    ("spec", "srv_", "want"),
    [
        ("api.test:8080", False, (None, "api.test", 8080)),
        ("https://api.test:8443", False, ("https", "api.test", 8443)),
        ("http://api.test:80/", False, ("http", "api.test", 80)),
        ("_http._tcp.cat.consul", True, (None, "_http._tcp.cat.consul", None)),
        ("https://_https._tcp.api.test", True, ("https", "_https._tcp.api.test", None)),
    ],
)
def test_spec_parsing(spec: str, srv_: bool, want: tuple[str | None, str, int | None]) -> None:
    p = parse_spec(spec, srv_)
    assert (p.scheme, p.name, p.port) == want


@pytest.mark.parametrize(
    ("spec", "srv_"),
    [
        ("api.test", False),  # no port
        ("api.test:http", False),
        ("api.test:0", False),
        ("api.test:70000", False),
        ("10.0.0.1:80", False),  # an address is a static target
        (":80", False),
        ("_http._tcp.api.test:80", True),  # SRV records carry the ports
        ("ftp://api.test:21", False),
    ],
)
def test_bad_specs_raise_value_error(spec: str, srv_: bool) -> None:
    with pytest.raises(ValueError, match="dns"):
        DnsSource(spec, srv=srv_)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:8600", ("127.0.0.1", 8600)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[::1]", ("::1", 53)),
        ("ns.example:5300", ("ns.example", 5300)),
    ],
)
def test_nameserver_parsing(text: str, want: tuple[str, int]) -> None:
    assert parse_nameserver(text) == want


@pytest.mark.parametrize("text", ["", "host:", "host:x", "[::1", "[::1]x", "h:99999"])
def test_bad_nameservers_raise(text: str) -> None:
    with pytest.raises(ValueError, match="nameserver"):
        parse_nameserver(text)


def test_names_and_scheme() -> None:
    assert DnsSource("api.test:80").name == "dns api.test:80"
    assert DnsSource("_http._tcp.a.test", srv=True).name == "dns_srv _http._tcp.a.test"
    assert DnsSource("api.test:80", scheme="https").scheme == "https"
    assert DnsSource("http://api.test:80", scheme="https").scheme == "http"  # the spec wins


# ------------------------------------------------------------------ a real server


@dataclass
class Recorder:
    """A Report that keeps every call with its time, and lets a test wait for one."""

    events: list[tuple[float, str, object]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def found(self, instances: list[Found]) -> None:
        self._add("found", list(instances))

    def failed(self, reason: str) -> None:
        self._add("failed", reason)

    def skipped(self, key: str, reason: str) -> None:
        self._add("skipped", (key, reason))

    def _add(self, kind: str, value: object) -> None:
        self.events.append((time.monotonic(), kind, value))
        self.changed.set()

    def of(self, kind: str) -> list[object]:
        return [v for _, k, v in self.events if k == kind]

    async def wait(self, pred: Callable[[str, object], bool], timeout: float = 5.0) -> object:
        """The first event from now on that matches (kind, value)."""
        start = len(self.events)
        deadline = time.monotonic() + timeout
        while True:
            for _, kind, value in self.events[start:]:
                if pred(kind, value):
                    return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching report within {timeout}s: {self.events}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    async def found_next(self, timeout: float = 5.0) -> set[Found]:
        got = await self.wait(lambda k, _: k == "found", timeout)
        assert isinstance(got, list)
        return set(got)


def urls(found: set[Found]) -> set[str]:
    return {f.url for f in found}


@pytest.fixture
async def server() -> AsyncIterator[DnsServer]:
    s = await DnsServer(negative_ttl=1).start()
    try:
        yield s
    finally:
        await s.close()


class Running:
    def __init__(self, source: DnsSource) -> None:
        self.source = source
        self.report = Recorder()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorder:
        self.task = asyncio.create_task(self.source.run(self.report))
        return self.report

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        assert not self.task.done(), "run() must not return or raise on its own"
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def source(server: DnsServer, spec: str, **kw: object) -> DnsSource:
    return DnsSource(spec, [server.address], **kw)  # type: ignore[arg-type]


async def test_a_records_are_the_targets(server: DnsServer) -> None:
    server.set_a("api.test", ["10.0.0.2", "10.0.0.1"], ttl=60)
    async with Running(source(server, "api.test:8080")) as report:
        found = await report.found_next()
    assert found == {Found("http://10.0.0.1:8080"), Found("http://10.0.0.2:8080")}


async def test_aaaa_addresses_are_bracketed(server: DnsServer) -> None:
    server.set_a("api.test", ["10.0.0.1"], ttl=60)
    server.set_aaaa("api.test", ["::1", "2001:db8::7"], ttl=60)
    async with Running(source(server, "api.test:80")) as report:
        found = await report.found_next()
    assert urls(found) == {"http://10.0.0.1:80", "http://[::1]:80", "http://[2001:db8::7]:80"}


async def test_https_spec_gives_https_targets(server: DnsServer) -> None:
    server.set_a("api.test", ["10.0.0.1"], ttl=60)
    async with Running(source(server, "https://api.test:8443")) as report:
        assert urls(await report.found_next()) == {"https://10.0.0.1:8443"}
    async with Running(source(server, "api.test:8443", scheme="https")) as report:
        assert urls(await report.found_next()) == {"https://10.0.0.1:8443"}


async def test_a_change_is_picked_up_when_the_ttl_runs_out(server: DnsServer) -> None:
    server.set_a("api.test", ["10.0.0.1"], ttl=1)
    async with Running(source(server, "api.test:80")) as report:
        assert urls(await report.found_next()) == {"http://10.0.0.1:80"}
        t0 = time.monotonic()
        server.set_a("api.test", ["10.0.0.1", "10.0.0.3"], ttl=1)
        assert urls(await report.found_next(timeout=3)) == {
            "http://10.0.0.1:80",
            "http://10.0.0.3:80",
        }
        assert time.monotonic() - t0 <= 2.5
        # an unchanged answer is not reported again
        await asyncio.sleep(1.5)
        assert len(report.of("found")) == 2


async def test_a_zero_ttl_is_asked_again_after_1s_not_in_a_loop(server: DnsServer) -> None:
    server.set_a("api.test", ["10.0.0.1"], ttl=0)
    async with Running(source(server, "api.test:80")) as report:
        await report.found_next()
        before = server.queries("api.test", "A")
        await asyncio.sleep(2.5)
        asked = server.queries("api.test", "A") - before
    assert 1 <= asked <= 3, asked  # once a second, not hundreds


async def test_a_long_ttl_is_clamped_to_5_minutes(server: DnsServer) -> None:
    server.set_a("api.test", ["10.0.0.1"], ttl=86400)
    answer = await source(server, "api.test:80").lookup()
    assert answer.ttl == MAX_TTL
    server.set_a("api.test", ["10.0.0.1"], ttl=7)
    server.set_aaaa("api.test", ["::1"], ttl=3)
    assert (await source(server, "api.test:80").lookup()).ttl == 3  # the smallest TTL


async def test_servfail_is_a_failure_and_the_last_set_stays(server: DnsServer) -> None:
    server.set_a("api.test", ["10.0.0.1"], ttl=1)
    async with Running(source(server, "api.test:80")) as report:
        await report.found_next()
        server.fail("api.test", "servfail")
        reason = await report.wait(lambda k, _: k == "failed", timeout=3)
        assert "SERVFAIL" in str(reason)
        first = report.events[-1][0]
        # retried with backoff, and never a found([]) meanwhile
        await report.wait(lambda k, _: k == "failed", timeout=3)
        assert report.events[-1][0] - first >= 0.9
        assert report.of("found") == [[Found("http://10.0.0.1:80")]]
        # answering again is reported even though the set did not change
        server.fail("api.test", None)
        assert urls(await report.found_next(timeout=5)) == {"http://10.0.0.1:80"}


async def test_no_answer_is_a_timeout_failure(server: DnsServer) -> None:
    server.set_a("api.test", ["10.0.0.1"], ttl=1)
    async with Running(source(server, "api.test:80", timeout=0.5)) as report:
        await report.found_next()
        server.fail("api.test", "drop")
        reason = await report.wait(lambda k, _: k == "failed", timeout=4)
        assert "timed out" in str(reason)
        assert len(report.of("found")) == 1


async def test_an_unreachable_nameserver_is_a_failure() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with Running(DnsSource("api.test:80", [f"127.0.0.1:{port}"], timeout=0.5)) as report:
        await report.wait(lambda k, _: k == "failed", timeout=3)
        assert report.of("found") == []


async def test_nxdomain_is_an_answer_with_no_targets(server: DnsServer) -> None:
    server.set_a("api.test", ["10.0.0.1"], ttl=1)
    async with Running(source(server, "api.test:80")) as report:
        await report.found_next()
        server.remove("api.test")
        assert await report.found_next(timeout=3) == set()
        assert report.of("skipped") == [("api.test", "NXDOMAIN")]
        assert report.of("failed") == []
        # the negative TTL (the SOA's, 1 s) decides when it is asked again
        server.set_a("api.test", ["10.0.0.2"], ttl=1)
        assert urls(await report.found_next(timeout=3)) == {"http://10.0.0.2:80"}


async def test_nxdomain_from_the_start(server: DnsServer) -> None:
    async with Running(source(server, "nope.test:80")) as report:
        assert await report.found_next() == set()
    assert report.of("skipped") == [("nope.test", "NXDOMAIN")]


async def test_a_name_with_no_records_is_an_empty_answer(server: DnsServer) -> None:
    server.set_empty("api.test")
    async with Running(source(server, "api.test:80")) as report:
        assert await report.found_next() == set()
    assert report.of("skipped") == [("api.test", "no A/AAAA records")]


async def test_a_big_answer_comes_over_tcp(server: DnsServer) -> None:
    addrs = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(300)]  # > any UDP payload
    server.set_a("big.test", addrs, ttl=60)
    answer = await source(server, "big.test:80").lookup()
    assert len(answer.instances) == 300


async def test_a_failure_of_one_family_fails_the_lookup(server: DnsServer) -> None:
    server.set_a("api.test", ["10.0.0.1"], ttl=60)
    server.fail("api.test", "servfail")
    with pytest.raises(LookupFailed, match="SERVFAIL"):
        await source(server, "api.test:80").lookup()


# ------------------------------------------------------------------ SRV


async def test_srv_uses_the_lowest_priority_with_ports_and_weights(server: DnsServer) -> None:
    server.set_a("a.test", ["10.0.0.1"], ttl=60)
    server.set_a("b.test", ["10.0.0.2"], ttl=60)
    server.set_aaaa("b.test", ["::2"], ttl=60)
    server.set_a("backup.test", ["10.0.0.9"], ttl=60)
    server.set_srv(
        "_http._tcp.svc.test",
        [(10, 60, 8080, "a.test"), (10, 20, 9090, "b.test"), (10, 0, 7070, "a.test"),
         (20, 100, 8080, "backup.test")],
        ttl=60,
    )  # fmt: skip
    async with Running(source(server, "_http._tcp.svc.test", srv=True)) as report:
        found = await report.found_next()
    assert found == {
        Found("http://10.0.0.1:8080", 60),
        Found("http://10.0.0.1:7070", 1),  # weight 0 -> the smallest share
        Found("http://10.0.0.2:9090", 20),
        Found("http://[::2]:9090", 20),
    }
    assert server.queries("backup.test") == 0


async def test_srv_https_and_a_change_of_priority(server: DnsServer) -> None:
    server.set_a("a.test", ["10.0.0.1"], ttl=60)
    server.set_a("b.test", ["10.0.0.2"], ttl=60)
    server.set_srv("_https._tcp.svc.test", [(1, 5, 443, "a.test"), (2, 5, 443, "b.test")], ttl=1)
    src = source(server, "https://_https._tcp.svc.test", srv=True)
    async with Running(src) as report:
        assert urls(await report.found_next()) == {"https://10.0.0.1:443"}
        # a.test's record leaves: the next priority takes over at the SRV TTL
        server.set_srv("_https._tcp.svc.test", [(2, 5, 443, "b.test")], ttl=1)
        assert urls(await report.found_next(timeout=3)) == {"https://10.0.0.2:443"}


async def test_srv_targets_from_the_additional_section(server: DnsServer) -> None:
    server.set_a("a.test", ["10.0.0.1"], ttl=60)
    server.set_srv("_http._tcp.svc.test", [(1, 1, 8080, "a.test")], ttl=60, additional=True)
    answer = await source(server, "_http._tcp.svc.test", srv=True).lookup()
    assert answer.instances == [Found("http://10.0.0.1:8080")]
    assert server.queries("a.test") == 0  # no lookup of its own


async def test_srv_ttl_is_the_smallest_of_records_and_targets(server: DnsServer) -> None:
    server.set_a("a.test", ["10.0.0.1"], ttl=4)
    server.set_srv("_http._tcp.svc.test", [(1, 1, 8080, "a.test")], ttl=60)
    assert (await source(server, "_http._tcp.svc.test", srv=True).lookup()).ttl == 4


async def test_a_srv_target_that_does_not_exist_is_skipped(server: DnsServer) -> None:
    server.set_a("a.test", ["10.0.0.1"], ttl=60)
    server.set_srv(
        "_http._tcp.svc.test", [(1, 1, 8080, "a.test"), (1, 1, 8080, "gone.test")], ttl=60
    )
    async with Running(source(server, "_http._tcp.svc.test", srv=True)) as report:
        assert urls(await report.found_next()) == {"http://10.0.0.1:8080"}
    assert report.of("skipped") == [("gone.test", "NXDOMAIN")]


async def test_a_srv_target_that_fails_fails_the_lookup(server: DnsServer) -> None:
    server.set_a("a.test", ["10.0.0.1"], ttl=60)
    server.set_a("b.test", ["10.0.0.2"], ttl=60)
    server.set_srv("_http._tcp.svc.test", [(1, 1, 80, "a.test"), (1, 1, 80, "b.test")], ttl=60)
    server.fail("b.test", "servfail")
    async with Running(source(server, "_http._tcp.svc.test", srv=True)) as report:
        assert "b.test" in str(await report.wait(lambda k, _: k == "failed"))
        assert report.of("found") == []


async def test_srv_nxdomain_empty_and_dot(server: DnsServer) -> None:
    got = await source(server, "_http._tcp.none.test", srv=True).lookup()
    assert (got.instances, got.notes) == ([], [("_http._tcp.none.test", "NXDOMAIN")])
    server.set_empty("_http._tcp.empty.test")
    got = await source(server, "_http._tcp.empty.test", srv=True).lookup()
    assert (got.instances, got.notes) == ([], [("_http._tcp.empty.test", "no SRV records")])
    server.set_srv("_http._tcp.off.test", [(0, 0, 0, ".")], ttl=60)
    got = await source(server, "_http._tcp.off.test", srv=True).lookup()
    assert got.instances == []
    assert "not available" in got.notes[0][1]


# ------------------------------------------------------------------ the harness


def test_the_server_runs_in_a_thread_for_synchronous_tests() -> None:
    server = DnsServer().start_in_thread()
    try:
        server.set_a("api.test", ["10.0.0.1"], ttl=60)
        answer = asyncio.run(DnsSource("api.test:80", [server.address]).lookup())
        assert answer.instances == [Found("http://10.0.0.1:80")]
        assert server.queries("api.test", "A") == 1
    finally:
        server.stop_thread()

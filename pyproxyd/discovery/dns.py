"""DNS discovery: an upstream's targets are the addresses of a name (A/AAAA)
or the targets of its SRV records, asked again when the answer's TTL runs out.

    DnsSource("search.internal:8080")                       # http://ADDR:8080 per A/AAAA
    DnsSource("https://search.internal:8443")               # https targets
    DnsSource("_http._tcp.catalog.service.consul", srv=True)  # ports, weights from SRV

What counts as what (behaviour.md, "Service discovery"):

- SERVFAIL (or REFUSED...), a timeout, no reachable nameserver: a failed
  lookup. `report.failed(reason)`, then asked again after a backoff (1 s,
  doubling, capped at 30 s); `found` is not called, so the last set stays.
- NXDOMAIN, or NOERROR with no records: an answer with no targets.
  `report.skipped(name, reason)` names what was empty and why (e.g.
  "NXDOMAIN", "no A/AAAA records"), then `report.found([])`. It is asked
  again after the negative TTL of the answer's SOA (RFC 2308), or
  `NEGATIVE_TTL_WITHOUT_SOA` when there is none, clamped like any TTL.
- Otherwise `report.found(instances)`, and asked again after the smallest
  TTL in the answer (CNAMEs and SRV targets' records included), clamped to
  1 s .. 5 min so a TTL of 0 is not a busy loop and a day-long TTL still
  follows changes.

`found` is called on the first answer, on every change (of the set or of
the skipped notes), and on the first answer after a failure (so the runner
can log `discovery_restored`), not on every identical re-resolution.

A/AAAA: both are asked; a failure of either fails the whole lookup, because
reporting the family that did answer alone would drop the other family's
targets, which a failed lookup must not do.

SRV (RFC 2782): only records of the lowest priority value are used. A
record's weight becomes the weight of each address of its target, except
that weight 0 becomes 1: pyproxyd's balancers never pick weight 0, while
RFC 2782 gives weight-0 records "a very small chance" next to weighted ones
and an equal one when all are 0; 1 is the smallest share an integer weight
can give. A "." target (RFC 2782: service decidedly not available) adds no
target. Target names take their addresses from the additional section when
the server sent them there (Consul does), else from their own A/AAAA lookup;
a target that is NXDOMAIN or has no addresses is skipped (noted), any failed
target lookup fails the whole lookup. The same address and port reached
through two records is one target with the weights summed.

Names without a trailing dot follow the resolver's search list and ndots
when the system's /etc/resolv.conf is used (as getaddrinfo would, so
"my-svc:8080" works in a Kubernetes pod); explicit nameservers have no
search list.

Limitation: targets are addresses, so for https the TLS server name is the
address unless the upstream sets one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset
import structlog

from . import Found, Report

MIN_TTL = 1.0
MAX_TTL = 300.0
BACKOFF_START = 1.0
BACKOFF_CAP = 30.0
# RFC 2308 says not to cache a negative answer without an SOA; re-asking it
# every second would be a near busy loop against a broken server, so a short
# fixed wait instead (dnspython's own default, 300 s, would hide a new name for 5 min).
NEGATIVE_TTL_WITHOUT_SOA = 5.0
# The whole lookup (retries over every nameserver included); a failure
# within it is reported, and the backoff takes over.
DEFAULT_TIMEOUT = 3.0

_log = structlog.get_logger("pyproxyd.discovery.dns")


class LookupFailed(Exception):
    """The registry could not be asked or did not answer (report.failed)."""


# --------------------------------------------------------------- pure parts


def clamp_ttl(ttl: float) -> float:
    return min(MAX_TTL, max(MIN_TTL, float(ttl)))


def next_backoff(previous: float | None) -> float:
    """The wait after a failed lookup: 1 s after the first, doubling to 30 s."""
    if previous is None:
        return BACKOFF_START
    return min(BACKOFF_CAP, previous * 2)


@dataclass(frozen=True, slots=True)
class Spec:
    scheme: str | None  # from an "https://" or "http://" prefix, else None
    name: str
    port: int | None  # None for SRV: the records carry the ports


def parse_spec(spec: str, srv: bool) -> Spec:
    """`[scheme://]name:port` for A/AAAA, `[scheme://]_service._proto.name` for
    SRV. Raises ValueError with what is wrong (config validation can call this)."""
    rest, scheme = spec.strip(), None
    for s in ("http", "https"):
        if rest.lower().startswith(f"{s}://"):
            scheme, rest = s, rest[len(s) + 3 :]
    rest = rest.rstrip("/")
    port: int | None = None
    if srv:
        name = rest
    else:
        name, sep, port_text = rest.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"dns {spec!r}: expected 'name:port'")
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError(f"dns {spec!r}: port {port} out of range")
    if not name or "/" in name or ":" in name:
        raise ValueError(f"dns {spec!r}: {name!r} is not a DNS name")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise ValueError(f"dns {spec!r}: {name!r} is an address, not a name: use `targets`")
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException as e:
        raise ValueError(f"dns {spec!r}: {name!r} is not a DNS name ({e})") from None
    return Spec(scheme, name, port)


def parse_nameserver(text: str) -> tuple[str, int]:
    """Parse "host", "host:port", "v6addr" or "[v6addr]:port" into (host, port)."""
    t = text.strip()
    if t.startswith("["):
        host, sep, tail = t[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            raise ValueError(f"nameserver {text!r}: expected '[address]:port'")
        port_text = tail[1:] if tail else "53"
    elif t.count(":") == 1:
        host, _, port_text = t.partition(":")
    else:
        host, port_text = t, "53"  # a bare name, IPv4 or IPv6 address
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"nameserver {text!r}: expected 'host' or 'host:port'")
    return host, int(port_text)


def url_of(scheme: str, address: str, port: int) -> str:
    ip = ipaddress.ip_address(address)
    host = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    return f"{scheme}://{host}:{port}"


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # absolute, with its trailing dot; "." = not available


def select_srv(records: Iterable[SrvRecord]) -> list[SrvRecord]:
    """The records of the lowest priority value, with the balancing weight
    (see the module doc: 0 -> 1), "." targets dropped, in a stable order."""
    recs = list(records)
    if not recs:
        return []
    lowest = min(r.priority for r in recs)
    chosen = [r for r in recs if r.priority == lowest and r.target != "."]
    out = [SrvRecord(r.priority, max(r.weight, 1), r.port, r.target) for r in chosen]
    return sorted(out, key=lambda r: (r.target, r.port, r.weight))


def merge(found: Iterable[Found]) -> list[Found]:
    """One Found per URL (weights summed), sorted, so equal sets compare equal."""
    weights: dict[str, int] = {}
    for f in found:
        weights[f.url] = weights.get(f.url, 0) + f.weight
    return [Found(url, w) for url, w in sorted(weights.items())]


def negative_ttl(response: dns.message.Message) -> float:
    """RFC 2308: min(SOA TTL, SOA minimum) of the authority section."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum))
    return NEGATIVE_TTL_WITHOUT_SOA


# --------------------------------------------------------------- lookups


@dataclass
class Answer:
    """One lookup's result: the instances, when to ask again, and notes for
    report.skipped (name, reason) about what came back empty."""

    instances: list[Found]
    ttl: float
    notes: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Rrset:
    rrset: dns.rrset.RRset | None  # None: NXDOMAIN or NODATA
    ttl: float
    empty_reason: str = ""  # "NXDOMAIN" or "NODATA"
    response: dns.message.Message | None = None


class DnsSource:
    """A target source (pyproxyd.discovery.Source) over DNS A/AAAA or SRV."""

    def __init__(
        self,
        spec: str,
        nameservers: Sequence[str] | None = None,
        srv: bool = False,
        scheme: str = "http",
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """`scheme` is used unless the spec starts with "http://" or
        "https://". Raises ValueError for a malformed spec or nameserver."""
        parsed = parse_spec(spec, srv)
        if scheme not in ("http", "https"):
            raise ValueError(f"dns {spec!r}: scheme {scheme!r} is not http or https")
        self.name = f"{'dns_srv' if srv else 'dns'} {spec}"
        self.spec = parsed
        self.srv = srv
        self.scheme = parsed.scheme or scheme
        self.timeout = timeout
        self._nameservers = [parse_nameserver(n) for n in nameservers] if nameservers else None
        self._resolver: dns.asyncresolver.Resolver | None = None

    # ------------------------------------------------------------ the loop

    async def run(self, report: Report) -> None:
        last: tuple[list[Found], list[tuple[str, str]]] | None = None
        backoff: float | None = None
        while True:
            try:
                answer = await self.lookup()
            except asyncio.CancelledError:
                raise
            except LookupFailed as e:
                reason = str(e)
            except Exception as e:  # a surprise from a reply must not end discovery
                reason = f"{self.spec.name}: unexpected {type(e).__name__}: {e}"
            else:
                reason = ""
            if reason:
                backoff = next_backoff(backoff)
                last = None  # the next answer is reported even if unchanged: restored
                self._report(report.failed, reason)
                await asyncio.sleep(backoff)
                continue
            backoff = None
            current = (answer.instances, answer.notes)
            if current != last:
                for key, why in answer.notes:
                    self._report(report.skipped, key, why)
                self._report(report.found, answer.instances)
                last = current
            await asyncio.sleep(answer.ttl)

    def _report(self, method: Callable[..., None], *args: object) -> None:
        try:
            method(*args)
        except Exception:
            # A bug in the runner must not stop this upstream from following DNS.
            _log.exception("discovery_report_error", source=self.name)

    async def lookup(self) -> Answer:
        """One resolution. Raises LookupFailed for a failed lookup."""
        resolver = await self._get_resolver()
        if self.srv:
            return await self._lookup_srv(resolver)
        port = self.spec.port
        assert port is not None
        found, ttl, notes = await self._addresses(resolver, self.spec.name, None)
        instances = merge(Found(url_of(self.scheme, a, port)) for a in found)
        return Answer(instances, clamp_ttl(ttl), notes)

    async def _lookup_srv(self, resolver: dns.asyncresolver.Resolver) -> Answer:
        got = await self._query(resolver, self.spec.name, dns.rdatatype.SRV)
        if got.rrset is None:
            reason = "NXDOMAIN" if got.empty_reason == "NXDOMAIN" else "no SRV records"
            return Answer([], clamp_ttl(got.ttl), [(self.spec.name, reason)])
        records = [SrvRecord(r.priority, r.weight, r.port, r.target.to_text()) for r in got.rrset]
        chosen = select_srv(records)
        notes: list[tuple[str, str]] = []
        if not chosen:
            notes.append((self.spec.name, "the SRV target is '.': service not available"))
        glue = self._glue(got.response)
        ttl = got.ttl
        names = sorted({r.target for r in chosen})
        looked_up = await asyncio.gather(*(self._addresses(resolver, n, glue) for n in names))
        addresses: dict[str, list[str]] = {}
        for n, (addrs, t, target_notes) in zip(names, looked_up, strict=True):
            addresses[n] = addrs
            ttl = min(ttl, t)
            notes.extend(target_notes)
        instances = merge(
            Found(url_of(self.scheme, a, r.port), r.weight)
            for r in chosen
            for a in addresses[r.target]
        )
        return Answer(instances, clamp_ttl(ttl), notes)

    @staticmethod
    def _glue(response: dns.message.Message | None) -> dict[tuple[str, int], dns.rrset.RRset]:
        out: dict[tuple[str, int], dns.rrset.RRset] = {}
        if response is not None:
            for rrset in response.additional:
                if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    out[(rrset.name.to_text(), rrset.rdtype)] = rrset
        return out

    async def _addresses(
        self,
        resolver: dns.asyncresolver.Resolver,
        name: str,
        glue: dict[tuple[str, int], dns.rrset.RRset] | None,
    ) -> tuple[list[str], float, list[tuple[str, str]]]:
        """A and AAAA of the name: (addresses, ttl, notes). From the SRV
        answer's additional section when it has either family for the name
        (a server that sends glue sends all it has)."""
        if glue and any((name, t) in glue for t in (dns.rdatatype.A, dns.rdatatype.AAAA)):
            rrsets = [glue[(name, t)] for t in (dns.rdatatype.A, dns.rdatatype.AAAA)
                      if (name, t) in glue]  # fmt: skip
            return [r.address for s in rrsets for r in s], min(s.ttl for s in rrsets), []
        v4, v6 = await asyncio.gather(
            self._query(resolver, name, dns.rdatatype.A),
            self._query(resolver, name, dns.rdatatype.AAAA),
        )
        answered = [g for g in (v4, v6) if g.rrset is not None]
        if answered:
            # the empty family's negative TTL would not change what is found
            addrs = [r.address for g in answered if g.rrset is not None for r in g.rrset]
            return addrs, min(g.ttl for g in answered), []
        nx = "NXDOMAIN" in (v4.empty_reason, v6.empty_reason)
        reason = "NXDOMAIN" if nx else "no A/AAAA records"
        return [], min(v4.ttl, v6.ttl), [(name.rstrip(".") or ".", reason)]

    async def _query(
        self, resolver: dns.asyncresolver.Resolver, name: str, rdtype: dns.rdatatype.RdataType
    ) -> _Rrset:
        what = f"{dns.rdatatype.to_text(rdtype)} {name}"
        try:
            # search=True: the system's search list applies as getaddrinfo's would
            answer = await resolver.resolve(name, rdtype, raise_on_no_answer=False, search=True)
        except dns.resolver.NXDOMAIN as e:
            responses = list(e.responses().values())
            ttl = min((negative_ttl(r) for r in responses), default=NEGATIVE_TTL_WITHOUT_SOA)
            return _Rrset(None, ttl, "NXDOMAIN")
        except dns.resolver.LifetimeTimeout as e:
            raise LookupFailed(f"{what}: timed out after {self.timeout:g}s ({e})") from None
        except dns.resolver.NoNameservers as e:
            raise LookupFailed(f"{what}: {e}") from None
        except (dns.exception.DNSException, OSError, ValueError) as e:
            raise LookupFailed(f"{what}: {type(e).__name__}: {e}") from None
        if answer.rrset is None:
            return _Rrset(None, negative_ttl(answer.response), "NODATA", answer.response)
        # minimum_ttl covers a CNAME chain's TTLs as well as the records'
        return _Rrset(answer.rrset, float(answer.chaining_result.minimum_ttl), "", answer.response)

    async def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is not None:
            return self._resolver
        try:
            if self._nameservers is None:
                resolver = dns.asyncresolver.Resolver(configure=True)
            else:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(ip, port)
                    for host, port in self._nameservers
                    for ip in await _addresses_of(host)
                ]
        except (dns.exception.DNSException, OSError) as e:
            raise LookupFailed(f"no nameserver to ask: {type(e).__name__}: {e}") from None
        resolver.lifetime = self.timeout
        resolver.timeout = min(resolver.timeout, self.timeout)
        resolver.cache = None  # the TTL schedule is ours; a cache would answer stale
        self._resolver = resolver
        return resolver


async def _addresses_of(host: str) -> list[str]:
    """A nameserver given by name is resolved once, by the system."""
    try:
        return [ipaddress.ip_address(host).compressed]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, 53, type=socket.SOCK_DGRAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))

"""A real authoritative DNS server for tests, on free loopback ports (UDP and TCP).

Built from dnspython's message pieces, so the resolver under test talks to it
over real sockets with real wire format, and a test can change what it says
while it runs:

    server = await DnsServer().start()
    server.set_a("api.test", ["127.0.0.1"], ttl=1)
    server.set_srv("_http._tcp.api.test", [(10, 5, 8080, "a.api.test")], ttl=1)
    server.fail("api.test", "servfail")      # or "nxdomain", "drop" (no answer); None clears
    server.queries("api.test")               # how many questions it was asked for the name
    await server.close()

A name with no records is NXDOMAIN; a name with records but not of the type
asked is NOERROR with no answer (NODATA). Negative answers carry an SOA at
the root whose TTL and minimum are `negative_ttl`, as an authoritative
server's would (RFC 2308). Every answer is authoritative (AA).

The state sits behind a lock, and `start_in_thread()` runs the server on its
own event loop in a thread, so synchronous tests (a gateway in a subprocess)
can use it as well as async ones.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Failure = Literal["servfail", "nxdomain", "drop"]
SrvRecord = tuple[int, int, int, str]  # priority, weight, port, target


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)  # relative text is made absolute (at the root)


@dataclass
class _Records:
    rrsets: dict[int, dns.rrset.RRset] = field(default_factory=dict)
    # SRV answers may carry their targets' A/AAAA in the additional section
    # (Consul does); off by default so the resolver's own lookups are tested.
    srv_additional: bool = False


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        wire = self.server.handle(data, udp=True)
        if wire is not None and self.transport is not None:
            self.transport.sendto(wire, addr)


class DnsServer:
    def __init__(self, host: str = "127.0.0.1", *, negative_ttl: int = 1) -> None:
        self.host = host
        self.port = 0
        self.negative_ttl = negative_ttl
        self._lock = threading.Lock()
        self._zone: dict[dns.name.Name, _Records] = {}
        self._failures: dict[dns.name.Name, Failure] = {}
        self._queries: Counter[tuple[dns.name.Name, int]] = Counter()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_clients: dict[asyncio.StreamWriter, asyncio.Task[None] | None] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> str:
        """The "host:port" a resolver is pointed at."""
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------ records

    def _set(self, name: str, rrset: dns.rrset.RRset | None, rdtype: int) -> None:
        with self._lock:
            records = self._zone.setdefault(_name(name), _Records())
            if rrset is None:
                records.rrsets.pop(rdtype, None)
            else:
                records.rrsets[rdtype] = rrset

    def set_a(self, name: str, addresses: Iterable[str], ttl: int = 60) -> None:
        """Replace the name's A records (an empty list removes them)."""
        addrs = list(addresses)
        rrset = dns.rrset.from_text_list(_name(name), ttl, "IN", "A", addrs) if addrs else None
        self._set(name, rrset, dns.rdatatype.A)

    def set_aaaa(self, name: str, addresses: Iterable[str], ttl: int = 60) -> None:
        addrs = list(addresses)
        rrset = dns.rrset.from_text_list(_name(name), ttl, "IN", "AAAA", addrs) if addrs else None
        self._set(name, rrset, dns.rdatatype.AAAA)

    def set_srv(
        self,
        name: str,
        records: Iterable[SrvRecord],
        ttl: int = 60,
        *,
        additional: bool = False,
    ) -> None:
        """Replace the name's SRV records; `additional` also sends the targets'
        A/AAAA records (those this server has) in the additional section."""
        texts = [f"{p} {w} {port} {_name(t)}" for p, w, port, t in records]
        rrset = dns.rrset.from_text_list(_name(name), ttl, "IN", "SRV", texts) if texts else None
        self._set(name, rrset, dns.rdatatype.SRV)
        with self._lock:
            self._zone[_name(name)].srv_additional = additional

    def set_empty(self, name: str) -> None:
        """The name exists with no records at all: every question is NODATA."""
        with self._lock:
            self._zone[_name(name)] = _Records()

    def remove(self, name: str) -> None:
        """The name stops existing (NXDOMAIN)."""
        with self._lock:
            self._zone.pop(_name(name), None)

    def fail(self, name: str, how: Failure | None) -> None:
        """Answer the name with SERVFAIL, NXDOMAIN, or not at all; None: answer normally."""
        with self._lock:
            if how is None:
                self._failures.pop(_name(name), None)
            else:
                self._failures[_name(name)] = how

    def queries(self, name: str, rdtype: str | None = None) -> int:
        """Questions received for the name (of one type, or of all)."""
        n = _name(name)
        with self._lock:
            if rdtype is not None:
                return self._queries[(n, dns.rdatatype.from_text(rdtype))]
            return sum(c for (qn, _), c in self._queries.items() if qn == n)

    # ------------------------------------------------------------ answering

    def handle(self, wire: bytes, *, udp: bool = False) -> bytes | None:
        """The response's wire form, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None  # not DNS: a real server drops it too
        max_size = 65535
        if udp:
            max_size = max(512, query.payload) if query.edns >= 0 else 512
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire(max_size=max_size)
        question = query.question[0]
        qname, rdtype = question.name, question.rdtype
        with self._lock:
            self._queries[(qname, rdtype)] += 1
            failure = self._failures.get(qname)
            records = self._zone.get(qname)
            if failure == "drop":
                return None
            if failure == "servfail":
                response.flags &= ~dns.flags.AA
                response.set_rcode(dns.rcode.SERVFAIL)
            elif failure == "nxdomain" or records is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(self._soa())
            elif rdtype in records.rrsets:
                response.answer.append(records.rrsets[rdtype])
                if rdtype == dns.rdatatype.SRV and records.srv_additional:
                    response.additional.extend(self._glue(records.rrsets[rdtype]))
            else:
                response.authority.append(self._soa())
        # A UDP answer too big for 512 bytes (or the client's EDNS size) goes
        # out truncated (TC), and the resolver asks again over TCP.
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            response.flags |= dns.flags.TC
            response.answer.clear()
            response.additional.clear()
            return response.to_wire(max_size=max_size)

    def _soa(self) -> dns.rrset.RRset:
        ttl = self.negative_ttl
        return dns.rrset.from_text(
            dns.name.root, ttl, "IN", "SOA", f"ns.test. hostmaster.test. 1 60 60 60 {ttl}"
        )

    def _glue(self, srv: dns.rrset.RRset) -> list[dns.rrset.RRset]:
        out = []
        for rd in srv:
            target = self._zone.get(rd.target)
            if target is not None:
                for t in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    if t in target.rrsets:
                        out.append(target.rrsets[t])
        return out

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tcp_clients[writer] = asyncio.current_task()
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                wire = self.handle(await reader.readexactly(length))
                if wire is None:
                    continue
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tcp_clients.pop(writer, None)
            writer.close()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> DnsServer:
        """Listen on a free port: UDP first, then TCP on the same number."""
        loop = asyncio.get_running_loop()
        for _ in range(20):
            udp, _proto = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, self.port)
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._tcp_client, self.host, port)
            except OSError:
                udp.close()  # the TCP twin of that port is taken: another pair
                continue
            self._udp, self.port = udp, port
            return self
        raise AssertionError("no free UDP+TCP port pair for the DNS server")

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            # A client still connected would keep its handler (and wait_closed) waiting:
            # closing its socket ends the handler's read.
            clients = dict(self._tcp_clients)
            for writer in clients:
                writer.close()
            await asyncio.gather(*(t for t in clients.values() if t), return_exceptions=True)
            await self._tcp.wait_closed()
            self._tcp = None

    def start_in_thread(self) -> DnsServer:
        """Run on an event loop of its own in a daemon thread (stop with `stop_thread`)."""
        started: Future[None] = Future()
        loop = asyncio.new_event_loop()

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as e:
                started.set_exception(e)
                return
            started.set_result(None)
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=main, name="dns-server", daemon=True)
        self._thread.start()
        started.result(timeout=5)
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop = self._thread = None

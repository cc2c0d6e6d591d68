"""Compiled by mypyc (pyproxyd/compiled.py).

Header rules between client and upstream: hop-by-hop, X-Forwarded-*, client IP.

Everything per request here is a set lookup or a byte operation; the sets and
parsed networks are built once per snapshot by `compile.py`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from .framing import FRAMING


def is_grpc(content_type: bytes | None) -> bool:
    """application/grpc, application/grpc+proto, application/grpc;charset=... (not
    grpc-web). Here, compiled: it runs on every request."""
    if content_type is None or not content_type.startswith(b"application/grpc"):
        return False
    rest = content_type[16:17]
    return rest in (b"", b"+", b";")


HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
HOP_BY_HOP_B = frozenset(h.encode() for h in HOP_BY_HOP)
# Left out of an upstream's answer: hop-by-hop, and its X-Request-ID (the
# request's own replaces it).
RESPONSE_DROP_B = HOP_BY_HOP_B | {b"x-request-id"}

# Headers the gateway sets itself on the way upstream; the client's copies are
# dropped (X-Forwarded-* are rebuilt from the trusted part of the chain).
REPLACED_B = frozenset(
    {
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
        b"traceparent",
    }
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# The fields whose values a per-process cache may keep (the HTTP/2 request
# check, the upstream head's translation to HTTP/2): what clients and the
# gateway repeat on every request and that carries no secret. A token, key,
# cookie, signed URL or per-request id is checked or translated each time,
# so that it does not outlive its request in the gateway's memory.
REPEATED_FIELDS: Final = frozenset({
    b"content-type", b"te", b"user-agent", b"accept", b"accept-encoding", b"accept-language",
    b"grpc-accept-encoding", b"grpc-encoding", b"cache-control", b"pragma", b"origin",
    b"priority", b"dnt", b"sec-fetch-mode", b"sec-fetch-site", b"sec-fetch-dest",
    b"sec-fetch-user", b"sec-ch-ua", b"sec-ch-ua-mobile", b"sec-ch-ua-platform",
    b"upgrade-insecure-requests", b"x-requested-with", b"host", b"x-forwarded-for",
    b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port", b"x-real-ip", b"via",
})  # fmt: skip

# Addresses remembered per TrustedProxies (a module constant: mypyc compiles
# this module, and a ClassVar on a frozen dataclass trips it).
MEMO = 4096


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """Parsed once: single addresses go in a set, ranges stay networks.

    An address checked against the ranges is remembered (up to MEMO entries):
    a request asks about its peer two or three times, and parsing it costs
    more than the rest of the check.
    """

    addresses: frozenset[str]
    networks: tuple[IPNetwork, ...]
    _memo: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedProxies:
        addresses: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            net = ipaddress.ip_network(entry, strict=False)
            if net.num_addresses == 1:
                addresses.add(str(net.network_address))
            else:
                networks.append(net)
        return cls(frozenset(addresses), tuple(networks))

    def __contains__(self, addr: str) -> bool:
        if addr in self.addresses:
            return True
        if not self.networks:
            return False
        memo = self._memo
        known = memo.get(addr)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            trusted = False
        else:
            trusted = any(ip in net for net in self.networks)
        if len(memo) >= MEMO:
            memo.clear()  # many distinct peers: start over rather than grow
        memo[addr] = trusted
        return trusted


def _clean(addr: str) -> str:
    addr = addr.strip()
    if addr.startswith("["):  # "[::1]:1234" or "[::1]"
        return addr[1 : addr.find("]")] if "]" in addr else addr
    if addr.count(":") == 1:  # "1.2.3.4:5678"
        return addr.split(":", 1)[0]
    return addr


def client_address(peer: str, xff_values: Sequence[str], trusted: TrustedProxies) -> str:
    """The right-most X-Forwarded-For entry that is not a trusted proxy.

    Only a trusted peer's X-Forwarded-For is believed at all; from anyone else
    the peer address itself is the client.
    """
    if not xff_values or peer not in trusted:
        return peer
    hops = [_clean(h) for v in xff_values for h in v.split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return hops[0] if hops else peer


def forwarded_for(peer: str, xff_values: Sequence[str], trusted: TrustedProxies) -> str:
    """The X-Forwarded-For sent upstream: the trusted incoming chain plus the peer."""
    if xff_values and peer in trusted:
        return ", ".join([*(v.strip() for v in xff_values), peer])
    return peer


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """Header names listed in Connection, which are hop-by-hop too; never a
    framing header (framing.FRAMING), whichever direction the message goes."""
    listed = frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())
    return listed - FRAMING


def filter_request_headers(
    raw: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> tuple[list[tuple[bytes, bytes]], dict[bytes, list[bytes]]]:
    """Split the client's raw headers into those passed on and those the gateway reads.

    `drop` is the per-snapshot set (hop-by-hop, replaced and forward_claims
    names). Returns (kept, seen) where `seen` holds the dropped headers the
    proxy still needs to look at (Connection, X-Forwarded-*, ...).
    """
    kept: list[tuple[bytes, bytes]] = []
    seen: dict[bytes, list[bytes]] = {}
    conn_listed: frozenset[bytes] = frozenset()
    for name, value in raw:
        lname = name.lower()
        if lname == b"connection":
            conn_listed = conn_listed | connection_tokens((value,))
        if lname in drop:
            seen.setdefault(lname, []).append(value)
        else:
            kept.append((name, value))
    if conn_listed:
        kept = [(n, v) for n, v in kept if n.lower() not in conn_listed]
    return kept, seen


def filter_response_headers(
    headers: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes] = HOP_BY_HOP_B
) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop (`drop`) and Connection-listed headers from an upstream response."""
    kept: list[tuple[bytes, bytes]] = []
    listed: frozenset[bytes] = frozenset()
    for name, value in headers:
        lname = name.lower()
        if lname in drop:
            if lname == b"connection" and value.lower() not in _CONNECTION_OPTIONS:
                listed = listed | connection_tokens((value,))
            continue
        kept.append((name, value))
    if listed - _CONNECTION_OPTIONS:  # a second pass only when Connection names headers
        kept = [(n, v) for n, v in kept if n.lower() not in listed]
    return kept


_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive"})


def names_more_headers(connection: bytes) -> bool:
    """A Connection value naming headers besides close/keep-alive, which
    filter_response_headers then drops in a second pass."""
    value = connection.lower()
    return value not in _CONNECTION_OPTIONS and bool(
        connection_tokens((value,)) - _CONNECTION_OPTIONS
    )

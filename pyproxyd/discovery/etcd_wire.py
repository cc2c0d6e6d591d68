"""What etcd's v3 HTTP/JSON gateway speaks, for etcd.py: its errors (gRPC
status codes in JSON bodies), watch events, base64 keys and values, and the
socket settings of a watch."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

# gRPC status codes that etcd puts in its JSON errors.
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
FAILED_PRECONDITION = 9
OUT_OF_RANGE = 11
UNAVAILABLE = 14
UNAUTHENTICATED = 16

# grpc-gateway forwards Grpc-Metadata-* headers as gRPC metadata; "hasleader"
# makes a member that lost its quorum end our watch instead of keeping a
# stream that silently sees no new revision.
WATCH_HEADERS = {"Grpc-Metadata-hasleader": "true"}
# TCP keepalive on a watch's socket: a connection whose peer is gone without
# a FIN or RST (a host that died, state a NAT dropped) errors after about
# idle + interval * count seconds instead of never.
KEEPALIVE = (5, 2, 3)


class EtcdError(Exception):
    """etcd answered with an error this client does not retry."""


class EtcdUnavailable(EtcdError):
    """No member could be asked or none answered in time."""


class EtcdAuthError(EtcdError):
    """etcd refused the credentials, or the user may not read or write the key."""


class Compacted(EtcdError):
    """A watch's start revision was compacted away: re-read, then watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest kept: {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch. A delete has an empty value; mod_revision
    is the revision of the change itself."""

    type: Literal["put", "delete"]
    key: str
    value: bytes
    mod_revision: int


class MemberDown(Exception):
    """This member did not answer usefully; the next one may."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def key_bytes(key: str) -> bytes:
    # surrogateescape both ways: a key that is not UTF-8 still round-trips.
    return key.encode("utf-8", "surrogateescape")


def key_str(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes [prefix, end) every key starting with prefix."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # etcd's "to the end of the keyspace"


def revision_of(data: dict[str, Any]) -> int:
    return int(data.get("header", {}).get("revision", 0))


def error_of(data: Any) -> tuple[int, str]:
    """(gRPC code, message) of an error body; 3.4 and 3.5 spell it differently."""
    if not isinstance(data, dict):
        return 0, str(data)[:200]
    err = data.get("error")
    if isinstance(err, dict):  # a streaming error: {"error": {"grpc_code": ..}}
        return int(err.get("grpc_code", 0)), str(err.get("message", err))
    return int(data.get("code", 0)), str(data.get("message") or err or data)


def keepalive(resp: aiohttp.ClientResponse) -> None:
    sock = None
    if resp.connection is not None and resp.connection.transport is not None:
        sock = resp.connection.transport.get_extra_info("socket")
    if sock is None:
        return
    idle, interval, count = KEEPALIVE
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the defaults
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


def describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__

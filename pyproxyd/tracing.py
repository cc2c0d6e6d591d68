"""Compiled by mypyc (pyproxyd/compiled.py).

X-Request-ID and W3C Trace Context (traceparent) for every request."""

from __future__ import annotations

import re
from random import getrandbits

_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


# Ids come from the process's Mersenne Twister, like OpenTelemetry's
# RandomIdGenerator: they must be unique and unguessable enough to not collide,
# not secret. os.urandom cost a getrandom() system call each, three a request.
# (random reseeds itself in a forked worker.)


def new_id() -> str:
    # all-zero ids are invalid (W3C); to_bytes().hex() measured a third cheaper than "%032x"
    return (getrandbits(128) or 1).to_bytes(16, "big").hex()


def request_id(incoming: str | None) -> str:
    """Keep a client's id when it is at most 128 visible ASCII characters."""
    if incoming is not None and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return new_id()


def traceparent(incoming: str | None) -> tuple[str, str]:
    """(trace_id, traceparent to send upstream).

    A valid incoming header keeps its trace-id and flags and gets our span as
    the new parent-id; anything else starts a new, sampled trace.
    """
    span = (getrandbits(64) or 1).to_bytes(8, "big").hex()
    if incoming is not None:
        m = _TRACEPARENT.fullmatch(incoming.strip())
        if m:
            version, trace_id, parent, flags, rest = m.groups()
            valid = (
                version != "ff"
                and trace_id != _ZERO_TRACE
                and parent != _ZERO_SPAN
                and (version != "00" or rest is None)
            )
            if valid:
                return trace_id, f"00-{trace_id}-{span}-{flags}"
    trace_id = new_id()
    return trace_id, f"00-{trace_id}-{span}-01"

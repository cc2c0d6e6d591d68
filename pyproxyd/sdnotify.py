"""sd_notify(3) over the NOTIFY_SOCKET datagram socket: READY, RELOADING, STOPPING.

A dozen lines of protocol do not justify a dependency; systemd documents the
wire format as stable (one datagram of newline-separated KEY=VALUE pairs).
"""

from __future__ import annotations

import os
import socket
import time


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr.startswith("@"):  # abstract namespace
        return "\0" + addr[1:]
    return addr


def notify(*fields: str) -> bool:
    """Send one datagram; False when not under systemd or the send failed."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall("\n".join(fields).encode())
        return True
    except OSError:
        return False


def ready() -> bool:
    return notify("READY=1", f"MAINPID={os.getpid()}")


def reloading() -> bool:
    # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload).
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")

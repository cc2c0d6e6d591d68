"""Socket-level moves the stream protocols share."""

from __future__ import annotations

import asyncio


def half_close(transport: asyncio.WriteTransport) -> bool:
    """Send FIN after what is buffered. False when the peer is already gone.

    A peer's RST that the loop has not read yet makes shutdown(SHUT_WR) fail
    with ENOTCONN; the connection is over either way, so it is aborted rather
    than letting the error escape into whoever was closing it (a reload's
    drain, a server stop)."""
    try:
        transport.write_eof()
    except OSError:
        transport.abort()
        return False
    return True

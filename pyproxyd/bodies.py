"""Request-body streams the proxy hands to the upstream writer.

Async generators live here, apart from the hot modules, because mypyc (see
setup.py) cannot compile them; these run once per body chunk, not per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from . import errors

if TYPE_CHECKING:
    from .proxy.interface import Request


async def limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The client's body, cut off with 413 once it passes `limit` bytes."""
    assert request.body is not None
    total = 0
    async for chunk in request.body:
        total += len(chunk)
        if total > limit:
            raise errors.PayloadTooLarge(f"request body is over {limit} bytes")
        yield chunk


async def chunked(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Frame raw chunks for a head that says `Transfer-Encoding: chunked`."""
    async for chunk in body:
        if chunk:
            yield b"%x\r\n%b\r\n" % (len(chunk), chunk)
    yield b"0\r\n\r\n"

"""WebSocket upgrades: two message pumps between the client and the upstream.

The pooled HTTP/1.1 path never carries an upgraded connection; a WebSocket
gets a dedicated upstream connection through aiohttp's client.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from . import errors

if TYPE_CHECKING:
    from .proxy import RequestInfo
    from .snapshot import Upstream

# Handshake headers aiohttp's client makes itself.
_HANDSHAKE = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"content-length",
    }
)

_session: aiohttp.ClientSession | None = None


def _client() -> aiohttp.ClientSession:
    global _session
    if _session is None or _session.closed:
        _session = aiohttp.ClientSession(
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )
    return _session


async def close_client() -> None:
    if _session is not None and not _session.closed:
        await _session.close()


async def proxy_websocket(
    request: web.BaseRequest,
    upstream: Upstream,
    target_path: str,
    kept: list[tuple[bytes, bytes]],
    ex: RequestInfo,
) -> web.StreamResponse:
    # skips ejected targets; ip_hash / hash:<key> pin the client to its target
    index = upstream.pick(set(), asyncio.get_running_loop().time(), ex.target_key)
    if index is None:
        raise errors.NoHealthyTarget(f"upstream {upstream.name!r} has no target to try")
    target = upstream.targets[index]
    scheme = "wss" if target.url.startswith("https") else "ws"
    url = f"{scheme}://{target.label}{target_path}"
    headers = [
        (n.decode("latin-1"), v.decode("latin-1")) for n, v in kept if n.lower() not in _HANDSHAKE
    ]
    headers.append(("X-Request-ID", ex.request_id))
    protocols = tuple(
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    )
    try:
        upstream_ws = await _client().ws_connect(
            url,
            headers=headers,
            protocols=protocols,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
            autoping=False,
            max_msg_size=0,
        )
    except aiohttp.WSServerHandshakeError as e:
        ex.status = e.status
        raise errors.BadGateway(f"upstream refused the WebSocket upgrade ({e.status})") from None
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        raise errors.UpstreamConnectError(
            f"WebSocket connect to {target.label} failed: {e}"
        ) from None

    client_ws = web.WebSocketResponse(
        protocols=(upstream_ws.protocol,) if upstream_ws.protocol else (),
        autoping=False,
        max_msg_size=0,
    )
    await client_ws.prepare(request)
    ex.status = 101

    async def pump(src: object, dst: object) -> None:
        async for msg in src:  # type: ignore[attr-defined]
            if msg.type == aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)  # type: ignore[attr-defined]
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)  # type: ignore[attr-defined]
            elif msg.type == aiohttp.WSMsgType.PING:
                await dst.ping(msg.data)  # type: ignore[attr-defined]
            elif msg.type == aiohttp.WSMsgType.PONG:
                await dst.pong(msg.data)  # type: ignore[attr-defined]
            else:
                break

    tasks = [
        asyncio.ensure_future(pump(client_ws, upstream_ws)),
        asyncio.ensure_future(pump(upstream_ws, client_ws)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        with contextlib.suppress(Exception):
            await upstream_ws.close()
        with contextlib.suppress(Exception):
            await client_ws.close()
    return client_ws

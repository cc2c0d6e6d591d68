"""An etcd v3 client on the HTTP/JSON gateway (/v3/kv/range, /v3/watch, ...)
over aiohttp. That gateway is what APISIX uses: it needs no gRPC stack, and
every etcd since 3.4 serves it on the client port. Keys and values travel
base64-encoded, 64-bit integers as JSON strings.

Errors: EtcdUnavailable (no member answered; the message names them),
EtcdAuthError (credentials or permissions refused), Compacted (a watch asked
for history that is gone: the caller re-reads), all EtcdError.

One client serves every prefix of a process: it holds one aiohttp session
and an auth token; each watch is one streaming request of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl as ssl_module
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, Literal

import aiohttp

from .etcd_wire import (
    DEADLINE_EXCEEDED,
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    OUT_OF_RANGE,
    PERMISSION_DENIED,
    UNAUTHENTICATED,
    UNAVAILABLE,
    WATCH_HEADERS,
    Compacted,
    EtcdAuthError,
    EtcdError,
    EtcdUnavailable,
    Event,
    MemberDown,
    b64,
    describe,
    error_of,
    keepalive,
    key_bytes,
    key_str,
    prefix_end,
    revision_of,
    unb64,
)

__all__ = [
    "Compacted",
    "EtcdAuthError",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "Event",
    "prefix_end",
]


class EtcdClient:
    """endpoints: the members' client URLs (http:// or https://); timeout:
    seconds for one call to one member (a watch: until it is established).

    A watch stream that has been quiet for `probe_after` seconds has its
    member asked for its status (one probe per member at a time, shared by
    the streams on it): a member that does not answer within `timeout` is
    frozen or cut off without a FIN (SIGSTOP, a hung VM, a partition), and
    the stream moves to the next member from its last revision. etcd's own
    progress notifications cannot serve for this: their interval is a
    server flag, 10 minutes by default.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = 2.0,
        username: str | None = None,
        password: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        *,
        probe_after: float = 1.0,
        page_size: int = 1000,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd: no endpoints")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self._username = username
        self._password = password
        self._ssl: ssl_module.SSLContext | bool = ssl if ssl is not None else True
        self._session: aiohttp.ClientSession | None = None
        self._current = 0  # the member that answered last: asked first next time
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self._closed = False
        self.probe_after = probe_after
        self.page_size = page_size  # keys per range read of a prefix
        self._alive_at: dict[str, float] = {}  # endpoint -> loop time it last answered a probe
        self._probes: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------ the calls

    async def range_prefix(self, prefix: str) -> tuple[int, list[tuple[str, bytes]]]:
        """Every key under prefix, in key order, and the revision read at.

        Read in pages of page_size keys, each from the key after the last one
        and all at the first page's revision: one consistent set, without one
        giant answer for a prefix of 10,000 instances. A revision compacted
        between two pages starts the read over."""
        raw = key_bytes(prefix)
        for _ in range(3):
            try:
                return await self._range_pages(raw, prefix_end(raw))
            except Compacted:
                continue
        return await self._range_pages(raw, prefix_end(raw))

    async def _range_pages(self, key: bytes, end: bytes) -> tuple[int, list[tuple[str, bytes]]]:
        kvs: list[tuple[str, bytes]] = []
        revision = 0
        while True:
            body = {"key": b64(key), "range_end": b64(end), "limit": str(self.page_size)}
            if revision:
                body["revision"] = str(revision)
            data = await self._call("/v3/kv/range", body)
            revision = revision or revision_of(data)
            page = data.get("kvs", [])
            kvs += [(key_str(unb64(kv["key"])), unb64(kv.get("value"))) for kv in page]
            if not data.get("more") or not page:
                return revision, kvs
            key = unb64(page[-1]["key"]) + b"\0"

    async def get(self, key: str) -> tuple[int, bytes | None, int]:
        """(revision read at, value or None when absent, the key's mod_revision or 0)."""
        data = await self._call("/v3/kv/range", {"key": b64(key_bytes(key))})
        kvs = data.get("kvs", [])
        if not kvs:
            return revision_of(data), None, 0
        return revision_of(data), unb64(kvs[0].get("value")), int(kvs[0]["mod_revision"])

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write key (attached to lease when not 0); the new revision."""
        body: dict[str, Any] = {"key": b64(key_bytes(key)), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return revision_of(await self._call("/v3/kv/put", body))

    async def delete(self, key: str) -> int:
        return revision_of(await self._call("/v3/kv/deleterange", {"key": b64(key_bytes(key))}))

    async def grant_lease(self, ttl: int) -> int:
        """A new lease of ttl seconds; its id."""
        return int((await self._call("/v3/lease/grant", {"TTL": str(ttl)}))["ID"])

    async def put_if_revision(
        self, key: str, value: bytes, expected_mod_revision: int
    ) -> int | None:
        """Write key only if its mod_revision is still expected_mod_revision
        (0: the key must be absent), in one transaction. The new revision, or
        None when the key changed since it was read."""
        raw = b64(key_bytes(key))
        data = await self._call(
            "/v3/kv/txn",
            {
                "compare": [{"target": "MOD", "key": raw, "result": "EQUAL",
                             "mod_revision": str(expected_mod_revision)}],
                "success": [{"request_put": {"key": raw, "value": b64(value)}}],
            },
        )  # fmt: skip
        return revision_of(data) if data.get("succeeded") else None

    def watch_prefix(self, prefix: str, start_revision: int) -> AsyncGenerator[list[Event], None]:
        """Changes under prefix from start_revision on; see _watch."""
        raw = key_bytes(prefix)
        return self._watch(raw, prefix_end(raw), start_revision)

    def watch_key(self, key: str, start_revision: int) -> AsyncGenerator[list[Event], None]:
        return self._watch(key_bytes(key), None, start_revision)

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---------------------------------------------------------------- watch

    async def _watch(
        self, key: bytes, range_end: bytes | None, start_revision: int
    ) -> AsyncGenerator[list[Event], None]:
        """Yields one batch of events per etcd watch response (a revision is
        never split across batches), and an empty batch each time the watch
        is (re)established. A stream that breaks is opened again on the next
        member, from the revision after the last one yielded, so nothing is
        missed or repeated. Raises Compacted when that revision is gone, and
        EtcdUnavailable once every member has failed in a row (the caller
        backs off and watches again from its last revision)."""
        n = len(self.endpoints)
        member = self._current
        next_rev = start_revision
        errors: list[str] = []  # connection attempts that failed in a row
        while True:
            endpoint = self.endpoints[member % n]
            body: dict[str, Any] = {
                "create_request": {"key": b64(key), "start_revision": str(next_rev),
                                   "progress_notify": True}
            }  # fmt: skip
            if range_end is not None:
                body["create_request"]["range_end"] = b64(range_end)
            established = False
            try:
                # aclosing: a caller that stops iterating releases the stream now, not at GC.
                async with contextlib.aclosing(self._watch_stream(endpoint, body)) as stream:
                    async for batch, seen in stream:
                        established = True
                        errors.clear()
                        self._current = member % n
                        next_rev = max(next_rev, seen + 1)
                        if batch:
                            next_rev = batch[-1].mod_revision + 1
                        if batch or seen == 0:
                            yield batch
                reason = "watch stream ended"
            except MemberDown as exc:
                reason = str(exc)
            member += 1
            if established:
                # A stream that broke: the next member at once (its member may
                # be gone); the pause only keeps a flapping one from spinning.
                await asyncio.sleep(0.05)
                continue
            errors.append(f"{endpoint}: {reason}")
            if len(errors) >= n:
                raise EtcdUnavailable("etcd unreachable: " + "; ".join(errors))
            await asyncio.sleep(0.05 * len(errors) * random.uniform(0.5, 1.0))

    async def _watch_stream(
        self, endpoint: str, body: dict[str, Any]
    ) -> AsyncGenerator[tuple[list[Event], int], None]:
        """One watch stream on one member: ([], 0) once created, then
        (events, 0) per change and ([], R) per progress notification (all
        changes up to R were sent)."""
        session = self._get_session()
        headers = {**WATCH_HEADERS, **await self._auth_headers(endpoint)}
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeout, sock_connect=self.timeout, sock_read=None
        )
        try:
            async with asyncio.timeout(self.timeout):
                resp = await session.post(
                    endpoint + "/v3/watch", json=body, headers=headers, timeout=timeout,
                    ssl=self._ssl,
                )  # fmt: skip
            async with resp:
                if resp.status != 200:
                    self._raise_for(endpoint, resp.status, await self._json(resp, endpoint))
                keepalive(resp)
                lines = self._lines(resp, endpoint)
                async with asyncio.timeout(self.timeout):
                    first = await anext(lines, None)
                    if first is None:
                        raise MemberDown("watch stream ended before it was created")
                    self._check_result(endpoint, first)
                yield [], 0
                async for message in lines:
                    result = self._check_result(endpoint, message)
                    events = [self._event(e) for e in result.get("events", [])]
                    yield events, 0 if events else revision_of(result)
        except (aiohttp.ClientError, OSError, TimeoutError, EOFError, ValueError) as exc:
            # ValueError: a line that is not JSON; that member's stream is broken.
            raise MemberDown(describe(exc)) from exc

    async def _lines(
        self, resp: aiohttp.ClientResponse, endpoint: str
    ) -> AsyncIterator[dict[str, Any]]:
        # One JSON object a line; read chunks ourselves, as StreamReader.readline
        # refuses lines past 128 KiB and a batch of many events is longer.
        buf = b""
        while True:
            try:
                async with asyncio.timeout(self.probe_after):
                    chunk = await resp.content.readany()  # (cancel-safe: data stays buffered)
            except TimeoutError:
                await self._probe(endpoint)  # raises MemberDown when it does not answer
                continue
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)

    async def _probe(self, endpoint: str) -> None:
        """Whether the member still answers, asked at most once per probe_after."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._alive_at.get(endpoint, -1e9) < self.probe_after:
            return
        task = self._probes.get(endpoint)
        if task is None or task.done():
            task = self._probes[endpoint] = loop.create_task(self._status(endpoint))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.shield(task)

    async def _status(self, endpoint: str) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._post(endpoint, "/v3/maintenance/status", {})
        except EtcdError:
            pass  # it answered, if only to refuse
        except TimeoutError:
            raise MemberDown(
                f"no answer to a status probe within {self.timeout:g}s (a frozen or cut-off member)"
            ) from None
        self._alive_at[endpoint] = asyncio.get_running_loop().time()

    def _check_result(self, endpoint: str, message: dict[str, Any]) -> dict[str, Any]:
        if "error" in message:
            code, text = error_of(message)
            self._raise_for(endpoint, 500, {"code": code, "message": text})
        result: dict[str, Any] = message.get("result", {})
        if result.get("canceled"):
            compact = int(result.get("compact_revision", 0))
            if compact:
                raise Compacted(compact)
            reason = str(result.get("cancel_reason", "watch canceled"))
            if "invalid auth token" in reason:
                self._token = None
                raise MemberDown(reason)
            if "permission denied" in reason or "user name is empty" in reason:
                raise EtcdAuthError(f"etcd at {endpoint}: {reason}")
            raise MemberDown(reason)
        return result

    @staticmethod
    def _event(e: dict[str, Any]) -> Event:
        kv = e["kv"]
        kind: Literal["put", "delete"] = "delete" if e.get("type") == "DELETE" else "put"
        return Event(
            kind, key_str(unb64(kv["key"])), unb64(kv.get("value")), int(kv["mod_revision"])
        )

    # -------------------------------------------------------- unary plumbing

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise EtcdError("etcd client is closed")
        if self._session is None:
            # No connection limit: every watch holds one connection for good.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the member that answered last, then to the others in turn."""
        n = len(self.endpoints)
        errors: list[str] = []
        for i in range(n):
            member = (self._current + i) % n
            endpoint = self.endpoints[member]
            try:
                data = await self._post(endpoint, path, body)
            except MemberDown as exc:
                errors.append(f"{endpoint}: {exc}")
                continue
            self._current = member
            return data
        raise EtcdUnavailable("etcd unreachable: " + "; ".join(errors))

    async def _post(self, endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(2):
            headers = await self._auth_headers(endpoint)
            try:
                status, data = await self._request(endpoint, path, body, headers)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise MemberDown(describe(exc)) from exc
            if status == 200 and "error" not in data:
                return data
            code, _ = error_of(data)
            if code == UNAUTHENTICATED and self._username and attempt == 0:
                self._token = None  # expired (simple tokens live 5 min): log in again
                continue
            self._raise_for(endpoint, status, data)
        raise AssertionError("unreachable")

    async def _request(
        self, endpoint: str, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        session = self._get_session()
        async with session.post(
            endpoint + path, json=body, headers=headers, ssl=self._ssl,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        ) as resp:  # fmt: skip
            return resp.status, await self._json(resp, endpoint)

    @staticmethod
    async def _json(resp: aiohttp.ClientResponse, endpoint: str) -> dict[str, Any]:
        text = await resp.text()
        try:
            data = json.loads(text)
        except ValueError:
            raise MemberDown(f"HTTP {resp.status}, not etcd's JSON: {text[:100]!r}") from None
        if not isinstance(data, dict):
            raise MemberDown(f"HTTP {resp.status}, unexpected answer {text[:100]!r}")
        return data

    def _raise_for(self, endpoint: str, status: int, data: dict[str, Any]) -> None:
        code, message = error_of(data)
        if code == OUT_OF_RANGE and "compacted" in message:
            raise Compacted(0)  # a range read at a revision that is gone
        if code in (UNAVAILABLE, DEADLINE_EXCEEDED) or (status >= 500 and code == 0):
            raise MemberDown(message)  # no leader, request timed out, restarting
        if code in (PERMISSION_DENIED, UNAUTHENTICATED) or "user name is empty" in message:
            raise EtcdAuthError(f"etcd at {endpoint} refused the request: {message}")
        raise EtcdError(f"etcd at {endpoint}: {message}")

    async def _auth_headers(self, endpoint: str) -> dict[str, str]:
        if not self._username:
            return {}
        async with self._auth_lock:
            if self._token is None:
                self._token = await self._authenticate(endpoint)
        return {"Authorization": self._token} if self._token else {}

    async def _authenticate(self, endpoint: str) -> str:
        body = {"name": self._username, "password": self._password or ""}
        try:
            status, data = await self._request(endpoint, "/v3/auth/authenticate", body, {})
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise MemberDown(describe(exc)) from exc
        if status == 200 and "token" in data:
            return str(data["token"])
        code, message = error_of(data)
        if code == FAILED_PRECONDITION and "not enabled" in message:
            return ""  # credentials given to an etcd without auth: nothing to send
        if code == INVALID_ARGUMENT or "authentication failed" in message:
            raise EtcdAuthError(f"etcd at {endpoint} refused user {self._username!r}: {message}")
        self._raise_for(endpoint, status, data)
        raise AssertionError("unreachable")

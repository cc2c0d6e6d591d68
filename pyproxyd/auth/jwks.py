"""Signing keys: a parsed JWKS, from a file (static) or from the IdP (cached).

A key verifies only algorithms of its own family: an RSA key RS*/PS*, an EC
key the ES* of its curve, an OKP key EdDSA, an `oct` secret HS*. Each
(key, algorithm) pair becomes its own `PyJWK`, bound to that algorithm, so
that a token cannot choose how a key is interpreted (no HS256 "signed" with
an RSA public key used as the HMAC secret).

`RemoteKeys` follows the IdP's `Cache-Control: max-age`, clamped between a
floor and a ceiling, refreshes in the background, refetches at most once
every `refetch_interval` when a token names a kid it does not know (key
rotation), and keeps the last good key set while the IdP is unreachable.
Decisions take `now` as an argument; only the I/O methods read the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from ..observe.logging import get_logger

log = get_logger("pyproxyd.auth")

FAMILIES: dict[str, tuple[str, ...]] = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC:P-256": ("ES256",),
    "EC:P-384": ("ES384",),
    "OKP:Ed25519": ("EdDSA",),
    "OKP:Ed448": ("EdDSA",),
    "oct": ("HS256", "HS384", "HS512"),
}
# RFC 7518 3.2: an HMAC key at least as long as the hash output.
HS_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_PRIVATE = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})

Refresh = Callable[[], Awaitable[None]]


def family(jwk: Mapping[str, Any]) -> str:
    kty = jwk.get("kty")
    return f"{kty}:{jwk.get('crv')}" if kty in ("EC", "OKP") else str(kty)


class KeySet:
    """(kid, alg) -> the keys that may verify such a token."""

    __slots__ = ("any_kid", "by_alg", "by_kid", "fingerprints")

    def __init__(self, entries: Iterable[tuple[str | None, str, PyJWK, str]] = ()) -> None:
        """entries: (kid or None, algorithm, key bound to it, fingerprint of the JWK)."""
        self.by_kid: dict[tuple[str, str], tuple[PyJWK, ...]] = {}
        self.by_alg: dict[str, tuple[PyJWK, ...]] = {}  # tokens without a kid
        self.any_kid: dict[str, tuple[PyJWK, ...]] = {}  # keys without a kid
        fingerprints = set()
        for kid, alg, key, fingerprint in entries:
            fingerprints.add(fingerprint)
            self.by_alg[alg] = (*self.by_alg.get(alg, ()), key)
            if kid is None:
                self.any_kid[alg] = (*self.any_kid.get(alg, ()), key)
            else:
                self.by_kid[(kid, alg)] = (*self.by_kid.get((kid, alg), ()), key)
        self.fingerprints = frozenset(fingerprints)

    def lookup(self, kid: str | None, alg: str) -> tuple[PyJWK, ...]:
        if kid is None:
            return self.by_alg.get(alg, ())
        return self.by_kid.get((kid, alg)) or self.any_kid.get(alg, ())

    def __len__(self) -> int:
        return len(self.fingerprints)


def parse_jwks(data: Any, algorithms: Iterable[str], *, strict: bool) -> KeySet:
    """A JWKS document (bytes, str or dict) -> KeySet for the allowed algorithms.

    strict (a file the operator wrote): any unusable key is an error.
    Otherwise (the IdP's document) unusable keys are skipped and logged, so
    one odd key cannot take down every other.
    """
    allowed = set(algorithms)
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except ValueError as e:
            raise ValueError(f"JWKS is not valid JSON: {e}") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise ValueError('JWKS must be a JSON object with a "keys" array')
    entries: list[tuple[str | None, str, PyJWK, str]] = []
    for i, jwk in enumerate(keys):
        try:
            entries.extend(_entries(jwk, allowed))
        except ValueError as e:
            if strict:
                raise ValueError(f"JWKS key {i}: {e}") from None
            log.warning("jwks_key_skipped", index=i, reason=str(e))
    return KeySet(entries)


def _entries(jwk: Any, allowed: set[str]) -> list[tuple[str | None, str, PyJWK, str]]:
    if not isinstance(jwk, dict):
        raise ValueError("not a JSON object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid must be a string")
    if jwk.get("kty") != "oct" and _PRIVATE & jwk.keys():
        raise ValueError("holds private key material; publish only the public key")
    if jwk.get("use", "sig") != "sig":
        return []  # an encryption key
    ops = jwk.get("key_ops")
    if isinstance(ops, list) and "verify" not in ops:
        return []
    algs = FAMILIES.get(family(jwk))
    if algs is None:
        raise ValueError(f"unsupported key type {family(jwk)!r}")
    stated = jwk.get("alg")
    if stated is not None:
        if stated not in algs:
            raise ValueError(f"alg {stated!r} does not fit a {family(jwk)} key")
        algs = (stated,)
    fingerprint = json.dumps(jwk, sort_keys=True)
    out = []
    for alg in algs:
        if alg not in allowed:
            continue
        try:
            key = PyJWK(jwk, algorithm=alg)
        except (PyJWTError, ValueError, TypeError) as e:
            raise ValueError(f"cannot load key: {type(e).__name__}") from None
        out.append((kid, alg, key, fingerprint))
    return out


def hs_secret_keys(secret: bytes, algorithms: Iterable[str]) -> KeySet:
    """The HS* shared secret (from hs_secret_env) as a key for any kid."""
    import base64

    k = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    entries = []
    for alg in algorithms:
        if not alg.startswith("HS"):
            continue
        if len(secret) < HS_MIN_BYTES[alg]:
            raise ValueError(f"the {alg} secret must be at least {HS_MIN_BYTES[alg]} bytes long")
        entries.append((None, alg, PyJWK({"kty": "oct", "k": k}, algorithm=alg), "hs-secret"))
    return KeySet(entries)


def merge(*sets: KeySet) -> KeySet:
    out = KeySet()
    for s in sets:
        for (kid, alg), keys in s.by_kid.items():
            out.by_kid[(kid, alg)] = (*out.by_kid.get((kid, alg), ()), *keys)
        for alg, keys in s.by_alg.items():
            out.by_alg[alg] = (*out.by_alg.get(alg, ()), *keys)
        for alg, keys in s.any_kid.items():
            out.any_kid[alg] = (*out.any_kid.get(alg, ()), *keys)
    out.fingerprints = frozenset().union(*(s.fingerprints for s in sets))
    return out


class StaticKeys:
    """Keys that change only with a reload (jwks_file, hs_secret_env)."""

    __slots__ = ("keys", "removals")

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys
        self.removals = 0

    def refetch_for_unknown_kid(self, now: float) -> Refresh | None:
        return None


_MAX_AGE = re.compile(r"(?:^|[,\s])(s-maxage|max-age)\s*=\s*\"?(\d+)")


def cache_ttl(cache_control: str | None, *, floor: float, ceiling: float, default: float) -> float:
    """Seconds to keep a fetched JWKS: max-age (s-maxage first), clamped.

    no-store / no-cache would mean a fetch per token; the floor applies, so a
    misconfigured IdP cannot turn every request into a JWKS fetch.
    """
    ttl = default
    if cache_control:
        found = dict((k.lower(), int(v)) for k, v in _MAX_AGE.findall(cache_control.lower()))
        if "s-maxage" in found:
            ttl = found["s-maxage"]
        elif "max-age" in found:
            ttl = found["max-age"]
        elif "no-store" in cache_control.lower() or "no-cache" in cache_control.lower():
            ttl = floor
    return float(min(max(ttl, floor), ceiling))


class RemoteKeys:
    """The IdP's JWKS, fetched with aiohttp and kept fresh.

    A snapshot-state object: carried over by (url, algorithms) across
    reloads, started when installed (`activate`), closed when retired (`aclose`).
    """

    def __init__(
        self,
        url: str,
        algorithms: Iterable[str],
        *,
        floor: float = 60.0,
        ceiling: float = 86400.0,
        default_ttl: float = 300.0,
        retry_after: float = 10.0,
        refetch_interval: float = 5.0,
        timeout: float = 5.0,
        max_bytes: int = 1 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.algorithms = tuple(algorithms)
        self.floor, self.ceiling, self.default_ttl = floor, ceiling, default_ttl
        self.retry_after = retry_after
        self.refetch_interval = refetch_interval
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.clock = clock
        self.keys = KeySet()
        self.removals = 0  # bumped when a key disappears: cached tokens must be re-checked
        self.fetched_at: float | None = None
        self.next_refresh = float("-inf")  # due at once
        self.fetches = 0
        self.failures = 0
        self._last_kid_refetch = float("-inf")
        self._inflight: asyncio.Task[bool] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<RemoteKeys {self.url} keys={len(self.keys)} fetches={self.fetches}>"

    # ------------------------------------------------ decisions (pure over now)

    def install(self, keys: KeySet, ttl: float, now: float) -> None:
        """A fetch succeeded: serve `keys` until now + ttl."""
        if self.keys.fingerprints - keys.fingerprints:
            self.removals += 1
        self.keys = keys
        self.fetched_at = now
        self.next_refresh = now + ttl

    def failed(self, now: float) -> None:
        """A fetch failed: keep the keys we have, try again soon."""
        self.failures += 1
        self.next_refresh = now + self.retry_after

    def refresh_due(self, now: float) -> bool:
        return now >= self.next_refresh

    def may_refetch(self, now: float) -> bool:
        """An unknown kid may trigger a fetch at most once per refetch_interval."""
        return now - self._last_kid_refetch >= self.refetch_interval

    def refetch_for_unknown_kid(self, now: float) -> Refresh | None:
        """A coroutine function that waits for a fresh key set, or None when
        a refetch happened too recently (a flood of random kids costs the IdP
        at most one request per refetch_interval)."""
        if self._inflight is not None and not self._inflight.done():
            return self._wait_inflight
        if not self.may_refetch(now):
            return None
        self._last_kid_refetch = now
        return self._refetch

    # ---------------------------------------------------------------- I/O

    async def _refetch(self) -> None:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self.fetch())
        await self._wait_inflight()

    async def _wait_inflight(self) -> None:
        task = self._inflight
        if task is not None:
            # shield: a client that gives up must not cancel the fetch for the others
            with contextlib.suppress(Exception):  # fetch() logs its own failures
                await asyncio.shield(task)

    async def fetch(self) -> bool:
        """Fetch once; True when a new key set was installed."""
        self.fetches += 1
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            async with self._session.get(self.url, headers={"Accept": "application/json"}) as r:
                if r.status != 200:
                    raise ValueError(f"HTTP {r.status}")
                chunks, size = [], 0
                async for chunk in r.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ValueError(f"JWKS larger than {self.max_bytes} bytes")
                    chunks.append(chunk)
                body = b"".join(chunks)
                cache_control = r.headers.get("Cache-Control")
            keys = parse_jwks(body, self.algorithms, strict=False)
            if not len(keys):
                raise ValueError("no usable signing key in the JWKS")
        except (aiohttp.ClientError, OSError, ValueError) as e:
            self.failed(self.clock())
            log.warning(
                "jwks_fetch_failed", url=self.url, error=f"{type(e).__name__}: {e}"[:200],
                keeping=len(self.keys),
            )  # fmt: skip
            return False
        ttl = cache_ttl(
            cache_control, floor=self.floor, ceiling=self.ceiling, default=self.default_ttl
        )
        self.install(keys, ttl, self.clock())
        log.info("jwks_fetched", url=self.url, keys=len(keys), ttl=ttl)
        return True

    def activate(self) -> None:
        """Fetch now and keep refreshing in the background (idempotent).

        Called when the snapshot holding this object is installed. A token
        that arrives before the first fetch ends waits for it (it names a kid
        we do not know yet, and the fetch in flight is what it waits for); an
        IdP that is down at start is not fatal: tokens get 401 until the keys
        arrive, and the loop keeps trying every `retry_after`.
        """
        if self._loop_task is not None:
            return
        loop = asyncio.get_running_loop()
        self._inflight = loop.create_task(self.fetch())
        self._loop_task = loop.create_task(self._refresh_loop())

    async def ready(self) -> None:
        """Wait for the fetch in flight, if any (the first one, after activate)."""
        await self._wait_inflight()

    async def _refresh_loop(self) -> None:
        while True:
            await self._wait_inflight()
            await asyncio.sleep(max(0.0, self.next_refresh - self.clock()))
            if self.refresh_due(self.clock()) and (self._inflight is None or self._inflight.done()):
                self._inflight = asyncio.get_running_loop().create_task(self.fetch())

    async def aclose(self) -> None:
        for task in (self._loop_task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._loop_task = self._inflight = None
        if self._session is not None:
            await self._session.close()
            self._session = None


KeySource = StaticKeys | RemoteKeys

"""Targets from an etcd prefix: every key under it is one instance, registered
(usually under a lease) the way go-zero and kratos register theirs.

The source reads the prefix once, then watches it from the next revision, as
APISIX does: a broken watch resumes from the last revision seen (the client
moves to another member), a compacted one re-reads the prefix, and while etcd
cannot be reached the last set stays and the source retries with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
import re
from typing import Any
from urllib.parse import urlsplit

from pyproxyd.discovery import Found, Report
from pyproxyd.discovery.etcd import Compacted, EtcdClient, EtcdError

_HOST = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?$")
_MAX_WEIGHT = 10000  # as a static target's weight


def parse_instance(key: str, value: bytes | str) -> tuple[Found | None, str]:
    """(the instance, "") or (None, why the value is not one).

    Values: "host:port", "http(s)://host:port", or a JSON object with "url",
    "address" (a URL or host:port; "Addr" as etcd's own naming package
    writes it) or kratos' "endpoints" list (its first http/https entry), and
    an optional "weight" (1..10000). go-zero's "<prefix>/<lease-id>" keys
    carry "host:port" values; the key itself is never parsed."""
    del key  # the value alone says where the instance is, for every registry we know
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, "value is not UTF-8"
    text = value.strip()
    if not text:
        return None, "empty value"
    try:
        doc = json.loads(text) if text[0] in '{["' else None
    except ValueError as exc:
        if text[0] == "{":
            return None, f"invalid JSON: {exc}"
        doc = None  # "[::1]:80" starts like a JSON list too
    if doc is None:
        url, reason = _address(text)
        return (Found(url), "") if url else (None, reason)
    if not isinstance(doc, dict):
        return None, "JSON value is not an object"
    weight, reason = _weight(doc.get("weight", 1))
    if reason:
        return None, reason
    url, reason = _json_address(doc)
    return (Found(url, weight), "") if url else (None, reason)


def _json_address(doc: dict[str, Any]) -> tuple[str, str]:
    for name in ("url", "address", "Addr"):
        if name in doc:
            if not isinstance(doc[name], str):
                return "", f'"{name}" is not a string'
            return _address(doc[name].strip())
    if "endpoints" in doc:
        endpoints = doc["endpoints"]
        if not isinstance(endpoints, list):
            return "", '"endpoints" is not a list'
        for entry in endpoints:
            if isinstance(entry, str) and entry.lower().startswith(("http://", "https://")):
                return _address(entry.strip())
        return "", f'no http:// or https:// entry in "endpoints" {endpoints!r:.100}'
    return "", 'JSON object without "url", "address" or "endpoints"'


def _weight(raw: Any) -> tuple[int, str]:
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw)  # kratos-style metadata keeps numbers as strings
    if isinstance(raw, bool) or not isinstance(raw, int):
        return 0, f"weight {raw!r} is not an integer"
    if not 1 <= raw <= _MAX_WEIGHT:
        return 0, f"weight {raw} is not in 1..{_MAX_WEIGHT}"
    return raw, ""


def _address(text: str) -> tuple[str, str]:
    """A canonical "scheme://host:port" (port always written, so two spellings
    of one instance are one target), or ("", reason)."""
    if "://" not in text:
        text = "http://" + text
        bare = True
    else:
        bare = False
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        return "", f"invalid address: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return "", f"scheme {parts.scheme!r} is not http or https"
    if parts.username is not None or parts.path not in ("", "/") or parts.fragment:
        return "", "a target is scheme://host:port, without user, path or fragment"
    host = parts.hostname or ""
    if not host:
        return "", "no host"
    if port is None:
        if bare:
            return "", "no port in host:port"
        port = 443 if scheme == "https" else 80
    if port == 0:
        return "", "port 0"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "", f"invalid IPv6 address {host!r}"
        host = f"[{host}]"
    elif not _HOST.match(host):
        return "", f"invalid host {host!r}"
    # kratos appends "?isSecure=false"; the query says nothing a target needs.
    return f"{scheme}://{host}:{port}", ""


class EtcdSource:
    """The instances under one prefix. Share one EtcdClient between sources."""

    def __init__(self, client: EtcdClient, prefix: str, *, backoff_cap: float = 2.0) -> None:
        self.client = client
        self.prefix = prefix
        self.name = f"etcd {prefix}"
        self._backoff_cap = backoff_cap
        self._instances: dict[str, Found] = {}  # by key, of the values that parse

    async def run(self, report: Report) -> None:
        revision: int | None = None  # what the set reflects; None: read the prefix
        delay = 0.0
        failing = False
        while True:
            try:
                if revision is None:
                    revision = await self._read(report)
                    failing = False
                    delay = 0.0
                watch = self.client.watch_prefix(self.prefix, revision + 1)
                async with contextlib.aclosing(watch) as batches:
                    async for batch in batches:
                        delay = 0.0
                        if not batch:  # (re)established
                            if failing:
                                failing = False
                                report.found(self._current())
                            continue
                        for event in batch:
                            if event.type == "delete":
                                self._instances.pop(event.key, None)
                            else:
                                self._apply_put(report, event.key, event.value)
                        revision = batch[-1].mod_revision
                        report.found(self._current())
            except Compacted:
                revision = None  # changes are gone from history: the prefix as it is now
            except EtcdError as exc:
                # The last set stays in use; the watch resumes from `revision`.
                failing = True
                report.failed(str(exc))
                delay = min(self._backoff_cap, max(0.1, delay * 2))
                await asyncio.sleep(delay * random.uniform(0.75, 1.0))
            except Exception as exc:  # a bug here must not end discovery for good
                failing = True
                revision = None
                report.failed(f"etcd {self.prefix}: unexpected {exc!r}")
                delay = min(self._backoff_cap, max(0.1, delay * 2))
                await asyncio.sleep(delay)

    async def _read(self, report: Report) -> int:
        revision, kvs = await self.client.range_prefix(self.prefix)
        self._instances = {}
        for key, value in kvs:
            self._apply_put(report, key, value)
        report.found(self._current())
        return revision

    def _apply_put(self, report: Report, key: str, value: bytes) -> None:
        found, reason = parse_instance(key, value)
        if found is None:
            # A value that stops parsing takes its instance out: it no longer
            # says where the instance is.
            self._instances.pop(key, None)
            report.skipped(key, reason)
        else:
            self._instances[key] = found

    def _current(self) -> list[Found]:
        """The set in key order; one target per URL (an instance that
        re-registers under a new lease is briefly there twice)."""
        seen: dict[str, Found] = {}
        for key in sorted(self._instances):
            found = self._instances[key]
            seen.setdefault(found.url, found)
        return list(seen.values())

"""`pyproxyd explain`: which route takes a request, and why the others did not."""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

from multidict import CIMultiDict, MultiDict

from .auth.identity import Identity
from .compile import compile_snapshot
from .config_load import Loaded
from .errors import BadRequest
from .routing import normalise_path
from .snapshot import Route


class _KeyView:
    """What a client key reads (headers and cookies), for the headers given to explain."""

    def __init__(self, headers: CIMultiDict[str]) -> None:
        self.headers = headers
        jar: SimpleCookie = SimpleCookie()
        for value in headers.getall("Cookie", ()):
            jar.load(value)
        self.cookies = {name: morsel.value for name, morsel in jar.items()}


def _preflight(headers: CIMultiDict[str]) -> bool:
    return "Origin" in headers and "Access-Control-Request-Method" in headers


def parse_claims(claim_args: tuple[str, ...]) -> dict[str, Any]:
    """--claim NAME=VALUE, repeatable; a name given twice becomes a list claim."""
    claims: dict[str, Any] = {}
    for arg in claim_args:
        name, sep, value = arg.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"bad claim {arg!r}: expected 'name=value'")
        name = name.strip()
        if name in claims:
            prev = claims[name]
            claims[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            claims[name] = value
    return claims


def explain_request(
    loaded: Loaded,
    method: str,
    raw: str,
    header_args: tuple[str, ...],
    ip: str,
    claim_args: tuple[str, ...] = (),
) -> tuple[str, bool]:
    """claim_args stand for the claims of a verified token (explain checks no signature)."""
    try:
        claims = parse_claims(claim_args)
    except ValueError as e:
        return str(e), False
    try:
        snap = compile_snapshot(loaded)
    except (ValueError, OSError) as e:  # e.g. an unreadable jwks_file, a missing HS secret
        return f"{loaded.path}: (compile): {e}", False
    method = method.upper()
    headers: CIMultiDict[str] = CIMultiDict()
    for h in header_args:
        name, sep, value = h.partition(":")
        if not sep:
            return f"bad header {h!r}: expected 'Name: value'", False
        headers.add(name.strip(), value.strip())
    raw_path, sep, query = raw.partition("?")
    try:
        path = normalise_path(raw_path)
    except BadRequest as e:
        return f"{method} {raw}: 400 bad_request: {e.message}", False
    q: MultiDict[str] = MultiDict(parse_qsl(query, keep_blank_values=True))
    result = snap.router.explain(method, path, headers, q, (lambda: claims) if claims else None)
    lines = [f"request: {method} {path}" + (f"?{query}" if sep else "") + f" from {ip}"]
    if path != raw_path:
        lines.append(f"normalised from: {raw_path}")
    if claims:
        lines.append("token claims (assumed verified): " + json.dumps(claims))
    if result.candidates:
        lines.append("candidates (most specific first):")
        for c in result.candidates:
            lines.append(f"  {c[0]:<24} {c[1]:<28} {c[2]}")
    if result.match is None:
        lines.append("no route matched: 404 no_route")
        return "\n".join(lines), False
    route: Route = result.match.rule.target
    upstream_path = route.path_fn(path, result.match.params) + (f"?{query}" if sep else "")
    lines.append(f"route: {route.id}")
    if route.auth is not None:
        lines.append(f"auth: {route.auth.describe()}")
    if route.chain is not None:
        names = " -> ".join(route.chain.names)
        lines.append(f"middlewares: {names} (on_request in this order, on_response reversed)")
        if route.chain.cors is not None and method == "OPTIONS" and _preflight(headers):
            lines.append("CORS preflight: answered by the gateway before auth and rate limits")
    if result.match.params:
        lines.append("captured: " + ", ".join(f"{k}={v}" for k, v in result.match.params.items()))
    if route.upstream is None and route.split is None:
        lines.append("upstream: none (a middleware answers)")
    elif route.upstream is not None:
        targets = ", ".join(t.label for t in route.upstream.targets)
        source = next(
            (
                obj.source.name
                for key, obj in snap.state.items()
                if isinstance(key, tuple) and key[:2] == ("discovery", route.upstream.name)
            ),
            None,
        )
        if source is not None:  # explain runs no source: its targets are not known here
            targets = f"discovered: {source}"
        lines.append(f"upstream: {route.upstream.name} ({targets})")
    elif route.split is not None:
        split = route.split
        sides = ", ".join(f"{up.name} {share:.1f}%" for up, share in split.shares())
        how = f"sticky on {', '.join(split.key_specs)}" if split.key_specs else "random"
        lines.append(f"upstream: split ({how}): {sides}")
        identity = Identity(claims=claims) if claims else None
        words, _, side = split.explain(_KeyView(headers), identity, ip)
        lines.append(f"split: {words}" + (f" -> {side.name}" if side is not None else ""))
    if route.upstream is not None or route.split is not None:
        lines.append(f"path sent upstream: {upstream_path}")
        lines.append(
            "host sent upstream: "
            + ("client's Host" if route.preserve_host else "target's host:port")
        )
    return "\n".join(lines), True

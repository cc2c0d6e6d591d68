"""Unit tests of the middleware chain's pure parts, and its config checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from pyproxyd.middleware.views import Pairs, RequestView


def request_view(
    *,
    method: str = "GET",
    path: str = "/api/items",
    query: str = "",
    host: str = "gw.example.com",
    client_ip: str = "203.0.113.7",
    route: str = "api",
    request_id: str = "req-1",
    claims: Mapping[str, Any] | None = None,
    client: Mapping[str, str] | None = None,
    pairs: Pairs | None = None,
    depth: int = 0,
) -> RequestView:
    """A request view as prepare.py builds one, with test defaults.

    `client` is the client's own headers (case-insensitive, as the
    frontend's mapping is); `pairs` the headers going upstream."""
    view = RequestView(
        method, path, query, host, client_ip, route, request_id, claims, None, depth,
        CIMultiDictProxy(CIMultiDict(client or {})),
    )  # fmt: skip
    view.pairs = pairs if pairs is not None else []
    return view

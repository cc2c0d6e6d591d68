"""Compiled by mypyc (pyproxyd/compiled.py). Header values and redirect targets
with placeholders, parsed once at compile time into parts and rendered per
request from the request view."""

from __future__ import annotations

import string
from collections.abc import Callable

from .views import RequestView

Part = Callable[[RequestView], str]


def _claim(name: str) -> Part:
    def part(view: RequestView) -> str:
        value = (view.claims or {}).get(name)
        if value is None:
            return ""
        if isinstance(value, list | tuple):
            return ",".join(str(v) for v in value)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return part


def _header(name: str) -> Part:
    def part(view: RequestView) -> str:
        return view.client.get(name) or ""

    return part


_FIELDS: dict[str, Part] = {
    "path": lambda v: v.target,
    "route": lambda v: v.route,
    "request_id": lambda v: v.request_id,
    "client_ip": lambda v: v.client_ip,
    "method": lambda v: v.method,
    "host": lambda v: v.host,
    "query": lambda v: v.query,
}


class Template:
    """A parsed template: `constant` is its value when it has no placeholder."""

    __slots__ = ("constant", "parts")

    def __init__(self, text: str) -> None:
        parts: list[str | Part] = []
        for literal, field, spec, _ in string.Formatter().parse(text):
            if literal:
                parts.append(literal)
            if field is None:
                continue
            if field == "claim":  # {claim:NAME}: the name parses as a format spec
                parts.append(_claim(spec or ""))
            elif field == "header":
                parts.append(_header(spec or ""))
            else:
                parts.append(_FIELDS[field])  # config validation allowed only these
        self.parts = tuple(parts)
        self.constant = (
            "".join(p for p in parts if isinstance(p, str))
            if all(isinstance(p, str) for p in parts)
            else None
        )

    def render(self, view: RequestView) -> str:
        if self.constant is not None:
            return self.constant
        return "".join(p if isinstance(p, str) else p(view) for p in self.parts)


def header_value(text: str) -> bytes:
    """A rendered value as a header value: latin-1, control characters
    (a claim can hold anything, CR LF included) replaced by spaces."""
    if text.isprintable():  # the common case: nothing to replace
        return text.encode("latin-1", "replace")
    clean = "".join(c if (c >= " " and c != "\x7f") or c == "\t" else " " for c in text)
    return clean.encode("latin-1", "replace")

"""The `python` middleware of the benchmarks: it does nothing, so what it
costs is the chain's own price (the views, two calls)."""

from __future__ import annotations

from typing import Any


class Noop:
    def on_request(self, req: Any) -> None:
        return None

    def on_response(self, req: Any, resp: Any) -> None:
        return None


def make(options: dict[str, Any]) -> Noop:
    return Noop()

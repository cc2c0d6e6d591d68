"""Config -> one Chain per route, for compile.py: `server.middlewares`
outermost, then the route's own list. A middleware named by several routes
is built once per compile and shared by their chains."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .builtins import headers_step, redirect_step, respond_step
from .chain import Chain, Step
from .cors import Cors, cors_step
from .models import (
    CorsMiddleware,
    HeadersMiddleware,
    PythonMiddleware,
    RedirectMiddleware,
    RespondMiddleware,
)
from .python import python_step

DEFAULT_TIMEOUT = 30.0  # a hook's deadline on a route without a timeout


class Builder:
    """Builds each named middleware once, on first use."""

    def __init__(
        self, tables: Mapping[str, Any], folders: list[Path], drop: frozenset[bytes]
    ) -> None:
        self.tables = tables
        self.folders = folders
        self.drop = drop  # request headers a middleware's on_request cannot send upstream
        self.built: dict[str, tuple[Step, Cors | None]] = {}

    def step(self, name: str) -> tuple[Step, Cors | None]:
        done = self.built.get(name)
        if done is None:
            done = self.built[name] = self._build(name, self.tables[name])
        return done

    def _build(self, name: str, cfg: Any) -> tuple[Step, Cors | None]:
        if isinstance(cfg, CorsMiddleware):
            return cors_step(name, cfg)
        if isinstance(cfg, HeadersMiddleware):
            return headers_step(name, cfg, self.drop), None
        if isinstance(cfg, RedirectMiddleware):
            return redirect_step(name, cfg), None
        if isinstance(cfg, RespondMiddleware):
            return respond_step(name, cfg), None
        assert isinstance(cfg, PythonMiddleware)
        return python_step(name, cfg, self.folders), None

    def chain(self, names: list[str], timeout: float | None) -> Chain | None:
        if not names:
            return None  # a route without middlewares pays nothing
        built = [self.step(n) for n in names]
        cors = next((c for _, c in built if c is not None), None)
        return Chain(
            tuple(s for s, _ in built),
            DEFAULT_TIMEOUT if timeout is None else timeout,
            cors,
            self.drop,
        )

"""Structured logs: one JSON object a line, and a cheap access log.

aiohttp's own access logger costs more than half of a small request's
throughput (field notes), so it is off and `AccessLog` writes our line.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from ..proxy import RequestInfo

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip


def _dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


def configure(fmt: str = "json", level: str = "info", file: str | None = None) -> IO[str]:
    """Set up structlog once per process; returns the stream logs go to."""
    stream: IO[str] = open(file, "a", buffering=1) if file else sys.stdout  # noqa: SIM115
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Keep third-party stdlib logging (asyncio, aiohttp) quiet and off stdout's JSON.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return stream


def get_logger(name: str = "pyproxyd") -> Any:
    return structlog.get_logger(name)


class AccessLog:
    """One `request` event a request, with the fields of behaviour.md."""

    __slots__ = ("_log",)

    def __init__(self) -> None:
        self._log = structlog.get_logger("pyproxyd.access")

    def request(self, method: str, ex: RequestInfo, duration_ms: float) -> None:
        self._log.info(
            "request",
            request_id=ex.request_id,
            trace_id=ex.trace_id,
            route=ex.route or None,
            upstream=ex.upstream or None,
            method=method,
            path=ex.path,
            status=ex.status,
            duration_ms=round(duration_ms, 3),
            client_ip=ex.client_ip,
        )

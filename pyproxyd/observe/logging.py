"""Compiled by mypyc (pyproxyd/compiled.py).

Structured logs: one JSON object a line, and a cheap access log.

aiohttp's own access logger costs more than half of a small request's
throughput (measured on a hello-world route), so it is off and `AccessLog`
writes our line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import IO, TYPE_CHECKING, Any, TextIO, cast

import structlog

if TYPE_CHECKING:
    from ..proxy.record import RequestInfo

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip


def _dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


_output: dict[str, Any] = {"stream": sys.stdout, "json": True, "level": logging.INFO}


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
        logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, stream)),
        cache_logger_on_first_use=False,
    )
    _output.update(stream=stream, json=fmt == "json", level=_LEVELS[level])
    # Keep third-party stdlib logging (asyncio, aiohttp) quiet and off stdout's JSON.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return stream


def get_logger(name: str = "pyproxyd") -> Any:
    return structlog.get_logger(name)


class AccessLog:
    """One `request` event a request, with the fields of docs/behaviour.md.

    The JSON line is the one structlog renders for any other event (same keys,
    same timestamp format), but built directly: structlog's processor chain
    and a datetime per line cost a third of a small request's CPU. Lines are
    batched and written at most every FLUSH_EVERY seconds, like nginx's
    `access_log ... buffer=`; `flush()` runs at shutdown.
    """

    FLUSH_EVERY = 0.05
    MAX_BUFFER = 256

    __slots__ = ("_buf", "_handle", "_log", "_sec", "_stamp", "_stream")

    def __init__(self) -> None:
        self._log = structlog.get_logger("pyproxyd.access")
        self._stream: IO[str] | None = _output["stream"] if _output["json"] else None
        self._buf: list[str] = []
        self._handle: asyncio.TimerHandle | None = None
        self._sec = -1
        self._stamp = ""

    def request(self, method: str, ex: RequestInfo, duration_ms: float) -> None:
        if _output["level"] > logging.INFO:
            return
        if self._stream is None:
            fields = _fields(method, ex, duration_ms)
            del fields["event"]
            self._log.info("request", **fields)
            return
        now = time.time()
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        # The same object json.dumps(_fields(...)) gives, written out: a third
        # of the cost. Strings that may carry a quote or non-ASCII are escaped.
        # No format spec in the f-string: with one, mypyc turns the whole
        # string into a str.format() call that parses the template on every
        # request (2 us of a 27 us request). The two numbers are made of
        # integers instead, which compiled code does natively (a third of
        # what "%.3f" and "%06d" cost).
        thousandths = int(duration_ms * 1000.0 + 0.5)
        duration = f"{thousandths // 1000}.{str(thousandths % 1000 + 1000)[1:]}"
        micros = str(int((now - sec) * 1e6) + 1_000_000)[1:]
        self._buf.append(
            f'{{"event":"request","request_id":{_esc(ex.request_id)},'
            f'"trace_id":"{ex.trace_id}","route":{_name(ex.route)},'
            f'"upstream":{_name(ex.upstream)},"method":"{method}",'
            f'"path":{_esc(ex.path)},"status":{ex.status},'
            f'"duration_ms":{duration},"client_ip":{_esc(ex.client_ip)},'
            f'"consumer":{_name(ex.consumer)},"protocol":"HTTP/{ex.version}",'
            f'{_grpc(ex)}"level":"info",'
            f'"timestamp":"{self._stamp}.{micros}Z"}}'
        )
        if len(self._buf) >= self.MAX_BUFFER:
            self.flush()
        elif self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._buf and self._stream is not None:
            self._buf.append("")
            self._stream.write("\n".join(self._buf))
            self._buf.clear()
            self._stream.flush()


_esc = json.encoder.encode_basestring_ascii  # the C escaper json.dumps uses


_names: dict[str, str] = {"": "null"}


def _name(value: str) -> str:
    """A route, upstream or consumer name as JSON: few distinct ones, escaped once.
    (trace_id is hex and the method a token llhttp checked: written as they are.)"""
    escaped = _names.get(value)
    if escaped is None:
        escaped = _esc(value)
        if len(_names) < 10_000:
            _names[value] = escaped
    return escaped


def _fields(method: str, ex: RequestInfo, duration_ms: float) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "event": "request",
        "request_id": ex.request_id,
        "trace_id": ex.trace_id,
        "route": ex.route or None,
        "upstream": ex.upstream or None,
        "method": method,
        "path": ex.path,
        "status": ex.status,
        "duration_ms": round(duration_ms, 3),
        "client_ip": ex.client_ip,
        "consumer": ex.consumer or None,
        "protocol": "HTTP/" + ex.version,
    }
    if ex.grpc:
        fields["grpc_status"] = ex.grpc_status if ex.grpc_status >= 0 else None
    return fields


def _grpc(ex: RequestInfo) -> str:
    """The grpc_status field with its comma, on a gRPC call only."""
    if not ex.grpc:
        return ""
    return f'"grpc_status":{ex.grpc_status if ex.grpc_status >= 0 else "null"},'

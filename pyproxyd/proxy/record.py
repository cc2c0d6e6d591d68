"""Compiled by mypyc (pyproxyd/compiled.py). The facts of one request that
the pipeline gathers and the access log and metrics read.

It imports nothing of the gateway: observe/ reads it without depending on
the pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: nothing of the gateway is imported at run time
    from ..middleware.views import RequestView


class RequestInfo:
    """Per-request facts the log line and the forwarder share."""

    __slots__ = (
        "call",
        "client_ip",
        "consumer",
        "grpc",
        "grpc_status",
        "limits",
        "parent",
        "path",
        "peer",
        "query",
        "request_id",
        "route",
        "started",
        "status",
        "target_key",
        "trace_id",
        "upstream",
        "version",
        "xff",
    )

    def __init__(self, started: float = 0.0) -> None:
        self.started = started  # loop time at arrival: the request's one clock read
        self.request_id = ""
        self.trace_id = ""
        self.route = ""
        self.upstream = ""
        self.path = ""
        self.client_ip = ""
        self.consumer = ""  # the consumer the request's credential or X-Client-ID named
        self.limits = b""  # rate-limit response header lines, rendered
        self.status = 0
        self.version = "1.1"  # the client's HTTP version: "1.0", "1.1", "2"
        self.grpc = False  # a gRPC request: the gateway's own errors are gRPC statuses
        self.grpc_status = -1  # the call's gRPC status, once known
        self.target_key: int | None = None  # hashed client key, for ip_hash / hash:<key>
        # What the upstream request head is built from:
        self.peer = ""  # the client's socket address
        self.xff: tuple[str, ...] = ()  # its X-Forwarded-For, when it sent one
        self.parent = ""  # the traceparent sent upstream
        self.query: str | None = None  # the query string, when the target had a "?"
        # The request as the route's middlewares see it, their chain with it
        # (None on a route without middlewares).
        self.call: RequestView | None = None

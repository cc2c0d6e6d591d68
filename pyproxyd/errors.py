"""One error hierarchy for everything the gateway answers itself.

Each error carries its HTTP status and the `error` code of docs/behaviour.md;
`render()` is the only place that turns one into a response body.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote


class ClientGone(ConnectionError):
    """The client connection closed while the gateway was still talking to it.

    Not a GatewayError: nobody is left to answer."""


class GatewayError(Exception):
    status = 500
    code = "internal_error"
    default_message = "internal gateway error"
    # The message names things the client must not learn (an upstream's
    # address, an errno): it goes to the log as `detail`, and the client
    # gets default_message.
    internal = False

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        detail = message or self.default_message
        super().__init__(detail)
        self.detail = detail
        self.message = self.default_message if self.internal else detail
        self.headers = headers or {}


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"
    default_message = "malformed request"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"
    default_message = "authentication required"


def _challenge(scheme: str, **params: str) -> str:
    """An RFC 7235 challenge. The values are the gateway's own fixed phrases;
    quotes and backslashes are dropped anyway, so none can break the syntax."""
    if not params:
        return scheme
    clean = {k: "".join(c for c in v if c not in '"\\') for k, v in params.items()}
    return scheme + " " + ", ".join(f'{k}="{v}"' for k, v in clean.items())


class MissingCredentials(Unauthorized):
    """No credential at all: the challenge names the scheme, with no error code
    (RFC 6750 section 3.1)."""

    def __init__(self, message: str, *, scheme: str = "Bearer", **params: str):
        super().__init__(message, headers={"WWW-Authenticate": _challenge(scheme, **params)})


class InvalidToken(Unauthorized):
    """A bearer token that is malformed, expired, wrongly signed, ...

    `description` is one of a few fixed phrases: it never echoes the token,
    a key or anything else the client or the IdP sent.
    """

    refresh: Any = None  # see UnknownKey

    def __init__(self, description: str):
        super().__init__(
            f"invalid token: {description}",
            headers={
                "WWW-Authenticate": _challenge(
                    "Bearer", error="invalid_token", error_description=description
                )
            },
        )
        self.description = description


class UnknownKey(InvalidToken):
    """No key of the token's kid and algorithm. `refresh`, when set, is an
    async callable that refetches the key set once; the caller may retry after."""

    def __init__(self, refresh: Callable[[], Awaitable[None]] | None = None):
        super().__init__("unknown signing key")
        self.refresh = refresh


class InvalidAPIKey(Unauthorized):
    def __init__(self, message: str, header: str):
        super().__init__(message, headers={"WWW-Authenticate": _challenge("ApiKey", header=header)})


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"
    default_message = "access denied"


class InsufficientRole(Forbidden):
    def __init__(self) -> None:
        super().__init__(
            "the token has none of the roles this route requires",
            headers={
                "WWW-Authenticate": _challenge(
                    "Bearer", error="insufficient_scope", error_description="missing role"
                )
            },
        )


class NoRoute(GatewayError):
    status = 404
    code = "no_route"
    default_message = "no route matches this request"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"
    default_message = "request body too large"


class RequestTimeout(GatewayError):
    status = 408
    code = "request_timeout"
    default_message = "the request body did not arrive in time"


class NotImplementedCoding(GatewayError):
    """A transfer coding the gateway cannot pass on (RFC 9112 6.1: 501)."""

    status = 501
    code = "not_implemented"
    default_message = "transfer coding not implemented"


class HeadersTooLarge(GatewayError):
    status = 431
    code = "request_header_fields_too_large"
    default_message = "request header fields too large"


class RateLimited(GatewayError):
    status = 429
    code = "rate_limited"
    default_message = "rate limit exceeded"


class BadGateway(GatewayError):
    status = 502
    code = "bad_gateway"
    default_message = "the upstream failed to answer"
    internal = True
    # Set where raised: False means no byte of the response arrived, so an
    # idempotent request may be tried again on another target.
    response_started = False


class GrpcOverHttp1(GatewayError):
    """A gRPC call to a route whose upstream speaks HTTP/1.1 (no trailers,
    no streams both ways): never sent, answered 14 UNAVAILABLE."""

    status = 502
    code = "bad_gateway"
    default_message = "the route's upstream speaks HTTP/1.1, which cannot carry a gRPC call"


class UpstreamConnectError(BadGateway):
    """The connection to a target could not be made: the request was never sent."""

    default_message = "could not connect to upstream"


class CircuitOpen(GatewayError):
    status = 503
    code = "circuit_open"
    default_message = "upstream circuit breaker is open"


class NoHealthyTarget(GatewayError):
    status = 503
    code = "no_healthy_target"
    default_message = "no healthy upstream target"


class RateLimiterUnavailable(GatewayError):
    status = 503
    code = "rate_limiter_unavailable"
    default_message = "rate limiter unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"
    default_message = "the upstream did not answer in time"
    internal = True
    response_started = False


def render(err: GatewayError, request_id: str) -> bytes:
    """The JSON body of docs/behaviour.md for an error the gateway answers itself."""
    return json.dumps(
        {
            "error": err.code,
            "message": err.message,
            "status": err.status,
            "request_id": request_id,
        },
        separators=(",", ":"),
    ).encode()


# The gRPC status of each JSON status (docs/behaviour.md, "HTTP/2 and gRPC");
# the rest as gRPC's own HTTP-to-gRPC mapping would have them.
_GRPC_STATUS = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 12,  # UNIMPLEMENTED
    405: 12,
    408: 4,  # DEADLINE_EXCEEDED
    413: 8,  # RESOURCE_EXHAUSTED
    429: 8,
    431: 8,
    500: 13,  # INTERNAL
    501: 12,
    502: 14,  # UNAVAILABLE
    503: 14,
    504: 4,
}
GRPC_UNKNOWN = 2


def grpc_status(status: int) -> int:
    """The gRPC status code standing for an HTTP status of the gateway's own."""
    return _GRPC_STATUS.get(status, GRPC_UNKNOWN)


def render_grpc(err: GatewayError) -> list[tuple[bytes, bytes]]:
    """The headers of a trailers-only gRPC answer (HTTP 200, no body) for an
    error the gateway answers itself; the message is the JSON one's,
    percent-encoded as the gRPC protocol wants."""
    return [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"%d" % grpc_status(err.status)),
        (b"grpc-message", quote(err.message.encode(), safe=_GRPC_SAFE).encode("ascii")),
    ]


# grpc-message: printable ASCII except "%" travels as is (gRPC's PROTOCOL-HTTP2.md).
_GRPC_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")

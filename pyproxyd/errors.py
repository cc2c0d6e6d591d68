"""One error hierarchy for everything the gateway answers itself.

Each error carries its HTTP status and the `error` code of behaviour.md;
`render()` is the only place that turns one into a response body.
"""

from __future__ import annotations

import json


class GatewayError(Exception):
    status = 500
    code = "internal_error"
    default_message = "internal gateway error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.headers = headers or {}


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"
    default_message = "malformed request"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"
    default_message = "authentication required"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"
    default_message = "access denied"


class NoRoute(GatewayError):
    status = 404
    code = "no_route"
    default_message = "no route matches this request"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"
    default_message = "request body too large"


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
    default_message = "upstream connection failed"
    # Set where raised: False means no byte of the response arrived, so an
    # idempotent request may be tried again on another target.
    response_started = False


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
    default_message = "upstream timed out"
    response_started = False


def render(err: GatewayError, request_id: str) -> bytes:
    """The JSON body of behaviour.md for an error the gateway answers itself."""
    return json.dumps(
        {
            "error": err.code,
            "message": err.message,
            "status": err.status,
            "request_id": request_id,
        },
        separators=(",", ":"),
    ).encode()

"""Pydantic models of the `[middlewares.*]` tables: inert data, nothing else.

Only pyproxyd/compile.py (through middleware/build.py) reads them.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..units import Duration

HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token
# Placeholders of header values and redirect targets.
PLACEHOLDERS = ("path", "route", "request_id", "client_ip", "method", "host", "query")
PREFIXED = ("claim", "header")
# The gateway frames every message and manages these itself: a middleware
# that set them could desynchronise client and upstream.
MANAGED = frozenset(
    {
        "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
        "te", "trailer", "upgrade", "host",
    }
)  # fmt: skip
ORIGIN_RE = re.compile(r"^(https?)://(\*\.)?[A-Za-z0-9.\-]+(:[0-9]{1,5})?$")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def check_template(value: str) -> str:
    """`{name}` and `{claim:X}`/`{header:X}` placeholders; `{{` and `}}` are braces."""
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as e:
        raise ValueError(f"{value!r}: {e}") from None
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field in PREFIXED and spec and not conversion:  # {header:X}: X parses as a spec
            continue
        if spec or conversion or field not in PLACEHOLDERS:
            known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            raise ValueError(
                f"unknown placeholder {{{field}}} in {value!r}: expected {known}, "
                "{claim:NAME} or {header:NAME}"
            )
    return value


def _header_names(names: list[str] | dict[str, str]) -> None:
    for name in names:
        if not HEADER_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if name.lower() in MANAGED:
            raise ValueError(f"{name!r} is a header the gateway manages itself")


class HeaderOps(_Model):
    """Header changes in one direction, applied remove, then set, then add."""

    set: dict[str, str] = Field(
        default_factory=dict, description="headers replaced (or added when absent), templated"
    )
    add: dict[str, str] = Field(
        default_factory=dict, description="headers appended beside any of the same name, templated"
    )
    remove: list[str] = Field(default_factory=list, description="headers removed")

    @field_validator("set", "add")
    @classmethod
    def _values(cls, v: dict[str, str]) -> dict[str, str]:
        _header_names(v)
        for name, value in v.items():
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"{name}: a header value cannot hold CR, LF or NUL")
            check_template(value)
        return v

    @field_validator("remove")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        _header_names(v)
        return v


class HeadersMiddleware(_Model):
    """Set, add and remove headers on the way to the upstream and on the way back."""

    type: Literal["headers"] = Field(description='"headers"')
    request: HeaderOps = Field(
        default_factory=HeaderOps, description="changes to the request sent upstream"
    )
    response: HeaderOps = Field(
        default_factory=HeaderOps, description="changes to the response sent to the client"
    )


class CorsMiddleware(_Model):
    """Cross-origin resource sharing (the Fetch standard's CORS protocol)."""

    type: Literal["cors"] = Field(description='"cors"')
    allow_origins: list[str] = Field(
        min_length=1,
        description='origins allowed: "https://app.example.com", "https://*.example.org" '
        '(any subdomain, at any depth) or "*"',
    )
    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "HEAD", "POST"],
        min_length=1,
        description="methods a preflight allows",
    )
    allow_headers: list[str] = Field(
        default_factory=list,
        description='request headers a preflight allows ("*": whatever the preflight asks)',
    )
    expose_headers: list[str] = Field(
        default_factory=list, description="response headers the browser lets scripts read"
    )
    allow_credentials: bool = Field(
        False, description="allow cookies and Authorization (the origin is then echoed, never *)"
    )
    max_age: Duration | None = Field(
        None, description="how long a browser may cache a preflight (Access-Control-Max-Age)"
    )

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if origin != "*" and not ORIGIN_RE.match(origin):
                raise ValueError(
                    f"invalid origin {origin!r}: expected scheme://host[:port], "
                    "scheme://*.domain or *"
                )
        return v

    @field_validator("allow_methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        for m in v:
            if not HEADER_NAME_RE.match(m):
                raise ValueError(f"{m!r} is not a method")
        return [m.upper() for m in v]

    @field_validator("allow_headers", "expose_headers")
    @classmethod
    def _headers(cls, v: list[str]) -> list[str]:
        for name in v:
            if name != "*" and not HEADER_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
        return v


class RedirectMiddleware(_Model):
    """Answer with a redirect; the request's query string is appended."""

    type: Literal["redirect"] = Field(description='"redirect"')
    to: str = Field(
        description="the Location, templated: {path} is the path after the route's strip_prefix"
    )
    status: Literal[301, 302, 303, 307, 308] = Field(302, description="301, 302, 303, 307 or 308")

    @field_validator("to")
    @classmethod
    def _to(cls, v: str) -> str:
        if any(c in v for c in "\r\n\0"):
            raise ValueError("a Location cannot hold CR, LF or NUL")
        return check_template(v)


class RespondMiddleware(_Model):
    """Answer without an upstream."""

    type: Literal["respond"] = Field(description='"respond"')
    status: int = Field(200, ge=200, le=599, description="the status code")
    body: str = Field("", description="the body, sent as UTF-8")
    content_type: str = Field(
        "text/plain; charset=utf-8", description="the Content-Type of a non-empty body"
    )
    headers: dict[str, str] = Field(default_factory=dict, description="more response headers")

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        _header_names(v)
        for name, value in v.items():
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"{name}: a header value cannot hold CR, LF or NUL")
        return v


class PythonMiddleware(_Model):
    """Your own code: a factory called once per compile with `options`."""

    type: Literal["python"] = Field(description='"python"')
    factory: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*$",
        description='"module:callable", the module found on server.python_path',
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="passed to the factory as a dict"
    )


Middleware = Annotated[
    HeadersMiddleware | CorsMiddleware | RedirectMiddleware | RespondMiddleware | PythonMiddleware,
    Field(discriminator="type"),
]
# Types whose middleware always answers: a route with one needs no upstream.
ANSWERING = frozenset({"redirect", "respond"})

"""The spec's value units: durations, sizes and rates.

Parsed once when the config is loaded; the runtime only sees floats and ints.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, NamedTuple

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_FACTOR = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|K|M|G|k|m|g|KB|MB|GB)?\s*$")
_SIZE_FACTOR = {
    None: 1,
    "B": 1,
    "K": 1024,
    "k": 1024,
    "KiB": 1024,
    "KB": 1000,
    "M": 1024**2,
    "m": 1024**2,
    "MiB": 1024**2,
    "MB": 1000**2,
    "G": 1024**3,
    "g": 1024**3,
    "GiB": 1024**3,
    "GB": 1000**3,
}

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(ms|s|m|h|d)\s*$")


def parse_duration(value: Any) -> float:
    """'250ms' -> 0.25; '2s', '1m', '1h'; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '250ms', '2s', '1m'")
    if isinstance(value, int | float):
        if not math.isfinite(value):  # TOML has inf and nan
            raise ValueError(f"invalid duration {value!r}: must be a finite number of seconds")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_FACTOR[m.group(2)]
    raise ValueError(f"invalid duration {value!r}: expected e.g. '250ms', '2s', '1m', '1h'")


def parse_size(value: Any) -> int:
    """'512KiB' -> 524288; '10MiB'; a bare number is bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '512KiB' or '10MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_FACTOR[m.group(2)]
    raise ValueError(f"invalid size {value!r}: expected e.g. '512KiB', '10MiB' or a byte count")


class Rate(NamedTuple):
    """`amount` events per `period` seconds."""

    amount: float
    period: float

    @property
    def per_second(self) -> float:
        return self.amount / self.period

    def __str__(self) -> str:
        return f"{self.amount:g}/{self.period:g}s"


def parse_rate(value: Any) -> Rate:
    """'10/s', '600/m', '5000/h' (also '10/5s')."""
    if isinstance(value, Rate):
        return value
    if isinstance(value, str):
        m = _RATE.match(value)
        if m:
            count = float(m.group(1))
            mult = float(m.group(2)) if m.group(2) else 1.0
            period = mult * _DURATION_FACTOR[m.group(3)]
            if count <= 0 or period <= 0:
                raise ValueError(f"invalid rate {value!r}: must be positive")
            return Rate(count, period)
    raise ValueError(f"invalid rate {value!r}: expected e.g. '10/s', '600/m', '5000/h'")


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda v: f"{v:g}s", return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d)?$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "duration: '250ms', '2s', '1m', '1h' (a bare number is seconds)",
        }
    ),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(B|KiB|MiB|GiB|K|M|G|k|m|g|KB|MB|GB)?$"},
                {"type": "integer", "minimum": 0},
            ],
            "description": "size: '512KiB', '10MiB' (a bare number is bytes)",
        }
    ),
]
RateValue = Annotated[
    Rate,
    BeforeValidator(parse_rate),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d+(\.\d+)?/\d*(ms|s|m|h|d)$",
            "description": "rate: '10/s', '600/m', '5000/h'",
        }
    ),
]

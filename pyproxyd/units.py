"""The spec's value units: durations, sizes and rates.

Parsed once when the config is loaded; the runtime only sees floats and ints.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, NamedTuple

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

# One pattern per unit, used as it is by the parser here and by the JSON Schema
# (`pyproxyd schema`), so an editor checking the schema and `validate` agree.
# Written in the subset Python's re and ECMA-262 (JSON Schema's dialect) read
# alike: [0-9] not \d (Python's matches any Unicode digit), [ \t] not \s, no
# named groups. Python's `$` also matches before a final newline; `(?!\n)`
# stops that (in ECMA-262 it holds anyway). Matched with search(), as
# JSON Schema validators apply `pattern`.
_SP = r"[ \t]*"
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
# A rate's count and multiplier cannot be zero: written in the pattern, so the
# schema refuses "0/s" and "10/0s" too.
_POSITIVE = r"(?:[0-9]*[1-9][0-9]*(?:\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)"
_END = r"$(?!\n)"
DURATION_PATTERN = rf"^{_SP}({_NUMBER}){_SP}(ms|s|m|h|d)?{_SP}{_END}"
SIZE_PATTERN = rf"^{_SP}([0-9]+){_SP}(B|KiB|MiB|GiB|K|M|G|k|m|g|KB|MB|GB)?{_SP}{_END}"
RATE_PATTERN = rf"^{_SP}({_POSITIVE}){_SP}/{_SP}([0-9]*[1-9][0-9]*)?{_SP}(ms|s|m|h|d){_SP}{_END}"

_DURATION = re.compile(DURATION_PATTERN)
_DURATION_FACTOR = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_SIZE = re.compile(SIZE_PATTERN)
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

_RATE = re.compile(RATE_PATTERN)


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
        m = _DURATION.search(value)
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
        m = _SIZE.search(value)
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
        m = _RATE.search(value)
        if m:
            count = float(m.group(1))
            mult = float(m.group(2)) if m.group(2) else 1.0
            return Rate(count, mult * _DURATION_FACTOR[m.group(3)])
    raise ValueError(
        f"invalid rate {value!r}: expected a positive count per period, e.g. '10/s', "
        "'600/m', '5000/h'"
    )


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda v: f"{v:g}s", return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
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
                {"type": "string", "pattern": SIZE_PATTERN},
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
            "pattern": RATE_PATTERN,
            "description": "rate: '10/s', '600/m', '5000/h'",
        }
    ),
]

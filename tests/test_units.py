"""Durations, sizes and rates: `validate` and the JSON Schema accept the same strings.

The schema's patterns are read from what `pyproxyd schema` prints and applied
as JSON Schema validators apply `pattern` (a search); `validate` is the
parser the config models run. jsonschema is not a test dependency.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pyproxyd.config import Config
from pyproxyd.config_load import ConfigError, parse
from pyproxyd.units import parse_duration, parse_rate, parse_size

DURATIONS_OK = ["30s", "30 s", " 30s ", "30\ts", "250ms", "250 ms", "1.5m", "2h", "1d", "10",
                "0", "0.5", "007s"]  # fmt: skip
DURATIONS_BAD = ["30 sec", "-1s", "1e3s", "", " ", "s", "1.s", ".5s", "\u0663s", "30s\n",
                 "30 S", "1,5s", "30ss", "inf"]  # fmt: skip
SIZES_OK = ["512KiB", "512 KiB", "10MiB", "1G", "1g", "2GB", "0", "1024", " 8 k "]
SIZES_BAD = ["1.5MiB", "10 MiBs", "-1", "1 kb", "\u0663", "KiB", "1MiB\n", ""]
RATES_OK = ["10/s", "10 / s", "600/m", "5000/h", "10/5s", "10/5 s", "0.5/s", "1/ms", "1/1d",
            "00.10/s", "1/01s"]  # fmt: skip
RATES_BAD = ["0/s", "0.0/s", "10/0s", "/s", "10/", "10s", "1/1.5s", "-1/s", "10/s\n",
             "10 per s", "1e2/s"]  # fmt: skip


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


# A form every version of each unit's pattern accepts: what tells them apart.
_SAMPLE = {"duration": "250ms", "size": "512KiB", "rate": "10/s"}


def schema_patterns(kind: str) -> set[str]:
    """The string patterns of every `kind` ("duration", "size", "rate") in the schema
    (fields' own descriptions replace the unit's, so they are told by what they accept)."""
    out = set()
    for node in _walk(Config.model_json_schema()):
        pattern = node.get("pattern")
        if node.get("type") == "string" and pattern and re.search(pattern, _SAMPLE[kind]):
            out.add(pattern)
    return out


def accepts(parse_value: Callable[[Any], object], value: str) -> bool:
    try:
        parse_value(value)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    ("kind", "parser", "good", "bad"),
    [
        ("duration", parse_duration, DURATIONS_OK, DURATIONS_BAD),
        ("size", parse_size, SIZES_OK, SIZES_BAD),
        ("rate", parse_rate, RATES_OK, RATES_BAD),
    ],
)
def test_schema_and_validate_agree(
    kind: str, parser: Callable[[Any], object], good: list[str], bad: list[str]
) -> None:
    patterns = schema_patterns(kind)
    assert len(patterns) == 1, patterns  # one pattern per unit, wherever it is used
    (pattern,) = patterns
    for value in good:
        assert accepts(parser, value), f"validate refuses {value!r}"
        assert re.search(pattern, value), f"the schema refuses {value!r}"
    for value in bad:
        assert not accepts(parser, value), f"validate accepts {value!r}"
        assert not re.search(pattern, value), f"the schema accepts {value!r}"


def test_the_models_read_spaced_units() -> None:
    cfg = parse(
        """
[server]
graceful_timeout = "30 s"
client_max_body_size = "10 MiB"
[rate_limits.rl]
algorithm = "token_bucket"
key = "ip"
rate = "10 / s"
"""
    )
    assert cfg.server.graceful_timeout == 30.0
    assert cfg.server.client_max_body_size == 10 * 1024**2
    assert cfg.rate_limits["rl"].rate is not None
    assert cfg.rate_limits["rl"].rate.per_second == 10.0
    with pytest.raises(ConfigError, match=r"rate_limits\.rl\.rate: invalid rate '0/s'"):
        parse('[rate_limits.rl]\nalgorithm = "token_bucket"\nkey = "ip"\nrate = "0/s"\n')

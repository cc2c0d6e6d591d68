"""How frontend/http2/stream.py reads an answer's fields: field_name() (kept
per name) and raw_fields() give what lower() and partition/strip gave."""

from __future__ import annotations

import random

from pyproxyd.frontend.http2 import stream
from pyproxyd.frontend.http2.stream import CONNECTION_SPECIFIC, field_name, raw_fields

NAMES = [
    *(b"Content-Type", b"content-type", b"X-Request-ID", b"Content-Length", b"DATE", b"date"),
    *(b"Connection", b"Transfer-Encoding", b"TE", b"te", b"Keep-Alive", b"grpc-status"),
    *(b"", b"X-" + b"N" * 70, b"\xc3\x89t\xc3\xa9"),
]
VALUES = [b"", b"v", b" v", b"v ", b"\tv\t", b"a b", b"a:b", b"\x0bv\x0c", b"0"]


def reference_kind(name: bytes) -> tuple[bytes, int]:
    lname = name.lower()
    if lname in CONNECTION_SPECIFIC:
        return lname, stream._SPECIFIC
    if lname == b"content-length":
        return lname, stream._LENGTH
    if lname == b"date":
        return lname, stream._DATE
    return lname, stream._KEEP


def reference_raw(raw: bytes) -> list[tuple[bytes, bytes]]:
    fields = []
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            fields.append((name.strip(), value.strip()))
    return fields


def test_names_are_told_apart_as_lower_and_the_sets_would_whatever_was_kept() -> None:
    stream._NAMES.clear()
    for _ in range(2):  # the second time from what was kept
        for name in NAMES:
            assert field_name(name) == reference_kind(name), name
    assert b"X-" + b"N" * 70 not in stream._NAMES  # too long to be kept
    for i in range(stream.NAMES_KEPT + 5):
        assert field_name(b"X-%d" % i) == (b"x-%d" % i, stream._KEEP)
        assert len(stream._NAMES) <= stream.NAMES_KEPT


def test_raw_lines_split_as_partition_and_strip_would() -> None:
    rng = random.Random(22)
    for _ in range(500):
        lines = []
        for _ in range(rng.randrange(0, 6)):
            name, value = rng.choice([*NAMES, b" X-Pad ", b"\tx"]), rng.choice(VALUES)
            sep = rng.choice([b": ", b":", b" : "])
            lines.append(name + sep + value if rng.random() < 0.9 else name)
        raw = b"".join(line + b"\r\n" for line in lines)
        assert raw_fields(raw) == reference_raw(raw), raw

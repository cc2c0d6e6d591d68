"""Compiled by mypyc (pyproxyd/compiled.py).
HPACK encoding for both HTTP/2 sides, stateless, as nginx encodes.

Each field is either a full match in the static table (one byte) or a literal
*without indexing* (by static name index when the name has one), never
Huffman-coded; a sensitive field (a NeverIndexedHeaderTuple, or a triple whose
third item is true) is a *never indexed* literal, whatever it matches. The
dynamic table is never written, so a field's bytes depend on the field alone.
What a dynamic table would save is the bytes of the fields repeated on one
connection, at the price of a table search and an insert per field; hpack's
Encoder cost 11% of a gRPC call's CPU. Huffman coding was a Python loop over
every byte (a third of encoding a request head) for a few bytes saved.

What is kept per process is per name: the name's part of a literal (both
kinds) and its values with a full static match. A block is a join of those
parts, the value's length and the value. (A cache of whole fields missed on
every field that carries a per-request value, x-request-id, grpc-timeout,
traceparent, content-length, and emptied itself every ~1,300 gRPC calls.)

The peer's SETTINGS_HEADER_TABLE_SIZE still reaches `header_table_size` (h2
sets it): a change is announced by dynamic table size updates at the start of
the next block (the smallest size since the last block, then the last, as RFC
7541 4.2 asks), so the peer's view of our (empty) table stays within what it
allows.
"""

from __future__ import annotations

from typing import Any, Final, final

from pyproxyd._vendor.hpack import Encoder
from pyproxyd._vendor.hpack.table import HeaderTable

# Indexed field (RFC 7541 6.1), literal without indexing and never indexed
# (6.2.2, 6.2.3): the first byte's pattern.
_INDEXED: Final = 0x80
_WITHOUT_INDEXING: Final = 0x00
_NEVER_INDEXED: Final = 0x10

# Names of at most this many bytes are kept, and at most this many of them:
# when full, it starts again empty (the names of the traffic of the moment
# come back).
NAME_BYTES: Final = 256
NAMES_KEPT: Final = 1024


def _static_tables() -> tuple[dict[tuple[bytes, bytes], int], dict[bytes, int]]:
    full: dict[tuple[bytes, bytes], int] = {}
    names: dict[bytes, int] = {}
    for index, (name, value) in enumerate(HeaderTable.STATIC_TABLE, 1):
        full.setdefault((name, value), index)
        names.setdefault(name, index)
    return full, names


_STATIC_FULL, _STATIC_NAME = _static_tables()


def integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1: `value` in a `prefix_bits` prefix, `first` the first byte's other bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(name: bytes, value: bytes, sensitive: bool) -> bytes:
    """One field's representation (uncached)."""
    if not sensitive:
        index = _STATIC_FULL.get((name, value), 0)
        if index:
            return bytes((_INDEXED | index,))
    first = _NEVER_INDEXED if sensitive else _WITHOUT_INDEXING
    name_index = _STATIC_NAME.get(name, 0)
    if name_index:
        head = integer(name_index, 4, first)
    else:
        head = bytes((first,)) + integer(len(name), 7, 0) + name
    return head + integer(len(value), 7, 0) + value


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return str(value).encode("utf-8")


@final
class Name:
    """What a field name contributes to any field of that name: its literal
    head (without indexing, never indexed), and its values with a full
    static match, each as its one-byte indexed field."""

    __slots__ = ("never", "plain", "static")

    def __init__(self, name: bytes) -> None:
        index = _STATIC_NAME.get(name, 0)
        if index:
            self.plain = integer(index, 4, _WITHOUT_INDEXING)
            self.never = integer(index, 4, _NEVER_INDEXED)
        else:
            literal = integer(len(name), 7, 0) + name
            self.plain = bytes((_WITHOUT_INDEXING,)) + literal
            self.never = bytes((_NEVER_INDEXED,)) + literal
        static: dict[bytes, bytes] = {}
        for (static_name, value), full in _STATIC_FULL.items():
            if static_name == name:
                static[value] = bytes((_INDEXED | full,))
        self.static: dict[bytes, bytes] | None = static or None


# Per process: names are few (those of the traffic's header fields).
_NAMES: Final[dict[bytes, Name]] = {}
# A value's length, up to the 7-bit prefix's largest (most values).
_LENGTHS: Final = [bytes((n,)) for n in range(127)]


def name_of(name: bytes) -> Name:
    names = _NAMES
    entry = names.get(name)
    if entry is None:
        entry = Name(name)
        if len(name) <= NAME_BYTES:
            if len(names) >= NAMES_KEPT:
                names.clear()
            names[name] = entry
    return entry


def add_field(parts: list[bytes], name: bytes, value: bytes, sensitive: bool) -> None:
    """field()'s bytes, appended to `parts` as the name's part, the length and the value."""
    entry = name_of(name)
    if sensitive:
        parts.append(entry.never)
    else:
        static = entry.static
        if static is not None:
            indexed = static.get(value)
            if indexed is not None:
                parts.append(indexed)
                return
        parts.append(entry.plain)
    size = len(value)
    parts.append(_LENGTHS[size] if size < 127 else integer(size, 7, 0))
    parts.append(value)


def size_updates(sizes: list[int]) -> bytes:
    """Dynamic table size updates (RFC 7541 6.3) for the changes made since the
    last block: the smallest size then the last (RFC 7541 4.2), one if they are
    the same."""
    smallest, last = min(sizes), sizes[-1]
    update = integer(last, 5, 0x20)
    return update if smallest == last else integer(smallest, 5, 0x20) + update


class PlainEncoder(Encoder):
    """An hpack Encoder (h2 types its `encoder` so) whose blocks never use the dynamic table."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        """A header block for `headers`: (name, value) pairs, HeaderTuples,
        (name, value, sensitive) triples, or a dict (pseudo-headers first, as
        hpack's Encoder orders it); names and values bytes or str. `huffman`
        is ignored: literals are never Huffman-coded."""
        parts: list[bytes] = []
        if self.table_size_changes:
            # (not header_table.resized, as hpack's Encoder: a second setting
            # of the same size clears that flag and the change went unsaid)
            parts.append(size_updates(self.table_size_changes))
            self.table_size_changes = []
            self.header_table.resized = False
        items: Any = headers
        if isinstance(headers, dict):
            items = sorted(headers.items(), key=_regular)
        header: Any
        for header in items:
            # `indexable` read from the class, not after isinstance(): narrowed
            # to a HeaderTuple, mypyc would see a tuple[bytes, bytes] and unbox
            # it, dropping the class. Any class with `indexable` counts (the
            # installed hpack's HeaderTuples too).
            kind: Any = type(header)
            indexable: Any = None if kind is tuple else getattr(kind, "indexable", None)
            if indexable is not None:
                sensitive = not indexable
            elif len(header) > 2:
                sensitive = bool(header[2])
            else:
                sensitive = False
            add_field(parts, _to_bytes(header[0]), _to_bytes(header[1]), sensitive)
        return b"".join(parts)


def _regular(item: Any) -> bool:
    return not _to_bytes(item[0]).startswith(b":")

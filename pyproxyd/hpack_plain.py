"""Compiled by mypyc (pyproxyd/compiled.py).
HPACK encoding for both HTTP/2 sides, stateless, as nginx encodes.

Each field is either a full match in the static table (one byte) or a literal
*without indexing* (by static name index when the name has one), never
Huffman-coded; a sensitive field (a NeverIndexedHeaderTuple, or a triple whose
third item is true) is a *never indexed* literal, whatever it matches. The
dynamic table is never written, so a field's bytes depend on the field alone:
those of fields not sensitive are cached per process, and a header block is a
join of cached bytes. What a dynamic table would save is the bytes of the
fields repeated on one connection, at the price of a table search and an
insert per field; hpack's Encoder cost 11% of a gRPC call's CPU. Huffman coding
was a Python loop over every byte (a third of encoding a request head) for a
few bytes saved.

The peer's SETTINGS_HEADER_TABLE_SIZE still reaches `header_table_size` (h2
sets it): a change is announced by dynamic table size updates at the start of
the next block (the smallest size since the last block, then the last, as RFC
7541 4.2 asks), so the peer's view of our (empty) table stays within what it
allows.
"""

from __future__ import annotations

from typing import Any, Final

from pyproxyd._vendor.hpack import Encoder
from pyproxyd._vendor.hpack.table import HeaderTable

# Indexed field (RFC 7541 6.1), literal without indexing and never indexed
# (6.2.2, 6.2.3): the first byte's pattern.
_INDEXED: Final = 0x80
_WITHOUT_INDEXING: Final = 0x00
_NEVER_INDEXED: Final = 0x10

# Fields of at most this many bytes are cached (a long cookie or token varies,
# and would only fill the cache), and at most this many of them: when full, the
# cache starts again empty (the fields of the traffic of the moment come back).
CACHE_FIELD_BYTES: Final = 256
CACHE_ENTRIES: Final = 4096


def _static_tables() -> tuple[dict[tuple[bytes, bytes], int], dict[bytes, int]]:
    full: dict[tuple[bytes, bytes], int] = {}
    names: dict[bytes, int] = {}
    for index, (name, value) in enumerate(HeaderTable.STATIC_TABLE, 1):
        full.setdefault((name, value), index)
        names.setdefault(name, index)
    return full, names


_STATIC_FULL, _STATIC_NAME = _static_tables()
# Not sensitive fields: a token or a cookie is not kept beyond its request.
_CACHE: dict[tuple[bytes, bytes], bytes] = {}


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


def cached_field(name: bytes, value: bytes, sensitive: bool) -> bytes:
    """field(), through the per-process cache (for fields not sensitive)."""
    if sensitive:
        return field(name, value, True)
    cache = _CACHE
    key = (name, value)
    encoded = cache.get(key)
    if encoded is None:
        encoded = field(name, value, sensitive)
        if len(name) + len(value) <= CACHE_FIELD_BYTES:
            if len(cache) >= CACHE_ENTRIES:
                cache.clear()
            cache[key] = encoded
    return encoded


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
            parts.append(cached_field(_to_bytes(header[0]), _to_bytes(header[1]), sensitive))
        return b"".join(parts)


def _regular(item: Any) -> bool:
    return not _to_bytes(item[0]).startswith(b":")

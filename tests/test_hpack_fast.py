"""The stateless HPACK encoder (hpack_plain) and the vendored hpack Decoder, checked
against the installed hpack release (the reference: the test dependency h2 brings it).

Random header lists from a seeded generator: names from the static table and
others, values empty, short, repeated, long, non-ASCII; pairs, triples,
HeaderTuples and NeverIndexedHeaderTuples, bytes and str.
"""

from __future__ import annotations

import random
from typing import Any

import hpack as reference
import pytest

from pyproxyd import hpack_plain
from pyproxyd._vendor import hpack as vendored
from pyproxyd._vendor.hpack.table import HeaderTable
from pyproxyd.hpack_plain import PlainEncoder

STATIC_NAMES = sorted({name for name, _ in HeaderTable.STATIC_TABLE})
OTHER_NAMES = [b"x-request-id", b"grpc-timeout", b"te", b"x-" + b"n" * 130, b"custom"]
VALUES = [b"", b"GET", b"200", b"gzip, deflate", b"/", b"trailers", b"\xc3\xa9t\xc3\xa9"]


def _value(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(VALUES)
    if kind == 1:
        return bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 20)))
    if kind == 2:
        return b"v" * rng.choice([126, 127, 128, 300, 20000])
    return str(rng.randrange(10**6)).encode()


def _field(rng: random.Random) -> tuple[Any, bytes, bytes, bool]:
    """(what the encoder is given, name, value, sensitive)."""
    name = rng.choice(STATIC_NAMES if rng.random() < 0.6 else OTHER_NAMES)
    value = rng.choice([v for n, v in HeaderTable.STATIC_TABLE if n == name] or [b""])
    if rng.random() < 0.6:
        value = _value(rng)
    form = rng.randrange(6)
    if form == 0:
        return (name, value), name, value, False
    if form == 1:
        return (name.decode(), value.decode("utf-8")), name, value, False
    if form == 2:
        sensitive = rng.random() < 0.5
        return (name, value, sensitive), name, value, sensitive
    if form == 3:
        return vendored.HeaderTuple(name, value), name, value, False
    if form == 4:
        return vendored.NeverIndexedHeaderTuple(name, value), name, value, True
    return reference.NeverIndexedHeaderTuple(name, value), name, value, True


def _check_block(block: bytes, expected: list[tuple[bytes, bytes, bool]]) -> None:
    for decoder in (reference.Decoder(), vendored.Decoder()):
        decoder.max_header_list_size = 1 << 20
        decoded = list(decoder.decode(block, raw=True))
        assert [(n, v) for n, v in decoded] == [(n, v) for n, v, _ in expected]
        assert [not h.indexable for h in decoded] == [s for _, _, s in expected]
        assert list(decoder.header_table.dynamic_entries) == []


def test_random_header_lists_decode_as_given_by_the_reference_decoder() -> None:
    rng = random.Random(22)
    encoder = PlainEncoder()
    for _ in range(400):
        fields = [_field(rng) for _ in range(rng.randrange(0, 12))]
        block = encoder.encode([given for given, *_ in fields])
        _check_block(block, [(n, v, s) for _, n, v, s in fields])
        # again: the second time comes from the cache, the same bytes
        assert encoder.encode([given for given, *_ in fields]) == block


def test_static_matches_are_one_byte_and_sensitive_fields_never_indexed() -> None:
    encoder = PlainEncoder()
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"
    assert encoder.encode([(b":status", b"200")]) == b"\x88"
    # :method is static entry 2: name index 2 in a literal without indexing
    assert encoder.encode([(b":method", b"PUT")]) == b"\x02\x03PUT"
    # never indexed (0x10), even where the whole field is in the static table
    assert encoder.encode([vendored.NeverIndexedHeaderTuple(b":method", b"GET")]) == b"\x12\x03GET"
    # authorization is static entry 23: 4-bit prefix 15, then 23 - 15
    assert encoder.encode([(b"authorization", b"t", True)]) == b"\x1f\x08\x01t"
    assert encoder.encode([(b"x-id", b"7")]) == b"\x00\x04x-id\x017"


def test_a_dict_is_encoded_pseudo_headers_first() -> None:
    block = PlainEncoder().encode({"x-a": "1", ":path": "/p", "b": "2", ":method": "GET"})
    names = [n for n, _ in reference.Decoder().decode(block, raw=True)]
    assert names[:2] in ([b":path", b":method"], [b":method", b":path"])
    assert sorted(names[2:]) == [b"b", b"x-a"]


def test_table_size_changes_are_announced_at_the_start_of_the_next_block() -> None:
    encoder = PlainEncoder()
    decoder = reference.Decoder()
    assert encoder.encode([(b"a", b"1")]) == b"\x00\x01a\x011"  # no change, no update
    # the peer's SETTINGS_HEADER_TABLE_SIZE, as h2 hands it on
    encoder.header_table_size = 0
    decoder.max_allowed_table_size = 0
    block = encoder.encode([(b"a", b"1")])
    assert block == b"\x20\x00\x01a\x011"
    assert list(decoder.decode(block, raw=True)) == [(b"a", b"1")]
    assert decoder.header_table_size == 0
    # two changes before a block: the smaller, then the last (RFC 7541 4.2)
    encoder.header_table_size = 100
    encoder.header_table_size = 8192
    decoder.max_allowed_table_size = 8192
    block = encoder.encode([(b"a", b"1")])
    assert block.startswith(b"\x3f\x45\x3f\xe1\x3f")
    assert list(decoder.decode(block, raw=True)) == [(b"a", b"1")]
    assert decoder.header_table_size == 8192
    # three changes: the smallest, then the last
    encoder.header_table_size = 50
    encoder.header_table_size = 10
    encoder.header_table_size = 4096
    decoder.max_allowed_table_size = 4096
    block = encoder.encode([(b"a", b"1")])
    assert block == b"\x2a\x3f\xe1\x1f\x00\x01a\x011"
    assert list(decoder.decode(block, raw=True)) == [(b"a", b"1")]
    assert decoder.header_table_size == 4096
    # the same size set twice is still one change (hpack's Encoder forgot it)
    encoder.header_table_size = 0
    encoder.header_table_size = 0
    decoder.max_allowed_table_size = 0
    block = encoder.encode([(b"a", b"1")])
    assert block == b"\x20\x00\x01a\x011"
    assert list(decoder.decode(block, raw=True)) == [(b"a", b"1")]
    # announced once only
    assert encoder.encode([(b"a", b"1")]) == b"\x00\x01a\x011"


def test_what_is_kept_per_name_is_bounded() -> None:
    encoder = PlainEncoder()
    for i in range(hpack_plain.NAMES_KEPT * 2 + 10):
        block = encoder.encode([(b"x-%d" % i, b"v")])
        assert block == hpack_plain.field(b"x-%d" % i, b"v", False)
        assert len(hpack_plain._NAMES) <= hpack_plain.NAMES_KEPT
    big = b"n" * (hpack_plain.NAME_BYTES + 1)
    assert encoder.encode([(big, b"v")]) == hpack_plain.field(big, b"v", False)
    assert big not in hpack_plain._NAMES


def test_fields_are_encoded_as_field_says_whatever_was_kept_before() -> None:
    """add_field (names kept) gives field()'s bytes (nothing kept), for every
    static name with each of its static values and others, both kinds, a
    name seen first sensitive then not and the other way round, and value
    lengths around the 7-bit prefix's limit."""
    hpack_plain._NAMES.clear()
    values = [b"", b"x", b"v" * 126, b"v" * 127, b"v" * 128, b"v" * 300]
    values += sorted({value for _, value in HeaderTable.STATIC_TABLE})
    for first in (True, False):
        for name in [*STATIC_NAMES, *OTHER_NAMES]:
            for sensitive in (first, not first):
                for value in values:
                    parts: list[bytes] = []
                    hpack_plain.add_field(parts, name, value, sensitive)
                    assert b"".join(parts) == hpack_plain.field(name, value, sensitive)
        hpack_plain._NAMES.clear()


def test_sensitive_fields_are_not_kept_in_the_cache() -> None:
    encoder = PlainEncoder()
    block = encoder.encode([(b"authorization", b"Bearer secret", True)])
    assert block == b"\x1f\x08\x0dBearer secret"
    block = encoder.encode([vendored.NeverIndexedHeaderTuple(b"x-token", b"secret")])
    assert block == b"\x10\x07x-token\x06secret"
    # only names are kept, never a value
    kept = [(n, e.plain, e.never, e.static) for n, e in hpack_plain._NAMES.items()]
    assert b"secret" not in repr(kept).encode()


def test_the_vendored_decoder_matches_the_reference_on_indexed_huffman_blocks() -> None:
    """Blocks from the reference Encoder (dynamic table, Huffman, never indexed),
    over one connection's worth of blocks so that the dynamic table is used."""
    rng = random.Random(7)
    encoder, ours, theirs = reference.Encoder(), vendored.Decoder(), reference.Decoder()
    for round_ in range(300):
        if round_ % 50 == 49:
            encoder.header_table_size = rng.choice([0, 256, 4096])
        fields = [_field(rng)[0] for _ in range(rng.randrange(0, 10))]
        plain = [
            reference.NeverIndexedHeaderTuple(f[0], f[1])
            if isinstance(f, vendored.NeverIndexedHeaderTuple)
            else f
            for f in fields
        ]
        block = encoder.encode(plain, huffman=rng.random() < 0.5)
        expected = list(theirs.decode(block, raw=True))
        got = list(ours.decode(block, raw=True))
        assert got == expected
        assert [type(h).__name__ for h in got] == [type(h).__name__ for h in expected]
        assert list(ours.header_table.dynamic_entries) == list(theirs.header_table.dynamic_entries)


def test_the_vendored_decoder_decodes_str_unless_raw() -> None:
    block = reference.Encoder().encode(
        [(":status", "200"), reference.NeverIndexedHeaderTuple("set-cookie", "é")]
    )
    decoded = list(vendored.Decoder().decode(block))
    assert decoded == [(":status", "200"), ("set-cookie", "é")]
    assert [type(h) for h in decoded] == [vendored.HeaderTuple, vendored.NeverIndexedHeaderTuple]


@pytest.mark.parametrize(
    ("block", "error"),
    [
        (b"\x80", vendored.InvalidTableIndex),  # index 0
        (b"\xff\x00", vendored.InvalidTableIndex),  # beyond both tables
        (b"\x00\x05ab", vendored.HPACKDecodingError),  # truncated name
        (b"\x00\x01a\x05bc", vendored.HPACKDecodingError),  # truncated value
        (b"\x00\x01a", vendored.HPACKDecodingError),  # no value
        (b"\xff\xff\xff\xff\xff\xff\x01", vendored.HPACKDecodingError),  # integer too long
        (b"\xff", vendored.HPACKDecodingError),  # integer cut short
        (b"\x82\x20", vendored.HPACKDecodingError),  # size update after a field
        (b"\x3f\xe2\x1f", vendored.InvalidTableSizeError),  # size update above the max
        (b"\x00\x01a\x81\xff", vendored.HPACKDecodingError),  # bad Huffman
        (b"\x00\x01a\x01\xff", vendored.HPACKDecodingError),  # not UTF-8 (raw=False)
    ],
)
def test_the_vendored_decoder_raises_as_the_reference(block: bytes, error: type) -> None:
    with pytest.raises(Exception) as theirs:
        reference.Decoder().decode(block)
    with pytest.raises(error):
        vendored.Decoder().decode(block)
    assert type(theirs.value).__name__ == error.__name__


def test_the_vendored_decoder_limits_the_header_list() -> None:
    block = PlainEncoder().encode([(b"x", b"y" * 100)] * 3)
    decoder = vendored.Decoder(max_header_list_size=300)
    with pytest.raises(vendored.OversizedHeaderListError):
        decoder.decode(block)
    assert len(list(vendored.Decoder(max_header_list_size=400).decode(block))) == 3

"""The zone's tables: hashing, slot search, eviction when full, bounded memory."""

from __future__ import annotations

import itertools
import os
import struct
import subprocess
import sys

import pytest

from pyproxyd.shm.zone import (
    HEADER_SIZE,
    LIMITS,
    LOCKS_SIZE,
    LOG_CAPS,
    MIN_SIZE,
    RESILIENCE,
    SPECS,
    WAYS,
    Zone,
    key_hash,
    layout,
    native,
    slot_struct,
)


def test_the_hash_is_the_same_in_another_process() -> None:
    """str's hash() is salted per process; the zone's must not be."""
    code = "from pyproxyd.shm.zone import key_hash; print(key_hash(b'policy\\0client-7'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "random"},
    ).stdout
    assert int(out) == key_hash(b"policy\0client-7")
    assert key_hash(b"a") != key_hash(b"b")


def test_layout_fits_the_size_and_is_fixed_by_it() -> None:
    for size in (MIN_SIZE, 16 * 1024 * 1024, 64 * 1024 * 1024 + 12345):
        tables = layout(size)
        assert len(tables) == len(SPECS)
        assert tables[0].offset == HEADER_SIZE + LOCKS_SIZE  # the mutexes first
        for a, b in itertools.pairwise(tables):
            assert a.end == b.offset  # back to back, no overlap
        assert tables[-1].end <= size or size == MIN_SIZE  # 1 bucket at least a table
        assert [repr(t) for t in layout(size)] == [repr(t) for t in tables]
    # 16 MiB (the default) holds a few hundred thousand bucket keys
    assert layout(16 * 1024 * 1024)[LIMITS].capacity >= 100_000
    assert [t.payload for t in layout(MIN_SIZE)[2:]] == [8 * c for c in LOG_CAPS]


def test_memory_is_the_size_asked_whatever_the_number_of_keys(zone: Zone) -> None:
    table = zone.tables[LIMITS]
    before = os.fstat(zone.fd).st_size
    for i in range(table.capacity * 3):
        h = key_hash(b"k%d" % i)
        base = table.bucket(h)
        off, _t, _c, _e = table.claim(zone.mm, base, h | 1, float(i))
        zone.write(off, h | 1, float(i), _struct_d(), 1.0)
    assert os.fstat(zone.fd).st_size == before
    assert len(zone.mm) == before


def _struct_d() -> struct.Struct:
    return slot_struct("d")


def _same_bucket_keys(zone: Zone, table_index: int, n: int) -> list[tuple[int, int]]:
    """n (hash, fp) pairs whose keys fall in one bucket."""
    table = zone.tables[table_index]
    target = table.bucket(key_hash(b"seed"))
    out = []
    i = 0
    while len(out) < n:
        h = key_hash(b"x%d" % i)
        if table.bucket(h) == target:
            out.append((h, h | 1))
        i += 1
    return out


def test_a_full_bucket_evicts_the_key_touched_least_recently(zone: Zone) -> None:
    table = zone.tables[RESILIENCE]
    keys = _same_bucket_keys(zone, RESILIENCE, WAYS + 1)
    base = table.bucket(keys[0][0])
    d = _struct_d()
    for t, (_h, fp) in enumerate(keys[:WAYS]):
        off, touched, count, evicted = table.claim(zone.mm, base, fp, 10.0 + t)
        assert (count, evicted, touched) == (0, False, 10.0 + t)
        zone.write(off, fp, 10.0 + t, d, float(t))
    # touch the oldest again: the second oldest is now the least recently used
    off, touched, count, _ = table.claim(zone.mm, base, keys[0][1], 20.0)
    assert (touched, count) == (10.0, 1)
    zone.write(off, keys[0][1], 20.0, d, 0.0)
    off, touched, count, evicted = table.claim(zone.mm, base, keys[WAYS][1], 21.0)
    assert evicted and count == 0 and touched == 21.0
    assert off == table.find(zone.mm, base, keys[1][1])[0]  # the slot of keys[1]
    zone.write(off, keys[WAYS][1], 21.0, d, 8.0)
    assert table.find(zone.mm, base, keys[1][1])[0] == -1
    for _h, fp in [keys[0], *keys[2:]]:
        assert table.find(zone.mm, base, fp)[0] >= 0


def test_a_slot_left_dirty_by_a_dead_writer_reads_as_empty(zone: Zone) -> None:
    table = zone.tables[LIMITS]
    h = key_hash(b"torn")
    base = table.bucket(h)
    off, *_ = table.claim(zone.mm, base, h | 1, 1.0)
    zone.write(off, h | 1, 1.0, _struct_d(), 5.0)
    assert table.find(zone.mm, base, h | 1)[2] == 1
    zone.mm[off + 16 : off + 20] = (1).to_bytes(4, "little")  # killed mid-write
    assert table.claim(zone.mm, base, h | 1, 2.0)[1:3] == (2.0, 0)
    assert table.find(zone.mm, base, h | 1)[0] == -1


def test_attach_opens_its_own_description_and_checks_the_magic(zone: Zone) -> None:
    other = Zone.attach(zone.fd)
    try:
        assert other.fd != zone.fd and other.size == zone.size
        zone.mm[HEADER_SIZE : HEADER_SIZE + 8] = b"12345678"
        assert other.mm[HEADER_SIZE : HEADER_SIZE + 8] == b"12345678"  # one memory
    finally:
        other.close()
    r, w = os.pipe()
    try:
        with pytest.raises((ValueError, OSError)):
            Zone.attach(r)
    finally:
        os.close(r)
        os.close(w)


def test_a_memfd_zone_has_no_name_to_leave_behind(zone: Zone) -> None:
    target = os.readlink(f"/proc/self/fd/{zone.fd}")
    assert target.startswith("/memfd:pyproxyd-zone")


def test_a_format_that_native_order_would_pad_is_refused() -> None:
    assert native("QdIId").size == 32  # the fields where the standard layout puts them
    with pytest.raises(ValueError):
        native("Id")  # a double after an int would be moved 4 bytes on

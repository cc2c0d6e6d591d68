"""A fixed shared-memory zone of slot tables, as nginx's `limit_req_zone` / ngx_slab.

The supervisor creates the zone (`Zone.create`) as a memfd before it starts
any worker and hands the descriptor down (`pass_fds`, its number in
PYPROXYD_ZONE_FD); every worker maps it (`Zone.attach`). A memfd has no
name in any folder, so a clean stop, a killed worker or a SIGKILLed
supervisor leave nothing behind: the kernel frees the memory when the last
process holding it exits.

Layout (fixed at creation from the size alone; native byte order, as the
zone never leaves its host, and no padding: every field sits where this says):

    header   4 KiB: magic, size
    locks    STRIPES robust mutexes, 64 bytes apart
    tables   one after another; each is `nbuckets` buckets of WAYS slots
    slot     fp u64 | touched f64 | dirty u32 | count u32 | payload

`fp` is 64 bits of a BLAKE2b hash of (owner tag, key), never 0 in a used
slot; the other bits of the hash pick the bucket. A key lives in one of the
WAYS slots of its bucket; a new key takes a free slot or evicts the one
touched least recently (LRU within the bucket), so memory never grows and a
full zone costs the coldest keys their state (a rate-limited client evicted
starts afresh: it errs towards letting a request through, as LocalStore's
max_keys does).

Locking: a bucket is guarded by one of STRIPES process-shared robust
pthread mutexes in the zone (called through ctypes), picked by its offset.
Taking a free one is an atomic instruction in user space, no system call
(an fcntl OFD lock took two, 0.86 us a decision against 0.38 us). When the
holder dies, the kernel marks the mutex (the robust futex list) and the next
locker gets EOWNERDEAD, makes it consistent and goes on: a worker killed
while holding one never wedges the others. A write sets the slot's `dirty`
word first and clears it last: a slot found dirty under the lock was being
written by a process that died, and is treated as empty.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import struct
from typing import Any, NamedTuple

ENV = "PYPROXYD_ZONE_FD"
MAGIC = b"pyproxyd-zone-1\0"
HEADER_SIZE = 4096
WAYS = 8
DEFAULT_SIZE = 16 * 1024 * 1024
MIN_SIZE = 1024 * 1024


def native(fmt: str) -> struct.Struct:
    """A Struct of `fmt` in native order: a float or an integer is one whole store
    (the standard sizes pack a float byte by byte, which a kill can cut short).
    Its fields sit where the standard (packed) layout puts them: no padding."""
    got = struct.Struct("@" + fmt)
    if got.size != struct.calcsize("<" + fmt):
        raise ValueError(f"{fmt!r} would be padded in native order")
    return got


SLOT_HEAD = native("QdII")  # fp, touched, dirty, count
PAYLOAD_AT = SLOT_HEAD.size  # 24
_DIRTY_AT = 16
_DIRTY = native("I")
_HEADER = native("16sQ")
STRIPES = 4096  # mutexes: two buckets share one with odds of 1 in 4096
_MUTEX_SIZE = 64  # sizeof(pthread_mutex_t) is 40 on 64-bit glibc and musl; a cache line each
LOCKS_SIZE = STRIPES * _MUTEX_SIZE
_PTHREAD_PROCESS_SHARED = 1
_PTHREAD_MUTEX_ROBUST = 1

# PyDLL: the calls keep the GIL. A CDLL call releases and retakes it, and any
# other thread of the worker waiting for it would run in between, mid-decision.
# No use_errno: the pthread calls return their error, and saving and restoring
# errno around each call costs a quarter of what the call does.
_libc = ctypes.PyDLL(None)
# The lock calls take a mutex as a ready-made C pointer argument (a ctypes byref,
# from Zone.mutex), which ctypes passes as it is: a call makes no conversion
# object (a third cheaper than argtypes = [c_void_p] and an int address). So they
# have no argtypes, and an int must never be passed to them (it would go as a
# 32-bit C int).
_mutex_lock = _libc["pthread_mutex_lock"]  # [] makes a function object of our own
_mutex_trylock = _libc["pthread_mutex_trylock"]
_mutex_unlock = _libc["pthread_mutex_unlock"]
_mutex_consistent = _libc["pthread_mutex_consistent"]
for _fn in (_mutex_lock, _mutex_trylock, _mutex_consistent):
    _fn.restype = ctypes.c_int
_mutex_unlock.restype = None  # never looked at: it cannot fail on a mutex we hold

# Sliding-window logs hold at most this many timestamps a key, by size class.
LOG_CAPS = (16, 128, 1024, 8192)
MAX_LOG = LOG_CAPS[-1]


class TableSpec(NamedTuple):
    name: str
    payload: int  # bytes
    share: int  # 64ths of the zone


# What each table is for, and its share of the zone. Breakers and ejection have
# a table of their own, so a scan of client keys cannot evict an open circuit.
SPECS = (
    TableSpec("limits", 40, 28),  # token and leaky buckets: one float a key
    TableSpec("resilience", 40, 4),  # circuit breakers, passive ejection
    *(TableSpec(f"log{cap}", 8 * cap, 8) for cap in LOG_CAPS),  # sliding windows
)
LIMITS, RESILIENCE = 0, 1


def slot_struct(payload: str) -> struct.Struct:
    """A whole slot (head and payload) for one pack: `payload` in struct's format, no prefix."""
    return native("QdII" + payload)


def key_hash(data: bytes) -> int:
    """64 bits the same in every process (str's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class Table:
    """Geometry of one table, and the slot search done under a bucket's lock."""

    __slots__ = ("_scan", "bucket_size", "end", "nbuckets", "offset", "payload", "slot_size")

    def __init__(self, offset: int, payload: int, nbuckets: int) -> None:
        self.offset = offset
        self.payload = payload
        self.slot_size = PAYLOAD_AT + payload
        self.nbuckets = nbuckets
        self.bucket_size = self.slot_size * WAYS
        self.end = offset + self.bucket_size * nbuckets
        # One unpack reads every slot's fp, touched and dirty word of a bucket.
        self._scan = native(f"QdI{self.slot_size - 20}x" * WAYS)

    def __repr__(self) -> str:
        return f"<Table @{self.offset} {self.nbuckets}x{WAYS} slots of {self.slot_size} B>"

    @property
    def capacity(self) -> int:
        return self.nbuckets * WAYS

    def bucket(self, h: int) -> int:
        """The file offset of the bucket of hash `h` (also its lock's byte)."""
        return self.offset + (h >> 1) % self.nbuckets * self.bucket_size

    def find(self, mm: mmap.mmap, base: int, fp: int) -> tuple[int, float, int]:
        """(slot offset, touched, count) of `fp` in the bucket at `base`; offset -1 when absent."""
        row = self._scan.unpack_from(mm, base)
        for i in range(WAYS):
            if row[3 * i] == fp:
                off = base + i * self.slot_size
                if row[3 * i + 2]:  # its writer died mid-update
                    _free(mm, off)
                    return -1, 0.0, 0
                return off, row[3 * i + 1], _count(mm, off)
        return -1, 0.0, 0

    def claim(self, mm: mmap.mmap, base: int, fp: int, now: float) -> tuple[int, float, int, bool]:
        """(slot offset, touched, count, evicted) for `fp`, taking a slot when it has none.

        A new key gets count 0 and touched `now`; it takes a free slot, or the
        one touched least recently (evicted = True when that one was in use).
        """
        row = self._scan.unpack_from(mm, base)
        free = -1
        oldest = -1
        oldest_at = 0.0
        for i in range(WAYS):
            got = row[3 * i]
            if got == fp:
                off = base + i * self.slot_size
                if row[3 * i + 2]:
                    return off, now, 0, False  # torn by a dead writer: start afresh
                return off, row[3 * i + 1], _count(mm, off), False
            if got == 0 or row[3 * i + 2]:
                if free < 0:
                    free = i
            elif oldest < 0 or row[3 * i + 1] < oldest_at:
                oldest, oldest_at = i, row[3 * i + 1]
        if free >= 0:
            return base + free * self.slot_size, now, 0, False
        return base + oldest * self.slot_size, now, 0, True


def _count(mm: mmap.mmap, off: int) -> int:
    count: int = SLOT_HEAD.unpack_from(mm, off)[3]
    return count


def _free(mm: mmap.mmap, off: int) -> None:
    SLOT_HEAD.pack_into(mm, off, 0, 0.0, 0, 0)


def layout(size: int) -> tuple[Table, ...]:
    """The tables of a zone of `size` bytes (the same in every process)."""
    budget = size - HEADER_SIZE - LOCKS_SIZE
    tables = []
    offset = HEADER_SIZE + LOCKS_SIZE
    for spec in SPECS:
        table_bytes = budget * spec.share // 64
        nbuckets = max(1, table_bytes // ((PAYLOAD_AT + spec.payload) * WAYS))
        table = Table(offset, spec.payload, nbuckets)
        tables.append(table)
        offset = table.end
    return tuple(tables)


class Zone:
    """One process's view of the zone: its descriptor and mapping."""

    __slots__ = ("_lock_array", "_locks", "fd", "mm", "size", "tables")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.tables = layout(size)
        length = max(size, self.tables[-1].end)
        self.mm = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # The mutexes' address in this process (the mapping is at another address
        # in each process; a process-shared mutex works at any of them). The view
        # that finds it is let go at once, so that close() can unmap.
        view = (ctypes.c_char * LOCKS_SIZE).from_buffer(self.mm, HEADER_SIZE)
        self._locks = ctypes.addressof(view)
        del view
        self._lock_array = (ctypes.c_char * LOCKS_SIZE).from_address(self._locks)

    def _init_locks(self) -> None:
        attr = ctypes.create_string_buffer(64)  # pthread_mutexattr_t is 4 bytes; room to spare
        _check(_libc.pthread_mutexattr_init(attr))
        _check(_libc.pthread_mutexattr_setpshared(attr, _PTHREAD_PROCESS_SHARED))
        _check(_libc.pthread_mutexattr_setrobust(attr, _PTHREAD_MUTEX_ROBUST))
        for i in range(STRIPES):
            _check(_libc.pthread_mutex_init(ctypes.byref(self._lock_array, i * _MUTEX_SIZE), attr))
        _libc.pthread_mutexattr_destroy(attr)

    def __repr__(self) -> str:
        return f"<Zone fd={self.fd} {self.size} B>"

    @classmethod
    def create(cls, size: int = DEFAULT_SIZE) -> Zone:
        """A new zone of at least MIN_SIZE bytes, zeroed (every slot free)."""
        size = max(MIN_SIZE, size)
        fd = os.memfd_create("pyproxyd-zone", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, max(size, layout(size)[-1].end))
            zone = cls(fd, size)
            zone._init_locks()
        except BaseException:
            os.close(fd)
            raise
        _HEADER.pack_into(zone.mm, 0, MAGIC, size)
        return zone

    @classmethod
    def attach(cls, fd: int) -> Zone:
        """Map the zone behind an inherited descriptor (reopened: ours to close)."""
        own = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        try:
            magic, size = _HEADER.unpack(os.pread(own, _HEADER.size, 0))
            if magic != MAGIC:
                raise ValueError(f"descriptor {fd} is not a pyproxyd zone")
            return cls(own, size)
        except BaseException:
            os.close(own)
            raise

    def close(self) -> None:
        """Unmap (a store or record of this zone must not be used after)."""
        self.mm.close()
        os.close(self.fd)

    # -- locks: held only for the few instructions of one decision ------------

    def mutex(self, at: int) -> Any:
        """The mutex that guards the bucket at offset `at`, as a C pointer argument
        for mutex_lock, mutex_unlock and lock_mutex (a caller that locks one
        bucket again and again keeps it)."""
        return ctypes.byref(self._lock_array, (at >> 9) % STRIPES * _MUTEX_SIZE)

    def lock(self, at: int) -> None:
        lock_mutex(self.mutex(at))

    def unlock(self, at: int) -> None:
        _mutex_unlock(self.mutex(at))

    def held(self, at: int) -> bool:
        """Whether another process holds the lock of `at` now (for tests and the operator)."""
        mutex = self.mutex(at)
        got = _mutex_trylock(mutex)
        if got == errno.EBUSY:
            return True
        taken(mutex, got)
        _mutex_unlock(mutex)
        return False

    # -- slot writes: dirty first, cleared last --------------------------------

    def write(self, off: int, fp: int, now: float, whole: struct.Struct, *payload: float) -> None:
        """Write a slot: `whole` is slot_struct() of the payload's format."""
        mm = self.mm
        _DIRTY.pack_into(mm, off + _DIRTY_AT, 1)
        whole.pack_into(mm, off, fp, now, 1, len(payload), *payload)
        _DIRTY.pack_into(mm, off + _DIRTY_AT, 0)

    def free(self, off: int) -> None:
        _free(self.mm, off)


def _check(result: int) -> None:
    if result:
        raise OSError(result, os.strerror(result))


# The bare C calls, for a caller that locks one bucket again and again (its
# mutex from Zone.mutex): `got = mutex_lock(m)`, then `if got: taken(m, got)`;
# and `mutex_unlock(m)`. One Python call fewer than lock_mutex.
mutex_lock = _mutex_lock
mutex_unlock = _mutex_unlock


def lock_mutex(mutex: Any) -> None:
    """Lock `mutex` (from Zone.mutex)."""
    got = _mutex_lock(mutex)
    if got:
        taken(mutex, got)


def taken(mutex: Any, result: int) -> None:
    """After a lock call that did not return 0: ours all the same, or raise."""
    if result == errno.EOWNERDEAD:
        # Its holder died holding it. The slot it was writing, if any, is marked
        # dirty and reads as empty; the mutex itself is fine to go on with.
        _check(_mutex_consistent(mutex))
    elif result:
        raise OSError(result, os.strerror(result))


def from_env() -> Zone | None:
    """The zone the supervisor handed this worker, if any."""
    value = os.environ.get(ENV)
    if not value:
        return None
    fd = int(value)
    zone = Zone.attach(fd)
    os.close(fd)  # ours is open: the number the next worker gets is the supervisor's
    return zone

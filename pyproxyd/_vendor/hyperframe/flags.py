"""
Basic Flag and Flags data structures.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableSet
from typing import NamedTuple


class Flag(NamedTuple):
    name: str
    bit: int


# pyproxyd: the names of a frame class's `defined_flags` list, by the list's
# identity (the entry holds the list, so the id stays its own), instead of a
# set comprehension per frame. Bounded: lists made on the fly past that are
# read each time, as before.
_NAMES: dict[int, tuple[object, set[str]]] = {}
_NAMES_MAX = 64


def _valid_names(defined_flags: Iterable[Flag]) -> set[str]:
    entry = _NAMES.get(id(defined_flags))
    if entry is not None and entry[0] is defined_flags:
        return entry[1]
    names = {flag.name for flag in defined_flags}
    if type(defined_flags) is list and len(_NAMES) < _NAMES_MAX:
        _NAMES[id(defined_flags)] = (defined_flags, names)
    return names


class Flags(MutableSet):  # type: ignore
    """
    A simple MutableSet implementation that will only accept known flags as
    elements.

    Will behave like a regular set(), except that a ValueError will be thrown
    when .add()ing unexpected flags.
    """

    def __init__(self, defined_flags: Iterable[Flag]) -> None:
        # (shared between the Flags of a frame class: never changed)
        self._valid_flags = _valid_names(defined_flags)
        self._flags: set[str] = set()

    def __repr__(self) -> str:
        return repr(sorted(self._flags))

    def __contains__(self, x: object) -> bool:
        return self._flags.__contains__(x)

    def __iter__(self) -> Iterator[str]:
        return self._flags.__iter__()

    def __len__(self) -> int:
        return self._flags.__len__()

    def discard(self, value: str) -> None:
        return self._flags.discard(value)

    def add(self, value: str) -> None:
        if value not in self._valid_flags:
            msg = f"Unexpected flag: {value}. Valid flags are: {self._valid_flags}"
            raise ValueError(msg)
        return self._flags.add(value)

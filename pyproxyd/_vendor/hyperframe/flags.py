"""
Basic Flag and Flags data structures.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from .._mypyc import mypyc_attr


class Flag(NamedTuple):
    name: str
    bit: int


# pyproxyd: the names of a frame class's `defined_flags` list, by the list's
# identity (the list is kept in the entry, so its id stays its own). Bounded:
# lists made on the fly past that are read each time, as before.
_NAMES: dict[int, tuple[object, frozenset[str]]] = {}
_NAMES_MAX = 64


def _valid_names(defined_flags: Iterable[Flag]) -> frozenset[str]:
    entry = _NAMES.get(id(defined_flags))
    if entry is not None and entry[0] is defined_flags:
        return entry[1]
    names = frozenset(flag.name for flag in defined_flags)
    if type(defined_flags) is list and len(_NAMES) < _NAMES_MAX:
        _NAMES[id(defined_flags)] = (defined_flags, names)
    return names


# pyproxyd: a `set` subclass (it was a MutableSet over a private set), so that
# `"END_STREAM" in frame.flags`, asked of every frame, is set's own C lookup
# instead of a Python call, and a frame's Flags is one object. A plain Python
# class (mypyc makes no native subclass of set).
@mypyc_attr(native_class=False)
class Flags(set):  # type: ignore[type-arg]
    """
    A simple MutableSet implementation that will only accept known flags as
    elements.

    Will behave like a regular set(), except that a ValueError will be thrown
    when .add()ing unexpected flags.
    """

    def __init__(self, defined_flags: Iterable[Flag]) -> None:
        self._valid_flags = _valid_names(defined_flags)

    def __repr__(self) -> str:
        return repr(sorted(self))

    def add(self, value: str) -> None:
        if value not in self._valid_flags:
            msg = f"Unexpected flag: {value}. Valid flags are: {set(self._valid_flags)}"
            raise ValueError(msg)
        set.add(self, value)

    # Ways to add elements that set has besides add(): checked as add() is.
    def update(self, *others: Iterable[str]) -> None:
        for other in others:
            for value in other:
                self.add(value)

    def __ior__(self, other: Iterable[str]) -> Flags:  # type: ignore[override,misc]
        self.update(other)
        return self

    def symmetric_difference_update(self, other: Iterable[str]) -> None:
        for value in set(other):
            if value in self:
                self.discard(value)
            else:
                self.add(value)

    def __ixor__(self, other: Iterable[str]) -> Flags:  # type: ignore[override,misc]
        self.symmetric_difference_update(other)
        return self

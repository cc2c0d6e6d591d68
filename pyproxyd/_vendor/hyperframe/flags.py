"""
Basic Flag and Flags data structures.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableSet
from typing import NamedTuple


class Flag(NamedTuple):
    name: str
    bit: int


class Flags(MutableSet):  # type: ignore
    """
    A simple MutableSet implementation that will only accept known flags as
    elements.

    Will behave like a regular set(), except that a ValueError will be thrown
    when .add()ing unexpected flags.
    """

    def __init__(self, defined_flags: Iterable[Flag]) -> None:
        # pyproxyd: the defined flags are kept as given (a frame class's list,
        # shared) and searched when a flag is added, instead of a set of their
        # names built for every frame, most of which never add one.
        self._defined: list[Flag] = (
            defined_flags if isinstance(defined_flags, list) else list(defined_flags)
        )
        self._flags: set[str] = set()

    @property
    def _valid_flags(self) -> set[str]:
        return {flag.name for flag in self._defined}

    def __repr__(self) -> str:
        return repr(sorted(self._flags))

    # pyproxyd: the operators on the set, not its dunder methods looked up by name
    def __contains__(self, x: object) -> bool:
        return x in self._flags

    def __iter__(self) -> Iterator[str]:
        return iter(self._flags)

    def __len__(self) -> int:
        return len(self._flags)

    def discard(self, value: str) -> None:
        return self._flags.discard(value)

    def add(self, value: str) -> None:
        for flag in self._defined:
            if flag.name == value:
                self._flags.add(value)
                return
        msg = f"Unexpected flag: {value}. Valid flags are: {self._valid_flags}"
        raise ValueError(msg)

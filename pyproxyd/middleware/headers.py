"""HeaderList: the headers of the request and response views, as a
python middleware changes them. Not compiled: a MutableMapping subclass."""

from __future__ import annotations

import re
from collections.abc import Iterator, MutableMapping

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
Pairs = list[tuple[bytes, bytes]]


def check_name(name: str) -> bytes:
    raw = name.encode("latin-1")
    if not _TOKEN.match(raw):
        raise ValueError(f"{name!r} is not a valid header name")
    return raw


def check_value(value: str) -> bytes:
    raw = str(value).encode("latin-1")
    if raw.find(b"\r") >= 0 or raw.find(b"\n") >= 0 or raw.find(b"\0") >= 0:
        raise ValueError("a header value cannot hold CR, LF or NUL")
    return raw


class HeaderList(MutableMapping[str, str]):
    """Case-insensitive headers over a list of (name, value) byte pairs, in
    order, repeated names kept. `h[name]` is the first value; `h[name] = v`
    replaces every one; `add` appends; `getall` lists them."""

    __slots__ = ("changed", "pairs")

    def __init__(self, pairs: Pairs) -> None:
        self.pairs = pairs
        self.changed = False  # written through this view (the gateway then re-checks names)

    def __getitem__(self, name: str) -> str:
        key = name.lower().encode("latin-1")
        for n, v in self.pairs:
            if n.lower() == key:
                return v.decode("latin-1")
        raise KeyError(name)

    def getall(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for n, v in self.pairs if n.lower() == key]

    def __setitem__(self, name: str, value: str) -> None:
        raw_name, raw_value = check_name(name), check_value(value)
        self.changed = True
        key = raw_name.lower()
        self.pairs[:] = [p for p in self.pairs if p[0].lower() != key]
        self.pairs.append((raw_name, raw_value))

    def add(self, name: str, value: str) -> None:
        self.pairs.append((check_name(name), check_value(value)))
        self.changed = True

    def __delitem__(self, name: str) -> None:
        if not self.remove(name):
            raise KeyError(name)

    def remove(self, name: str) -> bool:
        """Remove every header of this name; whether there was one."""
        key = name.lower().encode("latin-1")
        kept = [p for p in self.pairs if p[0].lower() != key]
        found = len(kept) != len(self.pairs)
        if found:
            self.pairs[:] = kept
            self.changed = True
        return found

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower().encode("latin-1")
        return any(n.lower() == key for n, _ in self.pairs)

    def __iter__(self) -> Iterator[str]:
        seen: set[bytes] = set()
        for n, _ in self.pairs:
            low = n.lower()
            if low not in seen:
                seen.add(low)
                yield n.decode("latin-1")

    def __len__(self) -> int:
        return len({n.lower() for n, _ in self.pairs})

    def all(self) -> list[tuple[str, str]]:
        """Every (name, value) pair, in order, repeats included."""
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.pairs]

    def __repr__(self) -> str:
        return f"HeaderList({self.all()!r})"

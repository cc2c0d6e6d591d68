"""Compiled by mypyc (pyproxyd/compiled.py). One direction of a `headers`
middleware: what it removes, sets and adds, applied to byte pairs or to the
lazy response view. Its own module so that the chain can call it as a
native method (no closure, no Python-level call per step); builtins.py
builds it from the config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .template import Template, header_value
from .views import Pairs, RequestView, ResponseView

if TYPE_CHECKING:
    from .models import HeaderOps


class HeaderEdit:
    """One direction's changes: remove (and the names set), then set, then add."""

    __slots__ = ("added", "drop", "dropping", "fixed", "fixed_raw", "lengths")

    def __init__(self, ops: HeaderOps) -> None:
        self.drop = frozenset(n.lower().encode() for n in [*ops.remove, *ops.set])
        self.dropping = len(self.drop) > 0  # a native bool: `if self.drop` is a generic call
        # A name of another length cannot match: most are passed without lower().
        self.lengths = frozenset(len(n) for n in self.drop)
        # set and add both append once the names set are gone; set first.
        added = [
            (name.encode("latin-1"), Template(value))
            for name, value in [*ops.set.items(), *ops.add.items()]
        ]
        # Without a placeholder a value is rendered once, here. Its pairs are
        # Any: typed tuple[bytes, bytes], mypyc would unbox each one when read
        # and box it into a new tuple when appended (callgrind: ~150
        # instructions a pair).
        self.fixed: tuple[Any, ...] | None = None
        self.fixed_raw = b""
        if all(t.constant is not None for _, t in added):
            self.fixed = tuple((n, header_value(t.constant or "")) for n, t in added)
            self.fixed_raw = b"".join(b"%s: %s\r\n" % pair for pair in self.fixed)
        self.added = tuple(added)

    def names(self) -> frozenset[bytes]:
        return frozenset(n.lower() for n, _ in self.added)

    def __bool__(self) -> bool:
        return bool(self.drop or self.added)

    def apply(self, pairs: Pairs, view: RequestView) -> None:
        if self.dropping:
            self._remove(pairs)
        fixed = self.fixed
        if fixed is not None:
            # append, not extend: list.extend goes through a generic slice
            # assignment (callgrind: 220 instructions for one pair, against 40).
            for pair in fixed:
                pairs.append(pair)
            return
        for name, template in self.added:
            pairs.append((name, header_value(template.render(view))))

    def _remove(self, pairs: Pairs) -> None:
        # In place, from the end: nothing is allocated when no name matches.
        drop = self.drop
        lengths = self.lengths
        i = len(pairs)
        while i:
            i -= 1
            name = pairs[i][0]
            if len(name) in lengths and name.lower() in drop:
                del pairs[i]

    def apply_request(self, view: RequestView) -> None:
        """apply() to the headers going upstream. Constant values go on as
        rendered lines (the view's `_lines`): one piece of the upstream head
        instead of a pair, and four pieces once it is written out; not while
        a HeaderList holds the list, which must show them."""
        # The view's own fields, read and written here rather than through
        # methods: three native calls less a request, and their code not
        # fetched (the request path runs with a cold instruction cache: each
        # function touched costs its misses). _remove() only when a name goes.
        fixed = self.fixed
        if fixed is None or view._headers is not None:  # a HeaderList must show every line
            self.apply(view.pairs, view)
            return
        pending = view._lines
        if self.dropping:
            pairs = view._pairs
            if pairs is None or len(pending):
                pairs = view.pairs  # with the lines earlier steps added, put in it
                pending = b""
            self._remove(pairs)
        if len(fixed):
            raw = self.fixed_raw
            # No concatenation (a new bytes object) for the first, usually the only one.
            view._lines = raw if not len(pending) else pending + raw

    def apply_response(self, resp: ResponseView, view: RequestView) -> None:
        if not resp.lazy:
            self.apply(resp.pairs, view)
            return
        # Lazy: the chain's drops remove this step's names from the upstream's
        # headers; what it adds goes on as rendered lines.
        if self.fixed is not None:
            resp.add_lines(self.fixed_raw)
            return
        for name, template in self.added:
            resp.add_lines(b"%s: %s\r\n" % (name, header_value(template.render(view))))

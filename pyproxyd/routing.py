"""Path normalisation and the route trie (pure: no aiohttp, no config models).

Lookup walks one trie node per path segment, so its cost depends on the
path's depth, not on how many routes the file has.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import BadRequest

# RFC 3986 unreserved characters: their escapes are decoded.
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# Characters allowed raw in a path besides unreserved: sub-delims, ":", "@", "/", "%".
_PATH_SAFE = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_NEEDS_WORK = re.compile(r"%|//|/\.\.?(?:/|$)|[^A-Za-z0-9\-._~!$&'()*+,;=:@/]")


def normalise_path(raw: str) -> str:
    """The path that is matched and sent upstream (behaviour.md).

    Decodes escapes of unreserved characters and of "/" (as nginx does, so
    `..%2F` cannot smuggle a dot-segment past matching), upper-cases other
    escapes, removes dot-segments, collapses "//", and refuses a path that
    climbs above "/".
    """
    if not raw.startswith("/"):
        raise BadRequest("the request path must start with '/'")
    if _NEEDS_WORK.search(raw) is None:
        return raw
    decoded = _decode(raw)
    segments = decoded.split("/")
    out: list[str] = []
    last = len(segments) - 1
    trailing = False
    for i, seg in enumerate(segments[1:], 1):
        if seg == "..":
            if not out:
                raise BadRequest("the path climbs above '/'")
            out.pop()
            trailing = True
        elif seg == ".":
            trailing = True
        elif seg == "":
            trailing = i == last
        else:
            out.append(seg)
            trailing = False
    path = "/" + "/".join(out)
    if trailing and out:
        path += "/"
    return path


def _decode(raw: str) -> str:
    parts: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == "%":
            hexpair = raw[i + 1 : i + 3]
            if len(hexpair) != 2 or not all(h in string.hexdigits for h in hexpair):
                raise BadRequest(f"invalid percent-escape {raw[i : i + 3]!r} in the path")
            ch = chr(int(hexpair, 16))
            if ch == "\0":
                raise BadRequest("an encoded NUL in the path")
            if ch in _UNRESERVED or ch == "/":
                parts.append(ch)
            else:
                parts.append("%" + hexpair.upper())
            i += 3
            continue
        if c in _PATH_SAFE:
            parts.append(c)
        elif ord(c) < 0x21 or c == "\x7f":
            raise BadRequest("control characters or spaces in the path")
        else:
            parts.append("".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogateescape")))
        i += 1
    return "".join(parts)


# -------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class RouteRule:
    id: str
    pattern: str
    methods: frozenset[str] | None = None
    headers: tuple[tuple[str, str | None], ...] = ()  # (lower-cased name, value | None = present)
    query: tuple[tuple[str, str | None], ...] = ()
    claims: tuple[tuple[str, str], ...] = ()
    target: Any = None


class Match(NamedTuple):
    rule: RouteRule
    params: dict[str, str]


class Candidate(NamedTuple):
    id: str
    pattern: str
    outcome: str


@dataclass(slots=True)
class Explanation:
    match: Match | None
    candidates: list[Candidate] = field(default_factory=list)


ClaimsFn = Callable[[], Mapping[str, Any] | None]


def _claim_holds(claims: Mapping[str, Any] | None, name: str, value: str) -> bool:
    if claims is None or name not in claims:
        return False
    got = claims[name]
    if isinstance(got, list | tuple):
        return any(str(v) == value for v in got)
    return str(got) == value


class _Leaf:
    """The rules that share one pattern position, in file order."""

    __slots__ = ("captures", "rules")

    def __init__(self) -> None:
        self.rules: list[RouteRule] = []
        # per rule: the names of its captures, by segment index (None = not captured)
        self.captures: list[tuple[tuple[int, str], ...]] = []


class _Node:
    __slots__ = ("exact", "leaf", "param", "rest")

    def __init__(self) -> None:
        self.exact: dict[str, _Node] = {}
        self.param: _Node | None = None  # {var} and *: one non-empty segment
        self.rest: _Leaf | None = None  # **: this prefix and anything below
        self.leaf: _Leaf | None = None  # the pattern ends here


_ClaimCache = list[Any]  # [called?, value]: one call per match at most


class Router:
    def __init__(self, rules: Sequence[RouteRule]) -> None:
        self._root = _Node()
        self._rules = list(rules)
        self._order: dict[int, int] = {}
        for index, rule in enumerate(self._rules):
            self._order[id(rule)] = index
            self._insert(rule)

    def __len__(self) -> int:
        return len(self._rules)

    def _insert(self, rule: RouteRule) -> None:
        pattern = rule.pattern
        if not pattern.startswith("/"):
            raise ValueError(f"pattern {pattern!r} must start with '/'")
        segments = pattern[1:].split("/") if pattern != "/" else [""]
        node = self._root
        captures: list[tuple[int, str]] = []
        for i, seg in enumerate(segments):
            if seg == "**":
                if i != len(segments) - 1:
                    raise ValueError(f"'**' must be the last segment of {pattern!r}")
                node.rest = node.rest or _Leaf()
                node.rest.rules.append(rule)
                node.rest.captures.append(tuple(captures))
                return
            if seg == "*" or (seg.startswith("{") and seg.endswith("}")):
                if seg != "*":
                    captures.append((i, seg[1:-1]))
                node.param = node.param or _Node()
                node = node.param
            elif "{" in seg or "}" in seg or "*" in seg:
                raise ValueError(f"invalid segment {seg!r} in {pattern!r}")
            else:
                node = node.exact.setdefault(seg, _Node())
        node.leaf = node.leaf or _Leaf()
        node.leaf.rules.append(rule)
        node.leaf.captures.append(tuple(captures))

    # ------------------------------------------------------------- matching

    def match(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        claims: ClaimsFn | None = None,
    ) -> Match | None:
        segments = path[1:].split("/") if path != "/" else [""]
        cache: _ClaimCache = [False, None]
        return self._walk(self._root, segments, 0, method, headers, query, claims, cache, None)

    def explain(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        claims: ClaimsFn | None = None,
    ) -> Explanation:
        segments = path[1:].split("/") if path != "/" else [""]
        notes: list[Candidate] = []
        cache: _ClaimCache = [False, None]
        found = self._walk(self._root, segments, 0, method, headers, query, claims, cache, notes)
        if found is not None:
            # Everything the walk never reached lost on specificity alone.
            reached = {c.id for c in notes}
            for leaf in self._leaves_matching(segments):
                for rule in leaf.rules:
                    if rule.id not in reached:
                        notes.append(
                            Candidate(rule.id, rule.pattern, "less specific than the winner")
                        )
                        reached.add(rule.id)
        return Explanation(found, notes)

    def _walk(
        self,
        node: _Node,
        segs: list[str],
        i: int,
        method: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        claims: ClaimsFn | None,
        cache: _ClaimCache,
        notes: list[Candidate] | None,
    ) -> Match | None:
        if i == len(segs):
            if node.leaf is not None:
                found = self._pick(node.leaf, segs, method, headers, query, claims, cache, notes)
                if found is not None:
                    return found
        else:
            seg = segs[i]
            child = node.exact.get(seg)
            if child is not None:
                found = self._walk(child, segs, i + 1, method, headers, query, claims, cache, notes)
                if found is not None:
                    return found
            if node.param is not None and seg:
                found = self._walk(
                    node.param, segs, i + 1, method, headers, query, claims, cache, notes
                )
                if found is not None:
                    return found
        if node.rest is not None:
            return self._pick(node.rest, segs, method, headers, query, claims, cache, notes)
        return None

    def _pick(
        self,
        leaf: _Leaf,
        segs: list[str],
        method: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        claims: ClaimsFn | None,
        cache: _ClaimCache,
        notes: list[Candidate] | None,
    ) -> Match | None:
        for rule, captures in zip(leaf.rules, leaf.captures, strict=True):
            why = _refusal(rule, method, headers, query, claims, cache)
            if why is None:
                if notes is not None:
                    notes.append(Candidate(rule.id, rule.pattern, "selected"))
                return Match(rule, {name: segs[pos] for pos, name in captures})
            if notes is not None:
                notes.append(Candidate(rule.id, rule.pattern, why))
        return None

    def _leaves_matching(self, segs: list[str]) -> list[_Leaf]:
        out: list[_Leaf] = []

        def walk(node: _Node, i: int) -> None:
            if i == len(segs):
                if node.leaf is not None:
                    out.append(node.leaf)
            else:
                child = node.exact.get(segs[i])
                if child is not None:
                    walk(child, i + 1)
                if node.param is not None and segs[i]:
                    walk(node.param, i + 1)
            if node.rest is not None:
                out.append(node.rest)

        walk(self._root, 0)
        return out

    def table(self) -> list[dict[str, Any]]:
        """The compiled routes, most specific first (for /admin/routes)."""
        out: list[dict[str, Any]] = []

        def walk(node: _Node) -> None:
            for key in sorted(node.exact):
                walk(node.exact[key])
            if node.param is not None:
                walk(node.param)
            for leaf in (node.leaf, node.rest):
                if leaf is None:
                    continue
                for rule in leaf.rules:
                    out.append(
                        {
                            "id": rule.id,
                            "pattern": rule.pattern,
                            "methods": sorted(rule.methods) if rule.methods else None,
                            "headers": dict(rule.headers),
                            "query": dict(rule.query),
                            "claims": dict(rule.claims),
                            "file_order": self._order[id(rule)],
                        }
                    )

        walk(self._root)
        return out


def _refusal(
    rule: RouteRule,
    method: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    claims: ClaimsFn | None,
    cache: _ClaimCache,
) -> str | None:
    """Why `rule` does not take the request, or None when it does."""
    if rule.methods is not None and method not in rule.methods:
        return f"method {method} not in [{', '.join(sorted(rule.methods))}]"
    for name, want in rule.headers:
        got = headers.get(name)
        if got is None or (want is not None and got != want):
            expected = "present" if want is None else repr(want)
            return f"header {name}: expected {expected}, got {got!r}"
    for name, want in rule.query:
        got = query.get(name)
        if got is None or (want is not None and got != want):
            expected = "present" if want is None else repr(want)
            return f"query {name}: expected {expected}, got {got!r}"
    if rule.claims:
        if not cache[0]:
            cache[0] = True
            cache[1] = claims() if claims is not None else None
        verified = cache[1]
        if verified is None:
            return "claims: no verified token"
        for name, want in rule.claims:
            if not _claim_holds(verified, name, want):
                return f"claim {name}: expected {want!r}, got {verified.get(name)!r}"
    return None


# ---------------------------------------------------------- upstream paths


def compile_rewrite(template: str) -> Callable[[dict[str, str]], str]:
    """'/users/{id}' -> a function of the captured values."""
    pieces: list[tuple[str, str | None]] = [
        (literal, name) for literal, name, _, _ in string.Formatter().parse(template)
    ]

    def render(params: dict[str, str]) -> str:
        return "".join(lit + (params[name] if name is not None else "") for lit, name in pieces)

    return render


def strip_segments(path: str, n: int) -> str:
    """Drop `n` leading segments: strip_prefix=1 turns /api/users/7 into /users/7."""
    if n <= 0:
        return path
    parts = path.split("/", n + 1)
    if len(parts) <= n + 1:
        return "/"
    rest = parts[n + 1]
    return "/" + rest

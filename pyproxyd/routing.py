"""Compiled by mypyc (pyproxyd/compiled.py).

Path normalisation and the route trie (pure: no aiohttp, no config models).

Lookup walks one trie node per path segment (a dict lookup each), so its
cost depends on the path's depth, not on how many routes the file has.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from string import Formatter
from typing import Any, NamedTuple

from .errors import BadRequest

# ------------------------------------------------------------ normalisation

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# A path made only of RFC 3986 pchar (no "%") and "/" needs no decoding or encoding.
# One C-level fullmatch over a plain character class is the cheapest full scan
# measured (about half the cost of a single regex with alternatives).
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*").fullmatch
_DOT_SEGMENT = re.compile(r"/\.\.?(?:/|$)").search
# What is neither pchar, "/" nor "%": refused (controls, space) or percent-encoded.
_OUTSIDE = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]")


def normalise_path(raw: str) -> str:
    """The path that is both matched and sent upstream (docs/behaviour.md).

    `raw` is the path as the client sent it, query removed. Escapes of
    unreserved characters are decoded (so "%2E%2E" is a ".." segment, removed
    with the others); escapes of reserved characters stay escapes (their hex
    upper-cased, RFC 3986 6.2.2.1), so "%2F" is never a separator:
    `/public%2F..%2Fadmin` is one segment, for the matcher and for the
    upstream alike (a server that decoded it would see a path the gateway
    never matched). "//" runs collapse; characters outside the path set are
    percent-encoded as UTF-8.
    Raises BadRequest for a path that climbs above "/", does not start with
    "/", has a bad escape, an encoded NUL, a control character or a space.
    """
    # Hot path: every request goes through here, and nearly all are already
    # normal. The "/." substring test is coarse but nearly free; only a path
    # that has one (a dotfile like "/.well-known") pays for the exact regex.
    if (
        _PLAIN_PATH(raw) is not None
        and "//" not in raw
        and ("/." not in raw or _DOT_SEGMENT(raw) is None)
    ):
        return raw
    if not raw.startswith("/"):
        raise BadRequest("the request path must start with '/'")
    return _remove_dot_segments(_decode(raw))


def _encode_outside(m: re.Match[str]) -> str:
    c = m.group()
    if c <= " " or c == "\x7f":
        raise BadRequest("control characters or spaces in the path")
    try:
        # surrogateescape: a server that decoded undecodable bytes that way
        # gets the same bytes back.
        data = c.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise BadRequest("the path is not valid UTF-8") from None
    return "".join([f"%{b:02X}" for b in data])


def _decode(raw: str) -> str:
    text = _OUTSIDE.sub(_encode_outside, raw)
    chunks = text.split("%")
    out = [chunks[0]]
    for chunk in chunks[1:]:
        hx = chunk[:2]
        if len(hx) != 2 or hx[0] not in _HEX or hx[1] not in _HEX:
            raise BadRequest(f"invalid percent-escape {'%' + hx!r} in the path")
        ch = chr(int(hx, 16))
        if ch == "\0":
            raise BadRequest("an encoded NUL in the path")
        out.append(ch if ch in _UNRESERVED else "%" + hx.upper())
        out.append(chunk[2:])
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")
    out: list[str] = []
    for seg in segments[1:]:
        if seg == "..":
            if not out:
                raise BadRequest("the path climbs above '/'")
            out.pop()
        elif seg and seg != ".":
            out.append(seg)
    if not out:
        return "/"
    # RFC 3986 5.2.4 keeps a trailing "/" after a final "", "." or "..".
    trailing = "/" if segments[-1] in ("", ".", "..") else ""
    return "/" + "/".join(out) + trailing


# -------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class RouteRule:
    id: str
    pattern: str
    methods: frozenset[str] | None = None  # None = any; upper-case
    headers: tuple[tuple[str, str | None], ...] = ()  # (lower-cased name, value | None = present)
    query: tuple[tuple[str, str | None], ...] = ()  # (name, value | None = present)
    claims: tuple[tuple[str, str], ...] = ()  # equal, or contained in a list claim
    target: Any = None  # opaque (the compiled route), handed back on a match


class Match(NamedTuple):
    rule: RouteRule
    params: dict[str, str]  # captured {var} values, from the normalised path


class Candidate(NamedTuple):
    id: str
    pattern: str
    outcome: str  # "selected", or why this rule did not take the request


@dataclass(slots=True)
class Explanation:
    match: Match | None
    candidates: list[Candidate] = field(default_factory=list)


ClaimsFn = Callable[[], Mapping[str, Any] | None]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # as config.py's pattern variables
_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UNSET: Any = object()
LESS_SPECIFIC = "less specific than the winner"
LATER_IN_FILE = "same pattern as the winner, later in file order"


class _Entry:
    """One rule at its trie position, with what matching needs precomputed."""

    __slots__ = ("captures", "methods", "order", "plain", "rest_of_predicates", "rule")

    def __init__(self, rule: RouteRule, order: int, captures: tuple[tuple[int, str], ...]):
        self.rule = rule
        self.order = order
        # (index into path.split("/"), variable name)
        self.captures = captures
        self.methods = rule.methods
        # Method-only rules (the common kind) are decided in _pick without a call.
        self.rest_of_predicates = bool(rule.headers or rule.query or rule.claims)
        self.plain = rule.methods is None and not self.rest_of_predicates


class _Node:
    __slots__ = ("end", "exact", "param", "parent", "rest")

    def __init__(self, parent: _Node | None) -> None:
        self.parent = parent  # lets _find back out of an exact chain without a stack
        self.exact: dict[str, _Node] = {}
        self.param: _Node | None = None  # {var} and *: one non-empty segment
        self.end: list[_Entry] | None = None  # patterns that end here, file order
        self.rest: list[_Entry] | None = None  # "**" here: this prefix and all below


# [claims callable, its result once called]: a list, not an object, because
# it is made per match call and a list is the cheapest mutable cell.
_ClaimsBox = list[Any]


def _compile_pattern(rule: RouteRule) -> tuple[list[str], tuple[tuple[int, str], ...]]:
    """The pattern's trie keys ("*" for a variable) and its captures."""
    pattern = rule.pattern
    where = f"route {rule.id!r}: path pattern {pattern!r}"
    if not pattern.startswith("/"):
        raise ValueError(f"{where} must start with '/'")
    segments = pattern.split("/")[1:]
    keys: list[str] = []
    captures: list[tuple[int, str]] = []
    last = len(segments) - 1
    for k, seg in enumerate(segments):
        var = _VAR.fullmatch(seg)
        if seg == "**":
            if k != last:
                raise ValueError(f"{where}: '**' must be the last segment")
            keys.append(seg)
        elif seg == "*" or var is not None:
            if var is not None:
                name = var.group(1)
                if any(name == n for _, n in captures):
                    raise ValueError(f"{where}: variable {{{name}}} appears twice")
                captures.append((k + 1, name))
            keys.append("*")
        elif "{" in seg or "}" in seg or "*" in seg:
            raise ValueError(
                f"{where}: invalid segment {seg!r} (literal text, '{{name}}', '*' or '**')"
            )
        else:
            keys.append(_literal(seg, k == last, where))
    return keys, tuple(captures)


def _literal(seg: str, last: bool, where: str) -> str:
    # Requests are normalised before matching, so the literal is compared in
    # normal form too ("/café" matches "/caf%C3%A9"), and a literal that no
    # normalised path can contain is a config mistake, not a silent dead route.
    try:
        norm = _decode("/" + seg)[1:] if seg else seg
    except BadRequest as e:
        raise ValueError(f"{where}: segment {seg!r}: {e.message}") from None
    if "/" in norm:
        raise ValueError(f"{where}: segment {seg!r} decodes to a '/'")
    if norm in (".", ".."):
        raise ValueError(f"{where}: dot-segments never match (paths are normalised)")
    if not norm and not last:
        raise ValueError(f"{where}: an empty segment never matches ('//' is collapsed)")
    return norm


class Router:
    """The routes of one snapshot, in a prefix trie keyed by path segment."""

    def __init__(self, rules: Sequence[RouteRule]) -> None:
        self._root = _Node(None)
        self._count = len(rules)
        for order, rule in enumerate(rules):
            if order & 255 == 255:
                # A reload builds this in a thread beside the event loop, and
                # compiled (mypyc) code never offers the GIL back by itself:
                # hand it over now and then (5,000 routes held it for 40 ms).
                time.sleep(0)
            keys, captures = _compile_pattern(rule)
            node = self._root
            for key in keys[:-1] if keys[-1] == "**" else keys:
                if key == "*":
                    if node.param is None:
                        node.param = _Node(node)
                    node = node.param
                else:
                    child = node.exact.get(key)
                    if child is None:
                        child = node.exact[key] = _Node(node)
                    node = child
            entry = _Entry(rule, order, captures)
            if keys[-1] == "**":
                node.rest = [*(node.rest or ()), entry]
            else:
                node.end = [*(node.end or ()), entry]

    def __len__(self) -> int:
        return self._count

    def match(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        claims: ClaimsFn | None = None,
    ) -> Match | None:
        """The route for a request whose `path` is already normalised, or None."""
        box = None if claims is None else [claims, _UNSET]
        return _find(self._root, path.split("/"), 1, method, headers, query, box, None)

    def explain(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        claims: ClaimsFn | None = None,
    ) -> Explanation:
        """Like match, and every rule whose path pattern matched, with its outcome."""
        segs = path.split("/")
        notes: list[Candidate] = []
        box = None if claims is None else [claims, _UNSET]
        found = _find(self._root, segs, 1, method, headers, query, box, notes)
        if found is not None:
            # The walk stopped at the winner: whatever it did not reach lost
            # on specificity (or, at the winner's own node, on file order).
            reached = {c.id for c in notes}
            for entries in _matching_lists(self._root, segs, 1):
                same = any(e.rule is found.rule for e in entries)
                for e in entries:
                    if e.rule.id not in reached:
                        why = LATER_IN_FILE if same else LESS_SPECIFIC
                        notes.append(Candidate(e.rule.id, e.rule.pattern, why))
        return Explanation(found, notes)

    def table(self) -> list[dict[str, Any]]:
        """The compiled routes, most specific first (for /admin/routes)."""
        rows: list[dict[str, Any]] = []

        def present(pairs: tuple[tuple[str, str | None], ...]) -> dict[str, str]:
            return {k: "*" if v is None else v for k, v in pairs}

        def walk(node: _Node) -> None:
            for key in sorted(node.exact):
                walk(node.exact[key])
            if node.param is not None:
                walk(node.param)
            for entries in (node.end, node.rest):
                for e in entries or ():
                    r = e.rule
                    rows.append(
                        {
                            "id": r.id,
                            "pattern": r.pattern,
                            "methods": sorted(r.methods) if r.methods is not None else None,
                            "headers": present(r.headers),
                            "query": present(r.query),
                            "claims": dict(r.claims),
                            "file_order": e.order,
                        }
                    )

        walk(self._root)
        return rows


# Module-level functions with plain arguments: this runs on every request, and
# a per-call context object cost more than the whole walk of a short path.


def _find(
    start: _Node,
    segs: list[str],
    i: int,
    method: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    box: _ClaimsBox | None,
    notes: list[Candidate] | None,
) -> Match | None:
    """Depth first, most specific first: exact child, then {var}/*, then "**" here.

    A subtree that yields None had no rule whose predicates all hold, so the
    walk backs out to the next less specific alternative. The exact chain is
    walked in a loop and backed out of through parent links, so the common
    case needs no recursion; only a {var}/* branch recurses.
    """
    n = len(segs)
    node = start
    while i < n:
        child = node.exact.get(segs[i])
        if child is None:
            break
        node = child
        i += 1
    else:
        if node.end is not None:
            found = _pick(node.end, segs, method, headers, query, box, notes)
            if found is not None:
                return found
    while True:
        if i < n and node.param is not None and segs[i]:
            found = _find(node.param, segs, i + 1, method, headers, query, box, notes)
            if found is not None:
                return found
        if node.rest is not None:
            found = _pick(node.rest, segs, method, headers, query, box, notes)
            if found is not None:
                return found
        if node is start or node.parent is None:
            return None
        node = node.parent
        i -= 1


_tuple_new = tuple.__new__  # skips NamedTuple's Python-level __new__: measurably cheaper


def _pick(
    entries: list[_Entry],
    segs: list[str],
    method: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    box: _ClaimsBox | None,
    notes: list[Candidate] | None,
) -> Match | None:
    for e in entries:
        if notes is not None:
            why = _refusal(e.rule, method, headers, query, box, True)
            notes.append(Candidate(e.rule.id, e.rule.pattern, why or "selected"))
            if why is not None:
                continue
        elif not e.plain:
            if e.methods is not None and method not in e.methods:
                continue
            if (
                e.rest_of_predicates
                and _refusal(e.rule, method, headers, query, box, False) is not None
            ):
                continue
        params: dict[str, str] = {}
        for pos, name in e.captures:
            params[name] = segs[pos]
        return _tuple_new(Match, (e.rule, params))
    return None


def _refusal(
    rule: RouteRule,
    method: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    box: _ClaimsBox | None,
    say_why: bool,
) -> str | None:
    """None when every predicate holds; otherwise why not ("" unless say_why).

    The hot path passes say_why=False so that a failing predicate costs no
    string formatting; explain passes True.
    """
    if rule.methods is not None and method not in rule.methods:
        return f"method {method} not in [{', '.join(sorted(rule.methods))}]" if say_why else ""
    for name, want in rule.headers:
        got = headers.get(name)
        if got is None or (want is not None and got != want):
            return _expected("header", name, want, got) if say_why else ""
    for name, want in rule.query:
        got = query.get(name)
        if got is None or (want is not None and got != want):
            return _expected("query", name, want, got) if say_why else ""
    if rule.claims:
        claims = _verified_claims(box)
        for name, want in rule.claims:
            if claims is None:
                return f"claim {name}: no verified token" if say_why else ""
            if not _claim_holds(claims.get(name), want):
                return _expected("claim", name, want, claims.get(name)) if say_why else ""
    return None


def _verified_claims(box: _ClaimsBox | None) -> Mapping[str, Any] | None:
    # Verifying a token is costly: at most once per match call, and only once
    # a candidate with claim predicates is reached.
    if box is None:
        return None
    if box[1] is _UNSET:
        box[1] = box[0]()
    result: Mapping[str, Any] | None = box[1]
    return result


def _expected(kind: str, name: str, want: str | None, got: Any) -> str:
    return f"{kind} {name}: expected {'present' if want is None else repr(want)}, got {got!r}"


def _claim_str(v: Any) -> str:
    # Claims come from JSON: a boolean claim reads as the JSON "true"/"false"
    # that a config author would write, not Python's "True".
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _claim_holds(got: Any, want: str) -> bool:
    if got is None:
        return False
    if isinstance(got, list | tuple):
        return any(_claim_str(v) == want for v in got)
    return _claim_str(got) == want


def _matching_lists(node: _Node, segs: list[str], i: int) -> list[list[_Entry]]:
    """Every entry list whose pattern matches the path, in _find's order."""
    out: list[list[_Entry]] = []
    if i == len(segs):
        if node.end is not None:
            out.append(node.end)
    else:
        child = node.exact.get(segs[i])
        if child is not None:
            out += _matching_lists(child, segs, i + 1)
        if node.param is not None and segs[i]:
            out += _matching_lists(node.param, segs, i + 1)
    if node.rest is not None:
        out.append(node.rest)
    return out


# ---------------------------------------------------------- upstream paths


def compile_rewrite(template: str) -> Callable[[dict[str, str]], str]:
    """'/users/{id}' -> a function of the captured values: {'id': '7'} -> '/users/7'.

    Captured values are segments of the normalised path, so they go in as
    they are (no re-encoding). "{{" and "}}" are literal braces.
    """
    names: list[str] = []
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"invalid rewrite template {template!r}: {e}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        # Only bare names: format_map would otherwise index, getattr or format.
        if _NAME.fullmatch(name) is None or spec or conversion:
            raise ValueError(f"invalid rewrite template {template!r}: {{{name}}}")
        names.append(name)
    if not names:
        constant = template.replace("{{", "{").replace("}}", "}")
        return lambda params: constant
    return template.format_map


def upstream_path(rewrite: str | None, strip_prefix: int) -> Callable[[str, dict[str, str]], str]:
    """A route's path for the upstream, a function of the normalised path and
    the captured values. Built here, compiled: the request path calls it
    natively (a function from compile.py ran in the interpreter each request)."""
    if rewrite is not None:
        render = compile_rewrite(rewrite)
        return lambda path, params: render(params)
    if strip_prefix:
        return lambda path, params: strip_segments(path, strip_prefix)
    return same_path


def same_path(path: str, params: dict[str, str]) -> str:
    return path


def strip_segments(path: str, n: int) -> str:
    """Drop `n` leading segments: strip_prefix=1 turns /api/users/7 into /users/7.

    A path with no more than `n` segments becomes "/"; a trailing "/" stays.
    """
    if n <= 0:
        return path
    parts = path.split("/", n + 1)
    if len(parts) <= n + 1:
        return "/"
    return "/" + parts[n + 1]


def check_pattern(pattern: str) -> None:
    """Raise ValueError when `pattern` is malformed or could never match.

    For config validation, so that `validate` reports it at `routes[N].path`.
    """
    _compile_pattern(RouteRule(id="", pattern=pattern))

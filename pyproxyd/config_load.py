"""Read gateway.toml into a validated `Config`, or a list of located problems.

Problems are reported as `FILE: <dotted.path>: <message> (line N)`, the
format `pyproxyd validate` prints and a failed reload logs.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config import Config, cross_check


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    message: str
    line: int | None = None

    def format(self, file: str) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{file}: {self.path}: {self.message}{where}"


class ConfigError(Exception):
    def __init__(self, file: str, problems: list[Problem]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.format(file) for p in problems))

    def lines(self) -> list[str]:
        return [p.format(self.file) for p in self.problems]


@dataclass(frozen=True, slots=True)
class Loaded:
    config: Config
    path: Path
    digest: str


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def parse(text: str, file: str = "<config>") -> Config:
    """Parse and validate TOML text; raise ConfigError listing every problem.

    Cross-references are checked on the raw data, so that they are reported
    together with the other problems rather than only once those are fixed.
    Problems come in file order.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError(
            file, [Problem("(toml)", str(e), int(m.group(1)) if m else None)]
        ) from None
    locate = _Locator(text)
    problems: list[Problem] = []
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = _clean_loc(err["loc"], data)
            problems.append(Problem(dotted(loc), _message(dict(err)), locate(loc)))
    for loc, msg in cross_check(data):
        problems.append(Problem(dotted(loc), msg, locate(loc)))
    if problems:
        problems = sorted(_dedupe(problems), key=lambda p: (p.line is None, p.line or 0))
        raise ConfigError(file, problems)
    assert cfg is not None
    return cfg


def load(path: str | Path) -> Loaded:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(str(path), [Problem("(file)", f"cannot read: {e.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(path), [Problem("(file)", "not valid UTF-8")]) from None
    return Loaded(parse(text, str(path)), p.resolve(), hashlib.sha256(raw).hexdigest())


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Drop the union-member tags pydantic puts into a loc ('str', 'list[str]', ...).

    A part that names something present in the data is always kept, so an
    upstream called "int" keeps its name in the path.
    """
    out: list[Any] = []
    node = data
    for part in loc:
        if _has(node, part):
            node = node[part]
        elif _is_union_tag(part):
            continue
        else:
            node = None
        out.append(part)
    return tuple(out)


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the union member's type name into loc ("str", "list[str]", ...)
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool") or "[" in part or part.startswith("function-")
    )


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)\s*=""")


class _Locator:
    """Finds the TOML line of a dotted location (best effort: tables and keys)."""

    def __init__(self, text: str):
        self.tables: list[tuple[tuple[Any, ...], int]] = []
        self.keys: dict[tuple[Any, ...], int] = {}
        counts: dict[tuple[Any, ...], int] = {}
        current: tuple[Any, ...] = ()
        for n, line in enumerate(text.splitlines(), 1):
            h = _HEADER.match(line)
            if h:
                parts = tuple(_unquote(p) for p in _split_dotted(h.group(2)))
                if h.group(1) == "[[":
                    idx = counts.get(parts, 0)
                    counts[parts] = idx + 1
                    current = (*parts, idx)
                else:
                    current = parts
                self.tables.append((current, n))
                continue
            k = _KEY.match(line)
            if k:
                key = (*current, *(_unquote(p) for p in _split_dotted(k.group(1))))
                self.keys.setdefault(key, n)

    def __call__(self, loc: tuple[Any, ...]) -> int | None:
        for cut in range(len(loc), 0, -1):
            prefix = loc[:cut]
            if prefix in self.keys:
                return self.keys[prefix]
            for table, n in self.tables:
                if table == prefix:
                    return n
        return None


def _split_dotted(s: str) -> list[str]:
    return [p.strip() for p in re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', s)]


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    return s

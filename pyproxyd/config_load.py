"""Read gateway.toml into a validated `Config`, or a list of located problems.

Problems are reported as `FILE: <dotted.path>: <message> (line N)`, the
format `pyproxyd validate` prints and a failed reload logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config import Config, RouteConfig, cross_check
from .middleware.python import sources


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    message: str
    line: int | None = None
    source: str | None = None  # where it is, when not the file (a document's key or name)

    def format(self, file: str) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.source or file}: {self.path}: {self.message}{where}"


@dataclass(frozen=True, slots=True)
class Document:
    """A TOML document whose tables replace the file's tables of the same
    names: the one at etcd.config_key (`name` is the key), or the one
    `pyproxyd push` is about to write (`name` is its path)."""

    name: str
    text: str
    revision: int = 0  # the key's mod_revision; 0 for a document not read from etcd


# The tables a document may bring; the rest of the config is the file's own
# (listeners, admin, logging, the shared zone and etcd itself).
DOCUMENT_TABLES = frozenset({"upstreams", "routes", "rate_limits", "consumers", "auth",
                             "middlewares"})  # fmt: skip


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
    document: Document | None = None  # the etcd document merged in, if any


_BARE_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")


def dotted(loc: tuple[Any, ...]) -> str:
    """('routes', 2, 'strip_prefx') -> 'routes[2].strip_prefx'.

    Names that are not bare TOML keys are quoted as in TOML, so that
    [upstreams."api.v1"] stays one part: upstreams."api.v1".targets.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = str(part)
            if not _BARE_KEY.match(name):
                name = json.dumps(name, ensure_ascii=False)
            out += ("." if out else "") + name
    return out or "(root)"


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def parse(text: str, file: str = "<config>", document: Document | None = None) -> Config:
    """Parse and validate TOML text; raise ConfigError listing every problem.

    Cross-references are checked on the raw data, so that they are reported
    together with the other problems rather than only once those are fixed.
    Problems come in file order. With a `document`, its tables replace the
    file's, and their problems are named by the document.
    """
    data = _toml(text, file)
    brought: dict[str, Any] = {}
    problems: list[Problem] = []
    if document is not None:
        brought = _toml(document.text, document.name)
        for name in list(brought):
            if name not in DOCUMENT_TABLES:
                del brought[name]
                problems.append(Problem(name, "only the tables " + ", ".join(sorted(
                    DOCUMENT_TABLES)) + " can come from a shared document", None,
                    document.name))  # fmt: skip
        data = {**data, **brought}
    locate = _Locator(text)
    locate_doc = _Locator(document.text) if document is not None else locate
    cfg, errs = _validate(data)
    found = [(_clean_loc(err["loc"], data), _message(dict(err))) for err in errs]
    for loc, msg in [*found, *cross_check(data)]:
        if document is not None and loc and loc[0] in brought:
            problems.append(Problem(dotted(loc), msg, locate_doc(loc), document.name))
        else:
            problems.append(Problem(dotted(loc), msg, locate(loc)))
    if problems:
        problems = sorted(
            _dedupe(problems), key=lambda p: (p.source or "", p.line is None, p.line or 0)
        )
        raise ConfigError(file, problems)
    assert cfg is not None
    return cfg


def _toml(text: str, name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError(
            name, [Problem("(toml)", str(e), int(m.group(1)) if m else None)]
        ) from None


def _validate(data: dict[str, Any]) -> tuple[Config | None, list[Any]]:
    """Validate route by route, then the rest.

    One model_validate over a 5,000-route file is a single native call that
    holds the GIL for tens of milliseconds; a reload compiles in a thread,
    and per-route calls let the event loop in between.
    """
    errors: list[Any] = []
    raw_routes = data.get("routes")
    routes: list[RouteConfig] = []
    if isinstance(raw_routes, list):
        for i, raw in enumerate(raw_routes):
            try:
                routes.append(RouteConfig.model_validate(raw))
            except ValidationError as e:
                errors.extend({**err, "loc": ("routes", i, *err["loc"])} for err in e.errors())
        data = {**data, "routes": []}
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        errors.extend(e.errors())
        return None, errors
    if errors:
        return None, errors
    if isinstance(raw_routes, list):
        cfg = cfg.model_copy(update={"routes": routes})
    return cfg, errors


def load(path: str | Path, document: Document | None = None) -> Loaded:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(str(path), [Problem("(file)", f"cannot read: {e.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(path), [Problem("(file)", "not valid UTF-8")]) from None
    cfg = parse(text, str(path), document)
    problems = _check_paths(cfg, p.resolve().parent, text)
    if problems:
        raise ConfigError(str(path), problems)
    digest = hashlib.sha256(raw)
    if document is not None:  # a new revision is a new config, even with the same text
        digest.update(b"\0doc %d\0" % document.revision + document.text.encode())
    for extra in _read_by_compile(cfg, p.resolve().parent):
        # A file the compile reads is part of the config: when only it changed,
        # the digest changes too, so a reload (SIGHUP) is not skipped as a no-op.
        digest.update(b"\0" + extra)
    return Loaded(cfg, p.resolve(), digest.hexdigest(), document)


def log_file(cfg: Config, folder: Path) -> Path | None:
    """Where `logging.file` appends (like every path in the config, relative to its folder)."""
    return folder / cfg.logging.file if cfg.logging.file else None


def _check_paths(cfg: Config, folder: Path, text: str) -> list[Problem]:
    """What `run` would open for writing and cannot: found by `validate`, not by a
    traceback at start. Files the compile reads (TLS, jwks_file) it checks itself."""
    path = log_file(cfg, folder)
    if path is None:
        return []
    if not path.parent.exists():
        message = f"folder {path.parent} does not exist"
    elif not path.parent.is_dir():
        message = f"{path.parent} is not a folder"
    elif path.is_dir():
        message = f"{path} is a folder"
    else:
        return []
    loc = ("logging", "file")
    return [Problem(dotted(loc), message, _Locator(text)(loc))]


def inputs(cfg: Config, folder: Path) -> list[Path]:
    """The files besides gateway.toml that a compile reads (relative to its folder)."""
    out = []
    if cfg.server.tls is not None:
        out += [folder / cfg.server.tls.cert, folder / cfg.server.tls.key]
    if cfg.auth.jwt is not None and cfg.auth.jwt.jwks_file:
        out.append(folder / cfg.auth.jwt.jwks_file)
    if cfg.middlewares and cfg.server.python_path:
        # A changed middleware module is a changed config: watched, and in the digest.
        out += sources([(folder / p).resolve() for p in cfg.server.python_path])
    return out


def watched(loaded: Loaded) -> list[Path]:
    """Every file whose change should reload `loaded`: the file and its inputs."""
    return [loaded.path, *inputs(loaded.config, loaded.path.parent)]


def _read_by_compile(cfg: Config, folder: Path) -> list[bytes]:
    out = []
    for path in inputs(cfg, folder):
        with contextlib.suppress(OSError):  # compile reports it, with the path
            out.append(path.read_bytes())
    return out


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
        elif _is_union_tag(part) or (isinstance(node, dict) and node.get("type") == part):
            continue  # (the second: the tag of a union told apart by its `type` key)
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
_KEY_PART = r"""(?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)"""
_KEY = re.compile(rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")


class _Locator:
    """Finds the TOML line of a dotted location (best effort: tables, keys and
    the elements of arrays written over several lines)."""

    def __init__(self, text: str):
        self.lines: dict[tuple[Any, ...], int] = {}
        arrays: dict[tuple[Any, ...], int] = {}  # [[array]] of tables -> its last index
        current: tuple[Any, ...] = ()
        lines = text.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            h = _HEADER.match(line)
            if h:
                current = _resolve(_parts(h.group(2)), arrays)
                if h.group(1) == "[[":
                    arrays[current] = arrays.get(current, -1) + 1
                    current = (*current, arrays[current])
                self.lines.setdefault(current, i)
                continue
            k = _KEY.match(line)
            if k:
                key = (*current, *_parts(k.group(1)))
                for cut in range(len(current) + 1, len(key) + 1):  # a.b = 1 makes table a
                    self.lines.setdefault(key[:cut], i)
                i = self._value(key, lines, i - 1, k.end())

    def _value(self, key: tuple[Any, ...], lines: list[str], i: int, col: int) -> int:
        """Skip the value that starts at lines[i][col]; note where array elements
        start. Returns the index of the line after the value."""
        depth, quote, array, expect, element = 0, "", False, False, -1
        while i < len(lines):
            text = lines[i]
            j = col
            while j < len(text):
                c = text[j]
                if quote:
                    if c == "\\" and quote == '"':
                        j += 1
                    elif c == quote:
                        quote = ""
                elif c == "#":
                    break
                else:
                    if array and depth == 1 and expect and not c.isspace() and c not in ",]":
                        element, expect = element + 1, False
                        self.lines.setdefault((*key, element), i + 1)
                    if c in "\"'":
                        quote = c
                    elif c in "[{":
                        if depth == 0 and c == "[":
                            array = expect = True
                        depth += 1
                    elif c in "]}":
                        depth -= 1
                    elif c == "," and depth == 1:
                        expect = True
                j += 1
            i, col = i + 1, 0
            if depth <= 0 and not quote:
                break
        return i

    def __call__(self, loc: tuple[Any, ...]) -> int | None:
        for cut in range(len(loc), 0, -1):
            if loc[:cut] in self.lines:
                return self.lines[loc[:cut]]
        return None


def _resolve(parts: tuple[str, ...], arrays: dict[tuple[Any, ...], int]) -> tuple[Any, ...]:
    """[routes.headers] after [[routes]] is a table of the last route."""
    out: tuple[Any, ...] = ()
    for n, part in enumerate(parts):
        out = (*out, part)
        if n < len(parts) - 1 and out in arrays:
            out = (*out, arrays[out])
    return out


def _parts(dotted_key: str) -> tuple[str, ...]:
    return tuple(_unquote(p) for p in _split_dotted(dotted_key))


def _split_dotted(s: str) -> list[str]:
    return [p.strip() for p in re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', s)]


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    return s

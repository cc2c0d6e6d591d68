#!/usr/bin/env python3
"""The module-level import graph of pyproxyd, and its cycles.

    .venv/bin/python scripts/import_graph.py            # cycles (type-only imports included)
    .venv/bin/python scripts/import_graph.py --edges    # and every module's imports

Imports inside functions are left out (they run later, once everything is
loaded); `if TYPE_CHECKING:` imports count unless --runtime is given, since a
type-level circle is still a circle a reader has to hold in mind.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pyproxyd"


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def graph(package: Path = PACKAGE, *, types: bool = True) -> dict[str, set[str]]:
    mods = modules(package)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.parse(path.read_text()).body:
            body = [node]
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                if not types:
                    continue
                body = node.body
            elif isinstance(node, ast.Try):
                body = node.body
            for stmt in body:
                if isinstance(stmt, ast.ImportFrom):
                    base = name.split(".")
                    if stmt.level:
                        base = base[: len(base) - stmt.level + (1 if is_package else 0)]
                        target = ".".join([*base, *([stmt.module] if stmt.module else [])])
                    else:
                        target = stmt.module or ""
                    for alias in stmt.names:
                        full = f"{target}.{alias.name}"
                        found = full if full in mods else target
                        if found in mods and found != name:
                            edges[name].add(found)
                elif isinstance(stmt, ast.Import):
                    edges[name].update(a.name for a in stmt.names if a.name in mods)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", action="store_true", help="print every module's imports")
    ap.add_argument("--runtime", action="store_true", help="leave TYPE_CHECKING imports out")
    args = ap.parse_args()
    edges = graph(types=not args.runtime)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} import edges")
    for component in cycles(edges):
        print("cycle:", " <-> ".join(component))
    if args.edges:
        for name in sorted(edges):
            print(f"{name} -> {', '.join(sorted(edges[name])) or '-'}")


if __name__ == "__main__":
    main()

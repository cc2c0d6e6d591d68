"""A fresh clone stands alone: nothing it needs lies outside the repository.

The team's checkouts sit beside a spec folder, and the suite once read its
gateway.toml, so a clone on its own failed its own tests. The reference
config now lives in docs/; the spec is checked too only when PYPROXYD_SPEC
names it (tests/reference.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.reference import REFERENCE, REFERENCE_CONFIGS

REPO = Path(__file__).resolve().parents[1]

# A path that leaves the repository for the spec folder beside it.
OUTSIDE = re.compile(r"""\.\./shared|/work/shared|parent\s*/\s*["']shared["']|["']\.\.["']\s*/""")

# Where nothing may reach outside: the package, its tests, the configs and docs.
SCANNED = ["pyproxyd", "tests", "etc", "docs", "systemd"]
ALLOWED = {Path(__file__).resolve()}  # (its own samples below)
UP = ".." + "/"  # the samples are spelled in pieces, so no tool finds them a real reference


def text_files(*roots: str) -> list[Path]:
    out = []
    for root in roots:
        for path in sorted((REPO / root).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            try:
                path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # a compiled extension, an image
            out.append(path)
    return out


def outside_refs(path: Path) -> list[str]:
    return [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]


def test_the_pattern_finds_what_it_is_for() -> None:
    for line in [
        'SPEC = REPO.parent / "' + 'shared" / "spec" / "gateway.toml"',
        f"# {UP}shared/spec/gateway.toml shows every table.",
        f'open("{UP}shared/spec/jwks.json")',
    ]:
        assert OUTSIDE.search(line), line
    assert not OUTSIDE.search("state shared by every worker, in shared memory")


def test_nothing_in_the_repository_reaches_for_files_outside_it() -> None:
    found = [ref for p in text_files(*SCANNED) if p not in ALLOWED for ref in outside_refs(p)]
    assert found == []


def test_the_readme_mentions_outside_only_the_optional_benchmark() -> None:
    # the peer benchmark (peers.sh, beside the checkout) is a developers' tool
    bench = re.escape(UP) + "shared/bench"
    found = [ref for ref in outside_refs(REPO / "README.md") if not re.search(bench, ref)]
    assert found == []


def test_the_repository_copy_is_always_checked() -> None:
    assert REFERENCE_CONFIGS[0] == REFERENCE
    assert REFERENCE.is_file() and (REFERENCE.parent / "jwks.json").is_file()
    assert REFERENCE.is_relative_to(REPO)


@pytest.mark.parametrize(
    "page", [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: p.name
)
def test_relative_links_of_the_docs_resolve_inside_the_repository(page: Path) -> None:
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:|#", target):
            continue  # a URL or an anchor of the same page
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(REPO) or not path.exists():
            bad.append(target)
    assert bad == []

"""What a user installs: the build's choice, the wheel's contents, `pyproxyd files`
and `--version`. The compiled wheel itself is built and run from a fresh venv by
scripts/ci_install_check.sh (.ci/run): here the wheel is the pure one, which
takes seconds, and has the same files but the extensions."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import pyproxyd_build as backend
from pyproxyd import __version__, compiled, shipped

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def run(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None, stdin: str = ""):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, input=stdin,
        timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run("-m", "pyproxyd", *args)


# ------------------------------------------------------------ the build's choice


Plan = backend.Plan
AUTO: dict[str, str] = {}


@pytest.mark.parametrize(
    ("env", "editable", "compiler", "headers", "want"),
    [
        (AUTO, False, True, True, Plan(compile=True, required=False)),
        (AUTO, False, False, True, Plan(False, False, "no C compiler", True)),
        (AUTO, False, True, False, Plan(False, False, "no Python headers", True)),
        (
            AUTO,
            False,
            False,
            False,
            Plan(False, False, "no C compiler and no Python headers", True),
        ),
        ({"PYPROXYD_COMPILE": ""}, False, True, True, Plan(True, False)),
        ({"PYPROXYD_COMPILE": "1"}, False, False, False, Plan(True, True)),
        ({"PYPROXYD_COMPILE": "1"}, True, True, True, Plan(True, True)),
        ({"PYPROXYD_COMPILE": "0"}, False, True, True, Plan(False, False, "PYPROXYD_COMPILE=0")),
    ],
)
def test_the_build_compiles_when_it_can_and_as_told(
    env: dict[str, str], editable: bool, compiler: bool, headers: bool, want: Plan
) -> None:
    assert backend.plan(env, editable=editable, compiler=compiler, headers=headers) == want


def test_an_editable_install_stays_pure_unless_told() -> None:
    got = backend.plan({}, editable=True, compiler=True, headers=True)
    assert (got.compile, got.required, got.missing_tools) == (False, False, False)
    assert got.pure_line() == (
        "building pure Python (an editable install; scripts/compile.sh compiles a checkout "
        "in place)"
    )


def test_only_missing_tools_get_the_how_to_line() -> None:
    told = backend.plan({"PYPROXYD_COMPILE": "0"}, editable=False, compiler=True, headers=True)
    assert told.pure_line() == "building pure Python (PYPROXYD_COMPILE=0)"
    bare = backend.plan({}, editable=False, compiler=True, headers=False)
    assert bare.pure_line().startswith("building pure Python (no Python headers); for the ")
    assert "apt-get install gcc python3-dev" in bare.pure_line()


def test_a_value_of_pyproxyd_compile_it_does_not_know_is_refused() -> None:
    with pytest.raises(ValueError, match="PYPROXYD_COMPILE='yes'"):
        backend.plan({"PYPROXYD_COMPILE": "yes"}, editable=False, compiler=True, headers=True)


def hook(name: str, env: dict[str, str]) -> list[str]:
    code = f"import json, pyproxyd_build as b; print(json.dumps(b.{name}()))"
    r = run("-c", code, env=env)
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout.splitlines()[-1]))


def test_a_compiling_build_requires_mypyc_and_what_its_type_check_imports() -> None:
    # mypy runs with the pydantic plugin and must see the types `mypy pyproxyd`
    # sees: a fresh venv once failed with "No module named 'pydantic'"
    names = {re.split(r"[<>=\[ ]", r)[0].lower() for r in hook("get_requires_for_build_wheel",
             {"PYPROXYD_COMPILE": "1"})}  # fmt: skip
    assert {"mypy", "pydantic", "aiohttp", "httptools", "structlog"} <= names
    pure = hook("get_requires_for_build_wheel", {"PYPROXYD_COMPILE": "0"})
    assert not any(r.startswith(("mypy", "pydantic")) for r in pure)
    editable = hook("get_requires_for_build_editable", {"PYPROXYD_COMPILE": ""})
    assert not any(r.startswith("mypy") for r in editable)


# ---------------------------------------------------------------- the wheel


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(sdist, pure wheel built from it, the build's stderr), by the backend's
    hooks as `python -m build` calls them; no C compiler, so the line shows."""
    out = tmp_path_factory.mktemp("dist")
    r = run("-c", f"import pyproxyd_build as b; print(b.build_sdist({str(out)!r}))")
    assert r.returncode == 0, r.stderr
    sdist = out / r.stdout.splitlines()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(out, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    src = out / sdist.name.removesuffix(".tar.gz")
    code = f"import pyproxyd_build as b; print(b.build_wheel({str(out)!r}))"
    r = run("-c", code, cwd=src, env={"PYPROXYD_COMPILE": "", "CC": "/nonexistent/cc"})
    assert r.returncode == 0, r.stderr
    return sdist, out / r.stdout.splitlines()[-1], r.stderr


def test_without_a_compiler_the_build_is_pure_python_and_says_so_in_one_line(
    built: tuple[Path, Path, str],
) -> None:
    _, wheel, stderr = built
    lines = [line for line in stderr.splitlines() if line.startswith("pyproxyd:")]
    assert len(lines) == 1
    assert "building pure Python (no C compiler)" in lines[0]
    assert "apt-get install gcc python3-dev" in lines[0] and "PYPROXYD_COMPILE=1" in lines[0]
    assert wheel.name == f"pyproxyd-{__version__}-py3-none-any.whl"


def test_the_wheel_carries_what_the_gateway_and_a_vm_install_need(
    built: tuple[Path, Path, str],
) -> None:
    _, wheel, _ = built
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for item in shipped.SHIPPED:  # byte for byte the checkout's
            assert z.read(f"pyproxyd/share/{item.name}") == (REPO / item.source).read_bytes()
        metadata = z.read(f"pyproxyd-{__version__}.dist-info/METADATA").decode()
    assert {
        "pyproxyd/py.typed",
        "pyproxyd/observe/status.html",
        "pyproxyd/ratelimit/gcra.lua",
        "pyproxyd/ratelimit/sliding_window.lua",
        "pyproxyd/shipped.py",
        f"pyproxyd-{__version__}.dist-info/licenses/LICENSE",
    } <= names
    assert {m.replace(".", "/") + ".py" for m in compiled.MODULES} <= names
    assert not [n for n in names if not n.startswith(("pyproxyd/", "pyproxyd-"))]
    assert not [n for n in names if n.endswith((".so", ".pyc"))]
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]


def test_the_sdist_builds_the_same_wheel_as_the_checkout(built: tuple[Path, Path, str]) -> None:
    sdist, _, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"pyproxyd_build.py", "setup.py", "LICENSE", "MANIFEST.in"} <= names
    assert {item.source for item in shipped.SHIPPED} <= names
    assert not [n for n in names if n.startswith("tests/") or n.endswith(".so")]


# ---------------------------------------------------------------- pyproxyd files


def test_files_lists_what_it_writes() -> None:
    r = cli("files")
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.splitlines()]
    assert listed == [item.name for item in shipped.SHIPPED] + [shipped.SCHEMA]


def test_files_writes_every_file_and_overwrites_none_without_force(tmp_path: Path) -> None:
    dest = tmp_path / "share"
    r = cli("files", "--write", str(dest))
    assert r.returncode == 0, r.stderr
    for item in shipped.SHIPPED:
        assert (dest / item.name).read_bytes() == (REPO / item.source).read_bytes()
    schema = json.loads((dest / shipped.SCHEMA).read_text())
    assert schema == json.loads(cli("schema").stdout)
    assert r.stdout.split() == [str(dest / name) for name, _ in shipped.listing()]

    edited = dest / "gateway.toml"
    edited.write_text("# mine\n")
    again = cli("files", "--write", str(dest))
    assert again.returncode == 1
    assert "nothing written (--force overwrites)" in again.stderr and str(edited) in again.stderr
    assert edited.read_text() == "# mine\n"

    forced = cli("files", "--write", str(dest), "--force")
    assert forced.returncode == 0, forced.stderr
    assert edited.read_bytes() == (REPO / "etc" / "gateway.toml").read_bytes()


def test_files_with_one_of_them_present_writes_none(tmp_path: Path) -> None:
    (tmp_path / "prometheus").mkdir()
    (tmp_path / "prometheus" / "alerts.yml").write_text("groups: []\n")
    r = cli("files", "--write", str(tmp_path))
    assert r.returncode == 1
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "prometheus",
        "prometheus/alerts.yml",
    ]


def test_an_installed_wheel_reads_its_own_copies(tmp_path: Path) -> None:
    share = tmp_path / "share"
    for item in shipped.SHIPPED:
        (share / item.name).parent.mkdir(parents=True, exist_ok=True)
        (share / item.name).write_text(f"wheel copy of {item.name}\n")
    written = shipped.write(tmp_path / "out", share=share)
    assert (tmp_path / "out" / "pyproxyd.service").read_text() == "wheel copy of pyproxyd.service\n"
    assert len(written) == len(shipped.SHIPPED) + 1
    nowhere = shipped.Shipped("x.toml", "no/such/file", "")
    with pytest.raises(shipped.NotShipped, match=r"x\.toml"):
        shipped.locate(nowhere, share=share)


def test_the_units_documentation_is_a_file_the_readme_install_writes() -> None:
    unit = (REPO / "systemd" / "pyproxyd.service").read_text()
    (doc,) = re.findall(r"^Documentation=file://(\S+)$", unit, re.M)
    folder, name = doc.rsplit("/", 1)
    assert name in {item.name for item in shipped.SHIPPED}
    assert f"pyproxyd files --write {folder}" in (REPO / "README.md").read_text()


# ---------------------------------------------------------------- --version


@pytest.mark.parametrize(
    ("compiled_", "stale", "want"),
    [
        (0, 0, "interpreted"),
        (35, 0, "compiled 35/35"),
        (30, 0, "compiled 30/35"),
        (35, 2, "compiled 35/35, 2 stale: scripts/compile.sh rebuilds"),
    ],
)
def test_describe_names_the_build(compiled_: int, stale: int, want: str) -> None:
    assert compiled.describe(compiled_, stale, total=35) == want


def test_version_says_which_build_runs() -> None:
    # in the suite's pure run it says interpreted, in the compiled run compiled N/N
    r = cli("--version")
    assert r.returncode == 0, r.stderr
    running = compiled.running()
    assert r.stdout == f"pyproxyd {__version__} ({running})\n"
    expect = os.environ.get("PYPROXYD_EXPECT_COMPILED")
    if expect is not None:
        n = len(compiled.MODULES)
        assert running == (f"compiled {n}/{n}" if expect == "1" else "interpreted")
    if running == "interpreted":  # and how to get the fast one
        assert "scripts/compile.sh" in r.stderr


# ---------------------------------------------------------------- the demo and CI


def test_the_demo_key_is_the_example_configs_consumer() -> None:
    import ast

    tour = ast.parse((SCRIPTS / "demo_tour.py").read_text())
    (key,) = [n.value.value for n in tour.body if isinstance(n, ast.Assign)
              and getattr(n.targets[0], "id", "") == "KEY"]  # fmt: skip
    from pyproxyd.config_load import load

    cfg = load(REPO / "etc" / "gateway.toml").config
    assert cfg.consumers["demo"].api_key_sha256 == hashlib.sha256(key.encode()).hexdigest()


def test_ci_runs_the_suite_and_then_the_install_check() -> None:
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    steps = [line for line in lines if line.startswith("bash scripts/")]
    assert steps == [
        'bash scripts/test.sh "$@" || status=1',
        "bash scripts/ci_install_check.sh || status=1",
    ]

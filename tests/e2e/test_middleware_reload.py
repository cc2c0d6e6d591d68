"""A `python` middleware across reloads of the real gateway: a changed module
is re-imported even when gateway.toml is byte-identical, a module that no
longer imports keeps the old config serving, and changed options reach a
freshly built middleware."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from harness.backends import Backend
from harness.gateway import config, fetch, gateway, url
from pyproxyd.server import Gateway

# The module's globals outlive a reload that does not change its files;
# `made` counts the factory calls since the module was last imported.
MODULE = """
made = 0


class Stamp:
    def __init__(self, label):
        self.label = label

    def on_response(self, req, resp):
        resp.headers["X-Version"] = "{version}"
        resp.headers["X-Label"] = self.label
        resp.headers["X-Made"] = str(made)


def make(options):
    global made
    made += 1
    return Stamp(options["label"])
"""


@pytest.fixture(autouse=True)
def bytecode_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a gateway runs by default: imports write .pyc files (the test
    environment may say not to, and a stale .pyc is one way to serve old code)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)


def setup(tmp_path: Path, backend: Backend, module: str, label: str = "first") -> str:
    """The config; the module (its name unique to the test: modules stay
    imported in this process) is written at version 1."""
    write(tmp_path, module, "1")
    return config(
        f"""
[upstreams.app]
targets = [{{ url = "{backend.url}" }}]

[middlewares.stamp]
type = "python"
factory = "{module}:make"
options = {{ label = "{label}" }}

[[routes]]
id = "api"
path = "/api/**"
upstream = "app"
strip_prefix = 1
middlewares = ["stamp"]
""",
        server='python_path = ["plugins"]',
    )


def write(
    tmp_path: Path, module: str, version: str, source: str = MODULE, folder: str = "plugins"
) -> Path:
    plugins = tmp_path / folder
    plugins.mkdir(exist_ok=True)
    path = plugins / f"{module}.py"
    path.write_text(source.replace("{version}", version))
    return path


async def stamp(gw: Gateway) -> tuple[str, str, str]:
    status, headers, _ = await fetch(url(gw, "/api/echo"))
    assert status == 200
    return headers["X-Version"], headers["X-Label"], headers["X-Made"]


async def test_a_changed_module_is_used_after_a_reload_of_an_identical_config(
    tmp_path: Path,
) -> None:
    async with Backend() as b, gateway(tmp_path, setup(tmp_path, b, "mwr_changed")) as gw:
        assert await stamp(gw) == ("1", "first", "1")
        toml = (tmp_path / "gateway.toml").read_bytes()
        write(tmp_path, "mwr_changed", "2-longer")
        assert await gw.reloader.reload()
        assert (tmp_path / "gateway.toml").read_bytes() == toml
        # a fresh import: new code, and module globals start over
        assert await stamp(gw) == ("2-longer", "first", "1")


async def test_a_same_size_edit_in_quick_succession_is_used(tmp_path: Path) -> None:
    # Faster than a .pyc's whole-second source mtime can tell versions apart.
    async with Backend() as b, gateway(tmp_path, setup(tmp_path, b, "mwr_quick")) as gw:
        assert (await stamp(gw))[0] == "1"
        for version in ("2", "3", "4"):
            write(tmp_path, "mwr_quick", version)
            assert await gw.reloader.reload()
            assert (await stamp(gw))[0] == version


async def test_a_same_size_edit_that_keeps_the_mtime_is_used(tmp_path: Path) -> None:
    # What `cp -p`, rsync -t or a reproducible build's fixed timestamps deliver.
    async with Backend() as b, gateway(tmp_path, setup(tmp_path, b, "mwr_mtime")) as gw:
        path = tmp_path / "plugins" / "mwr_mtime.py"
        before = path.stat()
        assert (await stamp(gw))[0] == "1"
        write(tmp_path, "mwr_mtime", "2")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_size == before.st_size
        assert await gw.reloader.reload()
        assert (await stamp(gw))[0] == "2"


async def test_a_module_that_no_longer_imports_keeps_the_old_one_serving(
    tmp_path: Path,
) -> None:
    async with (
        Backend() as b,
        gateway(tmp_path, setup(tmp_path, b, "mwr_broken")) as gw,
        aiohttp.ClientSession() as s,
    ):
        assert await stamp(gw) == ("1", "first", "1")
        write(tmp_path, "mwr_broken", "2", MODULE + "\ndef broken(:\n")
        assert not await gw.reloader.reload()
        assert await stamp(gw) == ("1", "first", "1")  # the old snapshot, old code

        async with s.get(f"http://127.0.0.1:{gw.admin_port}/admin/config") as r:
            info = json.loads(await r.read())
        (line,) = info["last_reload_error"]
        assert line.startswith(
            f"{tmp_path / 'gateway.toml'}: (compile): middlewares.stamp.factory:"
        )
        assert "cannot import 'mwr_broken'" in line

        write(tmp_path, "mwr_broken", "3")  # fixed: the next reload takes it
        assert await gw.reloader.reload()
        assert (await stamp(gw))[0] == "3"


async def test_a_factory_that_raises_on_reload_keeps_the_old_one_serving(
    tmp_path: Path,
) -> None:
    async with Backend() as b, gateway(tmp_path, setup(tmp_path, b, "mwr_raises")) as gw:
        assert await stamp(gw) == ("1", "first", "1")
        write(tmp_path, "mwr_raises", "2", MODULE.replace("global made", "raise KeyError(1)"))
        assert not await gw.reloader.reload()
        assert await stamp(gw) == ("1", "first", "1")
        (line,) = gw.reloader.tally.last_error or []
        assert "middlewares.stamp.factory: the factory raised KeyError(1)" in line


async def test_changed_options_build_a_new_middleware_from_the_same_module(
    tmp_path: Path,
) -> None:
    async with Backend() as b, gateway(tmp_path, setup(tmp_path, b, "mwr_options")) as gw:
        assert await stamp(gw) == ("1", "first", "1")
        path = tmp_path / "gateway.toml"
        path.write_text(path.read_text().replace('label = "first"', 'label = "second"'))
        assert await gw.reloader.reload()
        # the factory ran again with the new options; the unchanged module was
        # not re-imported, so its globals carried over
        assert await stamp(gw) == ("1", "second", "2")


async def test_a_module_of_the_same_name_in_a_new_python_path_is_used(tmp_path: Path) -> None:
    async with Backend() as b, gateway(tmp_path, setup(tmp_path, b, "mwr_moved")) as gw:
        assert (await stamp(gw))[0] == "1"
        write(tmp_path, "mwr_moved", "2-moved", folder="plugins2")
        path = tmp_path / "gateway.toml"
        path.write_text(path.read_text().replace('["plugins"]', '["plugins2"]'))
        assert await gw.reloader.reload()
        assert (await stamp(gw))[0] == "2-moved"

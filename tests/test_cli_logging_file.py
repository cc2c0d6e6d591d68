"""`logging.file` in a folder that does not exist: refused by validate, and by
run in one line, never with a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[logging]
format = "json"
file = "{file}"
[upstreams.app]
targets = [{{ url = "http://127.0.0.1:9" }}]
[[routes]]
id = "a"
path = "/**"
upstream = "app"
"""


def pyproxyd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyproxyd", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_log_file_in_a_missing_folder_is_one_located_line(tmp_path: Path, command: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG.format(file="no-such-dir/gateway.log"))
    r = pyproxyd(command, "-c", str(path))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        f"{path}: logging.file: folder {tmp_path / 'no-such-dir'} does not exist (line 8)"
    ]


def test_a_log_file_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG.format(file="logs"))
    r = pyproxyd("validate", "-c", str(path))
    assert r.returncode == 1
    assert r.stderr.startswith(f"{path}: logging.file: {tmp_path / 'logs'} is a folder")


def test_a_log_file_in_an_existing_folder_validates(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG.format(file="logs/gateway.log"))
    r = pyproxyd("validate", "-c", str(path))
    assert r.returncode == 0, r.stderr

"""The command line, run as a real subprocess, as users and their CI run it."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reference import REFERENCE, REFERENCE_CONFIGS, config_id

REPO = Path(__file__).resolve().parents[1]

BASIC = """
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[upstreams.users]
targets = [{ url = "http://127.0.0.1:9001" }]
[upstreams.v2]
targets = [{ url = "http://127.0.0.1:9002" }]

[[routes]]
id = "users-v2"
path = "/api/users/**"
headers = { "Api-Version" = "v2" }
upstream = "v2"
strip_prefix = 1

[[routes]]
id = "users"
path = "/api/users/**"
methods = ["GET"]
upstream = "users"
strip_prefix = 1

[[routes]]
id = "user-by-id"
path = "/v1/user/{id}"
upstream = "users"
rewrite = "/users/{id}"
"""


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyproxyd", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        cwd=REPO,
    )


@pytest.fixture
def basic(tmp_path: Path) -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text(BASIC)
    return p


@pytest.mark.parametrize("config", REFERENCE_CONFIGS, ids=config_id)
def test_validate_accepts_the_reference_config(config: Path) -> None:
    r = cli("validate", "-c", str(config))
    assert r.returncode == 0, r.stderr
    assert "5 routes, 3 upstreams, 3 rate-limit policies" in r.stdout


def test_validate_reports_each_problem_with_dotted_path_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    text = BASIC + '\n[[routes]]\nid = "x"\npath = "/x"\nupstream = "users"\nstrip_prefx = 1\n'
    text += 'timeout = "soon"\n'
    p.write_text(text)
    bad_line = text.splitlines().index("strip_prefx = 1") + 1
    r = cli("validate", "-c", str(p))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert f"{p}: routes[3].strip_prefx: unknown key (line {bad_line})" in lines
    assert any(line.startswith(f"{p}: routes[3].timeout: invalid duration") for line in lines)
    assert r.stdout == ""


def test_validate_reports_cross_references(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(BASIC.replace('upstream = "v2"', 'upstream = "v3"'))
    r = cli("validate", "-c", str(p))
    assert r.returncode == 1
    assert f"{p}: routes[0].upstream: unknown upstream 'v3'" in r.stderr


def test_validate_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    r = cli("validate", "-c", str(tmp_path / "nope.toml"))
    assert r.returncode == 1
    assert "cannot read" in r.stderr
    assert "Traceback" not in r.stderr


def test_validate_loads_the_tls_certificate(tmp_path: Path) -> None:
    p = tmp_path / "gateway.toml"
    p.write_text(BASIC.replace("[server]", '[server]\ntls = { cert = "a.crt", key = "a.key" }'))
    r = cli("validate", "-c", str(p))
    assert r.returncode == 1
    assert f"server.tls.cert: cannot read {tmp_path / 'a.crt'}: No such file" in r.stderr
    (tmp_path / "a.crt").write_text("not a certificate")
    (tmp_path / "a.key").write_text("not a key")
    r = cli("validate", "-c", str(p))
    assert r.returncode == 1
    assert "server.tls: " in r.stderr and "do not load" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_run_names_what_keeps_it_from_starting(tmp_path: Path, workers: int) -> None:
    """A certificate that does not load, a port in use: one line, exit 1, no traceback.

    With workers, the supervisor says it before it starts any."""
    basic = BASIC.replace("[server]", f"[server]\nworkers = {workers}")
    p = tmp_path / "gateway.toml"
    p.write_text(basic.replace("[server]", '[server]\ntls = { cert = "a.crt", key = "a.key" }'))
    (tmp_path / "a.crt").write_text("not a certificate")
    (tmp_path / "a.key").write_text("not a key")
    r = cli("run", "-c", str(p))
    assert r.returncode == 1
    assert r.stderr.startswith(f"{p}: (compile): server.tls: ")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p.write_text(re.sub(r'listen = \["[^"]*"\]', f'listen = ["127.0.0.1:{port}"]', basic))
        r = cli("run", "-c", str(p))
    assert r.returncode == 1
    assert f"{p}: server.listen: cannot listen on 127.0.0.1:{port}: Address already in use" in (
        r.stderr
    )
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("config", REFERENCE_CONFIGS, ids=config_id)
def test_validate_accepts_the_reference_with_nothing_left_unsupported(config: Path) -> None:
    r = cli("validate", "-c", str(config))
    assert r.returncode == 0, r.stderr
    # auth, claims, rate limits, sticky splits and hashing balancers are all enforced now
    assert "not supported" not in r.stdout + r.stderr


def test_explain_sticky_split_and_version_route() -> None:
    r = cli("explain", "-c", str(REFERENCE), "GET", "/api/users/7", "--ip", "10.1.2.3")
    assert r.returncode == 0, r.stderr
    assert "route: users\n" in r.stdout
    assert "upstream: split (sticky on ip): user-v1 95.0%, user-v2 5.0%" in r.stdout
    assert "split: sticky: ip = '10.1.2.3' -> slot " in r.stdout
    # the version route beats the split route on the same path
    r = cli("explain", "-c", str(REFERENCE), "GET", "/api/users/7", "-H", "Api-Version: v2")
    assert r.returncode == 0, r.stderr
    assert "route: users-v2-by-header" in r.stdout
    assert "upstream: user-v2 (" in r.stdout
    assert "users                    /api/users/**                same pattern" in r.stdout


def test_explain_names_the_winner_and_the_losers(basic: Path) -> None:
    r = cli("explain", "-c", str(basic), "GET", "/api/users/7")
    assert r.returncode == 0, r.stderr
    assert "route: users" in r.stdout
    assert "users-v2" in r.stdout  # the header route lost, and says why
    assert "api-version" in r.stdout.lower()
    assert "path sent upstream: /users/7" in r.stdout


def test_explain_header_route_wins_with_the_header(basic: Path) -> None:
    r = cli("explain", "-c", str(basic), "POST", "/api/users/7", "-H", "Api-Version: v2")
    assert r.returncode == 0, r.stderr
    assert "route: users-v2" in r.stdout
    assert "upstream: v2" in r.stdout


def test_explain_rewrite_and_normalisation(basic: Path) -> None:
    r = cli("explain", "-c", str(basic), "GET", "/v1/x/../user/42?a=1")
    assert r.returncode == 0, r.stderr
    assert "route: user-by-id" in r.stdout
    assert "path sent upstream: /users/42?a=1" in r.stdout


def test_explain_no_route_exits_1(basic: Path) -> None:
    r = cli("explain", "-c", str(basic), "DELETE", "/api/users/7")
    assert r.returncode == 1
    assert "no route matched" in r.stdout


def test_schema_is_json_schema_of_the_config() -> None:
    r = cli("schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert {"server", "upstreams", "routes", "rate_limits"} <= set(schema["properties"])


def test_hash_key_prints_the_consumer_line() -> None:
    r = cli("hash-key", stdin="test\n")
    assert r.returncode == 0
    digest = hashlib.sha256(b"test").hexdigest()
    assert r.stdout.strip() == f'api_key_sha256 = "{digest}"'


def test_version() -> None:
    r = cli("--version")
    assert r.returncode == 0
    assert "0.1.0" in r.stdout

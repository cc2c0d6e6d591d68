"""Middleware config checks: what parse/load report with the dotted path of
the key at fault, and what `pyproxyd validate` says about python
middlewares that do not load (run as a real subprocess, as CI runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyproxyd.compile import compile_snapshot
from pyproxyd.config_load import ConfigError, load, parse
from tests.reference import SPEC

REPO = Path(__file__).resolve().parents[2]

HEAD = """
[server]
listen = ["127.0.0.1:0"]
middlewares = ["tag"]
{server}
[upstreams.app]
targets = [{{ url = "http://127.0.0.1:9001" }}]

[middlewares.tag]
type = "headers"
request = {{ set = {{ "X-Gateway" = "pyproxyd" }} }}

[middlewares.cors]
type = "cors"
allow_origins = ["https://app.example.com"]

[middlewares.down]
type = "respond"
status = 503
"""


def toml(body: str, server: str = "") -> str:
    return HEAD.format(server=server) + body


def route(middlewares: str, upstream: str | None = "app", rid: str = "r") -> str:
    up = f'upstream = "{upstream}"\n' if upstream else ""
    return f'\n[[routes]]\nid = "{rid}"\npath = "/{rid}/**"\n{up}middlewares = {middlewares}\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, "g.toml")
    return caught.value.lines()


def line_of(text: str, start: str) -> int:
    """The number of the last line that starts with `start`."""
    return max(n for n, line in enumerate(text.splitlines(), 1) if line.startswith(start))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyproxyd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


# -- names ----------------------------------------------------------------------


def test_an_unknown_middleware_of_a_route_is_reported_at_its_index() -> None:
    text = toml(route('["cors", "nope"]'))
    n = line_of(text, "middlewares = ")
    assert problems(text) == [
        f"g.toml: routes[0].middlewares[1]: unknown middleware 'nope' (line {n})"
    ]


def test_an_unknown_middleware_of_the_server_is_reported_at_its_index() -> None:
    text = toml(route("[]")).replace('middlewares = ["tag"]', 'middlewares = ["tag", "ghost"]')
    n = line_of(text, 'middlewares = ["tag"')
    assert problems(text) == [
        f"g.toml: server.middlewares[1]: unknown middleware 'ghost' (line {n})"
    ]


def test_a_name_listed_twice_is_reported_at_the_repeat() -> None:
    text = toml(route('["cors", "down", "cors"]'))
    n = line_of(text, "middlewares = ")
    assert problems(text) == [
        f"g.toml: routes[0].middlewares[2]: middleware 'cors' is listed twice (line {n})"
    ]


def test_a_route_repeating_a_server_middleware_is_reported() -> None:
    text = toml(route('["tag"]'))
    n = line_of(text, "middlewares = ")
    assert problems(text) == [
        "g.toml: routes[0].middlewares[0]: middleware 'tag' already runs from "
        f"server.middlewares (line {n})"
    ]


def test_every_bad_name_of_every_route_is_listed_together() -> None:
    text = toml(route('["x"]', rid="a") + route('["cors", "y"]', rid="b"))
    found = problems(text)
    assert [line.split(": ")[1] for line in found] == [
        "routes[0].middlewares[0]",
        "routes[1].middlewares[1]",
    ]


# -- routes without an upstream -------------------------------------------------


def test_a_route_without_upstream_and_no_answering_middleware_is_refused() -> None:
    found = problems(toml(route('["cors"]', upstream=None)))
    assert len(found) == 1
    assert found[0].startswith("g.toml: routes[0].upstream: a route needs 'upstream' or 'split'")
    assert "respond or redirect" in found[0]


def test_a_route_without_upstream_but_with_respond_validates() -> None:
    cfg = parse(toml(route('["cors", "down"]', upstream=None)), "g.toml")
    assert cfg.routes[0].upstream is None
    assert cfg.routes[0].middlewares == ["cors", "down"]


def test_a_route_without_upstream_but_with_redirect_validates() -> None:
    body = '\n[middlewares.moved]\ntype = "redirect"\nto = "https://new.example.com{path}"\n'
    cfg = parse(toml(body + route('["moved"]', upstream=None)), "g.toml")
    assert cfg.routes[0].upstream is None


def test_an_answering_server_middleware_covers_every_route() -> None:
    text = toml(route("[]", upstream=None)).replace(
        'middlewares = ["tag"]', 'middlewares = ["tag", "down"]'
    )
    assert parse(text, "g.toml").server.middlewares == ["tag", "down"]


# -- the tables -----------------------------------------------------------------


def test_an_unknown_placeholder_is_reported_with_the_known_ones() -> None:
    body = '\n[middlewares.bad]\ntype = "headers"\nresponse = { add = { "X-User" = "{user}" } }\n'
    (line,) = problems(toml(body + route("[]")))
    assert line.startswith("g.toml: middlewares.bad.response.add: unknown placeholder {user}")
    assert "{claim:NAME} or {header:NAME}" in line


def test_a_bad_redirect_placeholder_is_reported() -> None:
    body = '\n[middlewares.bad]\ntype = "redirect"\nto = "https://x.test{target}"\n'
    (line,) = problems(toml(body + route("[]")))
    assert line.startswith("g.toml: middlewares.bad.to: unknown placeholder {target}")


@pytest.mark.parametrize(
    "origin",
    ["app.example.com", "https://app.example.com/", "ftp://x.test", "https://a.*.test", "https://"],
)
def test_a_bad_origin_is_reported(origin: str) -> None:
    body = f'\n[middlewares.bad]\ntype = "cors"\nallow_origins = ["{origin}"]\n'
    (line,) = problems(toml(body + route("[]")))
    assert line.startswith(f"g.toml: middlewares.bad.allow_origins: invalid origin '{origin}'")


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Host", "Connection"])
def test_a_managed_header_cannot_be_set(name: str) -> None:
    body = f'\n[middlewares.bad]\ntype = "headers"\nrequest = {{ set = {{ "{name}" = "1" }} }}\n'
    (line,) = problems(toml(body + route("[]")))
    assert line.startswith(
        f"g.toml: middlewares.bad.request.set: '{name}' is a header the gateway manages itself"
    )


def test_a_header_value_with_a_line_break_is_refused() -> None:
    body = '\n[middlewares.bad]\ntype = "headers"\n'
    body += 'response = { set = { "X-A" = "a\\r\\nX-B: 1" } }\n'
    (line,) = problems(toml(body + route("[]")))
    assert "middlewares.bad.response.set: X-A: a header value cannot hold CR, LF or NUL" in line


@pytest.mark.parametrize("factory", ["mod.make", "mod:", ":make", "mod:make()", "1mod:make"])
def test_a_malformed_factory_is_reported(factory: str) -> None:
    body = f'\n[middlewares.bad]\ntype = "python"\nfactory = "{factory}"\n'
    (line,) = problems(toml(body + route("[]")))
    assert line.startswith("g.toml: middlewares.bad.factory: String should match pattern")


def test_an_unknown_type_is_reported() -> None:
    body = '\n[middlewares.bad]\ntype = "lua"\n'
    (line,) = problems(toml(body + route("[]")))
    assert line.startswith("g.toml: middlewares.bad")
    assert "'headers', 'cors', 'redirect', 'respond', 'python'" in line


# -- python middlewares, compiled -------------------------------------------------

GOOD = """
class Tag:
    def __init__(self, options):
        self.options = options

    def on_request(self, req):
        req.headers["X-Tag"] = self.options["tag"]


def make(options):
    return Tag(options)
"""


def python_config(tmp_path: Path, module: str, source: str, factory: str = "make") -> Path:
    """A config with one python middleware `audit` whose module holds `source`.

    Each test names its own module: modules stay imported in this process."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / f"{module}.py").write_text(source)
    body = (
        f'\n[middlewares.audit]\ntype = "python"\nfactory = "{module}:{factory}"\n'
        'options = { tag = "t1", sample = 0.5 }\n' + route('["audit", "cors"]')
    )
    path = tmp_path / "gateway.toml"
    path.write_text(toml(body, server='python_path = ["plugins"]'))
    return path


def test_a_python_middleware_is_built_with_its_options_inside_the_server_ones(
    tmp_path: Path,
) -> None:
    snap = compile_snapshot(load(python_config(tmp_path, "mwcfg_good", GOOD)))
    chain = snap.routes[0].chain
    assert chain is not None
    assert chain.names == ("tag", "audit", "cors")
    step = chain.steps[1]
    assert step.kind == "python"
    assert step.on_request.__self__.options == {"tag": "t1", "sample": 0.5}  # type: ignore[union-attr]


def test_a_changed_module_is_part_of_the_config_digest(tmp_path: Path) -> None:
    path = python_config(tmp_path, "mwcfg_digest", GOOD)
    before = load(path).digest
    (tmp_path / "plugins" / "mwcfg_digest.py").write_text(GOOD.replace("X-Tag", "X-Tog"))
    assert load(path).digest != before


def test_validate_accepts_a_python_middleware_that_loads(tmp_path: Path) -> None:
    r = cli("validate", "-c", str(python_config(tmp_path, "audit_ok", GOOD)))
    assert r.returncode == 0, r.stderr
    assert "ok: 1 routes" in r.stdout


@pytest.mark.parametrize(
    ("source", "factory", "said"),
    [
        ("import no_such_module_anywhere\n", "make", "cannot import"),
        ("def make(options):\n    return (\n", "make", "cannot import"),
        ("raise RuntimeError('at import')\n", "make", "RuntimeError('at import')"),
        ("def other(options):\n    return None\n", "make", "has no 'make'"),
        ("make = 3\n", "make", "is not callable"),
        ("def make(options):\n    raise KeyError('sample')\n", "make", "the factory raised"),
        ("def make(options):\n    return object()\n", "make", "neither on_request nor"),
        (
            "class M:\n    on_request = 1\n\ndef make(options):\n    return M()\n",
            "make",
            "on_request of M is not callable",
        ),
    ],
    ids=[
        "import-missing",
        "syntax-error",
        "raises-at-import",
        "missing-attribute",
        "not-callable",
        "factory-raises",
        "no-hooks",
        "hook-not-callable",
    ],
)
def test_validate_fails_with_the_dotted_path_of_the_factory(
    tmp_path: Path, source: str, factory: str, said: str
) -> None:
    r = cli("validate", "-c", str(python_config(tmp_path, "audit_bad", source, factory)))
    assert r.returncode == 1
    assert r.stdout == ""
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"{tmp_path / 'gateway.toml'}: (compile): middlewares.audit.factory: ")
    assert said in line


def test_a_missing_module_fails_validate_in_process_too(tmp_path: Path) -> None:
    path = python_config(tmp_path, "mwcfg_present", GOOD)
    (tmp_path / "plugins" / "mwcfg_present.py").unlink()
    with pytest.raises(ValueError, match=r"^middlewares\.audit\.factory: cannot import"):
        compile_snapshot(load(path))


# -- the spec's example ---------------------------------------------------------


def spec_example() -> Path | None:
    """next/middleware.toml beside the spec's gateway.toml, when PYPROXYD_SPEC names it."""
    if SPEC is None:
        return None
    folder = SPEC if SPEC.is_dir() else SPEC.parent
    path = folder / "next" / "middleware.toml"
    return path if path.is_file() else None


EXAMPLES = ["copy", *(["spec"] if spec_example() is not None else [])]

# The spec's example, in the repository: it stands in when the spec is not there.
COPY = """
[server]
listen = ["127.0.0.1:0"]
middlewares = ["security-headers"]
python_path = ["plugins"]

[upstreams.app]
targets = [{ url = "http://127.0.0.1:9001" }]

[middlewares.security-headers]
type = "headers"
response = { set = { "Strict-Transport-Security" = "max-age=31536000" }, remove = ["Server"] }

[middlewares.tag-gateway]
type = "headers"
request.set = { "X-Gateway" = "pyproxyd" }
request.add = { "Via" = "1.1 pyproxyd" }
request.remove = ["X-Debug"]

[middlewares.cors]
type = "cors"
allow_origins = ["https://app.example.com", "https://*.example.org"]
allow_methods = ["GET", "POST", "PUT", "DELETE"]
allow_headers = ["Authorization", "Content-Type", "X-Client-ID"]
expose_headers = ["X-Request-ID", "RateLimit", "RateLimit-Policy"]
allow_credentials = true
max_age = "10m"

[middlewares.old-docs]
type = "redirect"
to = "https://docs.example.com{path}"
status = 308

[middlewares.maintenance]
type = "respond"
status = 503
body = '{"error":"maintenance","message":"back soon"}'
content_type = "application/json"
headers = { "Retry-After" = "600" }

[middlewares.audit]
type = "python"
factory = "acme_copy.audit:make"
options = { sample = 0.1, topic = "api-audit" }

[[routes]]
id = "api"
path = "/api/**"
upstream = "app"
middlewares = ["cors", "tag-gateway", "audit"]

[[routes]]
id = "docs"
path = "/docs/**"
middlewares = ["old-docs"]

[[routes]]
id = "down"
path = "/legacy/**"
middlewares = ["maintenance"]
"""

AUDIT = """
def make(options):
    return Audit(options.get("topic", "audit"))


class Audit:
    def __init__(self, topic):
        self.topic = topic

    def on_request(self, req):
        req.headers["X-Audit-Topic"] = self.topic

    def on_response(self, req, resp):
        pass
"""


@pytest.mark.parametrize("which", EXAMPLES)
def test_the_example_config_validates(tmp_path: Path, which: str) -> None:
    if which == "spec":
        path = spec_example()
        assert path is not None
    else:
        package = tmp_path / "plugins" / "acme_copy"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "audit.py").write_text(AUDIT)
        path = tmp_path / "gateway.toml"
        path.write_text(COPY)
    # The spec folder is not ours to leave __pycache__ in.
    r = cli("validate", "-c", str(path), env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{path}: ok: 3 routes, 1 upstreams, 0 rate-limit policies"

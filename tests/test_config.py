"""The config layer: units, the reference config, unknown keys, cross-references.

Problems are asserted as the exact `dotted.path: message (line N)` text that
`pyproxyd validate` prints, so a wrong path or a wrong line fails here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from pyproxyd.config import Config
from pyproxyd.config_load import ConfigError, Loaded, load, parse
from pyproxyd.units import Rate, parse_duration, parse_rate, parse_size
from tests.reference import REFERENCE, REFERENCE_CONFIGS, config_id

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "etc" / "gateway.toml"

UPSTREAMS = """\
[upstreams.a]
targets = [{ url = "http://127.0.0.1:9001" }]

[upstreams.b]
targets = [{ url = "http://127.0.0.1:9002" }]
"""


def problems(text: str) -> list[str]:
    """The lines `validate` would print for TEXT (the file is called f.toml)."""
    with pytest.raises(ConfigError) as info:
        parse(text, "f.toml")
    return info.value.lines()


def route(body: str, rid: str = "r", path: str = "/r/**") -> str:
    """A [[routes]] table with BODY."""
    return f'\n[[routes]]\nid = "{rid}"\npath = "{path}"\n{body}\n'


def line_of(text: str, needle: str) -> int:
    """1-based number of the only line of TEXT that contains NEEDLE."""
    hits = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


# -------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (" 30s ", 30.0),
        ("0s", 0.0),
        ("10", 10.0),
        (10, 10.0),
        (0.5, 0.5),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "2 sec", "s", "-1s", "1w", "1.s", True, -1, None, [1]])
def test_invalid_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_toml_infinities_are_not_durations(value: str) -> None:
    # tomllib accepts `inf` and `nan`; a NaN timeout would compare false with everything
    assert problems(f"[server]\nkeepalive_timeout = {value}\n") == [
        f"f.toml: server.keepalive_timeout: invalid duration {float(value)!r}: "
        "must be a finite number of seconds (line 2)"
    ]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512KiB", 512 * 1024),
        ("10MiB", 10 * 1024 * 1024),
        ("1GiB", 1024**3),
        ("100", 100),
        (4096, 4096),
        (0, 0),
    ],
)
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "10 MiBs", "1.5MiB", "KiB", "-1", -1, 1.5, True, None])
def test_invalid_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "rate", "per_second"),
    [
        ("10/s", Rate(10, 1), 10.0),
        ("600/m", Rate(600, 60), 10.0),
        ("5000/h", Rate(5000, 3600), 5000 / 3600),
        ("10/5s", Rate(10, 5), 2.0),
        ("1 / s", Rate(1, 1), 1.0),
    ],
)
def test_rates(text: str, rate: Rate, per_second: float) -> None:
    parsed = parse_rate(text)
    assert parsed == rate
    assert math.isclose(parsed.per_second, per_second)


@pytest.mark.parametrize("bad", ["", "10", "10/x", "0/s", "10/0s", "s/10", "-1/s", 10, None])
def test_invalid_rates(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_rate(bad)


def test_units_in_a_config_become_plain_numbers() -> None:
    cfg = parse(
        UPSTREAMS
        + """
[server]
client_max_body_size = "512KiB"
client_header_timeout = "250ms"
keepalive_timeout = 5
max_header_size = 16384

[rate_limits.p]
algorithm = "token_bucket"
rate = "600/m"
burst = 5
"""
    )
    assert cfg.server.client_max_body_size == 512 * 1024
    assert cfg.server.client_header_timeout == 0.25
    assert cfg.server.keepalive_timeout == 5.0
    assert cfg.server.max_header_size == 16384
    assert cfg.rate_limits["p"].rate == Rate(600, 60)


def test_invalid_unit_values_are_located() -> None:
    text = (
        UPSTREAMS.replace(
            "[upstreams.a]\n", '[upstreams.a]\nconnect_timeout = "2 sec"\nread_timeout = -1\n'
        )
        + '[server]\nclient_max_body_size = "10 MiBs"\n'
    )
    assert problems(text) == [
        "f.toml: upstreams.a.connect_timeout: invalid duration '2 sec': "
        f"expected e.g. '250ms', '2s', '1m', '1h' (line {line_of(text, '2 sec')})",
        "f.toml: upstreams.a.read_timeout: a duration cannot be negative "
        f"(line {line_of(text, 'read_timeout')})",
        "f.toml: server.client_max_body_size: invalid size '10 MiBs': expected e.g. '512KiB', "
        f"'10MiB' or a byte count (line {line_of(text, 'client_max_body_size')})",
    ]


# ------------------------------------------------------- the reference config


@pytest.mark.parametrize("config", REFERENCE_CONFIGS, ids=config_id)
def test_the_reference_config_loads(config: Path) -> None:
    loaded = load(config)
    assert isinstance(loaded, Loaded)
    cfg = loaded.config
    assert loaded.path == config.resolve()
    assert len(loaded.digest) == 64
    assert [r.id for r in cfg.routes] == [
        "users-v2-by-header",
        "users-internal",
        "users",
        "user-by-id",
        "orders",
    ]
    assert set(cfg.upstreams) == {"user-v1", "user-v2", "orders"}
    assert set(cfg.rate_limits) == {"per-client", "orders-shaped", "login-window"}
    up = cfg.upstreams["user-v1"]
    assert (up.keepalive, up.keepalive_requests) == (32, 1000)
    assert (up.keepalive_timeout, up.keepalive_time) == (60.0, 3600.0)
    assert up.circuit_breaker is not None and up.circuit_breaker.failure_statuses == [502, 503, 504]
    assert cfg.server.client_max_body_size == 10 * 1024 * 1024
    assert cfg.redis is not None and cfg.redis.timeout == 0.05
    assert cfg.rate_limits["per-client"].tiers["vip"].rate == Rate(100, 1)
    assert cfg.routes[2].split is not None and [s.weight for s in cfg.routes[2].split] == [95, 5]
    assert cfg.routes[3].rewrite == "/users/{id}"
    assert cfg.auth.jwt is not None and cfg.auth.jwt.forward_claims["sub"] == "X-User-ID"


@pytest.mark.parametrize("config", REFERENCE_CONFIGS, ids=config_id)
def test_every_reference_config_is_the_same_config(config: Path) -> None:
    # docs/gateway.toml is our wording of the spec's file: the words differ,
    # the configuration must not (checked against the spec when it is beside us)
    assert load(config).config == load(REFERENCE).config


def test_the_reference_config_shows_every_key() -> None:
    """docs/gateway.toml shows every key of the models, set or commented out."""
    from tests.test_config_docs import generator

    gen = generator()
    text = REFERENCE.read_text()

    def shown(name: str) -> bool:
        # `name = ...` (maybe after `{`, `,` or `#`), or in a table header `[...name]`
        n = re.escape(name)
        return re.search(rf"(^|[\s{{,#]){n}\s*=|[\[.]{n}[\].]", text, re.M) is not None

    missing = [
        f"{s.path}.{name}" if s.path else name
        for s in gen.walk(gen.Section("", gen.Config))
        for name in s.model.model_fields
        if not shown(name)
    ]
    assert missing == []


def test_the_example_config_loads_and_uses_only_what_runs() -> None:
    from pyproxyd.compile import compile_snapshot, unsupported

    loaded = load(EXAMPLE)
    cfg = loaded.config
    assert cfg.server.listen == ["127.0.0.1:8080"]
    assert cfg.admin.listen == "127.0.0.1:9901"
    # what it shows runs here alone: no Redis, no identity provider (scripts/demo.sh)
    assert cfg.redis is None and cfg.auth.jwt is None
    assert {p.backend for p in cfg.rate_limits.values()} == {"local"}
    assert {r.auth for r in cfg.routes} == {"none", "api_key"}
    targets = {t.url for up in cfg.upstreams.values() for t in up.targets}
    assert targets == {"http://127.0.0.1:9101", "http://127.0.0.1:9102"}
    assert all(r.hash_on == "random" for r in cfg.routes)
    assert [p.format(str(EXAMPLE)) for p in unsupported(cfg)] == []  # `run` accepts it
    snapshot = compile_snapshot(loaded)  # binds nothing
    assert {r.id for r in snapshot.routes} == {r.id for r in cfg.routes}


def test_defaults_of_an_empty_file() -> None:
    cfg = parse("")
    assert cfg == Config()
    assert cfg.server.listen == ["0.0.0.0:8080"]
    assert cfg.server.max_header_size == 8190
    assert cfg.logging.file is None
    assert cfg.admin.listen == "127.0.0.1:9901"


def test_models_are_frozen() -> None:
    cfg = parse(UPSTREAMS)
    with pytest.raises(ValueError):
        cfg.upstreams["a"].keepalive = 3  # type: ignore[misc]


# ------------------------------------------------------------- unknown keys


def test_unknown_key_in_the_third_route_names_it_and_its_line() -> None:
    text = UPSTREAMS + "".join(
        f'\n[[routes]]\nid = "r{i}"\npath = "/r{i}/**"\nupstream = "a"\n' for i in range(3)
    )
    text += "strip_prefx = 1\n"
    assert problems(text) == [
        f"f.toml: routes[2].strip_prefx: unknown key (line {line_of(text, 'strip_prefx')})"
    ]


@pytest.mark.parametrize(
    ("snippet", "path", "needle"),
    [
        ("colour = 1\n" + UPSTREAMS, "colour", "colour"),
        ('[server]\nlisten = ["127.0.0.1:80"]\nworker = 2\n', "server.worker", "worker"),
        ("[admin]\ntoken = 'x'\n", "admin.token", "token"),
        ("[logging]\nlevel = 'info'\nfomat = 'json'\n", "logging.fomat", "fomat"),
        (
            '[server]\ntls = { cert = "c", key = "k", ca = "x" }\n',
            "server.tls.ca",
            "tls",
        ),
        (UPSTREAMS + "keepalivee = 3\n", "upstreams.b.keepalivee", "keepalivee"),
        (
            UPSTREAMS + "[upstreams.a.circuit_breaker]\ntimout = '1s'\n",
            "upstreams.a.circuit_breaker.timout",
            "timout",
        ),
        (
            UPSTREAMS + "[upstreams.b.health]\npath = '/h'\nintervall = '1s'\n",
            "upstreams.b.health.intervall",
            "intervall",
        ),
        (
            '[upstreams.a]\ntargets = [{ url = "http://127.0.0.1:1", wieght = 2 }]\n',
            "upstreams.a.targets[0].wieght",
            "wieght",
        ),
        (
            UPSTREAMS + route('split = [{ upstream = "a", weight = 1, w = 1 }]'),
            "routes[0].split[0].w",
            "split",
        ),
        ("[auth.jwt]\njwks_file = 'j'\nissuer_url = 'x'\n", "auth.jwt.issuer_url", "issuer_url"),
        ("[auth.api_key]\nheadr = 'X'\n", "auth.api_key.headr", "headr"),
        ("[consumers.acme]\ntier = 'vip'\nkey = 'x'\n", "consumers.acme.key", "key ="),
        ("[redis]\nurl = 'redis://h'\ntimeot = '1s'\n", "redis.timeot", "timeot"),
        (
            "[rate_limits.p]\nalgorithm = 'token_bucket'\nrate = '1/s'\nburts = 1\n",
            "rate_limits.p.burts",
            "burts",
        ),
        (
            "[rate_limits.p]\nalgorithm = 'token_bucket'\nrate = '1/s'\ntier_key = 'consumer'\n"
            "[rate_limits.p.tiers]\nvip = { rate = '10/s', burts = 3 }\n",
            "rate_limits.p.tiers.vip.burts",
            "vip =",
        ),
    ],
)
def test_unknown_keys_everywhere(snippet: str, path: str, needle: str) -> None:
    assert problems(snippet) == [f"f.toml: {path}: unknown key (line {line_of(snippet, needle)})"]


def test_every_problem_is_listed() -> None:
    text = (
        UPSTREAMS
        + """
[server]
workers = -1
listen = ["nohost"]

[[routes]]
id = "r"
path = "/r"
upstream = "a"
strip_prefx = 1

[[routes]]
path = "no-slash"
upstream = "a"
methods = ["GET", "FETCH"]
"""
    )
    assert problems(text) == [
        "f.toml: server.workers: Input should be greater than or equal to 0 "
        f"(line {line_of(text, 'workers')})",
        "f.toml: server.listen: invalid address 'nohost': expected 'host:port' or '[::]:port' "
        f"(line {line_of(text, 'nohost')})",
        f"f.toml: routes[0].strip_prefx: unknown key (line {line_of(text, 'strip_prefx')})",
        f"f.toml: routes[1].id: required key is missing (line {line_of(text, 'no-slash') - 1})",
        "f.toml: routes[1].path: path pattern 'no-slash' must start with '/' "
        f"(line {line_of(text, 'no-slash')})",
        f"f.toml: routes[1].methods: unknown HTTP method 'FETCH' (line {line_of(text, 'FETCH')})",
    ]


def test_a_toml_syntax_error_is_located() -> None:
    (line,) = problems("[server]\nworkers = 1\nlisten = = 1\n[admin]\n")
    assert line.startswith("f.toml: (toml): Invalid value")
    assert line.endswith("(line 3)")


def test_load_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "missing.toml")
    (line,) = info.value.lines()
    assert line.startswith(f"{tmp_path / 'missing.toml'}: (file): cannot read")


def test_load_reports_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "latin1.toml"
    p.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load(p)
    assert info.value.lines() == [f"{p}: (file): not valid UTF-8"]


# --------------------------------------------------------- cross-references


def test_unknown_upstream() -> None:
    text = UPSTREAMS + route('upstream = "c"')
    n = line_of(text, 'upstream = "c"')
    assert problems(text) == [f"f.toml: routes[0].upstream: unknown upstream 'c' (line {n})"]


def test_unknown_upstream_in_a_split() -> None:
    text = UPSTREAMS + route(
        'split = [{ upstream = "a", weight = 1 }, { upstream = "z", weight = 1 }]'
    )
    assert problems(text) == [
        f"f.toml: routes[0].split[1].upstream: unknown upstream 'z' (line {line_of(text, 'split')})"
    ]


def test_unknown_rate_limits_are_each_reported() -> None:
    text = UPSTREAMS + route('upstream = "a"\nrate_limit = ["nope", "nada"]')
    n = line_of(text, "rate_limit")
    assert problems(text) == [
        f"f.toml: routes[0].rate_limit: unknown rate limit 'nope' (line {n})",
        f"f.toml: routes[0].rate_limit: unknown rate limit 'nada' (line {n})",
    ]


def test_duplicate_route_ids() -> None:
    text = UPSTREAMS + route('upstream = "a"', rid="x")
    text += route('upstream = "b"', rid="x", path="/y")
    n = [i for i, line in enumerate(text.splitlines(), 1) if line == 'id = "x"'][1]
    assert problems(text) == [
        f"f.toml: routes[1].id: duplicate route id 'x' (first at routes[0]) (line {n})"
    ]


def test_split_weights_summing_to_zero() -> None:
    text = UPSTREAMS + route(
        'split = [{ upstream = "a", weight = 0 }, { upstream = "b", weight = 0 }]'
    )
    assert problems(text) == [
        "f.toml: routes[0].split: split weights sum to 0: at least one must be positive "
        f"(line {line_of(text, 'split')})"
    ]


def test_rewrite_variable_the_path_does_not_capture() -> None:
    text = UPSTREAMS + route('upstream = "a"\nrewrite = "/u/{name}"', path="/v1/user/{id}")
    assert problems(text) == [
        "f.toml: routes[0].rewrite: rewrite uses {name}, which the path '/v1/user/{id}' "
        f"does not capture (line {line_of(text, 'rewrite')})"
    ]


def test_rewrite_with_captured_variables_is_fine() -> None:
    cfg = parse(UPSTREAMS + route('upstream = "a"\nrewrite = "/u/{id}/x"', path="/v1/{id}/*"))
    assert cfg.routes[0].rewrite == "/u/{id}/x"


def test_double_star_must_be_last() -> None:
    text = UPSTREAMS + route('upstream = "a"', path="/api/**/x")
    (line,) = problems(text)
    # the wording is routing.check_pattern's; the path and the line are ours
    assert line.startswith("f.toml: routes[0].path: ")
    assert line.endswith(f"(line {line_of(text, '/api/**/x')})")
    assert "'**' must be the last segment" in line and "'/api/**/x'" in line


def test_route_needs_exactly_one_destination() -> None:
    text = UPSTREAMS + route("strip_prefix = 1")
    assert problems(text) == [
        "f.toml: routes[0].upstream: a route needs 'upstream' or 'split', unless one of its "
        "middlewares always answers (type respond or redirect) "
        f"(line {line_of(text, '[[routes]]')})"
    ]


def test_redis_backend_without_a_redis_table() -> None:
    text = """
[rate_limits.shared]
algorithm = "token_bucket"
backend = "redis"
rate = "10/s"
"""
    assert problems(text) == [
        "f.toml: rate_limits.shared.backend: backend = 'redis' needs a [redis] table "
        f"(line {line_of(text, 'backend')})"
    ]
    assert parse(text + '\n[redis]\nurl = "redis://127.0.0.1:6379/0"\n').redis is not None


def test_auth_jwt_without_an_auth_jwt_table() -> None:
    text = UPSTREAMS + route('upstream = "a"\nauth = "jwt"')
    assert problems(text) == [
        "f.toml: routes[0].auth: auth = 'jwt' needs an [auth.jwt] table "
        f"(line {line_of(text, 'auth =')})"
    ]


def test_algorithm_none_is_refused() -> None:
    text = '[auth.jwt]\nalgorithms = ["RS256", "none"]\njwks_file = "jwks.json"\n'
    assert problems(text) == [
        "f.toml: auth.jwt.algorithms: algorithm 'none' is never allowed (line 2)"
    ]


def test_hs_secret_env_is_required_for_hs_algorithms() -> None:
    text = '[auth.jwt]\nalgorithms = ["HS256"]\n'
    assert problems(text) == ["f.toml: auth.jwt: HS* algorithms need hs_secret_env (line 1)"]
    cfg = parse(text + 'hs_secret_env = "SECRET"\n')
    assert cfg.auth.jwt is not None and cfg.auth.jwt.algorithms == ["HS256"]


def test_cross_references_are_listed_with_validation_errors() -> None:
    # One pass of `validate` shows everything: a typo elsewhere does not hide
    # the unknown upstream, and the unknown upstream does not hide the typo.
    text = (
        UPSTREAMS
        + route('upstream = "c"\nstrip_prefx = 1')
        + route('split = [{ upstream = "zz", weight = 1 }]\ntimeout = "soon"', rid="s", path="/s")
    )
    n = line_of(text, 'upstream = "c"')
    assert problems(text) == [
        f"f.toml: routes[0].upstream: unknown upstream 'c' (line {n})",
        f"f.toml: routes[0].strip_prefx: unknown key (line {line_of(text, 'strip_prefx')})",
        f"f.toml: routes[1].split[0].upstream: unknown upstream 'zz' (line {line_of(text, 'zz')})",
        "f.toml: routes[1].timeout: invalid duration 'soon': expected e.g. '250ms', '2s', "
        f"'1m', '1h' (line {line_of(text, 'soon')})",
    ]


def test_a_broken_upstream_does_not_make_its_routes_unknown() -> None:
    text = "[upstreams.a]\ntargets = []\n" + route('upstream = "a"')
    assert problems(text) == [
        "f.toml: upstreams.a: an upstream needs either 'targets' (at least one) or 'discovery' "
        "(line 1)"
    ]


@pytest.mark.parametrize("name", ["int", "str", "bool", "float"])
def test_names_that_look_like_type_tags_stay_in_the_path(name: str) -> None:
    text = f'[upstreams.{name}]\ntargets = [{{ url = "http://127.0.0.1:1" }}]\nfoo = 1\n'
    assert problems(text) == [f"f.toml: upstreams.{name}.foo: unknown key (line 3)"]


def test_union_type_errors_name_the_bad_element() -> None:
    text = UPSTREAMS + route('upstream = "a"\nhash_on = ["ip", 5]')
    n = line_of(text, "hash_on")
    assert problems(text) == [
        f"f.toml: routes[0].hash_on: Input should be a valid string (line {n})",
        f"f.toml: routes[0].hash_on[1]: Input should be a valid string (line {n})",
    ]


def test_hs_and_rs_algorithms_cannot_be_mixed() -> None:
    text = '[auth.jwt]\nhs_secret_env = "S"\njwks_file = "j"\nalgorithms = ["HS256", "RS256"]\n'
    assert problems(text) == [
        "f.toml: auth.jwt.algorithms: HS* and RS*/PS*/ES*/EdDSA algorithms cannot be mixed (line 4)"
    ]


def test_jwt_key_source() -> None:
    text = '[auth.jwt]\nalgorithms = ["RS256"]\n'
    assert problems(text) == ["f.toml: auth.jwt: set exactly one of jwks_file or jwks_url (line 1)"]
    assert problems(text + 'jwks_file = "a"\njwks_url = "https://b"\n') == [
        "f.toml: auth.jwt: set exactly one of jwks_file or jwks_url (line 1)"
    ]


# ------------------------------------------------------ where problems point


def test_elements_of_a_multi_line_array_have_their_own_lines() -> None:
    text = """\
[upstreams.a]
targets = [
  { url = "http://127.0.0.1:9001" },   # first
  { url = "http://127.0.0.1:9002", weight = 0 },
  "http://127.0.0.1:9003",
]
"""
    assert problems(text) == [
        "f.toml: upstreams.a.targets[1].weight: Input should be greater than or equal to 1 "
        "(line 4)",
        "f.toml: upstreams.a.targets[2]: Input should be a valid dictionary or instance of "
        "TargetConfig (line 5)",
    ]


def test_split_entries_written_one_a_line() -> None:
    text = UPSTREAMS + route(
        'split = [\n  { upstream = "a", weight = 9 },\n  { upstream = "nope", weight = 1 },\n]'
    )
    assert problems(text) == [
        f"f.toml: routes[0].split[1].upstream: unknown upstream 'nope' "
        f"(line {line_of(text, 'nope')})"
    ]


def test_dotted_keys_and_sub_tables_of_array_elements() -> None:
    text = (
        UPSTREAMS
        + "circuit_breaker.timeout = 'soon'\n"
        + route('upstream = "a"')
        + route('upstream = "b"', rid="r2", path="/r2")
        + "[routes.query]\npage = 1\n"
    )
    assert problems(text) == [
        "f.toml: upstreams.b.circuit_breaker.timeout: invalid duration 'soon': expected e.g. "
        f"'250ms', '2s', '1m', '1h' (line {line_of(text, 'soon')})",
        "f.toml: routes[1].query.page: Input should be a valid string "
        f"(line {line_of(text, 'page')})",
    ]


def test_a_multi_line_string_does_not_confuse_the_lines() -> None:
    text = UPSTREAMS + route(
        'upstream = "a"\nrewrite = """/x\n[[routes]]\nstrip_prefx = 1"""\nstrip_prefx = 1'
    )
    n = len(text.splitlines())
    assert text.splitlines()[-1] == "strip_prefx = 1"
    assert f"f.toml: routes[0].strip_prefx: unknown key (line {n})" in problems(text)


def test_names_with_dots_are_quoted_in_the_path() -> None:
    text = '[upstreams."api.v1"]\ntargets = [{ url = "http://127.0.0.1:1" }]\nkeepalive = -1\n'
    assert problems(text) == [
        'f.toml: upstreams."api.v1".keepalive: Input should be greater than or equal to 0 (line 3)'
    ]
    assert set(parse(text.replace("-1", "1")).upstreams) == {"api.v1"}

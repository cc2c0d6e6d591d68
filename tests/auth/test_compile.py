"""Auth settings: what validation refuses, what compile builds, what explain says."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from harness.tokens import jwks, public_jwk, rsa_key
from pyproxyd.auth import APIKeyAuth, ClientIdAuth, JWTAuth, RemoteKeys, StaticKeys
from pyproxyd.compile import compile_snapshot, unsupported
from pyproxyd.config_load import ConfigError, load
from pyproxyd.explain import explain_request

BASE = """
[upstreams.app]
targets = [{{ url = "http://127.0.0.1:9" }}]

[[routes]]
id = "open"
path = "/open/**"
upstream = "app"

[[routes]]
id = "staff"
path = "/api/**"
auth = "jwt"
claims = {{ groups = "employees" }}
upstream = "app"

[[routes]]
id = "users"
path = "/api/**"
auth = "jwt"
require_roles = ["user"]
upstream = "app"

[[routes]]
id = "maybe"
path = "/maybe/**"
auth = "optional_jwt"
upstream = "app"

[[routes]]
id = "keyed"
path = "/keyed/**"
auth = "api_key"
upstream = "app"

[auth.jwt]
algorithms = {algorithms}
{keys}
forward_claims = {{ sub = "X-User-ID", tenant = "x-tenant-id" }}

[auth.api_key]
header = "Apikey"

[consumers.acme]
tier = "vip"
api_key_sha256 = "{digest}"

[consumers.hobbyist]
client_ids = ["hobby-1"]
"""


def write(tmp_path: Path, *, algorithms: str = '["RS256"]', keys: str | None = None) -> Path:
    (tmp_path / "keys").mkdir(exist_ok=True)
    (tmp_path / "keys" / "jwks.json").write_text(json.dumps(jwks(public_jwk(rsa_key(), "k1"))))
    text = BASE.format(
        algorithms=algorithms,
        keys=keys if keys is not None else 'jwks_file = "keys/jwks.json"',
        digest=hashlib.sha256(b"the-key").hexdigest(),
    )
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(path)
    return e.value.lines()


# ----------------------------------------------------------------- compile


def test_each_route_gets_its_authenticator(tmp_path: Path) -> None:
    snap = compile_snapshot(load(write(tmp_path)))
    auth = {r.id: r.auth for r in snap.routes}
    assert isinstance(auth["open"], ClientIdAuth)  # consumers have client_ids
    assert isinstance(auth["users"], JWTAuth) and auth["users"].roles == {"user"}
    assert isinstance(auth["maybe"], JWTAuth) and auth["maybe"].optional
    assert isinstance(auth["keyed"], APIKeyAuth) and auth["keyed"].header == "Apikey"
    assert snap.auth.claim_routes and snap.auth.verifier is not None
    assert isinstance(snap.auth.verifier.source, StaticKeys)


def test_a_route_without_auth_and_no_client_ids_pays_nothing(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace('client_ids = ["hobby-1"]', ""))
    snap = compile_snapshot(load(path))
    assert next(r for r in snap.routes if r.id == "open").auth is None


def test_forward_claims_headers_are_dropped_from_every_request(tmp_path: Path) -> None:
    snap = compile_snapshot(load(write(tmp_path)))
    assert {b"x-user-id", b"x-tenant-id"} <= snap.drop_request_headers


def test_the_jwks_file_is_relative_to_the_config_folder(tmp_path: Path) -> None:
    snap = compile_snapshot(load(write(tmp_path)))
    assert snap.auth.verifier is not None
    assert snap.auth.verifier.source.keys.lookup("k1", "RS256")


def test_a_missing_jwks_file_is_a_compile_error(tmp_path: Path) -> None:
    path = write(tmp_path, keys='jwks_file = "nope.json"')
    with pytest.raises(ValueError, match=r"auth\.jwt\.jwks_file: cannot read"):
        compile_snapshot(load(path))


def test_a_jwks_file_with_a_private_key_is_a_compile_error(tmp_path: Path) -> None:
    from jwt.algorithms import RSAAlgorithm

    path = write(tmp_path)
    private = {**RSAAlgorithm.to_jwk(rsa_key(), as_dict=True), "kid": "k1"}
    (tmp_path / "keys" / "jwks.json").write_text(json.dumps(jwks(private)))
    with pytest.raises(ValueError, match="private key material"):
        compile_snapshot(load(path))


def test_a_jwks_file_without_a_key_for_the_algorithms_is_a_compile_error(tmp_path: Path) -> None:
    path = write(tmp_path, algorithms='["ES256"]')
    with pytest.raises(ValueError, match="no key fits the algorithms ES256"):
        compile_snapshot(load(path))


def test_the_jwks_file_is_part_of_the_config_digest(tmp_path: Path) -> None:
    path = write(tmp_path)
    before = load(path).digest
    doc = jwks(public_jwk(rsa_key(), "k1"), public_jwk(rsa_key("b"), "k2"))
    (tmp_path / "keys" / "jwks.json").write_text(json.dumps(doc))
    assert load(path).digest != before


def test_hs_secret_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, algorithms='["HS256"]', keys='hs_secret_env = "TEST_JWT_SECRET"')
    monkeypatch.delenv("TEST_JWT_SECRET", raising=False)
    with pytest.raises(ValueError, match="TEST_JWT_SECRET is not set"):
        compile_snapshot(load(path))
    monkeypatch.setenv("TEST_JWT_SECRET", "short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        compile_snapshot(load(path))
    monkeypatch.setenv("TEST_JWT_SECRET", "x" * 32)
    snap = compile_snapshot(load(path))
    assert snap.auth.verifier is not None
    assert snap.auth.verifier.source.keys.lookup("any", "HS256")


def test_a_jwks_url_is_carried_over_by_a_reload(tmp_path: Path) -> None:
    path = write(tmp_path, keys='jwks_url = "http://127.0.0.1:9/jwks.json"')
    first = compile_snapshot(load(path))
    assert first.auth.verifier is not None
    remote = first.auth.verifier.source
    assert isinstance(remote, RemoteKeys)
    second = compile_snapshot(load(path), first)
    assert second.auth.verifier is not None and second.auth.verifier.source is remote
    path.write_text(path.read_text().replace("jwks.json", "other.json"))
    third = compile_snapshot(load(path), second)
    assert third.auth.verifier is not None and third.auth.verifier.source is not remote


def test_auth_and_claims_are_no_longer_unsupported(tmp_path: Path) -> None:
    assert unsupported(load(write(tmp_path)).config) == []


# -------------------------------------------------------------- validation


def test_forward_claims_header_names_are_checked(tmp_path: Path) -> None:
    text = write(tmp_path).read_text()
    bad = text.replace('sub = "X-User-ID"', 'sub = "X User"')
    assert any("not a valid header name" in p for p in problems(tmp_path, bad))


def test_forward_claims_cannot_take_over_gateway_headers(tmp_path: Path) -> None:
    text = write(tmp_path).read_text()
    for header in ("Host", "X-Forwarded-For", "Authorization", "Transfer-Encoding"):
        bad = text.replace('sub = "X-User-ID"', f'sub = "{header}"')
        assert any("manages itself" in p for p in problems(tmp_path, bad)), header


def test_two_claims_cannot_share_a_header(tmp_path: Path) -> None:
    text = write(tmp_path).read_text()
    bad = text.replace('tenant = "x-tenant-id"', 'tenant = "x-user-id"')
    assert any("both go to" in p for p in problems(tmp_path, bad))


def test_hs_algorithms_cannot_come_from_a_jwks_url(tmp_path: Path) -> None:
    text = write(tmp_path, algorithms='["HS256"]', keys='jwks_url = "http://x"').read_text()
    text = text.replace('jwks_url = "http://x"', 'jwks_url = "http://x"\nhs_secret_env = "S"')
    assert any("not from jwks_url" in p for p in problems(tmp_path, text))


def test_api_key_routes_need_a_consumer_with_a_key(tmp_path: Path) -> None:
    text = write(tmp_path).read_text()
    text = text.replace(f'api_key_sha256 = "{hashlib.sha256(b"the-key").hexdigest()}"', "")
    assert any(
        "routes[4].auth: auth = 'api_key' needs a consumer with api_key_sha256" in p
        for p in problems(tmp_path, text)
    )


# ------------------------------------------------------------------ explain


def test_explain_with_claims_takes_the_claims_route(tmp_path: Path) -> None:
    loaded = load(write(tmp_path))
    text, ok = explain_request(loaded, "GET", "/api/x", (), "127.0.0.1", ("groups=employees",))
    assert ok and "route: staff" in text and "auth: jwt" in text


def test_explain_without_claims_says_why_the_claims_route_lost(tmp_path: Path) -> None:
    loaded = load(write(tmp_path))
    text, ok = explain_request(loaded, "GET", "/api/x", (), "127.0.0.1")
    assert ok and "route: users" in text
    assert "claim groups: no verified token" in text
    assert "auth: jwt, require_roles any of ['user']" in text


def test_explain_repeated_claims_form_a_list(tmp_path: Path) -> None:
    loaded = load(write(tmp_path))
    claims = ("groups=staff", "groups=employees")
    text, ok = explain_request(loaded, "GET", "/api/x", (), "127.0.0.1", claims)
    assert ok and "route: staff" in text and '["staff", "employees"]' in text


def test_explain_names_api_key_routes(tmp_path: Path) -> None:
    text, ok = explain_request(load(write(tmp_path)), "GET", "/keyed/x", (), "127.0.0.1")
    assert ok and "auth: api_key (in Apikey)" in text

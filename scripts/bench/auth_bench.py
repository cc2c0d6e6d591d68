#!/usr/bin/env python3
"""Throughput of JWT and API-key routes against a route with no auth, same gateway.

    .venv/bin/python scripts/bench/auth_bench.py [--duration 5s] [--rounds 3]

One pyproxyd (pinned alone on core 1) in front of nginx `return 200` (core 0,
with wrk). Rows, each a different route of the same gateway, order rotated
every round:

  plain         auth = "none"
  plain+bearer  auth = "none", with the same Authorization header as the jwt row
                (the bytes on the wire are equal: isolates the cost of checking)
  jwt           auth = "jwt", RS256, require_roles, forward_claims (sub, roles);
                one token, so after the first request it is a cache hit
  jwt+claims    a `claims` route (not matching this token) before a jwt route:
                the claims predicate's token memo on top of the jwt row
  api_key       auth = "api_key" (a SHA-256 and a dict lookup per request)

Prints the median req/s, p50 and p99 per row and each row against `plain`,
then the CPU cost of the auth step alone, measured in process (a steadier
number than wrk's on a shared machine).
The target is jwt >= 0.9x plain. Needs wrk and nginx
(`apt-get install -y wrk nginx-light`). Every process started here is
stopped by PID at the end.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from proxy_bench import BACKEND_PORT, NGINX_BACKEND, start, stop, wait_port, wrk, wrk_args

PY_PORT = 18391  # the backend is proxy_bench's nginx on BACKEND_PORT
API_KEY = "bench-api-key-0123456789abcdef"

PYPROXYD = """
[server]
listen = ["127.0.0.1:{port}"]
[admin]
listen = "127.0.0.1:0"
[logging]
access_log = true
file = "/dev/null"
[upstreams.backend]
targets = [{{ url = "http://127.0.0.1:{backend}" }}]

[[routes]]
id = "plain"
path = "/plain/**"
upstream = "backend"

[[routes]]
id = "jwt"
path = "/jwt/**"
auth = "jwt"
require_roles = ["user"]
upstream = "backend"

[[routes]]
id = "staff"
path = "/claims/**"
auth = "jwt"
claims = {{ groups = "employees" }}
upstream = "backend"

[[routes]]
id = "claims-fallback"
path = "/claims/**"
auth = "jwt"
upstream = "backend"

[[routes]]
id = "keyed"
path = "/key/**"
auth = "api_key"
upstream = "backend"

[auth.jwt]
algorithms = ["RS256"]
jwks_file = "jwks.json"
issuer = "https://idp.bench"
audience = "bench"
forward_claims = {{ sub = "X-User-ID", roles = "X-User-Roles" }}

[consumers.bench]
tier = "vip"
api_key_sha256 = "{key_hash}"
"""


def make_token(tmp: Path) -> str:
    """An RSA 2048 key: its public half in jwks.json, a one-hour token signed with it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    (tmp / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "bench", "use": "sig"}]}))
    now = int(time.time())
    claims = {
        "sub": "bench-user",
        "iss": "https://idp.bench",
        "aud": "bench",
        "iat": now,
        "exp": now + 3600,
        "roles": ["user", "reader"],
        "groups": ["staff"],
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})


def micro(tmp: Path, token: str) -> None:
    """CPU per request of the auth step alone, in process (steadier than wrk on a busy box)."""
    import timeit

    from multidict import CIMultiDict, CIMultiDictProxy

    from pyproxyd.compile import compile_snapshot
    from pyproxyd.config_load import load

    snap = compile_snapshot(load(tmp / "py.toml"))
    routes = {r.id: r for r in snap.routes}
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {token}"}))
    keyed = CIMultiDictProxy(CIMultiDict({"X-API-Key": API_KEY}))
    jwt_auth, key_auth = routes["jwt"].auth, routes["keyed"].auth
    assert jwt_auth is not None and key_auth is not None
    jwt_auth(headers, None)  # fill the token cache
    verifier = snap.auth.verifier
    assert verifier is not None

    def miss() -> None:
        verifier.cache.clear()
        jwt_auth(headers, None)

    def claims_step() -> None:
        memo = snap.auth.memo(headers)
        snap.router.match("GET", "/claims/users/1", headers, {}, memo)
        jwt_auth(headers, memo)

    def plain_match() -> None:
        snap.router.match("GET", "/plain/users/1", headers, {})

    cases = {
        "route match, plain route (for scale)": plain_match,
        "jwt, cached token": lambda: jwt_auth(headers, None),
        "jwt, signature check (cache miss)": miss,
        "jwt + claims predicate (memo, match, check)": claims_step,
        "api_key": lambda: key_auth(keyed, None),
    }
    print("\nauth step alone, in process (best of 5):\n")
    for name, fn in cases.items():
        n = 200 if "miss" in name else 20000
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n
        print(f"  {name:<44} {best * 1e6:8.2f} us")


def main() -> None:
    args = wrk_args(__doc__)
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, list[tuple[float, float, float, int]]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        token = make_token(tmp)
        bearer = {"Authorization": f"Bearer {token}"}
        rows: dict[str, tuple[str, dict[str, str]]] = {
            "plain": ("/plain/users/1", {}),
            "plain+bearer": ("/plain/users/1", bearer),
            "jwt": ("/jwt/users/1", bearer),
            "jwt+claims": ("/claims/users/1", bearer),
            "api_key": ("/key/users/1", {"X-API-Key": API_KEY}),
        }
        (tmp / "backend.conf").write_text(NGINX_BACKEND.replace("{tmp}", tmpdir))
        (tmp / "py.toml").write_text(
            PYPROXYD.format(
                port=PY_PORT,
                backend=BACKEND_PORT,
                key_hash=hashlib.sha256(API_KEY.encode()).hexdigest(),
            )
        )
        try:
            nginx = ["nginx", "-g", "daemon off;", "-c", str(tmp / "backend.conf")]
            procs.append(start(nginx, "0", tmp / "b.log"))
            pyproxyd = [sys.executable, "-m", "pyproxyd", "run", "-c", str(tmp / "py.toml")]
            procs.append(start(pyproxyd, "1", tmp / "p.log"))
            wait_port(BACKEND_PORT)
            wait_port(PY_PORT)
            results = {k: [] for k in rows}
            names = list(rows)
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    path, headers = rows[name]
                    wrk(PY_PORT, args.warmup, args.connections, path, headers)
                    results[name].append(
                        wrk(PY_PORT, args.duration, args.connections, path, headers)
                    )
                    print(f"round {r + 1} {name}: {results[name][-1][0]:.0f} req/s",
                          file=sys.stderr)  # fmt: skip
        finally:
            stop(procs)
        micro(tmp, token)
    med = {
        k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in results.items()
    }
    errs = {k: sum(x[3] for x in v) for k, v in results.items()}
    base = med["plain"][0] or 1.0
    print(f"\n{args.rounds} rounds x {args.duration}, {args.connections} connections; medians\n")
    print("| row | req/s | p50 ms | p99 ms | errors | vs plain |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, (rps, p50, p99) in med.items():
        print(f"| {k} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errs[k]} | {rps / base:.2f}x |")
    print(f"\njwt route vs no-auth route: {med['jwt'][0] / base:.2f}x (target >= 0.90x)")


if __name__ == "__main__":
    main()

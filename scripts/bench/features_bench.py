#!/usr/bin/env python3
"""Throughput of one pyproxyd route plain, with a local rate limit, and with a JWT check.

    .venv/bin/python scripts/bench/features_bench.py [--duration 5s] [--rounds 3]

Three pyproxyd processes, one config each, all pinned on core 1 (only the one
under test is busy); nginx `return 200` (proxy_bench's backend config on this
script's port) and wrk (proxy_bench.wrk) share core 0. Every config has one
catch-all route to the backend, the access log on (written to /dev/null) and
the admin listener up (metrics are always counted; /metrics is read at the end
to show it):

  plain      the route alone
  ratelimit  + rate_limit: a local token_bucket keyed by ip, 1000000/s with a
             burst of 1000000, so it never refuses: the cost of deciding
  jwt        + auth = "jwt": RS256 (a fresh 2048-bit key, its public half in a
             jwks.json next to the config, issuer and audience checked); wrk
             sends the same valid token on every request, so after the first
             one the verification is a cache hit (auth_bench.make_token)

Each config is checked with `pyproxyd validate -c FILE` first. Each round runs
every row (order rotated), a warm-up run before each measured run. Prints the
median req/s, p50 and p99 per row and each row against `plain` (target >= 0.9x),
as a ratio of medians and as the median of each round's ratio (steadier).
Needs wrk and nginx (`apt-get install -y wrk nginx-light`). Only 127.0.0.1,
ports 18420-18426. Every process started here is stopped by PID at the end.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from auth_bench import make_token
from proxy_bench import (
    REPO,
    backend_conf,
    gateway_toml,
    start,
    stop,
    wait_port,
    wait_ready,
    wrk,
    wrk_args,
)

BACKEND_PORT = 18420
ROWS = {"plain": (18421, 18424), "ratelimit": (18422, 18425), "jwt": (18423, 18426)}

EXTRA = {
    "plain": "",
    "ratelimit": """rate_limit = "local"
[rate_limits.local]
algorithm = "token_bucket"
backend = "local"
key = "ip"
rate = "1000000/s"
burst = 1000000
""",
    "jwt": """auth = "jwt"
[auth.jwt]
algorithms = ["RS256"]
jwks_file = "jwks.json"
issuer = "https://idp.bench"
audience = "bench"
""",
    # Issue 20's: a headers middleware both ways and a python one that does
    # nothing (bench_middleware.py, found on sys.path or server.python_path).
    "middleware": """middlewares = ["tag", "noop"]
[middlewares.tag]
type = "headers"
request = { set = { "X-Gateway" = "pyproxyd" } }
response = { set = { "X-Content-Type-Options" = "nosniff" }, remove = ["Server"] }
[middlewares.noop]
type = "python"
factory = "bench_middleware:make"
""",
}


def validate(conf: Path) -> None:
    """`pyproxyd validate -c conf`; exits with its messages when the file is invalid."""
    exe = REPO / ".venv" / "bin" / "pyproxyd"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pyproxyd"]
    res = subprocess.run([*cmd, "validate", "-c", str(conf)], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{conf.name} does not validate:\n{res.stdout}{res.stderr}")


def status(port: int, headers: dict[str, str]) -> int:
    """The status of one GET (to check the jwt row refuses a request with no token)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/users/1", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def counted(admin_port: int) -> float:
    """Sum of pyproxyd_requests_total on /metrics (shows the metrics ran on every request)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("pyproxyd_requests_total{")
    )


def main() -> None:
    args = wrk_args(__doc__)
    results: dict[str, list[tuple[float, float, float, int]]] = {k: [] for k in ROWS}
    metrics: dict[str, float] = {}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        token = make_token(tmp)  # writes tmp/jwks.json
        headers: dict[str, dict[str, str]] = {
            "plain": {},
            "ratelimit": {},
            "jwt": {"Authorization": f"Bearer {token}"},
        }
        (tmp / "backend.conf").write_text(backend_conf(BACKEND_PORT, tmpdir))
        for name, (port, admin) in ROWS.items():
            conf = tmp / f"{name}.toml"
            conf.write_text(gateway_toml(port, BACKEND_PORT, admin=admin) + EXTRA[name])
            validate(conf)
        try:
            nginx = ["nginx", "-g", "daemon off;", "-c", str(tmp / "backend.conf")]
            procs.append(start(nginx, "0", tmp / "b.log"))
            for name in ROWS:
                cmd = [sys.executable, "-m", "pyproxyd", "run", "--no-watch", "-c"]
                procs.append(start([*cmd, str(tmp / f"{name}.toml")], "1", tmp / f"{name}.log"))
            wait_port(BACKEND_PORT)
            for port, admin in ROWS.values():
                wait_port(port)
                wait_ready(admin)
            print(f"sanity: jwt row without a token -> {status(ROWS['jwt'][0], {})}, "
                  f"with it -> {status(ROWS['jwt'][0], headers['jwt'])}; "
                  f"plain -> {status(ROWS['plain'][0], {})}", file=sys.stderr)  # fmt: skip
            names = list(ROWS)
            for r in range(args.rounds):
                for name in names[r % 3 :] + names[: r % 3]:
                    port = ROWS[name][0]
                    wrk(port, args.warmup, args.connections, headers=headers[name])
                    results[name].append(
                        wrk(port, args.duration, args.connections, headers=headers[name])
                    )
                    print(f"round {r + 1} {name}: {results[name][-1][0]:.0f} req/s",
                          file=sys.stderr)  # fmt: skip
            metrics = {name: counted(admin) for name, (_, admin) in ROWS.items()}
        finally:
            stop(procs)
    med = {
        k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in results.items()
    }
    errs = {k: sum(x[3] for x in v) for k, v in results.items()}
    base = med["plain"][0] or 1.0
    # Each row against plain measured in the same round, then the median: the
    # host's speed drifts 2x within a minute, and a ratio of medians taken in
    # different phases of that drift moves by more than the 10% it measures.
    paired = {
        k: statistics.median(x[0] / (p[0] or 1.0) for x, p in zip(v, results["plain"], strict=True))
        for k, v in results.items()
    }
    print(f"\n{args.rounds} rounds x {args.duration}, {args.connections} connections; "
          "gateways on core 1, wrk and nginx on core 0; medians\n")  # fmt: skip
    print("| config | req/s | p50 ms | p99 ms | non-2xx/errors | requests in /metrics "
          "| vs plain (medians) | vs plain (per round) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for k, (rps, p50, p99) in med.items():
        print(f"| {k} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errs[k]} | {metrics[k]:,.0f} | "
              f"{rps / base:.2f}x | {paired[k]:.2f}x |")  # fmt: skip
    print(f"\ntarget >= 0.90x plain (median of per-round ratios): ratelimit "
          f"{paired['ratelimit']:.2f}x, jwt {paired['jwt']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Show what the example config does, with real requests: routing, an API key
(401 without it, 200 with it) and a rate limit (429 with its headers).

    python scripts/demo_tour.py [--gateway 127.0.0.1:8080]

scripts/demo.sh runs it once the gateway is up; scripts/ci_install_check.sh runs
it against an installed wheel. It checks every status it shows and exits 1 when
one differs. Standard library only: it runs with any Python 3.11.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from dataclasses import dataclass, field

KEY = "pyproxyd-demo-key"  # etc/gateway.toml holds its SHA-256 ([consumers.demo])
LIMIT_HEADERS = ("Retry-After", "RateLimit-Policy", "RateLimit", "X-RateLimit-Limit",
                 "X-RateLimit-Remaining", "X-RateLimit-Reset")  # fmt: skip


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def seen(self) -> str:
        """What the demo backend says it received, or the gateway's error."""
        try:
            doc = json.loads(self.body)
        except ValueError:
            return self.body[:80].decode("utf-8", "replace")
        if "backend" in doc:
            return f"{doc['backend']} received {doc['method']} {doc['path']}"
        return json.dumps(doc)


@dataclass
class Tour:
    host: str
    port: int
    failed: list[str] = field(default_factory=list)
    # Printed at the end, in one block: the gateway's own log lines (the same
    # terminal, in scripts/demo.sh) come out while the requests run.
    lines: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.lines.append(text)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("GET", path, headers=headers or {})
            r = conn.getresponse()
            return Answer(r.status, dict(r.getheaders()), r.read())
        finally:
            conn.close()

    def show(self, want: int, path: str, headers: dict[str, str] | None = None) -> Answer:
        a = self.get(path, headers)
        sent = "".join(f" -H '{k}: {v}'" for k, v in (headers or {}).items())
        mark = "" if a.status == want else f"   <-- expected {want}"
        self.say(
            f"  curl -i '{self.host}:{self.port}{path}'{sent}\n    {a.status}  {a.seen()}{mark}"
        )
        if a.status != want:
            self.failed.append(f"GET {path}{sent}: {a.status}, expected {want}")
        return a


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default="127.0.0.1:8080", help="host:port")
    args = parser.parse_args()
    host, _, port = args.gateway.rpartition(":")
    tour = Tour(host, int(port))

    tour.say("\nRouting (strip_prefix, a header predicate, rewrite):")
    tour.show(200, "/ping")
    tour.show(200, "/api/users/7")
    tour.show(200, "/api/users/7", {"Api-Version": "v2"})
    tour.show(200, "/v1/user/42")

    tour.say(f'\nAn API key (route /account/**, auth = "api_key"); the demo key is {KEY}:')
    denied = tour.show(401, "/account/orders")
    if "WWW-Authenticate" in denied.headers:
        tour.say(f"    WWW-Authenticate: {denied.headers['WWW-Authenticate']}")
    tour.show(200, "/account/orders", {"X-API-Key": KEY})

    tour.say("\nA rate limit (route /search: a bucket of 5, refilled at 2 a second), 7 at once:")
    statuses = [tour.get("/search?q=gateway") for _ in range(6)]
    tour.say("  " + " ".join(str(a.status) for a in statuses))
    if [a.status for a in statuses] != [200] * 5 + [429]:
        tour.failed.append(f"/search x6: {[a.status for a in statuses]}, expected 5 x 200, 429")
    limited = tour.show(429, "/search?q=gateway")
    for name in LIMIT_HEADERS:
        if name in limited.headers:
            tour.say(f"    {name}: {limited.headers[name]}")
        else:
            tour.failed.append(f"/search 429: no {name} header")

    print("\n".join(tour.lines), flush=True)
    if tour.failed:
        print("\nnot as expected:\n  " + "\n  ".join(tour.failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

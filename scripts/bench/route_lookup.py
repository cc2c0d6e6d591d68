#!/usr/bin/env python3
"""Route lookup cost with 10 routes and with 10,000 routes.

    .venv/bin/python scripts/bench/route_lookup.py [--repeat 31] [--number 2000]

Both routers hold the same mix of patterns per service (a captured id behind a
header predicate and without one, an exact path, a deeper pattern with `*`,
and a `**` catch-all); the big one just has 2,000 services instead of 2. The
same request paths are timed against both, each one as the gateway handles
it: `normalise_path` on the raw path, then `Router.match`. Prints the median
ns per lookup over the repeats (and the min), for normalise + match and for
match alone, and the ratio big/small (the trie's promise: close to 1.0;
target <= 1.2), then normalise_path alone on the fast and the slow path.
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from multidict import CIMultiDict, MultiDict

from pyproxyd.routing import Router, RouteRule, normalise_path

ROUTES_PER_SERVICE = 5
K = TypeVar("K")


def build(n_routes: int) -> Router:
    rules: list[RouteRule] = []
    for s in range(n_routes // ROUTES_PER_SERVICE):
        rules += [
            RouteRule(
                f"svc{s}-items-v2", f"/svc{s}/v1/items/{{id}}", headers=(("x-api-version", "v2"),)
            ),
            RouteRule(f"svc{s}-items", f"/svc{s}/v1/items/{{id}}", methods=frozenset({"GET"})),
            RouteRule(f"svc{s}-health", f"/svc{s}/v1/health"),
            RouteRule(f"svc{s}-user-orders", f"/svc{s}/v1/users/{{uid}}/orders/*"),
            RouteRule(f"svc{s}-all", f"/svc{s}/**"),
        ]
    router = Router(rules)
    assert len(router) == n_routes
    return router


# (method, raw path, headers, expected rule id or None for a 404)
REQUESTS: list[tuple[str, str, dict[str, str], str | None]] = [
    ("GET", "/svc1/v1/items/42", {}, "svc1-items"),  # backtracks past the header rule
    ("GET", "/svc0/v1/items/42", {"X-Api-Version": "v2"}, "svc0-items-v2"),
    ("GET", "/svc0/v1/health", {}, "svc0-health"),
    ("GET", "/svc1/v1/users/7/orders/9", {}, "svc1-user-orders"),
    ("POST", "/svc0/v1/items/42", {}, "svc0-all"),  # method fails: falls back to **
    ("GET", "/svc1/static/js/app.js", {}, "svc1-all"),
    ("GET", "/svc0/v1/./items/%7E42", {}, "svc0-items"),  # the slow normalisation path
    ("GET", "/nowhere/at/all", {}, None),
]


def lookups(router: Router) -> list[Callable[[], object]]:
    query: MultiDict[str] = MultiDict()
    calls: list[Callable[[], object]] = []
    for method, raw, hdrs, want in REQUESTS:
        headers = CIMultiDict(hdrs)
        m = router.match(method, normalise_path(raw), headers, query)
        got = m.rule.id if m is not None else None
        assert got == want, f"{method} {raw}: expected {want}, got {got}"

        def full(
            method: str = method, raw: str = raw, headers: CIMultiDict[str] = headers
        ) -> object:
            return router.match(method, normalise_path(raw), headers, query)

        calls.append(full)
    return calls


def match_only(router: Router) -> list[Callable[[], object]]:
    query: MultiDict[str] = MultiDict()
    calls: list[Callable[[], object]] = []
    for method, raw, hdrs, _ in REQUESTS:
        headers = CIMultiDict(hdrs)
        path = normalise_path(raw)

        def only(
            method: str = method, path: str = path, headers: CIMultiDict[str] = headers
        ) -> object:
            return router.match(method, path, headers, query)

        calls.append(only)
    return calls


def normalise_only() -> dict[str, list[Callable[[], object]]]:
    by_kind: dict[str, list[Callable[[], object]]] = {"fast path": [], "slow path": []}
    for _, raw, _, _ in REQUESTS:
        kind = "fast path" if normalise_path(raw) is raw else "slow path"
        by_kind[kind].append(partial(normalise_path, raw))
    return by_kind


def per_lookup_ns(
    calls_by_size: dict[K, list[Callable[[], object]]], repeat: int, number: int
) -> dict[K, tuple[float, float]]:
    """(median, min) over the repeats of the mean ns per lookup, for each size.

    The median is the headline; the min is shown too because on a shared
    machine noise only ever adds time, so it is the steadier of the two.

    The sizes take turns within every repeat (order alternating), so a noisy
    neighbour on the machine slows both alike instead of skewing the ratio.
    """
    overhead = min(timeit.repeat(lambda: None, number=number, repeat=5)) / number
    samples: dict[K, list[float]] = {n: [] for n in calls_by_size}
    sizes = list(calls_by_size)
    for r in range(repeat):
        for n in sizes if r % 2 == 0 else reversed(sizes):
            calls = calls_by_size[n]

            def one_round(calls: list[Callable[[], object]] = calls) -> None:
                for call in calls:
                    call()

            t = timeit.timeit(one_round, number=number) / number
            # Drop the cost of calling the wrapper itself: the numbers are the lookup's.
            samples[n].append((t - overhead * len(calls)) / len(calls) * 1e9)
    return {n: (statistics.median(s), min(s)) for n, s in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=31)
    ap.add_argument("--number", type=int, default=2000)
    args = ap.parse_args()

    sizes = (10, 10_000)
    routers = {n: build(n) for n in sizes}
    results = {
        label: per_lookup_ns({n: make(routers[n]) for n in sizes}, args.repeat, args.number)
        for label, make in (("normalise+match", lookups), ("match only", match_only))
    }

    print(f"{len(REQUESTS)} request paths, {args.repeat} repeats x {args.number} rounds each")
    print("ns per lookup, median (min) over the repeats")
    print(f"{'':18}{'10 routes':>16}{'10,000 routes':>18}{'ratio of medians':>19}")
    for label, by_size in results.items():
        (small, small_min), (big, big_min) = by_size[10], by_size[10_000]
        print(
            f"{label:18}{small:>7.0f} ({small_min:>5.0f}){big:>9.0f} ({big_min:>5.0f})"
            f"{big / small:>12.2f}x (min {big_min / small_min:.2f}x)"
        )
    by_kind = normalise_only()
    alone = per_lookup_ns(by_kind, args.repeat, args.number)
    print(
        "normalise_path alone: "
        + ", ".join(
            f"{k} {med:.0f} ({low:.0f}) ns over {len(by_kind[k])} path(s)"
            for k, (med, low) in alone.items()
        )
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""RSS of the local limiter under a scan of 1,000,000 distinct keys.

    .venv/bin/python scripts/bench/ratelimit_rss.py [--keys 1000000]

Each case runs in a fresh child process (so one does not inherit another's
heap) and feeds N distinct IPv4-like keys into one LocalStore, as a scan from
N addresses would, all within one simulated second, so that no key goes idle
(1/min token bucket, 100 per 60 s window): the cap alone bounds memory.
Prints the RSS growth, the keys kept, and the time per decision, for the
default cap and with the cap lifted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
from pyproxyd.ratelimit.algorithms import SlidingWindow, TokenBucket
from pyproxyd.ratelimit.local import DEFAULT_MAX_KEYS, LocalStore

def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

algo_name, cap, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
algo = TokenBucket(1 / 60, 5) if algo_name == "token_bucket" else SlidingWindow(100, 60.0)
store = LocalStore(DEFAULT_MAX_KEYS if cap == "default" else n + 1)
before = rss_kib()
t0 = time.perf_counter()
now = 1000.0
for i in range(n):
    key = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" if i < 1 << 24 else str(i)
    store.take(key, algo, now + i * 1e-6)
elapsed = time.perf_counter() - t0
print(json.dumps({"kept": len(store), "evicted": store.evicted,
                  "rss_mib": (rss_kib() - before) / 1024, "us_per_decision": elapsed / n * 1e6}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1_000_000)
    args = ap.parse_args()
    print(f"{args.keys:,} distinct keys into one policy's LocalStore")
    print(f"{'algorithm':<15}{'cap':<10}{'keys kept':>12}{'RSS growth':>14}{'us/decision':>13}")
    for algo in ("token_bucket", "sliding_window"):
        for cap in ("default", "none"):
            t0 = time.time()
            out = subprocess.run(
                [sys.executable, "-c", CHILD, algo, cap, str(args.keys)],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            r = json.loads(out)
            print(
                f"{algo:<15}{cap:<10}{r['kept']:>12,}{r['rss_mib']:>10.0f} MiB"
                f"{r['us_per_decision']:>13.2f}   ({time.time() - t0:.1f}s)"
            )


if __name__ == "__main__":
    main()

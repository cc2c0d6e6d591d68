from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from structlog.testing import capture_logs

from pyproxyd.ratelimit.report import ALLOWED, REJECTED, PolicyStats, Reporter


def test_rate_limited_is_logged_once_per_key_per_second_and_summarised() -> None:
    stats = PolicyStats("p", "token_bucket")
    with capture_logs() as logs:
        for _ in range(100):
            stats.count("r", "default", "1.2.3.4", REJECTED)
            stats.rejected("r", "default", "1.2.3.4", "1.2.3.4", "/x")
        stats.count("r", "vip", "5.6.7.8", ALLOWED)
        reporter = Reporter()
        reporter.stats["p"] = stats
        reporter.flush()
        reporter.flush()  # nothing new: no second summary
    events = [e["event"] for e in logs]
    assert events.count("rate_limited") <= 2  # once a second (a second may tick over)
    assert events.count("rate_limit_summary") == 1
    summary = next(e for e in logs if e["event"] == "rate_limit_summary")
    assert summary["top_keys"][0] == {"key": "1.2.3.4", "allowed": 0, "rejected": 100}
    assert {"route": "r", "tier": "vip", "allowed": 1, "rejected": 0, "delayed": 0} in summary[
        "routes"
    ]
    assert stats.counts[("r", "default")] == [0, 100, 0]  # cumulative, for metrics


def test_validate_says_nothing_of_workers_for_local_limits(tmp_path: Path) -> None:
    """They are one per instance (pyproxyd/shm): what the file says, with any workers.
    Only a sliding window too long for the shared zone's logs is refused."""
    p = tmp_path / "g.toml"
    text = """
[server]
listen = ["127.0.0.1:0"]
workers = 4
[upstreams.b]
targets = [{ url = "http://127.0.0.1:9" }]
[rate_limits.rl]
algorithm = "token_bucket"
rate = "10/s"
[rate_limits.sw]
algorithm = "sliding_window"
limit = LIMIT
window = "1h"
[[routes]]
id = "r"
path = "/**"
upstream = "b"
rate_limit = ["rl", "sw"]
"""
    p.write_text(text.replace("LIMIT", "8192"))
    r = subprocess.run(
        [sys.executable, "-m", "pyproxyd", "validate", "-c", str(p)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr and "workers" not in r.stderr
    p.write_text(text.replace("LIMIT", "8193"))
    r = subprocess.run(
        [sys.executable, "-m", "pyproxyd", "validate", "-c", str(p)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    said = "rate_limits.sw.limit: warning: with workers > 1 a local sliding window counts at most"
    assert f"{said} 8192" in r.stderr  # and `run` refuses it (unsupported)

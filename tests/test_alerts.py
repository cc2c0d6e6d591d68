"""etc/prometheus/alerts.yml: valid for promtool, unit-tested, only metrics that exist.

promtool comes with Debian's `prometheus` package (scripts/test.sh installs it
when run as root). Without it these tests fail: the rules would go unchecked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_dashboard import defined_series, metric_names

RULES_DIR = Path(__file__).resolve().parents[1] / "etc" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULE_TESTS = RULES_DIR / "alerts_test.yml"

EXPECTED = {
    "PyproxydDown",
    "PyproxydRateLimitRejectionsHigh",
    "PyproxydCircuitOpen",
    "PyproxydRoute5xxRatioHigh",
    "PyproxydUpstreamAllTargetsEjected",
    "PyproxydConfigReloadFailed",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: apt-get install prometheus (scripts/test.sh, as root)")
    return path


def run(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def rules() -> dict[str, dict[str, str]]:
    """alert name -> {"expr": ..., "for": ...}, read without a YAML library."""
    out: dict[str, dict[str, str]] = {}
    lines = RULES.read_text().splitlines()
    current: dict[str, str] = {}
    for i, line in enumerate(lines):
        m = re.match(r"\s*- alert: (\w+)", line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        m = re.match(r"(\s*)(expr|for): ?(.*)", line)
        if m and current is not None:
            indent, key, value = len(m.group(1)), m.group(2), m.group(3).strip()
            if value in (">-", ">", "|", "|-"):  # a block scalar: the lines indented more
                block = []
                for nxt in lines[i + 1 :]:
                    if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                        break
                    block.append(nxt.strip())
                value = " ".join(block).strip()
            current[key] = value
    return out


def test_promtool_check_rules() -> None:
    result = run("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED)} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = run("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alerts_we_promise() -> None:
    found = rules()
    assert set(found) == EXPECTED
    assert "> 50" in found["PyproxydRateLimitRejectionsHigh"]["expr"]
    assert 'result="rejected"' in found["PyproxydRateLimitRejectionsHigh"]["expr"]
    assert found["PyproxydRateLimitRejectionsHigh"]["for"] == "1m"
    assert "== 2" in found["PyproxydCircuitOpen"]["expr"]  # 2 = open
    assert found["PyproxydCircuitOpen"]["for"] == "5m"
    assert found["PyproxydDown"]["expr"] == 'up{job="pyproxyd"} == 0'


def test_alerts_use_only_defined_metrics() -> None:
    known = defined_series() | {"up"}
    for name, rule in rules().items():
        used = metric_names(rule["expr"])
        assert used, name
        assert used <= known, f"{name} uses unknown metrics: {used - known}"


def test_every_alert_has_firing_and_quiet_cases() -> None:
    text = RULE_TESTS.read_text()
    cases: dict[str, set[str]] = {}
    for m in re.finditer(r"alertname: (\w+)\s*\n\s*exp_alerts:(.*)", text):
        kind = "quiet" if m.group(2).strip() == "[]" else "firing"
        cases.setdefault(m.group(1), set()).add(kind)
    for name in EXPECTED:
        assert cases.get(name) == {"quiet", "firing"}, f"{name}: {cases.get(name)}"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (") > 50", ") > 500"),  # the rate-limit threshold
        ("== 2\n        for: 5m", "== 2\n        for: 10m"),  # circuit open duration
        (") > 0.05", ") > 0.5"),  # the 5xx ratio threshold
        ('up{job="pyproxyd"} == 0', 'up{job="pyproxyd"} == 2'),
    ],
)
def test_the_unit_tests_notice_a_changed_rule(tmp_path: Path, old: str, new: str) -> None:
    text = RULES.read_text()
    assert old in text
    (tmp_path / RULES.name).write_text(text.replace(old, new, 1))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0, result.stdout

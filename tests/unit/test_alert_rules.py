"""Alert rules and scrape config, checked by the real ``promtool`` (Debian package ``prometheus``).

``promtool test rules`` runs deploy/prometheus/tests/*.yml against the rules;
these tests fail on any complaint it prints. No server is started.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fixtures.prometheus import PROMTOOL_BIN

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
RULES = PROM_DIR / "rules" / "shadowd.yml"
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
DOCS = ROOT / "docs" / "observability.md"


def promtool(*args: str, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL_BIN, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check_without_warnings():
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert lines == [f"Checking {RULES}", f"SUCCESS: {len(alerts())} rules found"], lines


def test_scrape_config_passes_promtool_check_config():
    out = promtool("check", "config", "prometheus.yml")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    # The one expected warning: Ray's service-discovery file only exists where Ray runs.
    warnings = [line for line in text.splitlines() if "WARNING" in line]
    assert all("prom_metrics_service_discovery.json" in w for w in warnings), warnings
    assert "SUCCESS: 1 rule files found" in text


def test_promtool_rule_unit_tests_pass():
    assert RULE_TESTS, "no promtool rule tests in deploy/prometheus/tests"
    out = promtool("test", "rules", *[str(p) for p in RULE_TESTS])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAILED" not in out.stdout + out.stderr


def _alert_cases() -> dict[str, dict[str, int]]:
    cases: dict[str, dict[str, int]] = {}
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                kind = "fires" if case.get("exp_alerts") else "quiet"
                counts = cases.setdefault(case["alertname"], {"fires": 0, "quiet": 0})
                counts[kind] += 1
    return cases


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_every_alert_has_a_firing_and_a_quiet_case(rule):
    counts = _alert_cases().get(rule["alert"], {"fires": 0, "quiet": 0})
    assert counts["fires"] >= 1 and counts["quiet"] >= 1, f"{rule['alert']}: {counts}"


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_every_alert_is_labelled_annotated_and_documented(rule):
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
    anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
    assert anchor == rule["alert"].lower()
    # A markdown heading "### ShadowdDaemonDown" has the anchor "#shadowddaemondown".
    headings = re.findall(r"^#+\s+(\S+)\s*$", DOCS.read_text(), flags=re.M)
    assert rule["alert"] in headings, f"docs/observability.md has no heading for {rule['alert']}"


def test_removing_any_alert_breaks_the_rule_tests(tmp_path):
    """Mutation check: the promtool tests really depend on every rule (not vacuous)."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    for path in RULE_TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)
    doc = yaml.safe_load(RULES.read_text())
    still_passing = []
    for name in [a["alert"] for a in alerts()]:
        mutated = {"groups": [{**g, "rules": [r for r in g["rules"] if r.get("alert") != name]} for g in doc["groups"]]}
        (tmp_path / "rules" / "shadowd.yml").write_text(yaml.safe_dump(mutated))
        out = promtool("test", "rules", *[str(tmp_path / "tests" / p.name) for p in RULE_TESTS], cwd=tmp_path)
        if out.returncode == 0:
            still_passing.append(name)
    assert still_passing == []

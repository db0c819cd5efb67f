"""Rendering the report and the `shadowd report` command on a persisted window (no daemon)."""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from shadowd.cli import app
from shadowd.compare.comparator import Comparator
from shadowd.compare.render import render_report
from shadowd.compare.report import CheckStatus, ShadowReport, Verdict
from shadowd.config import parse_config
from shadowd.errors import ShadowdError
from shadowd.records import ModelOutput, Pair

RAW = {
    "task": "classification",
    "models": {
        "production": {"name": "prod-v1", "kind": "python", "target": "m:p", "input_shape": [3]},
        "candidate": {"name": "cand-v2", "kind": "python", "target": "m:c", "input_shape": [3]},
    },
    "slices": [{"name": "dark", "where": {"field": "brightness", "op": "lt", "value": 0.3}}],
}


def window(tmp_path, n, same_share, seed=0):
    """A saved window where the candidate copies production on `same_share` of pairs."""
    cfg = parse_config({**RAW, "data_dir": str(tmp_path)})
    comp = Comparator(cfg)
    rng = np.random.default_rng(seed)
    for i in range(n):
        p = rng.dirichlet(np.ones(3))
        q = p if rng.random() < same_share else rng.dirichlet(np.ones(3))
        comp.add(
            Pair(
                request_id=str(i),
                ts=0.0,
                features={"brightness": float(rng.random())},
                production=ModelOutput(role="production", model="p", values=p.tolist(), latency_s=0.004),
                candidate=ModelOutput(role="candidate", model="c", values=q.tolist(), latency_s=0.004),
            )
        )
    comp.save()
    return comp.report()


def test_json_format_is_the_report(tmp_path):
    rep = window(tmp_path, 300, 0.5)
    assert json.loads(render_report(rep, "json")) == rep.to_json()
    assert ShadowReport.from_json(json.loads(render_report(rep, "json"))).to_json() == rep.to_json()


def test_table_and_markdown_show_verdict_slices_and_checks(tmp_path):
    rep = window(tmp_path, 600, 0.5)
    dark = rep.slices["dark"]
    flips = dark.flips / dark.compared
    for fmt in ("table", "markdown"):
        text = render_report(rep, fmt)
        assert f"gate: {rep.gate.verdict.value}" in text
        assert f"{100 * flips:.2f}%" in text
        for c in rep.checks:
            assert c.check in text
        assert "holm" in text
    md = render_report(rep, "markdown")
    check_rows = [
        line
        for line in md.splitlines()
        if line.startswith("| ") and (" pairs |" in line or " labels |" in line) and not line.startswith("| slice")
    ]
    assert len(check_rows) == len(rep.checks)
    with pytest.raises(ValueError, match="unknown report format"):
        render_report(rep, "html")


def test_verdict_and_status_codes_in_one_place():
    assert [Verdict(v).exit_code for v in ("PASS", "FAIL", "INCONCLUSIVE")] == [0, 1, 3]
    assert [Verdict(v).gauge_value for v in ("PASS", "FAIL", "INCONCLUSIVE")] == [0, 1, 2]
    assert [CheckStatus(v).gauge_value for v in ("pass", "fail", "inconclusive")] == [0, 1, 2]


def test_a_report_of_another_schema_version_or_shape_is_refused(tmp_path):
    data = window(tmp_path, 50, 1.0).to_json()
    with pytest.raises(ShadowdError, match="schema_version 1; this shadowd reads 2"):
        ShadowReport.from_json({**data, "schema_version": 1})
    with pytest.raises(ShadowdError, match="not a shadowd report: gate"):
        ShadowReport.from_json({k: v for k, v in data.items() if k != "gate"})


@pytest.mark.parametrize(
    "n,same_share,verdict,code",
    [
        (3000, 1.0, "PASS", 0),
        (800, 0.0, "FAIL", 1),  # a flip rate no retrain produces: operationally broken
        (800, 0.3, "REVIEW", 3),  # different beyond the floor, no labels yet: not decided
        (50, 1.0, "INCONCLUSIVE", 3),
    ],
)
def test_cli_gate_exit_code_from_data_dir(tmp_path, n, same_share, verdict, code):
    rep = window(tmp_path, n, same_share)
    assert rep.gate.verdict == verdict
    result = CliRunner().invoke(app, ["report", "--data-dir", str(tmp_path), "--gate", "--format", "json"])
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout)["gate"]["verdict"] == verdict


def test_cli_runs_another_configs_checks(tmp_path):
    window(tmp_path, 800, 0.3)
    cfg_path = tmp_path / "strict.yaml"
    lenient = {**RAW, "checks": [{"type": "candidate_failure_rate", "name": "errors", "slices": ["overall"]}]}
    cfg_path.write_text(yaml.safe_dump(lenient))
    result = CliRunner().invoke(
        app, ["report", "--data-dir", str(tmp_path), "-c", str(cfg_path), "-f", "json", "--gate"]
    )
    out = json.loads(result.stdout)
    assert {c["check"] for c in out["checks"]} == {"errors"}
    assert result.exit_code == 0


def test_cli_errors_exit_2(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["report", "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "no comparator state" in r.output
    window(tmp_path, 10, 1.0)
    r = runner.invoke(app, ["report", "--data-dir", str(tmp_path), "--format", "html"])
    assert r.exit_code == 2 and "--format" in r.output
    r = runner.invoke(app, ["report", "--data-dir", str(tmp_path), "--reset"])
    assert r.exit_code == 2 and "--url" in r.output

"""The dashboards: committed JSON equals the generator, is well-formed Grafana JSON,
every query parses (checked by the real ``promtool``), and every metric it reads is declared.

Whether the queries return the right data is checked against a real
Prometheus in tests/integration/test_prometheus_dashboards.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from shadowd.cli import app
from shadowd.observe.dashboards import (
    DASHBOARD_FILES,
    build_dashboards,
    panel_queries,
    render_dashboard,
    resolve_variables,
)
from shadowd.observe.metrics import ShadowdMetrics
from tests.fixtures.prometheus import PROMTOOL_BIN, metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "dashboards"
DOCS = ROOT / "docs" / "observability.md"
DASHBOARDS = build_dashboards()
VARIABLES = {"__rate_interval": "1m", "__range": "1h", "slice": ".*", "candidate": ".*", "datasource": "prometheus"}


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_committed_json_matches_the_generator(name):
    committed = (DASHBOARD_DIR / name).read_text(encoding="utf-8")
    assert committed == render_dashboard(DASHBOARDS[name]), (
        f"dashboards/{name} is stale: run `shadowd dashboards write`"
    )


def test_no_stray_dashboard_files():
    assert sorted(p.name for p in DASHBOARD_DIR.glob("*.json")) == sorted(DASHBOARD_FILES)


def _panels(dashboard):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_dashboard_is_well_formed_grafana_json(name):
    d = json.loads((DASHBOARD_DIR / name).read_text())
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert d["uid"] and len(d["uid"]) <= 40 and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["slice"]["query"]["query"] == "label_values(shadowd_pairs_compared_total, slice)"
    assert variables["slice"]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    candidate = variables["candidate"]
    assert candidate["query"]["query"] == candidate["definition"] == "label_values(shadowd_gate_verdict, candidate)"
    assert candidate["multi"] is True and candidate["includeAll"] is True and candidate["allValue"] == ".*"

    panels = list(_panels(d))
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    cells = set()
    for p in panels:
        pos = p["gridPos"]
        assert set(pos) == {"h", "w", "x", "y"} and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        mine = {(pos["x"] + i, pos["y"] + j) for i in range(pos["w"]) for j in range(pos["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["title"] and p["description"], p
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(set(ref_ids)) == len(ref_ids)
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == p["datasource"]


def test_dashboard_uids_are_distinct():
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids)


def test_every_query_parses_with_promtool(tmp_path):
    """promtool parses each query (as a recording rule); a PromQL typo fails here with its panel named."""
    queries = [q for d in DASHBOARDS.values() for q in panel_queries(d)]
    rules = [{"record": f"panel:q{i}", "expr": resolve_variables(q.expr, VARIABLES)} for i, q in enumerate(queries)]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    out = subprocess.run([PROMTOOL_BIN, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    for i, q in enumerate(queries):  # name the panel instead of a rule index
        text = text.replace(f"panel:q{i}", f"{q.dashboard_uid}/{q.panel_title}/{q.ref_id}")
    assert out.returncode == 0, text
    assert f"SUCCESS: {len(queries)} rules found" in text


def test_promtool_parse_check_catches_a_typo(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "r", "expr": "sum(rate(x[5m])"}]}]}))
    out = subprocess.run([PROMTOOL_BIN, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0


_METRIC = re.compile(r"\b(shadowd_[a-z0-9_]+)")


def test_every_metric_a_panel_reads_is_declared():
    declared = set(metric_families(ShadowdMetrics(CollectorRegistry())))
    read = set()
    for d in DASHBOARDS.values():
        for q in panel_queries(d):
            for name in _METRIC.findall(q.expr):
                read.add(re.sub(r"_(bucket|count|sum)$", "", name) if name not in declared else name)
    assert read - declared == set(), "panels read metrics ShadowdMetrics does not declare"


# Families labelled by candidate, and the families whose candidate role is told apart by the model label.
_PER_CANDIDATE = (
    "shadowd_pairs_compared_total",
    "shadowd_pairs_divergent_total",
    "shadowd_label_flips_total",
    "shadowd_pair_divergence_bucket",
    "shadowd_check_status",
    "shadowd_gate_verdict",
    "shadowd_noise_floor",
    "shadowd_churn_floor",
)
_PER_MODEL = ("shadowd_requests_total", "shadowd_model_latency_seconds_bucket")
_SELECTOR = re.compile(r"\b(shadowd_[a-z0-9_]+)(\{[^}]*\})?")


def test_every_per_candidate_panel_follows_the_candidate_variable():
    """Every selector of a per-candidate family filters on $candidate and the legend names the candidate;
    the candidate role's calls and latency are selected by model; other roles' are not narrowed."""
    checked = 0
    for d in DASHBOARDS.values():
        for panel in _panels(d):
            for target in panel.get("targets", []):
                expr, legend = target["expr"], target["legendFormat"]
                for name, selector in _SELECTOR.findall(expr):
                    where = f"{d['uid']}/{panel['title']}/{target['refId']}: {expr}"
                    if name in _PER_CANDIDATE:
                        assert 'candidate=~"$candidate"' in selector, where
                        assert "{{candidate}}" in legend, where
                        checked += 1
                    elif name in _PER_MODEL:
                        assert selector, where
                        if 'role="candidate"' in selector:
                            assert 'model=~"$candidate"' in selector and "{{model}}" in legend, where
                        else:
                            # another role (or every role but candidate): all its series, whatever the candidate
                            assert re.search(r'role(!="candidate"|="(?!candidate")\w+")', selector), where
                            assert "$candidate" not in selector, where
                        checked += 1
    assert checked >= 15


def test_every_panel_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    titles = {p["title"] for d in DASHBOARDS.values() for p in _panels(d) if p["type"] != "row"}
    undocumented = sorted(t for t in titles if t not in text)
    assert not undocumented, f"docs/observability.md does not mention: {undocumented}"


def test_resolve_variables_refuses_unknown_variables():
    assert resolve_variables('rate(x{slice=~"$slice"}[$__rate_interval])', VARIABLES) == 'rate(x{slice=~".*"}[1m])'
    with pytest.raises(KeyError, match=r"\$team"):
        resolve_variables('x{team="$team"}', VARIABLES)


@pytest.mark.usefixtures("without_foundation_sdk")
def test_without_the_sdk_the_generator_names_the_extra():
    with pytest.raises(ModuleNotFoundError, match=r"grafana-foundation-sdk.*pip install 'shadowd\[grafana\]'"):
        import shadowd.observe.dashboards  # noqa: F401

    out = CliRunner().invoke(app, ["dashboards", "write", "--out-dir", "unused"])
    assert out.exit_code == 2 and "pip install 'shadowd[grafana]'" in out.output

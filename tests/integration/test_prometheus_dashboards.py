"""Every dashboard panel query, run against a real Prometheus server scraping real metrics.

Prometheus is the Debian ``prometheus`` binary, started on a free port with
its own config and storage (``prometheus_factory``), scraping every second and
loading deploy/prometheus/rules/shadowd.yml. The target is a real
prometheus_client HTTP endpoint serving ``ShadowdMetrics`` that
``SyntheticTraffic`` feeds with fixed counts, so besides "parses and returns
data" the key panels are checked against the numbers they must show.

Ray Serve's own panels (``ray_serve_*``) need a Ray cluster's metrics export;
here they are only checked to parse (an empty answer is expected without Ray).
"""

from __future__ import annotations

import math

import pytest
import yaml

from shadowd.observe.dashboards import build_dashboards, panel_queries, resolve_variables
from tests.fixtures.prometheus import CANDIDATE_MODEL, RULES_FILE, SLICES, TrafficShape

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# What Grafana would substitute: $__rate_interval is max(4 x scrape interval, step) = 4 s at 1 s scrapes.
VARIABLES = {"__rate_interval": "5s", "__range": "1m", "slice": ".*", "candidate": ".*", "datasource": "prometheus"}
QUERIES = [q for d in build_dashboards().values() for q in panel_queries(d)]
RAY_ONLY = [q for q in QUERIES if "ray_serve_" in q.expr]
SHADOWD = [q for q in QUERIES if q not in RAY_ONLY]


def _id(q) -> str:
    return f"{q.dashboard_uid}/{q.panel_title}/{q.ref_id}"


@pytest.fixture(scope="module")
def prom(prometheus_factory, shadowd_metrics_endpoint):
    server = prometheus_factory({"shadowd": [shadowd_metrics_endpoint.target]})
    # Enough scrapes that every rate window ($__rate_interval) holds several samples.
    server.wait_until('sum(rate(shadowd_pairs_compared_total{slice="overall"}[5s])) > 0')
    server.wait_until("count_over_time(up[10s]) >= 6")
    traffic = shadowd_metrics_endpoint.traffic
    assert not traffic.mismatched, f"metric families declared with other label names: {traffic.mismatched}"
    return server


@pytest.mark.parametrize("query", SHADOWD, ids=_id)
def test_panel_query_returns_data(prom, shadowd_metrics_endpoint, query):
    result = prom.query(resolve_variables(query.expr, VARIABLES))
    missing = sorted(shadowd_metrics_endpoint.traffic.missing)
    assert result, f"{_id(query)}: no data for {query.expr} (families not declared in ShadowdMetrics: {missing})"
    # NaN is legitimate for one series (a quantile over a window without observations),
    # but a panel whose every series is NaN shows nothing.
    assert any(math.isfinite(float(r["value"][1])) for r in result), f"{_id(query)}: {result}"


@pytest.mark.parametrize("query", RAY_ONLY, ids=_id)
def test_ray_serve_panel_query_parses(prom, query):
    assert prom.query(resolve_variables(query.expr, VARIABLES)) == []


def _panel(title: str, ref_id: str = "A") -> str:
    [q] = [q for q in QUERIES if q.panel_title == title and q.ref_id == ref_id]
    return resolve_variables(q.expr, VARIABLES)


def test_panels_show_the_numbers_the_traffic_implies(prom):
    s = TrafficShape()
    # rel=0.05: a scrape may land between two increments of one tick.
    [[_, share]] = prom.values(_panel("Shadowed share")).items()
    assert share == pytest.approx(s.sampled / s.production_ok, rel=0.05)

    calls = s.candidate_ok + s.candidate_error + s.candidate_timeout
    [[model, error]] = prom.values(_panel("Candidate errors and timeouts", "A")).items()
    [[_, timeout]] = prom.values(_panel("Candidate errors and timeouts", "B")).items()
    assert dict(model) == {"model": CANDIDATE_MODEL}  # per candidate model, its name the model label
    assert error == pytest.approx(s.candidate_error / calls, rel=0.05)
    assert timeout == pytest.approx(s.candidate_timeout / calls, rel=0.05)

    divergent = {dict(k)["slice"]: v for k, v in prom.values(_panel("Divergent share per slice")).items()}
    assert divergent == pytest.approx({sl: s.divergent[sl] / s.compared[sl] for sl in SLICES}, rel=0.05)
    flips = {dict(k)["slice"]: v for k, v in prom.values(_panel("Label flip share per slice")).items()}
    # desktop never flips: the panel shows 0 for it rather than dropping the slice.
    assert flips == pytest.approx({sl: s.flips[sl] / s.compared[sl] for sl in SLICES}, rel=0.05, abs=1e-9)

    noise = {dict(k)["slice"]: v for k, v in prom.values(_panel("Noise and churn floor per slice", "A")).items()}
    assert noise == pytest.approx(s.noise_floor)
    churn = {dict(k)["slice"]: v for k, v in prom.values(_panel("Noise and churn floor per slice", "B")).items()}
    assert churn == pytest.approx({sl: 2 * v for sl, v in s.noise_floor.items()})

    # histogram_quantile interpolates inside the bucket holding the observations.
    p50 = {dict(k)["role"]: v for k, v in prom.values(_panel("Model latency by role (p50, p99)")).items()}
    assert 0.0025 < p50["production"] <= 0.005
    assert 0.01 < p50["candidate"] <= 0.025

    [[candidate, verdict]] = prom.values(_panel("Gate verdict")).items()
    assert verdict == s.gate_verdict and dict(candidate) == {"candidate": CANDIDATE_MODEL}
    checks = {(dict(k)["check"], dict(k)["slice"]): v for k, v in prom.values(_panel("Check status per slice")).items()}
    assert checks == {key: float(v) for key, v in s.check_status.items()}

    [[_, joined]] = prom.values(_panel("Label join share")).items()
    assert joined == pytest.approx(s.labels_joined / (s.labels_joined + s.labels_unmatched), rel=0.05)


def test_slice_variable_lists_the_slices(prom):
    # label_values(shadowd_pairs_compared_total, slice), as Grafana's Prometheus data source asks it.
    values = prom.api("label/slice/values", **{"match[]": "shadowd_pairs_compared_total"})
    assert sorted(values) == sorted(SLICES)


def test_candidate_variable_lists_the_candidates(prom):
    # label_values(shadowd_gate_verdict, candidate)
    values = prom.api("label/candidate/values", **{"match[]": "shadowd_gate_verdict"})
    assert values == [CANDIDATE_MODEL]


def test_alert_rules_load_and_evaluate_on_the_server(prom):
    prom.wait_until('count(ALERTS{alertname="ShadowdGateFailed"}) > 0', timeout_s=10)
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    declared = [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]
    assert len(rules) == len(declared)
    unhealthy = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not unhealthy, unhealthy
    # The synthetic traffic fails check divergence on slice overall: the rule sees it (pending, for: 10m).
    states = {
        (a["labels"]["candidate"], a["labels"]["slice"]): a["state"]
        for a in prom.api("alerts")["alerts"]
        if a["labels"]["alertname"] == "ShadowdGateFailed"
    }
    assert states == {(CANDIDATE_MODEL, "overall"): "pending"}

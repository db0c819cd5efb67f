"""Every family in ``ShadowdMetrics`` passes ``promtool check metrics`` (the real binary).

The registry is built here, every family is touched once (so it has samples),
rendered with ``generate_latest`` exactly as /metrics serves it, and piped to
promtool, which reports naming problems (missing ``_total``, units, help text).
No Ray, no server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from shadowd.observe.metrics import (
    MULTIPROC_ENV,
    PER_CANDIDATE_GAUGES,
    ShadowdMetrics,
    forget_candidate,
    multiprocess_registry,
)
from tests.fixtures.prometheus import PROMTOOL_BIN, exercise_every_family, metric_families

ROOT = Path(__file__).resolve().parents[2]

# Label names that would carry unbounded values (ids, raw features) into Prometheus.
_UNBOUNDED_LABELS = {"request_id", "id", "user", "user_id", "input", "value", "label", "text"}


def _scrape() -> tuple[ShadowdMetrics, str]:
    metrics = ShadowdMetrics(CollectorRegistry())
    exercise_every_family(metrics)
    return metrics, generate_latest(metrics.registry).decode()


def test_live_scrape_passes_promtool_check_metrics():
    metrics, text = _scrape()
    out = subprocess.run([PROMTOOL_BIN, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr
    # Every declared family made it into the scrape (none silently missing).
    scraped = {f.name for f in text_string_to_metric_families(text)}
    declared = {name.removesuffix("_total") for name in metric_families(metrics)}
    assert declared <= scraped, declared - scraped


def test_promtool_check_metrics_rejects_a_misnamed_counter():
    """The check above can fail: promtool flags a counter without _total."""
    text = "# HELP shadowd_pairs_seen Pairs.\n# TYPE shadowd_pairs_seen counter\nshadowd_pairs_seen 1\n"
    out = subprocess.run([PROMTOOL_BIN, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "_total" in out.stdout + out.stderr


def test_names_are_namespaced_and_labels_bounded():
    metrics, _ = _scrape()
    for name, family in metric_families(metrics).items():
        assert name.startswith("shadowd_"), name
        assert not set(family._labelnames) & _UNBOUNDED_LABELS, (name, family._labelnames)
        if family._type == "gauge":
            # "all" (the default) keeps one series per process id: unbounded across restarts.
            mode = getattr(family, "_multiprocess_mode", None)
            assert mode not in (None, "all"), f"{name}: set multiprocess_mode"


# Families about one candidate's comparison, checks and verdict: the candidate label comes first.
_PER_CANDIDATE = (
    "shadowd_pairs_compared_total",
    "shadowd_pairs_divergent_total",
    "shadowd_label_flips_total",
    "shadowd_pair_divergence",
    *PER_CANDIDATE_GAUGES,
)


def test_candidate_and_model_labels():
    families = metric_families(ShadowdMetrics(CollectorRegistry()))
    for name in _PER_CANDIDATE:
        assert families[name]._labelnames[0] == "candidate", (name, families[name]._labelnames)
    assert families["shadowd_gate_verdict"]._labelnames == ("candidate",)
    assert families["shadowd_check_status"]._labelnames == ("candidate", "check", "slice")
    assert families["shadowd_requests_total"]._labelnames == ("role", "outcome", "model")
    assert families["shadowd_model_latency_seconds"]._labelnames == ("role", "model")


def _two_candidates(metrics: ShadowdMetrics) -> None:
    for name, status in (("cand-a", 1), ("cand-b", 0)):
        metrics.gate_verdict.labels(candidate=name).set(status)
        metrics.check_status.labels(candidate=name, check="flip_rate", slice="overall").set(status)
        metrics.check_status.labels(candidate=name, check="flip_rate", slice="mobile").set(status)
        metrics.noise_floor.labels(candidate=name, slice="overall").set(0.1)
        metrics.churn_floor.labels(candidate=name, slice="overall").set(0.2)
        metrics.pairs_compared.labels(candidate=name, slice="overall").inc()


def _candidates_in(text: str, family: str) -> set[str]:
    found = set()
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            found |= {s.labels["candidate"] for s in fam.samples}
    return found


def test_forget_candidate_removes_its_gauges_only():
    metrics = ShadowdMetrics(CollectorRegistry())
    _two_candidates(metrics)
    assert forget_candidate(metrics, "cand-a") == 5  # verdict, two check statuses, noise and churn floor
    text = generate_latest(metrics.registry).decode()
    for family in PER_CANDIDATE_GAUGES:
        assert _candidates_in(text, family) == {"cand-b"}, family
    # a count stays: it stops growing, and rates over it fall to nothing
    assert _candidates_in(text, "shadowd_pairs_compared") == {"cand-a", "cand-b"}
    assert forget_candidate(metrics, "cand-a") == 0 and forget_candidate(metrics, "unknown") == 0
    metrics.gate_verdict.labels(candidate="cand-a").set(2)  # added again: back at its next report
    assert metrics.registry.get_sample_value("shadowd_gate_verdict", {"candidate": "cand-a"}) == 2


_IN_A_PROCESS = """
import sys
from prometheus_client import CollectorRegistry
from shadowd.observe.metrics import ShadowdMetrics, forget_candidate
from tests.unit.test_metrics_exposition import _two_candidates

metrics = ShadowdMetrics(CollectorRegistry())
if sys.argv[1] == "forget":
    _two_candidates(metrics)
    assert forget_candidate(metrics, "cand-a") == 5
else:
    metrics.gate_verdict.labels(candidate="cand-a").set(3)
"""


def test_forget_candidate_in_multiprocess_mode(tmp_path):
    """A process's file cannot lose an entry: the forgotten series are NaN there, newest of all, and the
    daemon's /metrics (``multiprocess_registry``) leaves them out; a later process's value shows again."""
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
    for step in ("forget", "again"):
        out = subprocess.run(
            [sys.executable, "-W", "error::UserWarning", "-c", _IN_A_PROCESS, step],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        if step == "forget":
            plain = CollectorRegistry()
            multiprocess.MultiProcessCollector(plain, path=str(tmp_path))
            assert 'shadowd_gate_verdict{candidate="cand-a"} NaN' in generate_latest(plain).decode()
            text = generate_latest(multiprocess_registry(tmp_path)).decode()
            for family in PER_CANDIDATE_GAUGES:
                assert _candidates_in(text, family) == {"cand-b"}, family
            assert _candidates_in(text, "shadowd_pairs_compared") == {"cand-a", "cand-b"}
    text = generate_latest(multiprocess_registry(tmp_path)).decode()
    assert 'shadowd_gate_verdict{candidate="cand-a"} 3.0' in text
    assert _candidates_in(text, "shadowd_gate_verdict") == {"cand-a", "cand-b"}

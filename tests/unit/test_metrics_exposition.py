"""Every family in ``ShadowdMetrics`` passes ``promtool check metrics`` (the real binary).

The registry is built here, every family is touched once (so it has samples),
rendered with ``generate_latest`` exactly as /metrics serves it, and piped to
promtool, which reports naming problems (missing ``_total``, units, help text).
No Ray, no server.
"""

from __future__ import annotations

import subprocess

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shadowd.observe.metrics import ShadowdMetrics
from tests.fixtures.prometheus import PROMTOOL_BIN, exercise_every_family, metric_families

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

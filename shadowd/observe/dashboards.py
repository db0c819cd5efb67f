"""Grafana dashboards as code: the source of ``dashboards/*.json``.

Where it sits: the metrics declared in ``shadowd.observe.metrics`` are
scraped by Prometheus; these dashboards are what the on-call engineer reads.
``shadowd dashboards write`` regenerates the committed JSON and
``shadowd dashboards push`` (``shadowd.observe.grafana``) provisions it. A unit
test fails when the committed JSON and this generator disagree, and an
integration test runs every panel query against a real Prometheus.

Written as plain dicts rather than with a builder library: the subset of the
dashboard model used here (time series, stat and state-timeline panels, two
template variables) is small, and plain dicts keep the emitted JSON readable
in review. Every panel query uses the ``${datasource}`` variable, so the same
file works in any Grafana with a Prometheus data source.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The dashboards show every annotation carrying these tags (gate verdict changes).
from shadowd.observe.grafana import GATE_ANNOTATION_TAGS

__all__ = [
    "DASHBOARD_FILES",
    "PanelQuery",
    "build_dashboards",
    "flywheel_dashboard",
    "overview_dashboard",
    "panel_queries",
    "render_dashboard",
    "resolve_variables",
    "write_dashboards",
]

SCHEMA_VERSION = 39
OVERVIEW_UID = "shadowd-overview"
FLYWHEEL_UID = "shadowd-flywheel"
# The on-call service level for the annotation queue: the oldest item should be
# looked at within a day. Alert ShadowdAnnotationBacklogStale uses the same number.
ANNOTATION_SLO_S = 86_400

_DS = {"type": "prometheus", "uid": "${datasource}"}
_RATE = "$__rate_interval"
_SLICE = 'slice=~"$slice"'


def _value_mappings(*texts: tuple[str, str]) -> list[dict]:
    """Grafana value mappings for a gauge whose value is the index of (text, color)."""
    options = {str(i): {"text": text, "color": color, "index": i} for i, (text, color) in enumerate(texts)}
    return [{"type": "value", "options": options}]


# Gate verdict and check status gauges: 0 pass, 1 fail, 2 inconclusive; drift status likewise.
_STATUS_MAPPINGS = _value_mappings(("PASS", "green"), ("FAIL", "red"), ("INCONCLUSIVE", "yellow"))
_DRIFT_MAPPINGS = _value_mappings(("OK", "green"), ("DRIFT", "red"), ("INCONCLUSIVE", "yellow"))
_UP_MAPPINGS = _value_mappings(("DOWN", "red"), ("UP", "green"))


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel, as Grafana would send it (variables unresolved)."""

    dashboard_uid: str
    panel_title: str
    ref_id: str
    expr: str


def _target(expr: str, legend: str = "", ref_id: str = "A") -> dict[str, Any]:
    return {"datasource": _DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref_id}


def _targets(*queries: tuple[str, str]) -> list[dict[str, Any]]:
    return [_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def _ratio_or_zero(part: str, whole: str, by: str) -> str:
    """``part / whole`` per group, 0 (not "no data") for groups where ``part`` has no series yet.

    Counters with labels only appear once incremented, so a slice that never
    diverged would otherwise vanish from the panel instead of showing 0.
    """
    num = f"sum by ({by}) (rate({part}[{_RATE}]))"
    den = f"sum by ({by}) (rate({whole}[{_RATE}]))"
    return f"({num} or {den} * 0) / {den}"


class _Grid:
    """Places panels left to right on Grafana's 24-column grid, wrapping rows."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self._x = 0
        self._y = 0
        self._row_h = 0

    def _next_id(self) -> int:
        return len(self.panels) + 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "id": self._next_id(),
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
                "panels": [],
            }
        )
        self._y += 1

    def _newline(self) -> None:
        self._y += self._row_h
        self._x = 0
        self._row_h = 0

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self._x + w > 24:
            self._newline()
        panel = {"id": self._next_id(), **panel, "gridPos": {"h": h, "w": w, "x": self._x, "y": self._y}}
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)


def _timeseries(
    title: str, description: str, targets: list[dict[str, Any]], unit: str = "short", **defaults: Any
) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": _DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"},
                **defaults,
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}},
    }


def _stat(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str = "short",
    mappings: list[dict[str, Any]] | None = None,
    thresholds: list[tuple[float | None, str]] | None = None,
) -> dict[str, Any]:
    steps = [{"value": v, "color": c} for v, c in (thresholds or [(None, "green")])]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": _DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "mappings": mappings or [],
                "thresholds": {"mode": "absolute", "steps": steps},
                "color": {"mode": "thresholds"},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "auto",
        },
    }


def _state_timeline(
    title: str, description: str, targets: list[dict[str, Any]], mappings: list[dict[str, Any]] = _STATUS_MAPPINGS
) -> dict[str, Any]:
    return {
        "type": "state-timeline",
        "title": title,
        "description": description,
        "datasource": _DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "mappings": mappings,
                "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": [{"value": None, "color": "green"}]},
            },
            "overrides": [],
        },
        "options": {"showValue": "auto", "mergeValues": True, "rowHeight": 0.9},
    }


def _templating() -> dict[str, Any]:
    slice_query = "label_values(shadowd_pairs_compared_total, slice)"
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "refresh": 1,
                "regex": "",
                "options": [],
            },
            {
                "name": "slice",
                "label": "Slice",
                "type": "query",
                "datasource": _DS,
                "definition": slice_query,
                "query": {"query": slice_query, "refId": "slice"},
                "multi": True,
                "includeAll": True,
                # A regex, so "All" also matches slices that appear after the page loaded.
                "allValue": ".*",
                "current": {},
                "hide": 0,
                "refresh": 2,
                "regex": "",
                "sort": 1,
                "options": [],
            },
        ]
    }


def _dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "id": None,
        "tags": ["shadowd"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": _templating(),
        "annotations": {
            "list": [
                {
                    "name": "Annotations & Alerts",
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "type": "dashboard",
                },
                {
                    "name": "Gate verdict changes",
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": False,
                    "iconColor": "purple",
                    "target": {"type": "tags", "tags": list(GATE_ANNOTATION_TAGS), "matchAny": False, "limit": 100},
                },
            ]
        },
        "links": [
            {
                "type": "dashboards",
                "title": "shadowd",
                "tags": ["shadowd"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
            },
        ],
        "panels": panels,
    }


def overview_dashboard() -> dict[str, Any]:
    """Traffic, latency production vs candidate, divergence and gate status per slice, noise floor, Ray Serve."""
    g = _Grid()
    g.row("Gate")
    g.add(
        _stat(
            "Gate verdict",
            "Overall gate verdict of the candidate (shadowd_gate_verdict).",
            _targets(("max(shadowd_gate_verdict)", "verdict")),
            mappings=_STATUS_MAPPINGS,
            thresholds=[(None, "green"), (1, "red"), (2, "yellow")],
        ),
        w=6,
        h=4,
    )
    g.add(
        _stat(
            "Daemon up",
            'Whether Prometheus can scrape the shadowd metrics endpoint (up{job="shadowd"}).',
            _targets(('min(up{job="shadowd"})', "up")),
            mappings=_UP_MAPPINGS,
            thresholds=[(None, "red"), (1, "green")],
        ),
        w=6,
        h=4,
    )
    g.add(
        _stat(
            "Shadowed share",
            "Share of production requests sampled for shadowing.",
            _targets(
                (
                    f"sum(rate(shadowd_pairs_sampled_total[{_RATE}])) / "
                    f'sum(rate(shadowd_requests_total{{role="production"}}[{_RATE}]))',
                    "share",
                )
            ),
            unit="percentunit",
        ),
        w=6,
        h=4,
    )
    g.add(
        _stat(
            "Pairs compared",
            "Pairs compared over the dashboard's time range (all slices).",
            _targets(('sum(increase(shadowd_pairs_compared_total{slice="overall"}[$__range]))', "pairs")),
        ),
        w=6,
        h=4,
    )
    g.add(
        _state_timeline(
            "Check status per slice",
            "Each statistical check of the gate, per slice: PASS, FAIL or INCONCLUSIVE (shadowd_check_status).",
            _targets((f"max by (check, slice) (shadowd_check_status{{{_SLICE}}})", "{{check}} / {{slice}}")),
        ),
        w=24,
        h=8,
    )

    g.row("Traffic")
    g.add(
        _timeseries(
            "Requests by role and outcome",
            "Model calls per second by role (production, candidate, noise) and outcome.",
            _targets((f"sum by (role, outcome) (rate(shadowd_requests_total[{_RATE}]))", "{{role}} {{outcome}}")),
            unit="reqps",
        ),
        w=12,
        h=8,
    )
    cand = 'role="candidate"'
    g.add(
        _timeseries(
            "Candidate errors and timeouts",
            "Share of candidate calls that raised or timed out. Production answers are unaffected.",
            _targets(
                (
                    f'(sum(rate(shadowd_requests_total{{{cand},outcome="error"}}[{_RATE}])) or on() vector(0))'
                    f" / sum(rate(shadowd_requests_total{{{cand}}}[{_RATE}]))",
                    "error",
                ),
                (
                    f'(sum(rate(shadowd_requests_total{{{cand},outcome="timeout"}}[{_RATE}])) or on() vector(0))'
                    f" / sum(rate(shadowd_requests_total{{{cand}}}[{_RATE}]))",
                    "timeout",
                ),
            ),
            unit="percentunit",
        ),
        w=12,
        h=8,
    )
    g.add(
        _timeseries(
            "Shadow path: sampled, compared, dropped",
            "Pairs per second sampled by the ingress, compared by the comparator, and dropped "
            "(the shadow path drops rather than slows production).",
            _targets(
                (f"sum(rate(shadowd_pairs_sampled_total[{_RATE}]))", "sampled"),
                (f'sum(rate(shadowd_pairs_compared_total{{slice="overall"}}[{_RATE}]))', "compared"),
                (f"sum(rate(shadowd_pairs_dropped_total[{_RATE}])) or on() vector(0)", "dropped"),
            ),
            unit="reqps",
        ),
        w=12,
        h=8,
    )
    g.add(
        _timeseries(
            "Bad requests by status",
            "Client requests refused with a 4xx, by HTTP status.",
            _targets((f"sum by (status) (rate(shadowd_bad_requests_total[{_RATE}])) or on() vector(0)", "{{status}}")),
            unit="reqps",
        ),
        w=12,
        h=8,
    )

    g.row("Latency")
    g.add(
        _timeseries(
            "Model latency by role (p50, p99)",
            "Per-example model latency, production vs candidate (and noise).",
            _targets(
                (
                    f"histogram_quantile(0.5, sum by (le, role) (rate(shadowd_model_latency_seconds_bucket[{_RATE}])))",
                    "p50 {{role}}",
                ),
                (
                    "histogram_quantile(0.99, sum by (le, role) "
                    f"(rate(shadowd_model_latency_seconds_bucket[{_RATE}])))",
                    "p99 {{role}}",
                ),
            ),
            unit="s",
        ),
        w=12,
        h=8,
    )
    g.add(
        _timeseries(
            "Request latency in the ingress (p50, p99)",
            "From request parsed to production answer ready: what shadowing may cost clients.",
            _targets(
                (
                    f"histogram_quantile(0.5, sum by (le) (rate(shadowd_request_latency_seconds_bucket[{_RATE}])))",
                    "p50",
                ),
                (
                    f"histogram_quantile(0.99, sum by (le) (rate(shadowd_request_latency_seconds_bucket[{_RATE}])))",
                    "p99",
                ),
            ),
            unit="s",
        ),
        w=12,
        h=8,
    )

    g.row("Divergence per slice")
    g.add(
        _timeseries(
            "Divergent share per slice",
            "Share of compared pairs whose divergence is over the threshold.",
            _targets(
                (
                    _ratio_or_zero(
                        f"shadowd_pairs_divergent_total{{{_SLICE}}}",
                        f"shadowd_pairs_compared_total{{{_SLICE}}}",
                        "slice",
                    ),
                    "{{slice}}",
                )
            ),
            unit="percentunit",
        ),
        w=12,
        h=8,
    )
    g.add(
        _timeseries(
            "Label flip share per slice",
            "Classification: share of compared pairs whose top label differs.",
            _targets(
                (
                    _ratio_or_zero(
                        f"shadowd_label_flips_total{{{_SLICE}}}", f"shadowd_pairs_compared_total{{{_SLICE}}}", "slice"
                    ),
                    "{{slice}}",
                )
            ),
            unit="percentunit",
        ),
        w=12,
        h=8,
    )
    g.add(
        _timeseries(
            "Divergence per pair (p50, p90) per slice",
            "Distribution of per-pair divergence (total variation distance or relative difference).",
            _targets(
                (
                    f"histogram_quantile(0.5, sum by (le, slice) "
                    f"(rate(shadowd_pair_divergence_bucket{{{_SLICE}}}[{_RATE}])))",
                    "p50 {{slice}}",
                ),
                (
                    f"histogram_quantile(0.9, sum by (le, slice) "
                    f"(rate(shadowd_pair_divergence_bucket{{{_SLICE}}}[{_RATE}])))",
                    "p90 {{slice}}",
                ),
            ),
        ),
        w=12,
        h=8,
    )
    g.add(
        _timeseries(
            "Noise floor per slice",
            "How often production disagrees with itself (noise replica); divergence is judged against this floor.",
            _targets((f"max by (slice) (shadowd_noise_floor{{{_SLICE}}})", "{{slice}}")),
            unit="percentunit",
        ),
        w=12,
        h=8,
    )

    g.row("Data quality")
    g.add(
        _timeseries(
            "Non-finite outputs by role",
            "Model outputs containing NaN or inf, per second, by role.",
            _targets((f"sum by (role) (rate(shadowd_nonfinite_outputs_total[{_RATE}])) or on() vector(0)", "{{role}}")),
            unit="reqps",
        ),
        w=8,
        h=8,
    )
    g.add(
        _timeseries(
            "Expectation violations",
            "Requests or outputs violating a configured expectation, per second, by expectation.",
            _targets(
                (
                    f"sum by (expectation) (rate(shadowd_expectation_violations_total[{_RATE}])) or on() vector(0)",
                    "{{expectation}}",
                )
            ),
            unit="reqps",
        ),
        w=8,
        h=8,
    )
    g.add(
        _state_timeline(
            "Drift status per feature and slice",
            "Drift check of the last closed window per monitored feature and slice against the "
            "training profile: OK, DRIFT or INCONCLUSIVE.",
            _targets((f"max by (feature, slice) (shadowd_drift_status{{{_SLICE}}})", "{{feature}} / {{slice}}")),
            mappings=_DRIFT_MAPPINGS,
        ),
        w=8,
        h=8,
    )

    g.row("Ray Serve")
    g.add(
        _timeseries(
            "Healthy replicas per deployment",
            "Ray Serve replicas passing health checks, per deployment (ingress, worker, comparator).",
            _targets(("sum by (application, deployment) (ray_serve_deployment_replica_healthy)", "{{deployment}}")),
        ),
        w=12,
        h=8,
    )
    g.add(
        _timeseries(
            "Queued and ongoing requests per deployment",
            "Requests waiting for a replica and requests running in replicas, per deployment.",
            _targets(
                ("sum by (deployment) (ray_serve_deployment_queued_queries)", "queued {{deployment}}"),
                ("sum by (deployment) (ray_serve_replica_processing_queries)", "processing {{deployment}}"),
            ),
        ),
        w=12,
        h=8,
    )
    return _dashboard(
        OVERVIEW_UID,
        "shadowd / overview",
        "Is the candidate safe to ship, and is shadowing costing production anything?",
        g.panels,
    )


def flywheel_dashboard() -> dict[str, Any]:
    """Annotation queue, backlog age against the on-call service level, labels, Kafka delivery, suites."""
    g = _Grid()
    g.row("Annotation queue")
    g.add(
        _stat(
            "Backlog items",
            "Items waiting for an on-call annotator, all rotations (shadowd_annotation_backlog_items).",
            _targets(("sum(shadowd_annotation_backlog_items)", "items")),
        ),
        w=6,
        h=4,
    )
    g.add(
        _stat(
            "Oldest item age",
            f"Age of the oldest unannotated item; red past the service level ({ANNOTATION_SLO_S // 3600} h).",
            _targets(("max(shadowd_annotation_oldest_item_age_seconds)", "age")),
            unit="s",
            thresholds=[(None, "green"), (ANNOTATION_SLO_S / 2, "yellow"), (ANNOTATION_SLO_S, "red")],
        ),
        w=6,
        h=4,
    )
    g.add(
        _stat(
            "Spool items",
            "Items in the local spool not yet delivered to Kafka (all items without Kafka).",
            _targets(("sum(shadowd_spool_items)", "items")),
        ),
        w=6,
        h=4,
    )
    g.add(
        _stat(
            "Kafka delivery errors (1 h)",
            "Failed sends to Kafka in the last hour; the spool keeps the items.",
            _targets(("sum(increase(shadowd_kafka_delivery_errors_total[1h])) or on() vector(0)", "errors")),
            thresholds=[(None, "green"), (1, "red")],
        ),
        w=6,
        h=4,
    )
    g.add(
        _timeseries(
            "Annotation items by outcome",
            "Items per second queued, held back, spooled, delivered to Kafka, or failed.",
            _targets((f"sum by (outcome) (rate(shadowd_annotation_items_total[{_RATE}]))", "{{outcome}}")),
            unit="reqps",
        ),
        w=12,
        h=8,
    )
    g.add(
        _timeseries(
            "Backlog and spool",
            "Items waiting for annotation, and items in the spool waiting for Kafka.",
            _targets(
                ("sum by (rotation) (shadowd_annotation_backlog_items)", "backlog {{rotation}}"),
                ("sum(shadowd_spool_items)", "spool"),
            ),
        ),
        w=12,
        h=8,
    )
    g.add(
        _timeseries(
            "Oldest item age vs service level",
            "Age of the oldest unannotated item per on-call rotation; the alert fires above the service level line.",
            _targets(
                ("max by (rotation) (shadowd_annotation_oldest_item_age_seconds)", "{{rotation}}"),
                (f"vector({ANNOTATION_SLO_S})", "service level"),
            ),
            unit="s",
        ),
        w=12,
        h=8,
    )
    g.add(
        _timeseries(
            "Kafka delivery errors",
            "Failed sends to Kafka per second (broker unreachable, timeouts).",
            _targets((f"sum(rate(shadowd_kafka_delivery_errors_total[{_RATE}])) or on() vector(0)", "errors")),
            unit="reqps",
        ),
        w=12,
        h=8,
    )

    g.row("Labels")
    g.add(
        _timeseries(
            "Labels by source and outcome",
            "Labels per second by source (feedback: POST /feedback; annotator: the labels topic) and "
            "outcome (joined a stored pair, unknown request, expired, rejected).",
            _targets((f"sum by (source, outcome) (rate(shadowd_labels_total[{_RATE}]))", "{{source}} {{outcome}}")),
            unit="reqps",
        ),
        w=12,
        h=8,
    )
    g.add(
        _timeseries(
            "Label join share",
            "Share of labels that found their pair (the rest were for unknown or expired requests, or rejected).",
            _targets(
                (
                    f'(sum(rate(shadowd_labels_total{{outcome="joined"}}[{_RATE}])) or on() vector(0)) '
                    f"/ sum(rate(shadowd_labels_total[{_RATE}]))",
                    "joined",
                )
            ),
            unit="percentunit",
        ),
        w=12,
        h=8,
    )

    g.row("Suites")
    g.add(
        _timeseries(
            "Hard examples per suite",
            "Labelled hard examples collected per suite (slice / failure tag) for offline replay.",
            _targets(("sum by (suite) (shadowd_suite_examples)", "{{suite}}")),
        ),
        w=24,
        h=8,
    )
    return _dashboard(
        FLYWHEEL_UID,
        "shadowd / flywheel",
        "Annotation queue, labels and hard-example suites: is the flywheel turning?",
        g.panels,
    )


DASHBOARD_FILES: dict[str, Callable[[], dict[str, Any]]] = {
    "shadowd-overview.json": overview_dashboard,
    "shadowd-flywheel.json": flywheel_dashboard,
}


def build_dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard model, for every dashboard shadowd ships."""
    return {name: build() for name, build in DASHBOARD_FILES.items()}


def render_dashboard(dashboard: dict[str, Any]) -> str:
    """The exact text committed under ``dashboards/`` (stable key order, trailing newline)."""
    return json.dumps(dashboard, indent=2) + "\n"


def write_dashboards(out_dir: Path) -> list[Path]:
    """Write every dashboard as JSON into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, dashboard in build_dashboards().items():
        path = out_dir / name
        path.write_text(render_dashboard(dashboard), encoding="utf-8")
        written.append(path)
    return written


def panel_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    """Every query of every panel (rows included, collapsed or not)."""
    found = []

    def visit(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            visit(panel.get("panels", []))
            for target in panel.get("targets", []):
                found.append(PanelQuery(dashboard["uid"], panel["title"], target["refId"], target["expr"]))

    visit(dashboard.get("panels", []))
    return found


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def resolve_variables(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables (``$name``, ``${name}``) in a query, as Grafana does before sending it.

    Used to run panel queries against Prometheus outside Grafana; an unknown
    variable raises ``KeyError`` naming it rather than sending a broken query.
    """

    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"query uses Grafana variable ${name}, which has no value: {expr}")
        return values[name]

    return _VARIABLE.sub(sub, expr)

"""Grafana dashboards as code: the source of ``dashboards/*.json``.

Where it sits: the metrics declared in ``shadowd.observe.metrics`` are
scraped by Prometheus; these dashboards are what the on-call engineer reads.
``shadowd dashboards write`` regenerates the committed JSON and
``shadowd dashboards push`` (``shadowd.observe.grafana``) provisions it. A unit
test fails when the committed JSON and this generator disagree, and an
integration test runs every panel query against a real Prometheus.

Built with Grafana's typed builders, ``grafana-foundation-sdk`` (the build for
the Grafana 11.6 schema, pinned in the ``[grafana]`` extra: only generating the
JSON needs it; the committed files, the Helm chart and ``push --from-dir`` do
not). Where the SDK's defaults differ from Grafana's, this module says so:
legends are shown explicitly (the SDK's ``showLegend`` defaults to false),
tooltips are unsorted as in Grafana (the SDK sorts ascending), panel ids are
numbered here (the SDK leaves them unset), and the query variables'
``definition``, which the SDK's model lacks, is added to the JSON. Every panel
query uses the ``${datasource}`` variable, so the same file works in any
Grafana with a Prometheus data source. Several candidates may be shadowed at
once: the ``candidate`` variable selects them, every panel on a per-candidate
family filters on it and names the candidate in its legend, and the candidate
role's request and latency series are selected by their ``model`` label.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shadowd.observe.grafana import GATE_ANNOTATION_TAGS

try:
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm
except ModuleNotFoundError as err:
    if not (err.name or "").startswith("grafana_foundation_sdk"):
        raise
    raise ModuleNotFoundError(
        "shadowd.observe.dashboards generates the dashboards with grafana-foundation-sdk, which is not installed: "
        "pip install 'shadowd[grafana]' (the committed dashboards/*.json do not need it)",
        name=err.name,
    ) from err

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

OVERVIEW_UID = "shadowd-overview"
FLYWHEEL_UID = "shadowd-flywheel"
# The on-call service level for the annotation queue: the oldest item should be
# looked at within a day. Alert ShadowdAnnotationBacklogStale uses the same number.
ANNOTATION_SLO_S = 86_400

_DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
_GRAFANA_DS = dm.DataSourceRef(type_val="grafana", uid="-- Grafana --")
_RATE = "$__rate_interval"
_SLICE = 'slice=~"$slice"'
_SLICE_QUERY = "label_values(shadowd_pairs_compared_total, slice)"
_CAND = 'candidate=~"$candidate"'
_CAND_QUERY = "label_values(shadowd_gate_verdict, candidate)"
# The candidate role's model calls, by the candidate's name (the model label).
_CAND_MODEL = 'role="candidate",model=~"$candidate"'
_VARIABLE_QUERIES = {"candidate": _CAND_QUERY, "slice": _SLICE_QUERY}


# What a panel's mappings() takes (the list is invariant in its element type).
_Mapping = dm.ValueMap | dm.RangeMap | dm.RegexMap | dm.SpecialValueMap


def _value_mappings(*texts: tuple[str, str]) -> list[_Mapping]:
    """Grafana value mappings for a gauge whose value is the index of (text, color)."""
    options = {str(i): dm.ValueMappingResult(text=text, color=color, index=i) for i, (text, color) in enumerate(texts)}
    return [dm.ValueMap(options=options)]


# Gate verdict and check status gauges: 0 pass, 1 fail, 2 inconclusive, 3 review; drift status uses the first three.
_STATUS_MAPPINGS = _value_mappings(("PASS", "green"), ("FAIL", "red"), ("INCONCLUSIVE", "yellow"), ("REVIEW", "orange"))
_DRIFT_MAPPINGS = _value_mappings(("OK", "green"), ("DRIFT", "red"), ("INCONCLUSIVE", "yellow"))
_UP_MAPPINGS = _value_mappings(("DOWN", "red"), ("UP", "green"))


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel, as Grafana would send it (variables unresolved)."""

    dashboard_uid: str
    panel_title: str
    ref_id: str
    expr: str


def _ratio_or_zero(part: str, whole: str, by: str) -> str:
    """``part / whole`` per group, 0 (not "no data") for groups where ``part`` has no series yet.

    Counters with labels only appear once incremented, so a slice that never
    diverged would otherwise vanish from the panel instead of showing 0.
    """
    num = f"sum by ({by}) (rate({part}[{_RATE}]))"
    den = f"sum by ({by}) (rate({whole}[{_RATE}]))"
    return f"({num} or {den} * 0) / {den}"


_Query = tuple[str, str]  # (PromQL expression, legend)
_Panel = TypeVar("_Panel", timeseries.Panel, stat.Panel, statetimeline.Panel)


def _panel(panel: _Panel, title: str, description: str, queries: tuple[_Query, ...], w: int, h: int) -> _Panel:
    """Title, description, size, and the queries (refId A, B, ...), all on the ``${datasource}`` Prometheus.

    The SDK places panels left to right and wraps once a row is 24 columns wide; it
    does not wrap *before* a panel that would overflow, so each row's widths add up to
    24 (a test fails on a panel past column 24 or overlapping another).
    """
    for i, (expr, legend) in enumerate(queries):
        panel.with_target(
            prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i)).datasource(_DS)
        )
    return panel.title(title).description(description).datasource(_DS).span(w).height(h)


def _thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps([dm.Threshold(v, c) for v, c in steps])


def _legend(mode: cm.LegendDisplayMode, calcs: list[str] | None = None) -> cb.VizLegendOptions:
    # Shown explicitly: the SDK's showLegend defaults to false, which hides the legend.
    legend = cb.VizLegendOptions().show_legend(True).display_mode(mode).placement(cm.LegendPlacement.BOTTOM)
    return legend.calcs(calcs or [])


# Grafana's default tooltip; the SDK's default sorts the series ascending.
_TOOLTIP = cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.SINGLE).sort(cm.SortOrder.NONE)


def _timeseries(title: str, description: str, *queries: _Query, unit: str = "short", w: int = 12) -> timeseries.Panel:
    return (
        _panel(timeseries.Panel(), title, description, queries, w, 8)
        .unit(unit)
        .line_width(1)
        .fill_opacity(10)
        .show_points(cm.VisibilityMode.NEVER)
        .legend(_legend(cm.LegendDisplayMode.TABLE, ["lastNotNull", "max"]))
        .tooltip(_TOOLTIP)
    )


def _stat(
    title: str,
    description: str,
    *queries: _Query,
    unit: str = "short",
    mappings: list[_Mapping] | None = None,
    thresholds: tuple[tuple[float | None, str], ...] = ((None, "green"),),
) -> stat.Panel:
    return (
        _panel(stat.Panel(), title, description, queries, 6, 4)
        .unit(unit)
        .mappings(mappings or [])
        .thresholds(_thresholds(*thresholds))
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(cm.BigValueTextMode.AUTO)
    )


def _state_timeline(
    title: str, description: str, *queries: _Query, mappings: list[_Mapping] = _STATUS_MAPPINGS, w: int = 24
) -> statetimeline.Panel:
    return (
        _panel(statetimeline.Panel(), title, description, queries, w, 8)
        .mappings(mappings)
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .thresholds(_thresholds((None, "green")))
        .show_value(cm.VisibilityMode.AUTO)
        .merge_values(True)
        .row_height(0.9)
        .legend(_legend(cm.LegendDisplayMode.LIST))
        .tooltip(_TOOLTIP)
    )


def _query_variable(name: str, label: str) -> db.QueryVariable:
    """A multi-select variable listing a label's values, with All."""
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(_DS)
        .query({"query": _VARIABLE_QUERIES[name], "refId": name})
        .multi(True)
        .include_all(True)
        # A regex, so "All" also matches values that appear after the page loaded.
        .all_value(".*")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )


def _dashboard(uid: str, title: str, description: str) -> db.Dashboard:
    gate_annotations = db.AnnotationTarget().type("tags").tags(list(GATE_ANNOTATION_TAGS)).match_any(False).limit(100)
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["shadowd"])
        .timezone("browser")
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .version(1)
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(_query_variable("candidate", "Candidate"))
        .with_variable(_query_variable("slice", "Slice"))
        .annotation(
            db.AnnotationQuery()
            .name("Annotations & Alerts")
            .built_in(1)
            .datasource(_GRAFANA_DS)
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
        )
        .annotation(
            db.AnnotationQuery()
            .name("Gate verdict changes")
            .datasource(_GRAFANA_DS)
            .enable(True)
            .hide(False)
            .icon_color("purple")
            .target(gate_annotations)
        )
        .link(
            db.DashboardLink("shadowd")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["shadowd"])
            .as_dropdown(False)
            .include_vars(True)
            .keep_time(True)
        )
    )


def _to_json(dashboard: db.Dashboard) -> dict[str, Any]:
    """The dashboard model as plain JSON, panels numbered 1, 2, ... (the SDK leaves ids to the caller)."""
    model = dashboard.build()
    for panel_id, panel in enumerate(model.panels or [], start=1):
        panel.id_val = panel_id
    out: dict[str, Any] = json.loads(JSONEncoder().encode(model))
    # The SDK's variable model has no `definition` (the text Grafana lists the variable by).
    for variable in out["templating"]["list"]:
        if variable["name"] in _VARIABLE_QUERIES:
            variable["definition"] = _VARIABLE_QUERIES[variable["name"]]
    return out


def overview_dashboard() -> dict[str, Any]:
    """Traffic, latency production vs candidate, divergence and gate status per slice, noise floor, Ray Serve."""
    d = _dashboard(
        OVERVIEW_UID,
        "shadowd / overview",
        "Is the candidate safe to ship, and is shadowing costing production anything?",
    )
    d.with_row(db.Row("Gate"))
    d.with_panel(
        _stat(
            "Gate verdict",
            "Overall gate verdict of each selected candidate (shadowd_gate_verdict).",
            (f"max by (candidate) (shadowd_gate_verdict{{{_CAND}}})", "{{candidate}}"),
            mappings=_STATUS_MAPPINGS,
            thresholds=((None, "green"), (1, "red"), (2, "yellow")),
        )
    )
    d.with_panel(
        _stat(
            "Daemon up",
            'Whether Prometheus can scrape the shadowd metrics endpoint (up{job="shadowd"}).',
            ('min(up{job="shadowd"})', "up"),
            mappings=_UP_MAPPINGS,
            thresholds=((None, "red"), (1, "green")),
        )
    )
    d.with_panel(
        _stat(
            "Shadowed share",
            "Share of production requests sampled for shadowing.",
            (
                f"sum(rate(shadowd_pairs_sampled_total[{_RATE}])) / "
                f'sum(rate(shadowd_requests_total{{role="production"}}[{_RATE}]))',
                "share",
            ),
            unit="percentunit",
        )
    )
    d.with_panel(
        _stat(
            "Pairs compared",
            "Pairs compared over the dashboard's time range (all slices), per selected candidate.",
            (
                f'sum by (candidate) (increase(shadowd_pairs_compared_total{{{_CAND},slice="overall"}}[$__range]))',
                "{{candidate}}",
            ),
        )
    )
    d.with_panel(
        _state_timeline(
            "Check status per slice",
            "Each statistical check of the gate, per candidate and slice: PASS, FAIL, INCONCLUSIVE or REVIEW "
            "(shadowd_check_status).",
            (
                f"max by (candidate, check, slice) (shadowd_check_status{{{_CAND},{_SLICE}}})",
                "{{candidate}}: {{check}} / {{slice}}",
            ),
        )
    )

    d.with_row(db.Row("Traffic"))
    d.with_panel(
        _timeseries(
            "Requests by role and outcome",
            "Model calls per second by role (production, candidate, noise), model and outcome; of the candidates, "
            "the selected ones.",
            (
                f'sum by (role, model, outcome) (rate(shadowd_requests_total{{role!="candidate"}}[{_RATE}]))'
                f" or sum by (role, model, outcome) (rate(shadowd_requests_total{{{_CAND_MODEL}}}[{_RATE}]))",
                "{{role}} {{model}} {{outcome}}",
            ),
            unit="reqps",
        )
    )
    calls = f"shadowd_requests_total{{{_CAND_MODEL}}}"
    d.with_panel(
        _timeseries(
            "Candidate errors and timeouts",
            "Share of each selected candidate's calls that raised or timed out. Production answers are unaffected.",
            (
                _ratio_or_zero(f'shadowd_requests_total{{{_CAND_MODEL},outcome="error"}}', calls, "model"),
                "error {{model}}",
            ),
            (
                _ratio_or_zero(f'shadowd_requests_total{{{_CAND_MODEL},outcome="timeout"}}', calls, "model"),
                "timeout {{model}}",
            ),
            unit="percentunit",
        )
    )
    d.with_panel(
        _timeseries(
            "Remote model failures",
            "Failed calls per second to models served over HTTP (kind http), by role and reason: refused and "
            "timeout mean the server is unreachable, status and bad_answer that it answers wrongly.",
            (
                f"sum by (role, reason) (rate(shadowd_remote_model_failures_total[{_RATE}])) or on() vector(0)",
                "{{role}} {{reason}}",
            ),
            unit="reqps",
        )
    )
    d.with_panel(
        _timeseries(
            "Shadow path: sampled, compared, dropped",
            "Pairs per second sampled by the ingress, compared by each selected candidate's comparator, and dropped "
            "(the shadow path drops rather than slows production).",
            (f"sum(rate(shadowd_pairs_sampled_total[{_RATE}]))", "sampled"),
            (
                f'sum by (candidate) (rate(shadowd_pairs_compared_total{{{_CAND},slice="overall"}}[{_RATE}]))',
                "compared {{candidate}}",
            ),
            (f"sum(rate(shadowd_pairs_dropped_total[{_RATE}])) or on() vector(0)", "dropped"),
            unit="reqps",
        )
    )
    d.with_panel(
        _timeseries(
            "Bad requests by status",
            "Client requests refused with a 4xx, by HTTP status.",
            (f"sum by (status) (rate(shadowd_bad_requests_total[{_RATE}])) or on() vector(0)", "{{status}}"),
            unit="reqps",
        )
    )

    d.with_row(db.Row("Latency"))
    latency = (
        f'sum by (le, role, model) (rate(shadowd_model_latency_seconds_bucket{{role!="candidate"}}[{_RATE}])'
        f" or rate(shadowd_model_latency_seconds_bucket{{{_CAND_MODEL}}}[{_RATE}]))"
    )
    d.with_panel(
        _timeseries(
            "Model latency by role (p50, p99)",
            "Per-example model latency, production vs the selected candidates (and noise), by model.",
            (f"histogram_quantile(0.5, {latency})", "p50 {{role}} {{model}}"),
            (f"histogram_quantile(0.99, {latency})", "p99 {{role}} {{model}}"),
            unit="s",
        )
    )
    d.with_panel(
        _timeseries(
            "Request latency in the ingress (p50, p99)",
            "From request parsed to production answer ready: what shadowing may cost clients.",
            (f"histogram_quantile(0.5, sum by (le) (rate(shadowd_request_latency_seconds_bucket[{_RATE}])))", "p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate(shadowd_request_latency_seconds_bucket[{_RATE}])))", "p99"),
            unit="s",
        )
    )

    d.with_row(db.Row("Divergence per slice"))
    selected = f"{_CAND},{_SLICE}"
    compared = f"shadowd_pairs_compared_total{{{selected}}}"
    divergence = f"shadowd_pair_divergence_bucket{{{selected}}}"
    by = "candidate, slice"
    d.with_panel(
        _timeseries(
            "Divergent share per slice",
            "Share of compared pairs whose divergence is over the threshold, per candidate and slice.",
            (_ratio_or_zero(f"shadowd_pairs_divergent_total{{{selected}}}", compared, by), "{{candidate}} {{slice}}"),
            unit="percentunit",
        )
    )
    d.with_panel(
        _timeseries(
            "Label flip share per slice",
            "Classification: share of compared pairs whose top label differs, per candidate and slice.",
            (_ratio_or_zero(f"shadowd_label_flips_total{{{selected}}}", compared, by), "{{candidate}} {{slice}}"),
            unit="percentunit",
        )
    )
    d.with_panel(
        _timeseries(
            "Divergence per pair (p50, p90) per slice",
            "Distribution of per-pair divergence (total variation distance or relative difference), per candidate "
            "and slice.",
            (
                f"histogram_quantile(0.5, sum by (le, {by}) (rate({divergence}[{_RATE}])))",
                "p50 {{candidate}} {{slice}}",
            ),
            (
                f"histogram_quantile(0.9, sum by (le, {by}) (rate({divergence}[{_RATE}])))",
                "p90 {{candidate}} {{slice}}",
            ),
        )
    )
    d.with_panel(
        _timeseries(
            "Noise and churn floor per slice",
            "How often production disagrees with itself (noise replica) and with the reference model (same recipe, "
            "another seed or version), as each selected candidate's comparison measured it; divergence is judged "
            "against the churn floor when a reference runs.",
            (f"max by ({by}) (shadowd_noise_floor{{{selected}}})", "noise {{candidate}} {{slice}}"),
            (f"max by ({by}) (shadowd_churn_floor{{{selected}}})", "churn {{candidate}} {{slice}}"),
            unit="percentunit",
        )
    )

    d.with_row(db.Row("Data quality"))
    d.with_panel(
        _timeseries(
            "Non-finite outputs by role",
            "Model outputs containing NaN or inf, per second, by role.",
            (f"sum by (role) (rate(shadowd_nonfinite_outputs_total[{_RATE}])) or on() vector(0)", "{{role}}"),
            unit="reqps",
            w=8,
        )
    )
    d.with_panel(
        _timeseries(
            "Expectation violations",
            "Requests or outputs violating a configured expectation, per second, by expectation.",
            (
                f"sum by (expectation) (rate(shadowd_expectation_violations_total[{_RATE}])) or on() vector(0)",
                "{{expectation}}",
            ),
            unit="reqps",
            w=8,
        )
    )
    d.with_panel(
        _state_timeline(
            "Drift status per feature and slice",
            "Drift check of the last closed window per monitored feature and slice against the "
            "training profile: OK, DRIFT or INCONCLUSIVE.",
            (f"max by (feature, slice) (shadowd_drift_status{{{_SLICE}}})", "{{feature}} / {{slice}}"),
            mappings=_DRIFT_MAPPINGS,
            w=8,
        )
    )

    d.with_row(db.Row("Ray Serve"))
    d.with_panel(
        _timeseries(
            "Healthy replicas per deployment",
            "Ray Serve replicas passing health checks, per deployment (ingress, worker, comparator).",
            ("sum by (application, deployment) (ray_serve_deployment_replica_healthy)", "{{deployment}}"),
        )
    )
    d.with_panel(
        _timeseries(
            "Queued and ongoing requests per deployment",
            "Requests waiting for a replica and requests running in replicas, per deployment.",
            ("sum by (deployment) (ray_serve_deployment_queued_queries)", "queued {{deployment}}"),
            ("sum by (deployment) (ray_serve_replica_processing_queries)", "processing {{deployment}}"),
        )
    )
    return _to_json(d)


def flywheel_dashboard() -> dict[str, Any]:
    """Annotation queue, backlog age against the on-call service level, labels, Kafka delivery, suites."""
    d = _dashboard(
        FLYWHEEL_UID,
        "shadowd / flywheel",
        "Annotation queue, labels and hard-example suites: is the flywheel turning?",
    )
    d.with_row(db.Row("Annotation queue"))
    d.with_panel(
        _stat(
            "Backlog items",
            "Items waiting for an on-call annotator, all rotations (shadowd_annotation_backlog_items).",
            ("sum(shadowd_annotation_backlog_items)", "items"),
        )
    )
    d.with_panel(
        _stat(
            "Oldest item age",
            f"Age of the oldest unannotated item; red past the service level ({ANNOTATION_SLO_S // 3600} h).",
            ("max(shadowd_annotation_oldest_item_age_seconds)", "age"),
            unit="s",
            thresholds=((None, "green"), (ANNOTATION_SLO_S / 2, "yellow"), (ANNOTATION_SLO_S, "red")),
        )
    )
    d.with_panel(
        _stat(
            "Spool items",
            "Items in the local spool not yet delivered to Kafka (all items without Kafka).",
            ("sum(shadowd_spool_items)", "items"),
        )
    )
    d.with_panel(
        _stat(
            "Kafka delivery errors (1 h)",
            "Failed sends to Kafka in the last hour; the spool keeps the items.",
            ("sum(increase(shadowd_kafka_delivery_errors_total[1h])) or on() vector(0)", "errors"),
            thresholds=((None, "green"), (1, "red")),
        )
    )
    d.with_panel(
        _timeseries(
            "Annotation items by outcome",
            "Items per second queued, held back, spooled, delivered to Kafka, or failed.",
            (f"sum by (outcome) (rate(shadowd_annotation_items_total[{_RATE}]))", "{{outcome}}"),
            unit="reqps",
        )
    )
    d.with_panel(
        _timeseries(
            "Backlog and spool",
            "Items waiting for annotation, and items in the spool waiting for Kafka.",
            ("sum by (rotation) (shadowd_annotation_backlog_items)", "backlog {{rotation}}"),
            ("sum(shadowd_spool_items)", "spool"),
        )
    )
    d.with_panel(
        _timeseries(
            "Oldest item age vs service level",
            "Age of the oldest unannotated item per on-call rotation; the alert fires above the service level line.",
            ("max by (rotation) (shadowd_annotation_oldest_item_age_seconds)", "{{rotation}}"),
            (f"vector({ANNOTATION_SLO_S})", "service level"),
            unit="s",
        )
    )
    d.with_panel(
        _timeseries(
            "Kafka delivery errors",
            "Failed sends to Kafka per second (broker unreachable, timeouts).",
            (f"sum(rate(shadowd_kafka_delivery_errors_total[{_RATE}])) or on() vector(0)", "errors"),
            unit="reqps",
        )
    )

    d.with_row(db.Row("Labels"))
    d.with_panel(
        _timeseries(
            "Labels by source and outcome",
            "Labels per second by source (feedback: POST /feedback; annotator: the labels topic) and "
            "outcome (joined a stored pair, unknown request, expired, rejected).",
            (f"sum by (source, outcome) (rate(shadowd_labels_total[{_RATE}]))", "{{source}} {{outcome}}"),
            unit="reqps",
        )
    )
    d.with_panel(
        _timeseries(
            "Label join share",
            "Share of labels that found their pair (the rest were for unknown or expired requests, or rejected).",
            (
                f'(sum(rate(shadowd_labels_total{{outcome="joined"}}[{_RATE}])) or on() vector(0)) '
                f"/ sum(rate(shadowd_labels_total[{_RATE}]))",
                "joined",
            ),
            unit="percentunit",
        )
    )

    d.with_row(db.Row("Suites"))
    d.with_panel(
        _timeseries(
            "Hard examples per suite",
            "Labelled hard examples collected per suite (slice / failure tag) for offline replay.",
            ("sum by (suite) (shadowd_suite_examples)", "{{suite}}"),
            w=24,
        )
    )
    return _to_json(d)


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

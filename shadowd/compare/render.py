"""Rendering the shadow report for people: a terminal table, Markdown, or JSON.

Sits at the very end of the data flow: ``Comparator.report()`` builds the
typed ``ShadowReport`` (served as ``GET /shadow/report``); ``shadowd report``
and ``shadowd demo`` print it through ``render_report``. Pure formatting: no
statistics here, and nothing heavier than rich is imported.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

from shadowd.compare.report import ShadowReport
from shadowd.records import OVERALL

__all__ = ["FORMATS", "render_report"]

FORMATS = ("table", "json", "markdown")


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1000 * x:.3g}"


def _ts(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _slice_rows(report: ShadowReport) -> tuple[list[str], list[list[str]]]:
    classification = report.task == "classification"
    header = ["slice", "pairs", "compared", "cand. err/timeout/nan/shape"]
    header += ["flip rate"] if classification else []
    header += ["divergent", "mean div.", "noise / churn floor", "p50 ms prod/cand", "p99 ms prod/cand"]
    header += ["labels used (excluded)"]
    header += ["accuracy prod/cand (feedback)"] if classification else ["loss prod/cand (feedback)"]
    rows = []
    for name, s in {OVERALL: report.overall, **report.slices}.items():
        out = s.candidate_outcomes
        failed = "/".join(str(out.get(k, 0)) for k in ("error", "timeout", "nan", "bad_shape"))
        floors = []
        for f in (s.noise, s.reference):
            value = f.flip_rate if classification else f.mean_divergence
            floors.append(
                (_pct(value) if classification else _num(value)) + (f" (n={f.compared})" if f.compared else "")
            )
        prod, cand = s.latency_s.get("production"), s.latency_s.get("candidate")
        row = [name, _num(s.pairs), _num(s.compared), failed]
        row += [_pct(s.flip_rate)] if classification else []
        row += [
            _num(s.divergent),
            _num(s.mean_divergence),
            " / ".join(floors),
            f"{_ms(prod.p50 if prod else None)}/{_ms(cand.p50 if cand else None)}",
            f"{_ms(prod.p99 if prod else None)}/{_ms(cand.p99 if cand else None)}",
            f"{s.labels.used} ({sum(s.labels.excluded.values())})",
        ]
        pair = s.labels.accuracy if classification else s.labels.mean_loss
        show = _pct if classification else _num
        row.append(f"{show(pair.get('production'))}/{show(pair.get('candidate'))}" if pair else "-")
        rows.append(row)
    return header, rows


def _check_rows(report: ShadowReport) -> tuple[list[str], list[list[str]]]:
    header = ["check", "slice", "status", "value", "interval", "allowed", "n", "why"]
    rows = []
    for c in report.checks:
        interval = f"[{_num(c.ci[0])}, {_num(c.ci[1]) if c.ci[1] is not None else 'inf'}]" if c.ci else "-"
        status = c.status.value.upper() + ("" if c.required else " (optional)")
        rows.append([c.check, c.slice, status, _num(c.value), interval, _num(c.threshold), f"{c.n} {c.unit}", c.reason])
    return header, rows


def _headline(report: ShadowReport) -> list[str]:
    models, gate = report.models, report.gate
    lines = [
        f"shadowd report: {models.get('candidate') or '(no candidate)'} vs production {models.get('production')} "
        f"({report.task}), window since {_ts(report.window_started_ts)}",
        f"gate: {gate.verdict.value}",
    ]
    if models.get("candidate") and models.get("live") == models.get("candidate"):
        promoted = models["candidate"]
        lines.insert(1, f"promoted: {promoted} answers clients; production runs in the shadow as the baseline")
    lines += [f"  - {r}" for r in gate.reasons]
    if gate.notes:
        lines.append(f"  optional checks still open: {len(gate.notes)}")
    return lines


def _footer(report: ShadowReport) -> list[str]:
    lines = [f"method: {report.gate.method}"]
    flat = _flatten(report.annotations or {})
    if flat:
        lines.append("annotations: " + ", ".join(f"{k} {v}" for k, v in flat))
    return lines


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Scalars of a nested dict as ("a.b", value), for one-line summaries."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        elif not isinstance(v, list):
            out.append((f"{prefix}{k}", v))
    return out


def _markdown(report: ShadowReport) -> str:
    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
        return out

    head = _headline(report)
    lines = [f"## {head[0]}", "", f"**{head[1]}**", ""]
    lines += [line.replace("  - ", "- ", 1) for line in head[2:]]
    lines += [
        "",
        "### Slices",
        "",
        *table(*_slice_rows(report)),
        "",
        "### Checks",
        "",
        *table(*_check_rows(report)),
        "",
    ]
    lines += [f"_{line}_" for line in _footer(report)]
    return "\n".join(lines) + "\n"


def _table(report: ShadowReport, width: int) -> str:
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False, soft_wrap=False)
    for line in _headline(report):
        console.print(line, highlight=False, markup=False)
    for title, (header, rows) in (("slices", _slice_rows(report)), ("checks", _check_rows(report))):
        t = Table(title=title, title_justify="left", show_lines=False)
        for i, h in enumerate(header):
            t.add_column(h, overflow="fold", justify="left" if i < 2 or h in ("why", "status") else "right")
        for row in rows:
            t.add_row(*row)
        console.print(t)
    for line in _footer(report):
        console.print(line, highlight=False, markup=False)
    return buf.getvalue()


def render_report(report: ShadowReport, fmt: str = "table", width: int = 160) -> str:
    """The report as text: ``table`` (rich, for terminals), ``markdown`` (for PRs/CI summaries) or ``json``."""
    if fmt == "json":
        return json.dumps(report.to_json(), indent=2, sort_keys=False) + "\n"
    if fmt == "markdown":
        return _markdown(report)
    if fmt == "table":
        return _table(report, width)
    raise ValueError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")

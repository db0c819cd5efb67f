"""Rendering the shadow report for people: a terminal table, Markdown, or JSON.

Sits at the very end of the data flow: ``Comparator.report()`` (served as
``GET /shadow/report``) produces the JSON; ``shadowd report`` and
``shadowd demo`` print it through ``render_report``. Pure formatting: no
statistics here, and nothing heavier than rich is imported.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

__all__ = ["FORMATS", "gate_exit_code", "render_report"]

FORMATS = ("table", "json", "markdown")
# `shadowd report --gate`: what a CI/CD pipeline sees.
_EXIT = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}


def gate_exit_code(report: dict[str, Any]) -> int:
    """0 pass, 1 fail, 3 inconclusive (also for a report without a verdict)."""
    return _EXIT.get(str(report.get("gate", {}).get("verdict")), 3)


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


def _slice_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    classification = report.get("task") == "classification"
    header = ["slice", "pairs", "compared", "cand. err/timeout/nan/shape"]
    header += ["flip rate"] if classification else []
    header += ["divergent", "mean div.", "noise floor", "p50 ms prod/cand", "p99 ms prod/cand", "labels"]
    header += ["accuracy prod/cand"] if classification else ["loss prod/cand"]
    rows = []
    slices = {"overall": report.get("overall", {}), **report.get("slices", {})}
    for name, s in slices.items():
        out = s.get("candidate_outcomes", {})
        failed = "/".join(str(out.get(k, 0)) for k in ("error", "timeout", "nan", "bad_shape"))
        noise = s.get("noise", {})
        floor = noise.get("flip_rate") if classification else noise.get("mean_divergence")
        lat = s.get("latency_s", {})
        prod, cand = lat.get("production", {}), lat.get("candidate", {})
        labels = s.get("labels", {})
        row = [name, _num(s.get("pairs")), _num(s.get("compared")), failed]
        row += [_pct(s.get("flip_rate"))] if classification else []
        row += [
            _num(s.get("divergent")),
            _num(s.get("mean_divergence")),
            (_pct(floor) if classification else _num(floor))
            + (f" (n={noise.get('compared')})" if noise.get("compared") else ""),
            f"{_ms(prod.get('p50'))}/{_ms(cand.get('p50'))}",
            f"{_ms(prod.get('p99'))}/{_ms(cand.get('p99'))}",
            _num(labels.get("labels")),
        ]
        if classification:
            acc = labels.get("accuracy") or {}
            row.append(f"{_pct(acc.get('production'))}/{_pct(acc.get('candidate'))}" if acc else "-")
        else:
            loss = labels.get("mean_loss") or {}
            row.append(f"{_num(loss.get('production'))}/{_num(loss.get('candidate'))}" if loss else "-")
        rows.append(row)
    return header, rows


def _check_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["check", "slice", "status", "value", "interval", "allowed", "n", "why"]
    rows = []
    for c in report.get("checks", []):
        ci = c.get("ci")
        interval = f"[{_num(ci[0])}, {_num(ci[1]) if ci[1] is not None else 'inf'}]" if ci else "-"
        status = c.get("status", "?").upper() + ("" if c.get("required", True) else " (optional)")
        rows.append(
            [
                c.get("check", "?"),
                c.get("slice", "?"),
                status,
                _num(c.get("value")),
                interval,
                _num(c.get("threshold")),
                f"{c.get('n', 0)} {c.get('unit', '')}".strip(),
                c.get("reason", ""),
            ]
        )
    return header, rows


def _headline(report: dict[str, Any]) -> list[str]:
    models = report.get("models", {})
    gate = report.get("gate", {})
    lines = [
        f"shadowd report: {models.get('candidate') or '(no candidate)'} vs production {models.get('production')} "
        f"({report.get('task')}), window since {_ts(report.get('window_started_ts'))}",
        f"gate: {gate.get('verdict', '?')}",
    ]
    lines += [f"  - {r}" for r in gate.get("reasons", [])]
    notes = gate.get("notes", [])
    if notes:
        lines.append(f"  optional checks still open: {len(notes)}")
    return lines


def _footer(report: dict[str, Any]) -> list[str]:
    gate = report.get("gate", {})
    lines = []
    if gate.get("method"):
        lines.append(f"method: {gate['method']}")
    ann = report.get("annotations")
    if isinstance(ann, dict) and ann:
        flat = _flatten(ann)
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


def _markdown(report: dict[str, Any]) -> str:
    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
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


def _table(report: dict[str, Any], width: int) -> str:
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


def render_report(report: dict[str, Any], fmt: str = "table", width: int = 160) -> str:
    """The report as text: ``table`` (rich, for terminals), ``markdown`` (for PRs/CI summaries) or ``json``."""
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=False) + "\n"
    if fmt == "markdown":
        return _markdown(report)
    if fmt == "table":
        return _table(report, width)
    raise ValueError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")

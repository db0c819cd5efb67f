"""The promotion gate: every configured check on overall and each slice -> one verdict.

Sits at the end of the comparator: ``Comparator.report()`` calls
``evaluate_gate`` on its tallies; the result goes into ``/shadow/report``, the
``shadowd report`` command (``--gate`` exit codes) and the metrics
``shadowd_check_status`` / ``shadowd_gate_verdict`` / ``shadowd_noise_floor``.

Safe to read at any moment: each (slice, check) test has an anytime-valid
p-value, and Holm's step-down (or Bonferroni) runs over the whole declared
family, tests still short of their minimum sample counted in with p = 1, so
the chance of any false FAIL stays at or below ``gate.alpha`` however often
the report is read.

Verdict: FAIL when any check fails; PASS when every required check passes on
every slice it runs on; otherwise INCONCLUSIVE, with what each open check
still needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shadowd.compare import stats
from shadowd.compare.checks import CheckResult, Evidence, applies_to_task, build_evidence, more_needed
from shadowd.compare.tally import SliceTally
from shadowd.config import ShadowdConfig
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import OVERALL

__all__ = ["STATUS_CODE", "VERDICT_CODE", "evaluate_checks", "evaluate_gate", "gate_summary"]

STATUS_CODE = {"pass": 0, "fail": 1, "inconclusive": 2}
VERDICT_CODE = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 2}


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}"


def _reason(
    status: str, ev: Evidence, ci: tuple[float, float], min_samples: int, needed: int | None, p: float, p_adj: float
) -> str:
    if ev.n < min_samples:
        more = f"; needs ~{needed} more {ev.unit}" if needed else ""
        return f"{ev.n} of {min_samples} {ev.unit} needed before a verdict{more}"
    floor = ""
    if ev.noise_floor is not None:
        floor = f" (noise floor {_fmt(ev.noise_floor)} + margins)"
    stated = f"{ev.label} {_fmt(ev.value)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"
    if status == "fail":
        p_text = f"p<{stats.MIN_ALPHA:.0e}" if p <= stats.MIN_ALPHA else f"p={p:.2g}"
        return f"{stated} > allowed {_fmt(ev.threshold)}{floor}; {p_text}, adjusted {p_adj:.2g}"
    if status == "pass":
        return f"{stated} <= allowed {_fmt(ev.threshold)}{floor}"
    more = f"needs ~{needed} more {ev.unit}" if needed else "at the threshold: more data may not decide"
    return f"{stated} vs allowed {_fmt(ev.threshold)}{floor}: {more}"


def _slice_order(config: ShadowdConfig, tallies: Mapping[str, SliceTally]) -> list[str]:
    names = [OVERALL, *(s.name for s in config.slices)]
    return [n for n in names if n in tallies]


def evaluate_checks(
    config: ShadowdConfig, tallies: Mapping[str, SliceTally], explain: bool = True
) -> list[CheckResult]:
    """Every applicable check on overall and on each slice it runs on, with adjusted p-values and statuses.

    ``explain=False`` skips the "needs ~N more" search and the fixed-sample
    tests (statuses are the same): for simulations that only count verdicts.
    """
    gate = config.gate
    entries: list[tuple[Any, str, Evidence, float]] = []
    for check in config.checks:
        if not applies_to_task(check, config.task):
            continue
        for name in check.slices or _slice_order(config, tallies):
            ev = build_evidence(check, tallies.get(name) or SliceTally(), gate, config.task, explain)
            ready = ev.n >= check.min_samples and ev.value is not None
            p = stats.anytime_p_value(lambda a, ev=ev: ev.fails(a, 1.0)) if ready else 1.0
            entries.append((check, name, ev, p))
    raw = [p for *_, p in entries]
    adjusted = stats.holm(raw) if gate.correction == "holm" else stats.bonferroni(raw)
    results = []
    for (check, name, ev, p), p_adj in zip(entries, adjusted, strict=True):
        needed: int | None
        if ev.n < check.min_samples or ev.value is None:
            status = "inconclusive"
            later = more_needed(ev, gate.alpha) if ev.n and explain else None
            needed = max(check.min_samples - ev.n, later or 0)
        elif p_adj <= gate.alpha:
            status, needed = "fail", None
        elif ev.passes(gate.alpha, 1.0):
            status, needed = "pass", None
        else:
            status, needed = "inconclusive", more_needed(ev, gate.alpha) if explain else None
        ci = ev.interval(gate.alpha) if ev.n else (math.nan, math.nan)
        results.append(
            CheckResult(
                check=check.name,
                type=check.type,
                slice=name,
                status=status,
                value=ev.value,
                ci=None if not ev.n else ci,
                threshold=ev.threshold,
                n=ev.n,
                unit=ev.unit,
                reason=_reason(status, ev, ci, check.min_samples, needed, p, p_adj),
                required=check.required,
                p_value=p,
                p_adjusted=p_adj,
                needed=needed,
                noise_floor=ev.noise_floor,
                extra=ev.extra,
            )
        )
    return results


def gate_summary(config: ShadowdConfig, results: list[CheckResult]) -> dict[str, Any]:
    """The verdict and its reasons from check results."""
    gate = config.gate
    base = {
        "alpha": gate.alpha,
        "correction": gate.correction,
        "tests": len(results),
        "method": (
            f"anytime-valid p-values (beta-binomial and normal-mixture confidence sequences), "
            f"{gate.correction} across {len(results)} slice x check tests; family-wise false-alarm rate "
            f"<= {gate.alpha} however often the report is read"
        ),
        "noise_floor": gate.noise_floor,
    }
    if config.models.candidate is None:
        return {**base, "verdict": "INCONCLUSIVE", "reasons": ["no candidate configured (shadowing off)"], "notes": []}
    if not results:
        return {**base, "verdict": "INCONCLUSIVE", "reasons": ["no checks apply to this task"], "notes": []}

    def line(r: CheckResult) -> str:
        return f"{r.check} on {r.slice}: {r.reason}"

    failed = [r for r in results if r.status == "fail"]
    open_required = [r for r in results if r.status == "inconclusive" and r.required]
    open_optional = [line(r) for r in results if r.status == "inconclusive" and not r.required]
    if failed:
        return {**base, "verdict": "FAIL", "reasons": [line(r) for r in failed], "notes": open_optional}
    if open_required:
        return {**base, "verdict": "INCONCLUSIVE", "reasons": [line(r) for r in open_required], "notes": open_optional}
    passed = [r for r in results if r.status == "pass"]
    slices = sorted({r.slice for r in passed})
    return {
        **base,
        "verdict": "PASS",
        "reasons": [f"all {len(passed)} check results pass on {', '.join(slices)}"],
        "notes": open_optional,
    }


def evaluate_gate(
    config: ShadowdConfig, tallies: Mapping[str, SliceTally], metrics: ShadowdMetrics | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(check results as dicts, gate verdict) for the report; updates the gate metrics when given."""
    results = evaluate_checks(config, tallies) if config.models.candidate is not None else []
    summary = gate_summary(config, results)
    if metrics is not None:
        for r in results:
            metrics.check_status.labels(check=r.check, slice=r.slice).set(STATUS_CODE[r.status])
        metrics.gate_verdict.set(VERDICT_CODE[summary["verdict"]])
        for name in _slice_order(config, tallies):
            noise = tallies[name].noise
            if noise.compared:
                share = noise.flips if config.task == "classification" else noise.divergent
                metrics.noise_floor.labels(slice=name).set(share / noise.compared)
    return [r.to_dict() for r in results], summary

"""The promotion gate: every configured check on overall and each slice -> one verdict.

Sits at the end of the comparator: ``Comparator.report()`` calls
``evaluate_gate`` on its tallies; the result goes into ``/shadow/report`` and
the ``shadowd report`` command (``--gate`` exit codes). Pure: the hub sets the
gauges (``shadowd_check_status`` / ``shadowd_gate_verdict``) from the result.

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
from collections.abc import Callable, Mapping

from shadowd.compare import stats
from shadowd.compare.checks import CheckConfig, CheckContext, Evidence, more_needed
from shadowd.compare.report import CheckResult, CheckStatus, GateSummary, Verdict
from shadowd.compare.tally import SliceTally
from shadowd.config import ShadowdConfig
from shadowd.records import OVERALL

__all__ = ["check_context", "evaluate_checks", "evaluate_gate", "gate_summary"]


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}"


def _reason(
    status: CheckStatus,
    ev: Evidence,
    ci: tuple[float, float],
    min_samples: int,
    needed: int | None,
    p: float,
    p_adj: float,
) -> str:
    if ev.n < min_samples:
        more = f"; needs ~{needed} more {ev.unit}" if needed else ""
        return f"{ev.n} of {min_samples} {ev.unit} needed before a verdict{more}"
    floor = ""
    if ev.noise_floor is not None:
        floor = f" (noise floor {_fmt(ev.noise_floor)} + margins)"
    stated = f"{ev.label} {_fmt(ev.value)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"
    if status is CheckStatus.FAIL:
        p_text = f"p<{stats.MIN_ALPHA:.0e}" if p <= stats.MIN_ALPHA else f"p={p:.2g}"
        return f"{stated} > allowed {_fmt(ev.threshold)}{floor}; {p_text}, adjusted {p_adj:.2g}"
    if status is CheckStatus.PASS:
        return f"{stated} <= allowed {_fmt(ev.threshold)}{floor}"
    more = f"needs ~{needed} more {ev.unit}" if needed else "at the threshold: more data may not decide"
    return f"{stated} vs allowed {_fmt(ev.threshold)}{floor}: {more}"


def _slice_order(config: ShadowdConfig, tallies: Mapping[str, SliceTally]) -> list[str]:
    names = [OVERALL, *(s.name for s in config.slices)]
    return [n for n in names if n in tallies]


def _rejects_at(ev: Evidence) -> Callable[[float], bool]:
    return lambda alpha: ev.fails(alpha, 1.0)


def check_context(config: ShadowdConfig, explain: bool = True) -> CheckContext:
    """What every check kind gets besides its tally."""
    gate = config.gate
    rho = stats.gaussian_mixture_rho(gate.alpha, gate.tuning_samples)
    return CheckContext(task=config.task, rho=rho, noise_floor=gate.noise_floor, explain=explain)


def evaluate_checks(
    config: ShadowdConfig, tallies: Mapping[str, SliceTally], explain: bool = True
) -> list[CheckResult]:
    """Every applicable check on overall and on each slice it runs on, with adjusted p-values and statuses.

    ``explain=False`` skips the "needs ~N more" search and the fixed-sample
    tests (statuses are the same): for simulations that only count verdicts.
    """
    gate = config.gate
    ctx = check_context(config, explain)
    entries: list[tuple[CheckConfig, str, Evidence, float]] = []
    for check in config.checks:
        if not check.applies_to(config.task):
            continue
        for name in check.slices or _slice_order(config, tallies):
            ev = check.evidence(tallies.get(name) or SliceTally(), ctx)
            ready = ev.n >= check.min_samples and ev.value is not None
            p = stats.anytime_p_value(_rejects_at(ev)) if ready else 1.0
            entries.append((check, name, ev, p))
    raw = [p for *_, p in entries]
    adjusted = stats.adjust_p_values(raw, gate.correction)
    results = []
    for (check, name, ev, p), p_adj in zip(entries, adjusted, strict=True):
        needed: int | None
        if ev.n < check.min_samples or ev.value is None:
            status = CheckStatus.INCONCLUSIVE
            later = more_needed(ev, gate.alpha) if ev.n and explain else None
            needed = max(check.min_samples - ev.n, later or 0)
        elif p_adj <= gate.alpha:
            status, needed = CheckStatus.FAIL, None
        elif ev.passes(gate.alpha, 1.0):
            status, needed = CheckStatus.PASS, None
        else:
            status, needed = CheckStatus.INCONCLUSIVE, more_needed(ev, gate.alpha) if explain else None
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


def gate_summary(config: ShadowdConfig, results: list[CheckResult]) -> GateSummary:
    """The verdict and its reasons from check results."""
    gate = config.gate

    def summary(verdict: Verdict, reasons: list[str], notes: list[str]) -> GateSummary:
        return GateSummary(
            verdict=verdict,
            reasons=reasons,
            notes=notes,
            alpha=gate.alpha,
            correction=gate.correction,
            tests=len(results),
            method=(
                f"anytime-valid p-values (beta-binomial and normal-mixture confidence sequences), "
                f"{gate.correction} across {len(results)} slice x check tests; family-wise false-alarm rate "
                f"<= {gate.alpha} however often the report is read"
            ),
            noise_floor=gate.noise_floor,
        )

    if config.models.candidate is None:
        return summary(Verdict.INCONCLUSIVE, ["no candidate configured (shadowing off)"], [])
    if not results:
        return summary(Verdict.INCONCLUSIVE, ["no checks apply to this task"], [])

    def line(r: CheckResult) -> str:
        return f"{r.check} on {r.slice}: {r.reason}"

    open_ = CheckStatus.INCONCLUSIVE
    failed = [r for r in results if r.status is CheckStatus.FAIL]
    open_required = [r for r in results if r.status is open_ and r.required]
    open_optional = [line(r) for r in results if r.status is open_ and not r.required]
    if failed:
        return summary(Verdict.FAIL, [line(r) for r in failed], open_optional)
    if open_required:
        return summary(Verdict.INCONCLUSIVE, [line(r) for r in open_required], open_optional)
    passed = [r for r in results if r.status is CheckStatus.PASS]
    slices = sorted({r.slice for r in passed})
    return summary(Verdict.PASS, [f"all {len(passed)} check results pass on {', '.join(slices)}"], open_optional)


def evaluate_gate(config: ShadowdConfig, tallies: Mapping[str, SliceTally]) -> tuple[list[CheckResult], GateSummary]:
    """(check results, gate verdict) for the report."""
    results = evaluate_checks(config, tallies) if config.models.candidate is not None else []
    return results, gate_summary(config, results)

"""The promotion gate: every configured check on overall and each slice -> one verdict.

Sits at the end of the comparator: ``Comparator.report()`` calls
``evaluate_gate`` on its tallies; the result goes into ``/shadow/report`` and
the ``shadowd report`` command (``--gate`` exit codes). Pure: the hub sets the
gauges (``shadowd_check_status`` / ``shadowd_gate_verdict``) from the result.

Safe to read at any moment: each (slice, check) test has an anytime-valid
p-value, and Holm's step-down (or Bonferroni) runs over each whole declared
family, tests still short of their minimum sample counted in with p = 1. The
checks that can FAIL the gate (operational, quality, required divergence)
form one family, so the chance of any false FAIL stays at or below
``gate.alpha`` however often the report is read; the divergence checks that
can only put a slice under review form another, with the same guarantee for
false reviews.

Verdict: FAIL when any check fails. REVIEW when a divergence check is beyond
its floor on a slice whose quality is not decided (labels there resolve it:
different but not worse). INCONCLUSIVE while a required check is open. PASS
otherwise. REVIEW and INCONCLUSIVE list what would decide and roughly when,
at the window's traffic and label rates (``needs``).

An ``EvidenceMemo`` (the comparator keeps one) carries each (check, slice)
test's evidence and its costly numbers (anytime p-value, interval, pass at
alpha, the scale that would decide) from one report to the next while that
slice's tally is unchanged: the caller gives a version per slice that
changes whenever the tally does. A reused test is exactly what computing it
again would give (the same pure functions of the same counts), so the
report stays always-valid; only the window's age ("when" in the needs) and
the corrections across the family are recomputed on every read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

from shadowd.compare import stats
from shadowd.compare.checks import CheckConfig, CheckContext, Evidence, scale_needed
from shadowd.compare.evaluation import possible_shares
from shadowd.compare.report import CheckResult, CheckStatus, GateSummary, Need, Verdict
from shadowd.compare.tally import SliceTally
from shadowd.config import ShadowdConfig
from shadowd.records import OVERALL

__all__ = ["EvidenceMemo", "check_context", "evaluate_checks", "evaluate_gate", "gate_summary"]


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}"


def duration(hours: float) -> str:
    """A rough duration for people: '25 min', '2.5 h', '3.2 days'."""
    if hours < 1 / 60:
        return "under a minute"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.2g} h"
    return f"{hours / 24:.2g} days"


@dataclass(frozen=True)
class _Open:
    """How far an undecided test is from a decision."""

    more: int | None
    eta_h: float | None
    rate_per_h: float


def _rates(t: SliceTally, elapsed_h: float) -> dict[str, float]:
    h = max(elapsed_h, 1e-9)
    return {"pairs": t.candidate.compared / h, "labels": t.quality.labels / h}


def _scale(ev: Evidence, alpha: float, min_samples: int) -> float | None:
    """The multiple of the sample that would decide (None: none within reach)."""
    scale = scale_needed(ev, alpha) if ev.n else None
    if ev.ready is None and ev.n < min_samples:  # the minimum sample comes first
        scale = max(scale or 0.0, min_samples / ev.n) if ev.n else None
    return scale


def _open(ev: Evidence, scale: float | None, elapsed_h: float, rate_per_h: float) -> _Open:
    if scale is None:
        return _Open(None, None, rate_per_h)
    return _Open(max(1, math.ceil(ev.n * (scale - 1))), (scale - 1) * elapsed_h, rate_per_h)


@dataclass
class _Test:
    """One (check, slice) test: its evidence and what has been computed from it so far."""

    ev: Evidence
    p: float
    ready: bool
    passes: bool | None = None
    ci: tuple[float, float] | None = None
    scale: float | None = None
    scaled: bool = False  # scale computed


@dataclass
class EvidenceMemo:
    """(check, slice) tests kept between reports while their slice's tally version is unchanged."""

    tests: dict[tuple[int, str], tuple[Hashable, _Test]] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def get(self, key: tuple[int, str], version: Hashable) -> _Test | None:
        kept = self.tests.get(key)
        if kept is not None and kept[0] == version:
            self.hits += 1
            return kept[1]
        self.misses += 1
        return None

    def put(self, key: tuple[int, str], version: Hashable, test: _Test) -> None:
        self.tests[key] = (version, test)

    def clear(self) -> None:
        self.tests.clear()


def _reason(
    status: CheckStatus,
    ev: Evidence,
    ci: tuple[float, float],
    min_samples: int,
    open_: _Open | None,
    p: float,
    p_adj: float,
    slice_name: str,
    max_wait_h: float,
) -> str:
    floor = ""
    if ev.noise_floor is not None:
        floor = f" ({ev.extra.get('floor', 'noise')} floor {_fmt(ev.noise_floor)} + margins)"
    stated = f"{ev.label} {_fmt(ev.value)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"
    if ev.unit == "labels":
        stated += f" from {ev.n} labels"
    if status is CheckStatus.FAIL:
        p_text = f"p<{stats.MIN_ALPHA:.0e}" if p <= stats.MIN_ALPHA else f"p={p:.2g}"
        return f"{stated} > allowed {_fmt(ev.threshold)}{floor}; {p_text}, adjusted {p_adj:.2g}"
    if status is CheckStatus.REVIEW:
        return f"{stated} > allowed {_fmt(ev.threshold)}{floor}: different here, label these"
    if status is CheckStatus.PASS:
        return f"{stated} <= allowed {_fmt(ev.threshold)}{floor}"
    head = stated if ev.n and ev.value is not None else f"{ev.n} {ev.unit}"
    if ev.ready is None and ev.n < min_samples:
        head = f"{ev.n} of {min_samples} {ev.unit} needed before a verdict"
    return f"{head}: {_needs_text(ev.unit, slice_name, open_, max_wait_h)}"


def _needs_text(unit: str, slice_name: str, open_: _Open | None, max_wait_h: float) -> str:
    if open_ is None or open_.more is None:
        if unit == "labels" and (open_ is None or open_.rate_per_h == 0):
            return f"no usable labels yet on {slice_name}: label the evaluation lane or send random feedback"
        return "at the margin: more data at these rates will hardly decide"
    rate = f"{_rate_text(open_.rate_per_h)} {unit}/h"
    eta = open_.eta_h if open_.eta_h is not None else math.inf
    if eta > max_wait_h:
        return (
            f"cannot be decided within {duration(max_wait_h)} at {rate} (~{open_.more} more {unit}); "
            "widen the margin or raise the evaluation share of this slice"
        )
    return f"needs ~{open_.more} more {unit} (~{duration(eta)} at {rate})"


def _rate_text(per_h: float) -> str:
    return f"{per_h:,.0f}" if per_h >= 10 else f"{per_h:.2g}"


def _slice_order(config: ShadowdConfig, tallies: Mapping[str, SliceTally]) -> list[str]:
    names = [OVERALL, *(s.name for s in config.slices)]
    return [n for n in names if n in tallies]


def check_context(config: ShadowdConfig, explain: bool = True) -> CheckContext:
    """What every check kind gets besides its tally."""
    gate = config.gate
    return CheckContext(
        task=config.task,
        rho=stats.gaussian_mixture_rho(gate.alpha, gate.tuning_samples),
        noise_floor=gate.noise_floor,
        explain=explain,
        rho_labels=stats.gaussian_mixture_rho(gate.alpha, gate.tuning_labels),
        churn_floor=gate.churn_floor,
        evaluation_shares=possible_shares(config.annotations.evaluation),
    )


def _rejects_at(ev: Evidence) -> Callable[[float], bool]:
    return lambda alpha: ev.fails(alpha, 1.0)


def _ready(ev: Evidence, min_samples: int) -> bool:
    """May this evidence decide? Its own say when it has one (always-valid at any size), else the minimum."""
    if ev.ready is not None:
        return ev.ready
    return ev.n >= min_samples and ev.value is not None


def _can_fail(check: CheckConfig) -> bool:
    """Operational and quality checks FAIL; a divergence check only when it is required."""
    return check.role != "divergence" or check.required


def evaluate_checks(
    config: ShadowdConfig,
    tallies: Mapping[str, SliceTally],
    explain: bool = True,
    elapsed_s: float = 0.0,
    memo: EvidenceMemo | None = None,
    versions: Mapping[str, Hashable] | None = None,
) -> list[CheckResult]:
    """Every applicable check on overall and on each slice it runs on, with adjusted p-values and statuses.

    ``explain=False`` skips the "needs ~N more" search and the fixed-sample
    tests (statuses are the same): for simulations that only count verdicts.
    ``elapsed_s`` is the window's age, for "when" in the needs. With ``memo``
    and ``versions`` (one per slice, changing whenever its tally does), the
    tests of unchanged slices are taken from the memo instead of recomputed.
    """
    gate = config.gate
    ctx = check_context(config, explain)
    elapsed_h = elapsed_s / 3600
    entries: list[tuple[CheckConfig, str, _Test]] = []
    for k, check in enumerate(config.checks):
        if not check.applies_to(config.task):
            continue
        for name in check.slices or _slice_order(config, tallies):
            version = (explain, versions.get(name)) if memo is not None and versions is not None else None
            test = memo.get((k, name), version) if version is not None and memo is not None else None
            if test is None:
                ev = check.evidence(tallies.get(name) or SliceTally(), ctx)
                ready = _ready(ev, check.min_samples)
                test = _Test(ev, stats.anytime_p_value(_rejects_at(ev)) if ready else 1.0, ready)
                if version is not None and memo is not None:
                    memo.put((k, name), version, test)
            entries.append((check, name, test))
    adjusted = [1.0] * len(entries)
    for family in (True, False):  # the tests that can FAIL, then the review-only ones
        idx = [i for i, (check, *_rest) in enumerate(entries) if _can_fail(check) == family]
        for i, p_adj in zip(idx, stats.adjust_p_values([entries[i][2].p for i in idx], gate.correction), strict=True):
            adjusted[i] = p_adj
    results = []
    for (check, name, test), p_adj in zip(entries, adjusted, strict=True):
        ev, p, ready = test.ev, test.p, test.ready
        open_: _Open | None = None
        if ready and p_adj <= gate.alpha:
            status = CheckStatus.FAIL if _can_fail(check) else CheckStatus.REVIEW
        else:
            if ready and test.passes is None:
                test.passes = ev.passes(gate.alpha, 1.0)
            status = CheckStatus.PASS if ready and test.passes else CheckStatus.INCONCLUSIVE
        if status is CheckStatus.INCONCLUSIVE:
            rate = _rates(tallies.get(name) or SliceTally(), elapsed_h)[ev.unit]
            if explain:
                if not test.scaled:
                    test.scale, test.scaled = _scale(ev, gate.alpha, check.min_samples), True
                open_ = _open(ev, test.scale, elapsed_h, rate)
        if test.ci is None:
            test.ci = ev.interval(gate.alpha) if ev.n or ev.ready else (math.nan, math.nan)
        ci = test.ci
        results.append(
            CheckResult(
                check=check.name,
                type=check.type,
                role=check.role,
                slice=name,
                status=status,
                value=ev.value,
                ci=ci if ev.n or ev.ready else None,
                threshold=ev.threshold,
                n=ev.n,
                unit=ev.unit,
                reason=_reason(status, ev, ci, check.min_samples, open_, p, p_adj, name, gate.max_wait_h),
                required=check.required,
                p_value=p,
                p_adjusted=p_adj,
                needed=open_.more if open_ else None,
                eta_h=open_.eta_h if open_ else None,
                rate_per_h=open_.rate_per_h if open_ else None,
                noise_floor=ev.noise_floor,
                extra=ev.extra,
            )
        )
    return _resolve_reviews(results)


def _resolve_reviews(results: list[CheckResult]) -> list[CheckResult]:
    """A review is resolved where every required quality check on its slice passes: different, not worse."""
    quality: dict[str, list[CheckResult]] = {}
    for r in results:
        if r.role == "quality" and r.required:
            quality.setdefault(r.slice, []).append(r)
    out = []
    for r in results:
        if r.status is CheckStatus.REVIEW:
            decided = quality.get(r.slice, [])
            resolved = bool(decided) and all(q.status is CheckStatus.PASS for q in decided)
            reason = r.reason + ("; resolved: the labels here show it is not worse" if resolved else "")
            r = r.model_copy(update={"resolved": resolved, "reason": reason})
        out.append(r)
    return out


def gate_summary(config: ShadowdConfig, results: list[CheckResult]) -> GateSummary:
    """The verdict, its reasons and what the open checks need."""
    gate = config.gate
    failing = sum(1 for r in results if r.role != "divergence" or r.required)

    def summary(
        verdict: Verdict, reasons: list[str], notes: list[str], needs: list[Need], review: list[str]
    ) -> GateSummary:
        return GateSummary(
            verdict=verdict,
            reasons=reasons,
            notes=notes,
            needs=needs,
            review_slices=review,
            alpha=gate.alpha,
            correction=gate.correction,
            tests=len(results),
            method=(
                f"anytime-valid p-values (beta-binomial and normal-mixture confidence sequences; label-based "
                f"checks stratified by disagreement), {gate.correction} over the {failing} tests that can FAIL "
                f"and over the {len(results) - failing} that can only ask for review; false FAILs <= "
                f"{gate.alpha} however often the report is read"
            ),
            noise_floor=gate.noise_floor,
        )

    if config.models.candidate is None:
        return summary(Verdict.INCONCLUSIVE, ["no candidate configured (shadowing off)"], [], [], [])
    if not results:
        return summary(Verdict.INCONCLUSIVE, ["no checks apply to this task"], [], [], [])

    def line(r: CheckResult) -> str:
        return f"{r.check} on {r.slice}: {r.reason}"

    def need(r: CheckResult) -> Need:
        rate = r.rate_per_h or 0.0
        return Need(check=r.check, slice=r.slice, unit=r.unit, more=r.needed, eta_h=r.eta_h, rate_per_h=rate)

    open_ = CheckStatus.INCONCLUSIVE
    failed = [r for r in results if r.status is CheckStatus.FAIL]
    reviews = [r for r in results if r.status is CheckStatus.REVIEW and not r.resolved]
    review_slices = sorted({r.slice for r in reviews})
    open_required = [r for r in results if r.status is open_ and r.required]
    open_optional = [line(r) for r in results if r.status is open_ and not r.required]
    if failed:
        return summary(Verdict.FAIL, [line(r) for r in failed], open_optional, [], review_slices)
    if reviews:
        wanted = [r for r in results if r.slice in review_slices and r.role == "quality" and r.status is open_]
        return summary(
            Verdict.REVIEW,
            [line(r) for r in reviews] + [line(r) for r in wanted],
            open_optional,
            [need(r) for r in wanted],
            review_slices,
        )
    if open_required:
        return summary(
            Verdict.INCONCLUSIVE,
            [line(r) for r in open_required],
            open_optional,
            [need(r) for r in open_required],
            [],
        )
    passed = [r for r in results if r.status is CheckStatus.PASS]
    if not any(r.required for r in passed):
        # Nothing the gate requires has passed (only optional checks, still open): PASS here would let a
        # promotion through before a single check decided anything.
        return summary(
            Verdict.INCONCLUSIVE,
            ["no required check has passed yet: every check is optional (required: false), so the gate cannot PASS"],
            open_optional,
            [],
            [],
        )
    slices = sorted({r.slice for r in passed})
    return summary(
        Verdict.PASS, [f"all {len(passed)} check results pass on {', '.join(slices)}"], open_optional, [], []
    )


def evaluate_gate(
    config: ShadowdConfig,
    tallies: Mapping[str, SliceTally],
    elapsed_s: float = 0.0,
    memo: EvidenceMemo | None = None,
    versions: Mapping[str, Hashable] | None = None,
) -> tuple[list[CheckResult], GateSummary]:
    """(check results, gate verdict) for the report; ``elapsed_s`` is the window's age; ``memo`` and
    ``versions`` as in ``evaluate_checks``."""
    results = (
        evaluate_checks(config, tallies, elapsed_s=elapsed_s, memo=memo, versions=versions)
        if config.models.candidate is not None
        else []
    )
    return results, gate_summary(config, results)

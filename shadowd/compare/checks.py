"""Statistical checks: one configured check on one slice's tally -> a typed ``CheckResult``.

Sits between the comparator's tallies (``tally``) and the gate (``gate``),
which runs every configured check on "overall" and on each slice, adjusts
the p-values across all of them and turns the results into a verdict.

Every check is one-sided: "is the candidate worse than allowed?". Each kind
builds an ``_Evidence``: for a level alpha (and a hypothetical sample-size
multiple ``scale``) it says whether the always-valid interval shows the
candidate worse than allowed (``fails``) or within it (``passes``). From that
one rule come the anytime p-value (smallest alpha that fails), the verdict,
and "needs ~N more" (smallest scale that decides).

Noise-aware checks (flip rate, mean divergence) compare the candidate with
production's own disagreement (the noise replica): with floor f the allowed
value is ``max(f * (1 + rel_margin), f + abs_margin)``, i.e. the candidate must
beat the floor by both margins to fail. The floor's own uncertainty is paid
for by splitting alpha between the two intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from shadowd.compare import stats
from shadowd.compare.tally import CandidateTally, Moments, NoiseTally, SliceTally
from shadowd.config import (
    DistributionShiftCheck,
    FailureRateCheck,
    FlipRateCheck,
    GateConfig,
    LatencyRatioCheck,
    MeanDivergenceCheck,
    PairedAccuracyCheck,
    PairedLossCheck,
)

__all__ = ["CheckResult", "CheckStatus", "Evidence", "applies_to_task", "build_evidence"]

CheckStatus = Literal["pass", "fail", "inconclusive"]

# Largest sample-size multiple "needs ~N more" looks at; beyond it the effect
# sits on the threshold and more data will hardly decide.
_MAX_SCALE = 2.0**20


@dataclass(frozen=True)
class CheckResult:
    """One check on one slice. ``value`` and ``ci`` are in the check's own unit; higher is worse."""

    check: str
    type: str
    slice: str
    status: CheckStatus
    value: float | None
    ci: tuple[float, float] | None
    threshold: float | None
    n: int
    unit: Literal["pairs", "labels"]
    reason: str
    required: bool
    p_value: float | None = None
    p_adjusted: float | None = None
    needed: int | None = None
    noise_floor: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci) if self.ci is not None else None
        return {k: _finite(v) for k, v in d.items()}


def _finite(v: Any) -> Any:
    """JSON has no inf/NaN: an unbounded interval end becomes None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_finite(x) for x in v]
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


@dataclass
class Evidence:
    """What a check knows on one slice, as decision rules over (alpha, scale)."""

    n: int
    unit: Literal["pairs", "labels"]
    value: float | None
    threshold: float | None
    label: str  # the quantity in words, for reasons
    fails: Callable[[float, float], bool]
    passes: Callable[[float, float], bool]
    interval: Callable[[float], tuple[float, float]]
    noise_floor: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def applies_to_task(check: Any, task: str) -> bool:
    if isinstance(check, (FlipRateCheck, DistributionShiftCheck, PairedAccuracyCheck)):
        return task == "classification"
    return True


# --- building blocks ---


def _allowed(floor: float, check: FlipRateCheck | MeanDivergenceCheck) -> float:
    return max(floor * (1 + check.rel_margin), floor + check.abs_margin)


def _rate_bounds(s: int, n: int, alpha: float, scale: float) -> tuple[float, float]:
    return stats.proportion_cs(s * scale, n * scale, alpha)


def _rate_lo(s: int, n: int, alpha: float, scale: float) -> float:
    return stats.proportion_bound(s * scale, n * scale, alpha, upper=False)


def _rate_hi(s: int, n: int, alpha: float, scale: float) -> float:
    return stats.proportion_bound(s * scale, n * scale, alpha, upper=True)


def _mean_sd(m: Moments) -> float:
    # Floor the spread at 1/sqrt(n): a handful of identical values is not
    # proof of zero variance, and a zero width would decide on nothing.
    return max(math.sqrt(m.variance), 1 / math.sqrt(max(m.n, 1)))


def _mean_bounds(mean: float, sd: float, n: int, alpha: float, scale: float, rho: float) -> tuple[float, float]:
    hw = stats.mean_cs_halfwidth(n * scale, sd, alpha, rho)
    return mean - hw, mean + hw


def _noise_aware(
    check: FlipRateCheck | MeanDivergenceCheck,
    cand: CandidateTally,
    noise: NoiseTally,
    gate: GateConfig,
    task: str,
) -> Evidence:
    rho = stats.gaussian_mixture_rho(gate.alpha, gate.tuning_samples)
    use_noise = gate.noise_floor and noise.compared > 0
    k = 2.0 if use_noise else 1.0  # alpha is split between the candidate's and the floor's interval
    if isinstance(check, FlipRateCheck):
        label = "flip rate"
        value = cand.flips / cand.compared if cand.compared else None
        floor = noise.flips / noise.compared if use_noise else None

        def cand_bound(a: float, s: float, upper: bool) -> float:
            return (_rate_hi if upper else _rate_lo)(cand.flips, cand.compared, a, s)

        def noise_bound(a: float, s: float, upper: bool) -> float:
            return (_rate_hi if upper else _rate_lo)(noise.flips, noise.compared, a, s)

    else:
        label = "mean divergence" + (" (tvd)" if task == "classification" else " (relative difference)")
        value = cand.score.mean if cand.compared else None
        floor = noise.score.mean if use_noise else None
        c_sd, n_sd = _mean_sd(cand.score), _mean_sd(noise.score)

        def cand_bound(a: float, s: float, upper: bool) -> float:
            return _mean_bounds(cand.score.mean, c_sd, cand.compared, a, s, rho)[int(upper)]

        def noise_bound(a: float, s: float, upper: bool) -> float:
            return _mean_bounds(noise.score.mean, n_sd, noise.compared, a, s, rho)[int(upper)]

    def fails(a: float, s: float) -> bool:
        ceiling = noise_bound(a / k, s, True) if use_noise else 0.0
        return cand_bound(a / k, s, False) > _allowed(max(ceiling, 0.0), check)

    def passes(a: float, s: float) -> bool:
        floor_lo = noise_bound(a / k, s, False) if use_noise else 0.0
        return cand_bound(a / k, s, True) <= _allowed(max(floor_lo, 0.0), check)

    extra: dict[str, Any] = {"noise_pairs": noise.compared, "noise_floor_used": use_noise}
    return Evidence(
        n=cand.compared,
        unit="pairs",
        value=value,
        threshold=_allowed(floor or 0.0, check),
        label=label,
        fails=fails,
        passes=passes,
        # The interval the decisions use: at alpha/2 when the floor takes the other half.
        interval=lambda a: (cand_bound(a / k, 1.0, False), cand_bound(a / k, 1.0, True)),
        noise_floor=floor,
        extra=extra,
    )


def _distribution_shift(
    check: DistributionShiftCheck, cand: CandidateTally, gate: GateConfig, explain: bool
) -> Evidence:
    """Per class k, the paired difference 1[candidate says k] - 1[production says k]; its mean is the share change."""
    rho = stats.gaussian_mixture_rho(gate.alpha, gate.tuning_samples)
    n = sum(cand.classes.values())
    k_max = 1 + max((max(p, c) for p, c in cand.classes), default=0)
    prod_counts, cand_counts = [0] * k_max, [0] * k_max
    gained, lost = [0] * k_max, [0] * k_max
    for (p, c), cnt in cand.classes.items():
        prod_counts[p] += cnt
        cand_counts[c] += cnt
        if p != c:
            gained[c] += cnt
            lost[p] += cnt
    shifts, sds = [], []
    for k in range(k_max):
        d = (gained[k] - lost[k]) / n if n else 0.0
        var = ((gained[k] + lost[k]) / n - d * d) * n / (n - 1) if n > 1 else 0.0
        shifts.append(d)
        sds.append(max(math.sqrt(max(var, 0.0)), 1 / math.sqrt(max(n, 1))))
    classes = max(k_max, 1)

    def bounds(a: float, s: float) -> tuple[float, float]:
        # Bonferroni over classes: every class's interval holds at once.
        hws = [stats.mean_cs_halfwidth(n * s, sd, a / classes, rho) for sd in sds]
        lo = max((abs(d) - hw for d, hw in zip(shifts, hws, strict=True)), default=0.0)
        hi = max((abs(d) + hw for d, hw in zip(shifts, hws, strict=True)), default=math.inf)
        return max(lo, 0.0), hi

    worst = max(range(k_max), key=lambda k: abs(shifts[k])) if k_max and n else None
    return Evidence(
        n=n,
        unit="pairs",
        value=abs(shifts[worst]) if worst is not None else None,
        threshold=check.max_shift,
        label="largest class-share change",
        fails=lambda a, s: bounds(a, s)[0] > check.max_shift,
        passes=lambda a, s: bounds(a, s)[1] <= check.max_shift,
        interval=lambda a: bounds(a, 1.0),
        extra={
            "worst_class": worst,
            "class_share_change": shifts,
            "chi2_p_fixed_n": stats.chi2_shift_p(prod_counts, cand_counts) if explain else None,
        },
    )


def _failure_rate(check: FailureRateCheck, t: SliceTally) -> Evidence:
    n = sum(t.candidate_outcomes.values())
    s = sum(t.candidate_outcomes.get(o, 0) for o in check.outcomes)
    return Evidence(
        n=n,
        unit="pairs",
        value=s / n if n else None,
        threshold=check.max_rate,
        label=f"candidate {'/'.join(check.outcomes)} rate",
        fails=lambda a, sc: _rate_lo(s, n, a, sc) > check.max_rate,
        passes=lambda a, sc: _rate_hi(s, n, a, sc) <= check.max_rate,
        interval=lambda a: _rate_bounds(s, n, a, 1.0),
        extra={"failures": s},
    )


def _latency_ratio(check: LatencyRatioCheck, t: SliceTally) -> Evidence:
    cand, prod = t.latency_s.get("candidate"), t.latency_s.get("production")
    q = check.quantile
    if cand is None or prod is None or cand.n == 0 or prod.n == 0:
        never = lambda a, s: False  # noqa: E731
        return Evidence(
            0, "pairs", None, check.max_ratio, f"p{q * 100:g} latency ratio", never, never, lambda a: (0.0, math.inf)
        )
    cv, cc = cand.cumulative()
    pv, pc = prod.cumulative()

    def bounds(a: float, s: float) -> tuple[float, float]:
        c_lo, c_hi = stats.quantile_cs(cv, cc, q, a / 2, s)
        p_lo, p_hi = stats.quantile_cs(pv, pc, q, a / 2, s)
        lo = c_lo / p_hi if p_hi > 0 else math.inf
        hi = c_hi / p_lo if p_lo > 0 else math.inf
        return lo, hi

    pq, cq = prod.quantile(q), cand.quantile(q)
    return Evidence(
        n=min(cand.n, prod.n),
        unit="pairs",
        value=cq / pq if pq else None,
        threshold=check.max_ratio,
        label=f"p{q * 100:g} latency ratio candidate/production",
        fails=lambda a, s: bounds(a, s)[0] > check.max_ratio,
        passes=lambda a, s: bounds(a, s)[1] <= check.max_ratio,
        interval=lambda a: bounds(a, 1.0),
        extra={"candidate_s": cq, "production_s": pq},
    )


def _paired_accuracy(check: PairedAccuracyCheck, t: SliceTally, gate: GateConfig, explain: bool) -> Evidence:
    """Mean of 1[production right] - 1[candidate right] over labelled pairs: the accuracy drop."""
    lab = t.labels
    rho = stats.gaussian_mixture_rho(gate.alpha, gate.tuning_samples)
    n = lab.both_correct + lab.prod_only_correct + lab.cand_only_correct + lab.neither_correct
    b, c = lab.prod_only_correct, lab.cand_only_correct
    drop = (b - c) / n if n else 0.0
    var = ((b + c) / n - drop * drop) * n / (n - 1) if n > 1 else 0.0
    sd = max(math.sqrt(max(var, 0.0)), 1 / math.sqrt(max(n, 1)))
    acc = None
    if n:
        acc = {"production": (lab.both_correct + b) / n, "candidate": (lab.both_correct + c) / n}
    return Evidence(
        n=n,
        unit="labels",
        value=drop if n else None,
        threshold=check.max_drop,
        label="accuracy drop (production - candidate)",
        fails=lambda a, s: _mean_bounds(drop, sd, n, a, s, rho)[0] > check.max_drop,
        passes=lambda a, s: _mean_bounds(drop, sd, n, a, s, rho)[1] <= check.max_drop,
        interval=lambda a: _mean_bounds(drop, sd, n, a, 1.0, rho),
        extra={
            "accuracy": acc,
            "discordant": {"production_only": b, "candidate_only": c},
            "mcnemar_mid_p_fixed_n": stats.mcnemar_mid_p(b, c) if explain else None,
        },
    )


def _paired_loss(check: PairedLossCheck, t: SliceTally, gate: GateConfig, explain: bool) -> Evidence:
    lab = t.labels
    rho = stats.gaussian_mixture_rho(gate.alpha, gate.tuning_samples)
    m = lab.loss_diff
    sd = _mean_sd(m)
    return Evidence(
        n=m.n,
        unit="labels",
        value=m.mean if m.n else None,
        threshold=check.max_increase,
        label="mean loss increase (candidate - production)",
        fails=lambda a, s: _mean_bounds(m.mean, sd, m.n, a, s, rho)[0] > check.max_increase,
        passes=lambda a, s: _mean_bounds(m.mean, sd, m.n, a, s, rho)[1] <= check.max_increase,
        interval=lambda a: _mean_bounds(m.mean, sd, m.n, a, 1.0, rho),
        extra={
            "mean_loss": {role: mm.mean for role, mm in lab.loss.items()} if m.n else None,
            "wilcoxon_p_fixed_n": stats.wilcoxon_p(lab.diff_sample) if explain else None,
        },
    )


def build_evidence(check: Any, tally: SliceTally, gate: GateConfig, task: str, explain: bool = True) -> Evidence:
    """The evidence one configured check has on one slice's tally.

    ``explain=False`` leaves out the fixed-sample tests shown for people
    (they never decide), for simulations that only count verdicts.
    """
    if isinstance(check, (FlipRateCheck, MeanDivergenceCheck)):
        return _noise_aware(check, tally.candidate, tally.noise, gate, task)
    if isinstance(check, DistributionShiftCheck):
        return _distribution_shift(check, tally.candidate, gate, explain)
    if isinstance(check, FailureRateCheck):
        return _failure_rate(check, tally)
    if isinstance(check, LatencyRatioCheck):
        return _latency_ratio(check, tally)
    if isinstance(check, PairedAccuracyCheck):
        return _paired_accuracy(check, tally, gate, explain)
    if isinstance(check, PairedLossCheck):
        return _paired_loss(check, tally, gate, explain)
    raise TypeError(f"unknown check type {type(check).__name__}")


def more_needed(ev: Evidence, alpha: float) -> int | None:
    """Roughly how many more samples would decide, if the slice kept its current rates and spread."""
    if ev.n == 0:
        return None

    def decides(s: float) -> bool:
        return ev.fails(alpha, s) or ev.passes(alpha, s)

    hi = 2.0
    while not decides(hi):
        if hi >= _MAX_SCALE:
            return None
        hi *= 2
    lo = hi / 2
    while hi - lo > 0.02 * lo:
        mid = (lo + hi) / 2
        if decides(mid):
            hi = mid
        else:
            lo = mid
    return max(1, math.ceil(ev.n * (hi - 1)))

"""The statistics behind the checks, as plain functions of counts and moments.

Sits under ``checks``: each check turns a slice's tally into counts, then asks
this module for an interval and a p-value. Two families:

Always-valid (used for every gating decision, safe under continuous peeking):

- ``proportion_cs`` / ``proportion_p_above``: the beta-binomial mixture
  confidence sequence for a Bernoulli rate (Robbins 1970; Howard, Ramdas,
  McAuliffe & Sekhon 2021). With a Beta(a, b) prior on the rate, the mixture
  likelihood ratio is a nonnegative martingale under any fixed true rate, so
  by Ville's inequality ``P(ever 1/M <= alpha) <= alpha``: the interval covers
  the true rate at every sample size at once, and the p-value may be read
  after every batch.
- ``mean_cs_halfwidth`` / ``gaussian_mixture_rho``: the asymptotic confidence
  sequence for a mean (Robbins' normal mixture boundary; Waudby-Smith, Arbour,
  Sinha, Kennedy & Ramdas 2021, "Time-uniform central limit theory").
- ``quantile_cs``: a quantile's confidence sequence from a histogram, by
  running the proportion sequence on the count below each bucket edge
  (Howard & Ramdas 2022).
- ``anytime_p_value``: the smallest alpha at which a monotone always-valid
  decision rejects, found by bisection; ``adjust_p_values`` (Holm or
  Bonferroni) adjusts a fixed family of them (Holm on anytime-valid p-values
  keeps the family-wise error rate under optional stopping). It is the one
  multiple-comparison helper: drift windows use it too (BH, BY or Holm).

Fixed-sample (shown beside the gating numbers for people used to them; they are
not valid under peeking, so they never decide): ``mcnemar_mid_p``,
``chi2_shift_p``, ``wilcoxon_p``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import optimize, special, stats

__all__ = [
    "MIN_ALPHA",
    "PRIOR_A",
    "PRIOR_B",
    "adjust_p_values",
    "anytime_p_value",
    "chi2_shift_p",
    "gaussian_mixture_rho",
    "mcnemar_mid_p",
    "mean_cs_halfwidth",
    "proportion_bound",
    "proportion_cs",
    "proportion_p_above",
    "quantile_cs",
    "wilcoxon_p",
]

# Jeffreys prior on the rate: no rate is favoured, and the interval stays
# sensible at 0 or n successes.
PRIOR_A = 0.5
PRIOR_B = 0.5
# p-values below this are reported as this: far past any threshold in use.
MIN_ALPHA = 1e-12


# --- proportions: beta-binomial mixture ---


def _log_lik(p: float, s: float, n: float) -> float:
    return float(special.xlogy(s, p) + special.xlog1py(n - s, -p))


def _log_mix(s: float, n: float) -> float:
    return float(special.betaln(PRIOR_A + s, PRIOR_B + n - s) - special.betaln(PRIOR_A, PRIOR_B))


def proportion_bound(s: float, n: float, alpha: float, upper: bool) -> float:
    """One end of ``proportion_cs`` (the checks' decisions need one end at a time)."""
    if n <= 0:
        return 1.0 if upper else 0.0
    cut = _log_mix(s, n) + math.log(alpha)  # p is inside iff log L(p) > cut
    phat = s / n

    def f(p: float) -> float:
        return _log_lik(p, s, n) - cut

    eps = 1e-15
    if upper:
        return 1.0 if s >= n or f(1 - eps) > 0 else optimize.brentq(f, phat, 1 - eps, xtol=1e-12)
    return 0.0 if s <= 0 or f(eps) > 0 else optimize.brentq(f, eps, phat, xtol=1e-12)


def proportion_cs(s: float, n: float, alpha: float) -> tuple[float, float]:
    """Always-valid (1 - alpha) interval for a rate after ``s`` successes in ``n`` trials.

    The set {p : mixture likelihood ratio against p < 1/alpha}, an interval
    around s/n because the binomial log likelihood is concave.
    """
    return proportion_bound(s, n, alpha, upper=False), proportion_bound(s, n, alpha, upper=True)


def proportion_p_above(s: float, n: float, p0: float) -> float:
    """Always-valid p-value for H0: rate <= p0, from ``s`` successes in ``n`` trials.

    ``1 / M`` with M the mixture over the most likely null rate: below every
    null rate's martingale, so ``P(ever <= x) <= x`` under H0.
    """
    if n <= 0:
        return 1.0
    p_null = min(s / n, p0)
    log_null = (0.0 if s <= 0 else -math.inf) if p_null <= 0 else _log_lik(p_null, s, n)
    return float(min(1.0, max(MIN_ALPHA, math.exp(min(0.0, log_null - _log_mix(s, n))))))


# --- means: normal mixture (asymptotic) ---


def gaussian_mixture_rho(alpha: float, tuning_samples: int) -> float:
    """Mixture width making the boundary tightest at ``tuning_samples`` (Waudby-Smith et al. 2021)."""
    la = -2 * math.log(alpha)
    return math.sqrt((la + math.log(la + 1)) / tuning_samples)


def mean_cs_halfwidth(n: float, sd: float, alpha: float, rho: float) -> float:
    """Half-width of the always-valid (1 - alpha) interval for a mean after n samples with standard deviation sd."""
    if n <= 0:
        return math.inf
    v = n * rho * rho
    return sd * math.sqrt(2 * (v + 1) / (n * n * rho * rho) * math.log(math.sqrt(v + 1) / alpha))


# --- quantiles from a histogram ---


def quantile_cs(
    values: Sequence[float], cum: Sequence[int], q: float, alpha: float, scale: float = 1.0
) -> tuple[float, float]:
    """Always-valid (1 - alpha) interval for the q-quantile from a histogram.

    ``values[i]`` stands for bucket i, ``cum[i]`` counts samples at or below it
    (ascending; ``cum[-1]`` is n). The quantile is above bucket i while the
    count below it is too small for a rate of q, and at or below bucket i once
    the rate at bucket i is confidently >= q. Returns (0, inf) when nothing is
    known. ``scale`` multiplies every count (for "how many more would decide").
    """
    if not cum or cum[-1] <= 0:
        return 0.0, math.inf
    s = np.asarray(cum, dtype=float) * scale
    n = float(s[-1])
    log_mix = special.betaln(PRIOR_A + s, PRIOR_B + n - s) - special.betaln(PRIOR_A, PRIOR_B)
    log_lik = special.xlogy(s, q) + special.xlog1py(n - s, -q)
    excluded = log_mix - log_lik >= -math.log(alpha)
    at_or_above = s / n >= q
    lo_idx = np.flatnonzero(at_or_above | ~excluded)
    hi_idx = np.flatnonzero(at_or_above & excluded)
    lo = float(values[lo_idx[0]]) if lo_idx.size else float(values[-1])
    hi = float(values[hi_idx[0]]) if hi_idx.size else math.inf
    return lo, hi


# --- p-values and multiple comparisons ---


def anytime_p_value(rejects: Callable[[float], bool], iterations: int = 20) -> float:
    """Smallest alpha at which an always-valid rule ``rejects(alpha)`` rejects.

    ``rejects`` must be monotone (rejecting at alpha means rejecting at any
    larger alpha), as it is for a confidence sequence growing narrower with
    alpha. Found by bisection on log(alpha) in [MIN_ALPHA, 1]; 20 halvings
    give it to within 0.003 % (rounded up, so never smaller than it is).
    """
    if not rejects(1.0):
        return 1.0
    lo, hi = math.log(MIN_ALPHA), 0.0
    if rejects(MIN_ALPHA):
        return MIN_ALPHA
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if rejects(math.exp(mid)):
            hi = mid
        else:
            lo = mid
    return math.exp(hi)


def adjust_p_values(p_values: Sequence[float] | np.ndarray, method: str) -> list[float]:
    """Adjusted p-values for a family of tests; reject where adjusted <= alpha.

    ``holm`` (step-down) and ``bonferroni`` control the family-wise error rate;
    ``bh`` (Benjamini-Hochberg) and ``by`` (Benjamini-Yekutieli, any dependence)
    the false discovery rate, through scipy's ``false_discovery_control``. The
    gate uses one of the first two; drift windows may use any.
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return []
    if method == "bonferroni":
        adjusted = np.minimum(m * p, 1.0)
    elif method == "holm":
        order = np.argsort(p, kind="stable")
        steps = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
        adjusted = np.empty(m)
        adjusted[order] = steps
    elif method in ("bh", "by"):
        adjusted = stats.false_discovery_control(p, method=method)
    else:
        raise ValueError(f"unknown correction {method!r}; use holm, bonferroni, bh or by")
    return [float(x) for x in adjusted]


# --- fixed-sample tests, shown but never deciding ---


def mcnemar_mid_p(b: int, c: int) -> float:
    """Two-sided McNemar mid-p test on the discordant pairs b and c (Fagerland, Lydersen & Laake 2013)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    p = 2 * stats.binom.cdf(k, n, 0.5) - stats.binom.pmf(k, n, 0.5)
    return float(min(1.0, p))


def chi2_shift_p(production_counts: Sequence[int], candidate_counts: Sequence[int]) -> float | None:
    """Chi-square test that two predicted-class count vectors share one distribution.

    Treats them as independent samples (they are paired: shown, never deciding).
    """
    table = np.array([production_counts, candidate_counts], dtype=float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return None
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def wilcoxon_p(differences: Sequence[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired differences; None below 10 non-zero ones."""
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    if d.size < 10:
        return None
    return float(stats.wilcoxon(d).pvalue)

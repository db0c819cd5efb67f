"""The statistics against scipy, textbook values and their defining guarantees.

Coverage tests simulate many streams with fixed seeds and check the
time-uniform promise directly: the share of streams whose interval ever
misses the truth, looked at after every sample, stays at or below alpha.
"""

import functools
import math

import numpy as np
import pytest
from scipy import stats as sps

from shadowd.compare import stats

# --- proportions ---


@pytest.mark.parametrize("s,n,alpha", [(0, 10, 0.05), (3, 40, 0.05), (50, 100, 0.01), (997, 1000, 0.1), (10, 10, 0.05)])
def test_proportion_cs_bounds_are_where_the_mixture_ratio_hits_one_over_alpha(s, n, alpha):
    """M(p) = betabinom.pmf / binom.pmf (scipy) equals 1/alpha at every finite bound."""
    lo, hi = stats.proportion_cs(s, n, alpha)
    assert 0 <= lo <= s / n <= hi <= 1
    for bound in (lo, hi):
        if 0 < bound < 1:
            m = sps.betabinom.pmf(s, n, stats.PRIOR_A, stats.PRIOR_B) / sps.binom.pmf(s, n, bound)
            assert m == pytest.approx(1 / alpha, rel=1e-6)
    inside = (lo + hi) / 2
    assert sps.betabinom.pmf(s, n, 0.5, 0.5) / sps.binom.pmf(s, n, inside) < 1 / alpha


def _lower_above(s: int, n: int, p0: float, alpha: float) -> bool:
    return stats.proportion_cs(s, n, alpha)[0] > p0


def test_proportion_p_value_matches_the_interval():
    """p for H0 rate <= p0 is the smallest alpha whose interval lies wholly above p0."""
    for s, n, p0 in [(30, 200, 0.05), (12, 100, 0.05), (0, 500, 0.01), (40, 1000, 0.01)]:
        closed = stats.proportion_p_above(s, n, p0)
        searched = stats.anytime_p_value(functools.partial(_lower_above, s, n, p0))
        if closed < 1:
            assert searched == pytest.approx(closed, rel=1e-3)
        else:
            assert searched == 1.0
    assert stats.proportion_p_above(0, 0, 0.1) == 1.0


LOOKS = np.unique(np.geomspace(10, 3000, 30).astype(int))  # a report read 30 times as a stream grows


@pytest.mark.parametrize("p_true", [0.02, 0.3])
def test_proportion_cs_covers_at_every_look(p_true):
    """``stats.proportion_cs`` read at every look of each stream: the true rate leaves the
    interval at some look in at most alpha of the streams (peeking does not inflate errors)."""
    rng = np.random.default_rng(123)
    streams, alpha = 400, 0.05
    successes = np.cumsum(rng.random((streams, LOOKS[-1])) < p_true, axis=1)
    missed = 0
    for row in successes:
        for n in LOOKS:
            lo, hi = stats.proportion_cs(int(row[n - 1]), int(n), alpha)
            if not lo <= p_true <= hi:
                missed += 1
                break
    assert missed / streams <= alpha


def test_proportion_cs_is_wider_than_the_fixed_n_exact_interval_but_shrinks():
    lo, hi = stats.proportion_cs(50, 1000, 0.05)
    cp = sps.binomtest(50, 1000).proportion_ci(0.95, method="exact")
    assert lo < cp.low and hi > cp.high  # paying for peeking
    lo2, hi2 = stats.proportion_cs(500, 10000, 0.05)
    assert hi2 - lo2 < (hi - lo) / 2.5


# --- means ---


def test_mean_halfwidth_equals_the_normal_mixture_boundary_in_howard_form():
    """Howard et al. (2021): |S_t| <= sigma sqrt((t + t0) log((t + t0) / (t0 alpha^2))), t0 = 1/rho^2."""
    alpha, rho = 0.05, stats.gaussian_mixture_rho(0.05, 500)
    t0 = 1 / rho**2
    for t in (10, 100, 500, 5000):
        boundary = 2.0 * math.sqrt((t + t0) * math.log((t + t0) / (t0 * alpha**2)))
        assert stats.mean_cs_halfwidth(t, 2.0, alpha, rho) == pytest.approx(boundary / t)
    assert stats.mean_cs_halfwidth(0, 1.0, 0.05, rho) == math.inf


def test_rho_is_the_published_tuning():
    # rho = sqrt((-2 log a + log(-2 log a + 1)) / t*), Waudby-Smith et al. 2021
    a, t = 0.05, 1000
    assert stats.gaussian_mixture_rho(a, t) ** 2 * t == pytest.approx(-2 * math.log(a) + math.log(-2 * math.log(a) + 1))


def test_mean_cs_covers_at_every_look_with_estimated_variance():
    """``stats.mean_cs_halfwidth`` with the running sd, read at every look from 100 on (the checks'
    minimum sample): the true mean leaves mean +- halfwidth in at most alpha of the streams."""
    rng = np.random.default_rng(5)
    streams, alpha = 1000, 0.05
    rho = stats.gaussian_mixture_rho(alpha, 1000)
    x = rng.exponential(1.0, (streams, LOOKS[-1])) - 1.0  # skewed, mean 0
    n = np.arange(1, LOOKS[-1] + 1)
    mean = np.cumsum(x, axis=1) / n
    sd = np.sqrt((np.cumsum(x * x, axis=1) - n * mean**2) / np.maximum(n - 1, 1))
    looks = LOOKS[LOOKS >= 100]
    halfwidth = np.vectorize(lambda k, s: stats.mean_cs_halfwidth(k, s, alpha, rho))(looks, sd[:, looks - 1])
    miss = (np.abs(mean[:, looks - 1]) > halfwidth).any(axis=1).mean()
    assert miss <= alpha


# --- quantiles ---


def test_quantile_cs_covers_the_true_quantile_and_tightens():
    from shadowd.compare.tally import LogHistogram

    rng = np.random.default_rng(9)
    truth = {0.5: math.log(2), 0.99: math.log(100)}  # exponential(1) quantiles
    h = LogHistogram()
    widths = []
    for batch in range(4):
        for x in rng.exponential(1.0, 5000 * 4**batch // 4 or 1):
            h.add(float(x))
        values, cum = h.cumulative()
        for q, true_q in truth.items():
            lo, hi = stats.quantile_cs(values, cum, q, 0.05)
            assert lo <= true_q * 1.011 and hi >= true_q / 1.011
        lo, hi = stats.quantile_cs(values, cum, 0.5, 0.05)
        widths.append(hi - lo)
    assert widths[-1] < widths[0] / 3
    assert stats.quantile_cs([], [], 0.5, 0.05) == (0.0, math.inf)


# --- multiple comparisons ---


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 1*0.04)
    assert stats.adjust_p_values([0.01, 0.04, 0.03, 0.005], "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.adjust_p_values([0.5, 0.9], "holm") == [1.0, 1.0]
    assert stats.adjust_p_values([0.01, 0.2], "bonferroni") == pytest.approx([0.02, 0.4])
    assert stats.adjust_p_values([], "holm") == []
    with pytest.raises(ValueError, match="unknown correction"):
        stats.adjust_p_values([0.1], "sidak")


def test_anytime_p_value_bisection():
    p = stats.anytime_p_value(lambda a: a >= 0.0123)
    assert 0.0123 <= p <= 0.0123 * 1.0001  # rounded up: never claims more evidence than there is
    assert stats.anytime_p_value(lambda a: False) == 1.0
    assert stats.anytime_p_value(lambda a: True) == stats.MIN_ALPHA


# --- fixed-sample tests ---


def test_mcnemar_mid_p_textbook_example():
    # b=1, c=7 (Fagerland, Lydersen & Laake 2013): exact p = 2*(1+8)/256, mid-p = exact - 8/256
    assert sps.binomtest(1, 8).pvalue == pytest.approx(18 / 256)
    assert stats.mcnemar_mid_p(1, 7) == pytest.approx(10 / 256)
    assert stats.mcnemar_mid_p(7, 1) == pytest.approx(10 / 256)


@pytest.mark.parametrize("b,c", [(3, 15), (20, 31), (40, 40), (0, 5)])
def test_mcnemar_mid_p_is_exact_minus_half_the_observed_probability(b, c):
    n = b + c
    exact = sps.binomtest(b, n).pvalue
    k = min(b, c)
    # b == c: the exact test gives 1 + P(X = k) capped at 1; mid-p removes half of the two tails' shared point
    mid = exact - sps.binom.pmf(k, n, 0.5) if b != c else 1.0
    assert stats.mcnemar_mid_p(b, c) == pytest.approx(mid)
    assert stats.mcnemar_mid_p(0, 0) == 1.0


def test_chi2_shift_by_hand():
    prod, cand = [30, 50, 20], [40, 40, 20]
    table = np.array([prod, cand], float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    assert stats.chi2_shift_p(prod, cand) == pytest.approx(sps.chi2.sf(chi2, df=2))
    assert stats.chi2_shift_p([10, 0], [10, 0]) is None  # one class only


def test_wilcoxon_drops_zeros_and_needs_ten():
    d = [0.0] * 20 + [0.1, -0.2, 0.3, 0.4, 0.5, -0.05, 0.6, 0.7, 0.8]
    assert stats.wilcoxon_p(d) is None
    d.append(0.9)
    assert stats.wilcoxon_p(d) == pytest.approx(sps.wilcoxon([x for x in d if x]).pvalue)


def test_p_value_corrections_match_textbook_values():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, then running max: 0.02, 0.03, 0.06, 0.06
    assert stats.adjust_p_values(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Benjamini-Hochberg: p * m / rank, then running min from the top: 0.02, 0.02, 0.04, 0.04
    assert stats.adjust_p_values(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])

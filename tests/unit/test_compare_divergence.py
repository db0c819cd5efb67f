"""Divergence per pair against hand-computed values and scipy's distances."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import cityblock

from shadowd.compare.divergence import pair_divergence, top_class
from shadowd.config import DivergenceConfig

CFG = DivergenceConfig()


def test_classification_flip_tvd_confidence_by_hand():
    d = pair_divergence("classification", [0.7, 0.2, 0.1], [0.4, 0.5, 0.1], CFG)
    # |0.7-0.4| + |0.2-0.5| + 0 = 0.6, halved
    assert d.tvd == pytest.approx(0.3)
    assert d.flip is True
    # candidate's probability of production's top class (0) minus production's
    assert d.confidence_change == pytest.approx(0.4 - 0.7)
    assert d.score == d.tvd
    assert d.abs_diff is None and d.rel_diff is None
    assert d.divergent  # a flip is divergent by default


def test_classification_no_flip_below_threshold_is_not_divergent():
    d = pair_divergence("classification", [0.6, 0.3, 0.1], [0.5, 0.3, 0.2], CFG)
    assert d.flip is False
    assert d.tvd == pytest.approx(0.1)
    assert d.confidence_change == pytest.approx(-0.1)
    assert not d.divergent


def test_classification_tvd_threshold_and_flip_switch():
    # no flip, tvd 0.35 > 0.3
    d = pair_divergence("classification", [0.9, 0.1, 0.0], [0.55, 0.1, 0.35], CFG)
    assert not d.flip and d.tvd == pytest.approx(0.35) and d.divergent
    # a flip with small tvd is not divergent when flips are not divergent by themselves
    cfg = DivergenceConfig(flip_is_divergent=False, tvd_threshold=0.3)
    d = pair_divergence("classification", [0.51, 0.49], [0.49, 0.51], cfg)
    assert d.flip and d.tvd == pytest.approx(0.02) and not d.divergent


def test_tvd_matches_scipy_on_random_vectors():
    rng = np.random.default_rng(7)
    for _ in range(50):
        p, q = rng.dirichlet(np.ones(10)), rng.dirichlet(np.ones(10))
        d = pair_divergence("classification", p.tolist(), q.tolist(), CFG)
        assert d.tvd == pytest.approx(0.5 * cityblock(p, q))
        assert d.flip == (int(np.argmax(p)) != int(np.argmax(q)))
        assert d.confidence_change == pytest.approx(q[np.argmax(p)] - p[np.argmax(p)])


def test_identical_outputs_have_zero_divergence():
    d = pair_divergence("classification", [0.2, 0.8], [0.2, 0.8], CFG)
    assert (d.flip, d.tvd, d.confidence_change, d.divergent) == (False, 0.0, 0.0, False)
    d = pair_divergence("regression", [3.0], [3.0], CFG)
    assert (d.abs_diff, d.rel_diff, d.divergent) == (0.0, 0.0, False)


def test_regression_abs_and_rel_by_hand():
    d = pair_divergence("regression", [2.0, -4.0], [2.5, -4.2], CFG)
    assert d.abs_diff == pytest.approx(0.5)  # max(0.5, 0.2)
    assert d.rel_diff == pytest.approx(0.25)  # max(0.5/2, 0.2/4)
    assert d.score == d.rel_diff
    assert d.flip is None and d.tvd is None
    assert not d.divergent  # abs 0.5 <= default abs_threshold 1.0
    cfg = DivergenceConfig(abs_threshold=0.4, rel_threshold=0.2)
    assert pair_divergence("regression", [2.0, -4.0], [2.5, -4.2], cfg).divergent


def test_regression_needs_both_margins_on_one_output():
    cfg = DivergenceConfig(abs_threshold=1.0, rel_threshold=0.2)
    # large absolute change on a large value: rel 0.01 -> not divergent
    assert not pair_divergence("regression", [1000.0], [1010.0], cfg).divergent
    # large relative change of a tiny value: abs 0.01 -> not divergent
    assert not pair_divergence("regression", [0.01], [0.02], cfg).divergent
    # output 0 passes abs only, output 1 passes rel only: still not divergent
    assert not pair_divergence("regression", [100.0, 0.1], [102.0, 0.5], cfg).divergent
    assert pair_divergence("regression", [5.0], [7.0], cfg).divergent


def test_regression_zero_production_gives_finite_relative_difference():
    d = pair_divergence("regression", [0.0], [1e-3], CFG)
    assert d.rel_diff is not None and math.isfinite(d.rel_diff) and d.rel_diff > 1e5


@pytest.mark.parametrize(
    "prod,cand",
    [([0.5, 0.5], [1.0]), ([], []), ([0.5, float("nan")], [0.5, 0.5]), ([0.5, 0.5], [float("inf"), 0.0])],
)
def test_incomparable_outputs_raise_value_error(prod, cand):
    with pytest.raises(ValueError):
        pair_divergence("classification", prod, cand, CFG)


def test_unknown_task_raises():
    with pytest.raises(ValueError, match="unknown task"):
        pair_divergence("ranking", [1.0], [1.0], CFG)


def test_top_class_ties_follow_numpy_argmax():
    for v in ([0.5, 0.5], [0.1, 0.3, 0.3, 0.3], [1.0]):
        assert top_class(v) == int(np.argmax(v))

"""How far apart two models' answers to one request are.

Sits at the start of the comparator: every finished ``Pair`` from the shadow
worker goes through ``pair_divergence`` (candidate vs production, and noise vs
production for the noise floor) before any aggregate or statistic sees it.

Classification outputs are probability vectors; regression outputs are value
vectors (one entry per output unit). ``score`` is the single number that
thresholds, histograms and annotation priorities use.

``compare_columns`` does the same for a whole batch (numpy over the rows,
the comparator's batched path) with exactly the same outcomes, flips,
divergent flags and scores: every quantity is computed with the same float
operations in the same order as ``pair_divergence``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shadowd.config import DivergenceConfig
from shadowd.records import OUTCOMES

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "REL_EPS",
    "SCORE_LIMIT",
    "ColumnDivergence",
    "Divergence",
    "compare_columns",
    "pair_divergence",
    "top_class",
]

# Floor on |production| in the relative difference, so an exact zero from
# production gives a large but finite relative difference instead of inf.
REL_EPS = 1e-9
# A score at or beyond this (or inf) is a numerically broken output: counted as nan, never compared,
# so it cannot poison the tallies (its square, in the variance, would overflow).
SCORE_LIMIT = 1e150


@dataclass(frozen=True)
class Divergence:
    """Candidate (or noise) vs production for one request.

    Classification fills ``flip``, ``tvd`` and ``confidence_change``;
    regression fills ``abs_diff`` and ``rel_diff``; the others are None.
    """

    flip: bool | None
    tvd: float | None
    confidence_change: float | None
    abs_diff: float | None
    rel_diff: float | None
    score: float
    divergent: bool


def top_class(values: Sequence[float]) -> int:
    """Index of the largest probability; ties go to the lowest index (numpy's argmax rule)."""
    best = 0
    for i in range(1, len(values)):
        if values[i] > values[best]:
            best = i
    return best


def pair_divergence(
    task: str, production: Sequence[float], candidate: Sequence[float], cfg: DivergenceConfig
) -> Divergence:
    """Divergence of ``candidate`` from ``production`` for one example.

    Raises ValueError when the two outputs cannot be compared (different
    lengths, empty, or non-finite values); the comparator counts those as
    ``bad_shape`` / ``nan`` instead of comparing them.
    """
    if len(production) != len(candidate) or not production:
        raise ValueError(f"outputs differ in length: production {len(production)}, candidate {len(candidate)}")
    if not all(math.isfinite(v) for v in production) or not all(math.isfinite(v) for v in candidate):
        raise ValueError("outputs contain NaN or inf")
    if task == "classification":
        top = top_class(production)
        flip = top_class(candidate) != top
        # Summed left to right (as the batched path sums column by column), on every Python version.
        total = 0.0
        for p, c in zip(production, candidate, strict=True):
            total += abs(p - c)
        tvd = 0.5 * total
        # Rounding can push a sum of probabilities a hair past 1.
        tvd = min(tvd, 1.0)
        divergent = (flip and cfg.flip_is_divergent) or tvd > cfg.tvd_threshold
        return Divergence(
            flip=flip,
            tvd=tvd,
            confidence_change=candidate[top] - production[top],
            abs_diff=None,
            rel_diff=None,
            score=tvd,
            divergent=divergent,
        )
    if task == "regression":
        abs_diffs = [abs(c - p) for p, c in zip(production, candidate, strict=True)]
        rel_diffs = [d / max(abs(p), REL_EPS) for d, p in zip(abs_diffs, production, strict=True)]
        abs_diff, rel_diff = max(abs_diffs), max(rel_diffs)
        # Both margins must be exceeded on the same output (as numpy.isclose's
        # atol + rtol): a small absolute wobble around zero is not divergent,
        # nor is a large absolute change on a large value.
        divergent = any(
            a > cfg.abs_threshold and r > cfg.rel_threshold for a, r in zip(abs_diffs, rel_diffs, strict=True)
        )
        return Divergence(
            flip=None,
            tvd=None,
            confidence_change=None,
            abs_diff=abs_diff,
            rel_diff=rel_diff,
            score=rel_diff,
            divergent=divergent,
        )
    raise ValueError(f"unknown task {task!r}")


_OK, _NAN, _BAD_SHAPE = OUTCOMES.index("ok"), OUTCOMES.index("nan"), OUTCOMES.index("bad_shape")


@dataclass(frozen=True)
class ColumnDivergence:
    """``compare_columns`` for a batch: per row, what the comparator's ``_compare`` gives one pair.

    ``outcome`` is an index into ``OUTCOMES`` (the other model's outcome, or why its values could not
    be compared), -1 where the other model did not run; the rest hold for the rows where ``compared``:
    ``score``, ``divergent``, ``flip`` (False for regression), the top classes of both (classification),
    ``tvd`` (classification) and ``abs_diff`` (regression), 0 elsewhere.
    """

    outcome: np.ndarray
    compared: np.ndarray
    score: np.ndarray
    divergent: np.ndarray
    flip: np.ndarray
    top_production: np.ndarray
    top_other: np.ndarray
    abs_diff: np.ndarray


def _top(values: np.ndarray, widths: np.ndarray, uniform: bool) -> np.ndarray:
    """Per row, the index of the largest of its first ``widths`` values (ties: the lowest index)."""
    import numpy as np

    if not uniform:  # rows narrower than the array: their padding must not win
        values = np.where(np.arange(values.shape[1]) < widths[:, None], values, -np.inf)
    top: np.ndarray = np.argmax(values, axis=1)
    return top


def compare_columns(
    task: str,
    prod_values: np.ndarray,
    prod_widths: np.ndarray,
    other_outcomes: np.ndarray,
    other_values: np.ndarray,
    other_widths: np.ndarray,
    cfg: DivergenceConfig,
) -> ColumnDivergence:
    """Another model's outputs against production's, row by row, for rows where production has values.

    Values are left-aligned and padded with 0.0 past each row's width (-1: no values), as in
    ``OutputColumns``. Exactly the comparator's per-pair rule: an output that is not ok keeps its
    outcome; no values, another length, or non-finite values on either side are ``bad_shape``
    (``nan`` when the other output itself is not finite); a score past ``SCORE_LIMIT`` is ``nan``.
    """
    import numpy as np

    n = len(other_outcomes)
    pv, ov = prod_values, other_values
    width = max(pv.shape[1], ov.shape[1])
    if pv.shape[1] != ov.shape[1]:  # pad the narrower with 0.0
        pv, ov = np.zeros((n, width)), np.zeros((n, width))
        pv[:, : prod_values.shape[1]] = prod_values
        ov[:, : other_values.shape[1]] = other_values
    outcome = other_outcomes.astype(np.int8, copy=True)
    ok = outcome == _OK
    # The padding is finite: only a row's own values count. No values (width -1) is bad_shape.
    other_finite = np.isfinite(ov).all(axis=1)
    comparable = ok & (other_widths == prod_widths) & (prod_widths > 0) & other_finite
    comparable &= np.isfinite(pv).all(axis=1)
    bad = ok & ~comparable
    if bad.any():
        outcome[bad] = np.where(other_finite[bad], _BAD_SHAPE, _NAN)
    idx = np.flatnonzero(comparable)
    if not idx.size:
        zeros, no = np.zeros(n), np.zeros(n, dtype=bool)
        return ColumnDivergence(
            outcome, comparable, zeros, no, no, zeros.astype(np.int64), zeros.astype(np.int64), zeros
        )
    every = idx.size == n
    p, o, w = (pv, ov, prod_widths) if every else (pv[idx], ov[idx], prod_widths[idx])
    uniform = bool((w == width).all())
    top_p = top_o = np.zeros(idx.size, dtype=np.int64)
    abs_diff = np.zeros(idx.size)
    with np.errstate(over="ignore", invalid="ignore"):
        diff = np.abs(o - p)  # 0.0 in the padding of both
        if task == "classification":
            total = np.zeros(idx.size)
            for j in range(width):  # left to right, as pair_divergence sums
                total += diff[:, j]
            s = np.minimum(0.5 * total, 1.0)
            top_p, top_o = _top(p, w, uniform), _top(o, w, uniform)
            f = top_p != top_o
            d = (f & cfg.flip_is_divergent) | (s > cfg.tvd_threshold)
        elif task == "regression":
            rel = diff / np.maximum(np.abs(p), REL_EPS)  # 0.0 in the padding
            s = rel.max(axis=1, initial=0.0)
            abs_diff = diff.max(axis=1, initial=0.0)
            over = (diff > cfg.abs_threshold) & (rel > cfg.rel_threshold)
            if not uniform:
                over &= np.arange(width) < w[:, None]
            d = over.any(axis=1)
            f = np.zeros(idx.size, dtype=bool)
        else:
            raise ValueError(f"unknown task {task!r}")
    broken = ~(np.abs(s) < SCORE_LIMIT)
    if broken.any():
        outcome[idx[broken]] = _NAN
        comparable[idx[broken]] = False
    if every:
        return ColumnDivergence(outcome, comparable, s, d, f, top_p, top_o, abs_diff)

    def spread(x: np.ndarray) -> np.ndarray:
        out = np.zeros(n, dtype=x.dtype)
        out[idx] = x
        return out

    return ColumnDivergence(
        outcome, comparable, spread(s), spread(d), spread(f), spread(top_p), spread(top_o), spread(abs_diff)
    )

"""How far apart two models' answers to one request are.

Sits at the start of the comparator: every finished ``Pair`` from the shadow
worker goes through ``pair_divergence`` (candidate vs production, and noise vs
production for the noise floor) before any aggregate or statistic sees it.

Classification outputs are probability vectors; regression outputs are value
vectors (one entry per output unit). ``score`` is the single number that
thresholds, histograms and annotation priorities use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from shadowd.config import DivergenceConfig

__all__ = ["REL_EPS", "Divergence", "pair_divergence", "top_class"]

# Floor on |production| in the relative difference, so an exact zero from
# production gives a large but finite relative difference instead of inf.
REL_EPS = 1e-9


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
        tvd = 0.5 * sum(abs(p - c) for p, c in zip(production, candidate, strict=True))
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

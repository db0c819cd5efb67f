"""The stratified estimate behind the label-based quality checks.

A paired difference z (accuracy: 1[production right] - 1[candidate right];
loss: candidate loss - production loss) is known only where a label is. Its
mean over the slice is

    theta = sum over cells k of  w_k * mu_k,     w_k = P(a pair falls in cell k),

where a cell is a stratum (flip, divergent, agree: known for every pair
without labels) crossed with the evaluation share the pair was drawn with,
and mu_k is the mean of z over the cell. Within a cell the usable labels
(random feedback, the evaluation sample) are a uniform random sample, so
their mean estimates mu_k without bias; the weights come from every pair.
For top-1 accuracy z = 0 wherever the top classes agree, so only flip cells
count: ``acc_prod - acc_cand = P(flip) * (P(prod right | flip) - P(cand right | flip))``.

The estimand is the difference on the traffic of this window: the weights
are the cell shares of the pairs actually seen, known exactly (post-
stratification, conditional on the strata sizes; the window holds thousands
of pairs, so the traffic's own share would differ from them by far less
than any margin in use). Always valid: each mu_k gets a normal-mixture
confidence sequence at alpha split over the cells (a cell with fewer than
``min_labels`` labels is given the worst case [-bound, bound] instead; labels
drawn without replacement from a cell only make the sequence conservative),
and the intervals combine linearly. They all hold at once with probability
at least 1 - alpha, however often the report is read (a union bound), so the
combination does too. The number of cells is fixed by the config (strata x
possible evaluation shares), as a union bound must be.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from shadowd.compare.checks.base import CheckContext
from shadowd.compare.tally import Moments, QualityTally, cell_key

__all__ = ["Cell", "StratifiedEstimate", "stratified_estimate"]


@dataclass(frozen=True)
class Cell:
    stratum: str
    share: float
    pairs: int
    labels: Moments


@dataclass(frozen=True)
class StratifiedEstimate:
    """theta = sum w_k mu_k with its always-valid bounds as a function of (alpha, scale)."""

    cells: tuple[Cell, ...]
    pairs: int
    n_cells: int  # how many cells the union bound is split over (>= len(cells))
    bound: float  # |z| <= bound
    min_labels: int
    rho: float

    @property
    def labels(self) -> int:
        return sum(c.labels.n for c in self.cells)

    @property
    def value(self) -> float | None:
        """Point estimate from the cells that have labels (a cell without labels counts as 0)."""
        if not self.pairs or not self.labels:
            return None
        return sum(c.pairs / self.pairs * c.labels.mean for c in self.cells if c.labels.n)

    def bounds(self, alpha: float, scale: float) -> tuple[float, float]:
        from shadowd.compare import stats

        if not self.pairs:
            return -self.bound, self.bound
        a_mu = alpha / self.n_cells
        lo = hi = 0.0
        for c in self.cells:
            if not c.pairs:
                continue
            w = c.pairs / self.pairs
            n = c.labels.n * scale
            if n >= self.min_labels:
                sd = max(math.sqrt(c.labels.variance), 1 / math.sqrt(max(c.labels.n, 1)))
                hw = stats.mean_cs_halfwidth(n, sd, a_mu, self.rho)
                m_lo, m_hi = max(c.labels.mean - hw, -self.bound), min(c.labels.mean + hw, self.bound)
            elif math.isinf(self.bound):
                return -math.inf, math.inf
            else:
                m_lo, m_hi = -self.bound, self.bound
            lo += w * m_lo
            hi += w * m_hi
        return lo, hi


def stratified_estimate(
    quality: QualityTally,
    strata: Iterable[str],
    which: str,
    ctx: CheckContext,
    bound: float,
    min_labels: int,
) -> StratifiedEstimate:
    """The estimate of ``which`` ('accuracy' or 'loss') over the cells of ``strata``.

    Cells of other strata still count in the pair total (their z is known to
    be 0: e.g. agreeing pairs for accuracy).
    """
    wanted = tuple(strata)
    cells = tuple(
        Cell(stratum, share, c.pairs, c.accuracy if which == "accuracy" else c.loss)
        for (stratum, share), c in sorted(quality.cells.items())
        if stratum in wanted
    )
    possible = {cell_key(s, e) for s in wanted if s != "agree" for e in ctx.evaluation_shares}
    possible |= {cell_key("agree", 0.0)} if "agree" in wanted else set()
    possible |= {cell_key(c.stratum, c.share) for c in cells}
    return StratifiedEstimate(cells, quality.pairs, max(len(possible), 1), bound, min_labels, ctx.rho_labels)

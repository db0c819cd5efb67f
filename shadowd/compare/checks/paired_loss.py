"""Check kind ``paired_loss``: mean of candidate loss minus production loss on the same labelled requests."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shadowd.compare.checks.base import CheckBase, CheckContext, Evidence, mean_bounds, mean_sd
from shadowd.compare.tally import SliceTally

__all__ = ["PairedLossCheck"]


class PairedLossCheck(CheckBase):
    """With labels: mean of candidate loss minus production loss on the same requests."""

    type: Literal["paired_loss"] = Field(description="Mean paired loss difference candidate minus production.")
    max_increase: float = Field(
        0.01, ge=0, description="Largest allowed mean loss increase per example (a non-inferiority margin)."
    )

    def evidence(self, tally: SliceTally, ctx: CheckContext) -> Evidence:
        from shadowd.compare import stats

        lab = tally.labels
        m = lab.loss_diff
        sd = mean_sd(m)
        return Evidence(
            n=m.n,
            unit="labels",
            value=m.mean if m.n else None,
            threshold=self.max_increase,
            label="mean loss increase (candidate - production)",
            fails=lambda a, s: mean_bounds(m.mean, sd, m.n, a, s, ctx.rho)[0] > self.max_increase,
            passes=lambda a, s: mean_bounds(m.mean, sd, m.n, a, s, ctx.rho)[1] <= self.max_increase,
            interval=lambda a: mean_bounds(m.mean, sd, m.n, a, 1.0, ctx.rho),
            extra={
                "mean_loss": {role: mm.mean for role, mm in lab.loss.items()} if m.n else None,
                "wilcoxon_p_fixed_n": stats.wilcoxon_p(lab.diff_sample) if ctx.explain else None,
            },
        )

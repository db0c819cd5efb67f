"""Check kind ``mean_divergence``: mean divergence score against production, beyond the noise floor."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shadowd.compare.checks.base import CheckContext, mean_bounds, mean_sd
from shadowd.compare.checks.noise_aware import Measure, NoiseAwareCheck
from shadowd.compare.tally import FloorTally, SliceTally

__all__ = ["MeanDivergenceCheck"]


class MeanDivergenceCheck(NoiseAwareCheck):
    """Mean divergence score (total variation distance; relative difference for regression)."""

    type: Literal["mean_divergence"] = Field(
        description="Mean divergence against production, beyond the noise or churn floor."
    )

    def measure(self, tally: SliceTally, floor: FloorTally | None, ctx: CheckContext) -> Measure:
        cand = tally.candidate.score
        flo = floor if floor is not None else FloorTally()
        c_sd, f_sd = mean_sd(cand), mean_sd(flo.score)

        def candidate(a: float, s: float, upper: bool) -> float:
            return mean_bounds(cand.mean, c_sd, tally.candidate.compared, a, s, ctx.rho)[int(upper)]

        def floor_bound(a: float, s: float, upper: bool) -> float:
            return mean_bounds(flo.score.mean, f_sd, flo.compared, a, s, ctx.rho)[int(upper)]

        unit = " (tvd)" if ctx.task == "classification" else " (relative difference)"
        return Measure(
            label="mean divergence" + unit,
            value=cand.mean if tally.candidate.compared else None,
            floor=flo.score.mean if floor is not None and flo.compared else None,
            candidate=candidate,
            noise=floor_bound,
        )

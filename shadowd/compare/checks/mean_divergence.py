"""Check kind ``mean_divergence``: mean divergence score against production, beyond the noise floor."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shadowd.compare.checks.base import CheckContext, mean_bounds, mean_sd
from shadowd.compare.checks.noise_aware import Measure, NoiseAwareCheck
from shadowd.compare.tally import SliceTally

__all__ = ["MeanDivergenceCheck"]


class MeanDivergenceCheck(NoiseAwareCheck):
    """Mean divergence score (total variation distance; relative difference for regression)."""

    type: Literal["mean_divergence"] = Field(description="Mean divergence against production, beyond the noise floor.")

    def measure(self, tally: SliceTally, ctx: CheckContext, use_noise: bool) -> Measure:
        cand, noise = tally.candidate.score, tally.noise.score
        c_sd, n_sd = mean_sd(cand), mean_sd(noise)

        def candidate(a: float, s: float, upper: bool) -> float:
            return mean_bounds(cand.mean, c_sd, tally.candidate.compared, a, s, ctx.rho)[int(upper)]

        def noise_bound(a: float, s: float, upper: bool) -> float:
            return mean_bounds(noise.mean, n_sd, tally.noise.compared, a, s, ctx.rho)[int(upper)]

        unit = " (tvd)" if ctx.task == "classification" else " (relative difference)"
        return Measure(
            label="mean divergence" + unit,
            value=cand.mean if tally.candidate.compared else None,
            floor=noise.mean if use_noise else None,
            candidate=candidate,
            noise=noise_bound,
        )

"""Check kind ``flip_rate``: share of pairs whose top class differs from production's, beyond the noise floor."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from shadowd.compare.checks.base import CheckContext, Task, rate_hi, rate_lo
from shadowd.compare.checks.noise_aware import Measure, NoiseAwareCheck
from shadowd.compare.tally import SliceTally

__all__ = ["FlipRateCheck"]


class FlipRateCheck(NoiseAwareCheck):
    """Classification: share of pairs whose top class differs from production's."""

    tasks: ClassVar[frozenset[Task]] = frozenset({"classification"})
    type: Literal["flip_rate"] = Field(description="Flip rate against production, beyond the noise floor.")

    def measure(self, tally: SliceTally, ctx: CheckContext, use_noise: bool) -> Measure:
        cand, noise = tally.candidate, tally.noise

        def candidate(a: float, s: float, upper: bool) -> float:
            return (rate_hi if upper else rate_lo)(cand.flips, cand.compared, a, s)

        def noise_bound(a: float, s: float, upper: bool) -> float:
            return (rate_hi if upper else rate_lo)(noise.flips, noise.compared, a, s)

        return Measure(
            label="flip rate",
            value=cand.flips / cand.compared if cand.compared else None,
            floor=noise.flips / noise.compared if use_noise else None,
            candidate=candidate,
            noise=noise_bound,
        )

"""Check kind ``flip_rate``: share of pairs whose top class differs from production's, beyond the floor."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from shadowd.compare.checks.base import CheckContext, Task, rate_hi, rate_lo
from shadowd.compare.checks.noise_aware import Measure, NoiseAwareCheck
from shadowd.compare.tally import FloorTally, SliceTally

__all__ = ["FlipRateCheck"]


class FlipRateCheck(NoiseAwareCheck):
    """Classification: share of pairs whose top class differs from production's."""

    tasks: ClassVar[frozenset[Task]] = frozenset({"classification"})
    type: Literal["flip_rate"] = Field(description="Flip rate against production, beyond the noise or churn floor.")

    def measure(self, tally: SliceTally, floor: FloorTally | None, ctx: CheckContext) -> Measure:
        cand = tally.candidate
        flo = floor if floor is not None else FloorTally()

        def candidate(a: float, s: float, upper: bool) -> float:
            return (rate_hi if upper else rate_lo)(cand.flips, cand.compared, a, s)

        def floor_bound(a: float, s: float, upper: bool) -> float:
            return (rate_hi if upper else rate_lo)(flo.flips, flo.compared, a, s)

        return Measure(
            label="flip rate",
            value=cand.flips / cand.compared if cand.compared else None,
            floor=flo.flips / flo.compared if floor is not None and flo.compared else None,
            candidate=candidate,
            noise=floor_bound,
        )

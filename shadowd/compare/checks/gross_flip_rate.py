"""Check kind ``gross_flip_rate``: a flip rate no retrain produces, a broken candidate (operational)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from shadowd.compare.checks.base import CheckBase, CheckContext, Evidence, Task, rate_bounds, rate_hi, rate_lo
from shadowd.compare.tally import SliceTally

__all__ = ["GrossFlipRateCheck"]


class GrossFlipRateCheck(CheckBase):
    """Classification: the candidate changes the top class so often that something is broken
    (a preprocessing step, a label mapping), whatever the labels say later."""

    tasks: ClassVar[frozenset[Task]] = frozenset({"classification"})
    type: Literal["gross_flip_rate"] = Field(description="Flip rate against production, against an absolute bound.")
    max_rate: float = Field(
        0.5, gt=0, lt=1, description="Largest flip rate any retrain of a working model could plausibly show."
    )

    def evidence(self, tally: SliceTally, ctx: CheckContext) -> Evidence:
        s, n = tally.candidate.flips, tally.candidate.compared
        return Evidence(
            n=n,
            unit="pairs",
            value=s / n if n else None,
            threshold=self.max_rate,
            label="flip rate (gross breakage bound)",
            fails=lambda a, sc: rate_lo(s, n, a, sc) > self.max_rate,
            passes=lambda a, sc: rate_hi(s, n, a, sc) <= self.max_rate,
            interval=lambda a: rate_bounds(s, n, a, 1.0),
            extra={"flips": s},
        )

"""Check kind ``candidate_failure_rate``: mirrored requests on which the candidate gave no usable answer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shadowd.compare.checks.base import CheckBase, CheckContext, Evidence, rate_bounds, rate_hi, rate_lo
from shadowd.compare.tally import SliceTally

__all__ = ["FailureRateCheck"]

Failure = Literal["error", "timeout", "nan", "bad_shape"]
_DEFAULT_FAILURES: list[Failure] = ["error", "nan", "bad_shape"]


class FailureRateCheck(CheckBase):
    """Share of mirrored requests on which the candidate gave no usable answer."""

    type: Literal["candidate_failure_rate"] = Field(description="Candidate failures among mirrored requests.")
    outcomes: list[Failure] = Field(
        default_factory=lambda: _DEFAULT_FAILURES.copy(), min_length=1, description="Outcomes counted as failures."
    )
    max_rate: float = Field(0.01, ge=0, lt=1, description="Largest allowed failure rate.")

    def evidence(self, tally: SliceTally, ctx: CheckContext) -> Evidence:
        n = sum(tally.candidate_outcomes.values())
        s = sum(tally.candidate_outcomes.get(o, 0) for o in self.outcomes)
        return Evidence(
            n=n,
            unit="pairs",
            value=s / n if n else None,
            threshold=self.max_rate,
            label=f"candidate {'/'.join(self.outcomes)} rate",
            fails=lambda a, sc: rate_lo(s, n, a, sc) > self.max_rate,
            passes=lambda a, sc: rate_hi(s, n, a, sc) <= self.max_rate,
            interval=lambda a: rate_bounds(s, n, a, 1.0),
            extra={"failures": s},
        )

"""Check kind ``latency_ratio``: a candidate latency quantile over production's."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from shadowd.compare.checks.base import CheckBase, CheckContext, Evidence
from shadowd.compare.tally import SliceTally

__all__ = ["LatencyRatioCheck"]


def _never(alpha: float, scale: float) -> bool:
    return False


class LatencyRatioCheck(CheckBase):
    """Candidate latency quantile over production's."""

    type: Literal["latency_ratio"] = Field(description="Latency quantile ratio candidate / production.")
    quantile: float = Field(0.99, gt=0, lt=1, description="Which latency quantile, e.g. 0.5 or 0.99.")
    max_ratio: float = Field(2.0, gt=0, description="Largest allowed candidate / production ratio of that quantile.")

    def evidence(self, tally: SliceTally, ctx: CheckContext) -> Evidence:
        from shadowd.compare import stats

        cand, prod = tally.latency_s.get("candidate"), tally.latency_s.get("production")
        q = self.quantile
        if cand is None or prod is None or cand.n == 0 or prod.n == 0:
            return Evidence(
                0,
                "pairs",
                None,
                self.max_ratio,
                f"p{q * 100:g} latency ratio",
                _never,
                _never,
                lambda a: (0.0, math.inf),
            )
        cv, cc = cand.cumulative()
        pv, pc = prod.cumulative()

        def bounds(a: float, s: float) -> tuple[float, float]:
            c_lo, c_hi = stats.quantile_cs(cv, cc, q, a / 2, s)
            p_lo, p_hi = stats.quantile_cs(pv, pc, q, a / 2, s)
            lo = c_lo / p_hi if p_hi > 0 else math.inf
            hi = c_hi / p_lo if p_lo > 0 else math.inf
            return lo, hi

        pq, cq = prod.quantile(q), cand.quantile(q)
        return Evidence(
            n=min(cand.n, prod.n),
            unit="pairs",
            value=cq / pq if pq and cq is not None else None,
            threshold=self.max_ratio,
            label=f"p{q * 100:g} latency ratio candidate/production",
            fails=lambda a, s: bounds(a, s)[0] > self.max_ratio,
            passes=lambda a, s: bounds(a, s)[1] <= self.max_ratio,
            interval=lambda a: bounds(a, 1.0),
            extra={"candidate_s": cq, "production_s": pq},
        )

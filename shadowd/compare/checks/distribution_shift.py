"""Check kind ``distribution_shift``: the largest change of one class's predicted share, paired."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field

from shadowd.compare.checks.base import CheckBase, CheckContext, Evidence, Role, Task
from shadowd.compare.tally import SliceTally

__all__ = ["DistributionShiftCheck"]


class DistributionShiftCheck(CheckBase):
    """Classification: change in any class's share of predictions, paired over the same requests."""

    tasks: ClassVar[frozenset[Task]] = frozenset({"classification"})
    role: ClassVar[Role] = "divergence"
    required: bool = Field(
        False,
        description="false: a shift beyond max_shift puts the slice under review, never FAILs; true: it FAILs.",
    )
    type: Literal["distribution_shift"] = Field(description="Largest change in one class's predicted share.")
    max_shift: float = Field(0.05, gt=0, le=1, description="Largest allowed change of one class's predicted share.")

    def evidence(self, tally: SliceTally, ctx: CheckContext) -> Evidence:
        """Per class k, the paired difference 1[candidate says k] - 1[production says k]; its mean is the change."""
        from shadowd.compare import stats

        classes_seen = tally.candidate.classes
        n = sum(classes_seen.values())
        k_max = 1 + max((max(p, c) for p, c in classes_seen), default=0)
        prod_counts, cand_counts = [0] * k_max, [0] * k_max
        gained, lost = [0] * k_max, [0] * k_max
        for (p, c), cnt in classes_seen.items():
            prod_counts[p] += cnt
            cand_counts[c] += cnt
            if p != c:
                gained[c] += cnt
                lost[p] += cnt
        shifts, sds = [], []
        for k in range(k_max):
            d = (gained[k] - lost[k]) / n if n else 0.0
            var = ((gained[k] + lost[k]) / n - d * d) * n / (n - 1) if n > 1 else 0.0
            shifts.append(d)
            sds.append(max(math.sqrt(max(var, 0.0)), 1 / math.sqrt(max(n, 1))))
        classes = max(k_max, 1)

        def bounds(a: float, s: float) -> tuple[float, float]:
            # Bonferroni over classes: every class's interval holds at once.
            hws = [stats.mean_cs_halfwidth(n * s, sd, a / classes, ctx.rho) for sd in sds]
            lo = max((abs(d) - hw for d, hw in zip(shifts, hws, strict=True)), default=0.0)
            hi = max((abs(d) + hw for d, hw in zip(shifts, hws, strict=True)), default=math.inf)
            return max(lo, 0.0), hi

        worst = max(range(k_max), key=lambda k: abs(shifts[k])) if k_max and n else None
        return Evidence(
            n=n,
            unit="pairs",
            value=abs(shifts[worst]) if worst is not None else None,
            threshold=self.max_shift,
            label="largest class-share change",
            fails=lambda a, s: bounds(a, s)[0] > self.max_shift,
            passes=lambda a, s: bounds(a, s)[1] <= self.max_shift,
            interval=lambda a: bounds(a, 1.0),
            extra={
                "worst_class": worst,
                "class_share_change": shifts,
                "chi2_p_fixed_n": stats.chi2_shift_p(prod_counts, cand_counts) if ctx.explain else None,
            },
        )

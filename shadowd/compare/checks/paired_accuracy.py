"""Check kind ``paired_accuracy``: production accuracy minus candidate accuracy on the same labelled requests."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field

from shadowd.compare.checks.base import CheckBase, CheckContext, Evidence, Task, mean_bounds
from shadowd.compare.tally import SliceTally

__all__ = ["PairedAccuracyCheck"]


class PairedAccuracyCheck(CheckBase):
    """Classification with labels: production accuracy minus candidate accuracy on the same requests."""

    tasks: ClassVar[frozenset[Task]] = frozenset({"classification"})
    type: Literal["paired_accuracy"] = Field(description="Accuracy drop, paired (McNemar's discordant pairs).")
    max_drop: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Largest allowed accuracy drop (production minus candidate); a non-inferiority margin: "
        "with 0 an equally good candidate can never pass.",
    )

    def evidence(self, tally: SliceTally, ctx: CheckContext) -> Evidence:
        """Mean of 1[production right] - 1[candidate right] over labelled pairs: the accuracy drop."""
        from shadowd.compare import stats

        lab = tally.labels
        n = lab.both_correct + lab.prod_only_correct + lab.cand_only_correct + lab.neither_correct
        b, c = lab.prod_only_correct, lab.cand_only_correct
        drop = (b - c) / n if n else 0.0
        var = ((b + c) / n - drop * drop) * n / (n - 1) if n > 1 else 0.0
        sd = max(math.sqrt(max(var, 0.0)), 1 / math.sqrt(max(n, 1)))
        acc = None
        if n:
            acc = {"production": (lab.both_correct + b) / n, "candidate": (lab.both_correct + c) / n}
        return Evidence(
            n=n,
            unit="labels",
            value=drop if n else None,
            threshold=self.max_drop,
            label="accuracy drop (production - candidate)",
            fails=lambda a, s: mean_bounds(drop, sd, n, a, s, ctx.rho)[0] > self.max_drop,
            passes=lambda a, s: mean_bounds(drop, sd, n, a, s, ctx.rho)[1] <= self.max_drop,
            interval=lambda a: mean_bounds(drop, sd, n, a, 1.0, ctx.rho),
            extra={
                "accuracy": acc,
                "discordant": {"production_only": b, "candidate_only": c},
                "mcnemar_mid_p_fixed_n": stats.mcnemar_mid_p(b, c) if ctx.explain else None,
            },
        )

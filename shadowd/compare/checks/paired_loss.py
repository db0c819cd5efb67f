"""Check kind ``paired_loss``: mean candidate loss minus production loss, from labels whose selection is
known, stratified by disagreement (``stratified``)."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field

from shadowd.compare.checks.base import CheckBase, CheckContext, Evidence, Role
from shadowd.compare.checks.stratified import stratified_estimate
from shadowd.compare.loss import PROB_FLOOR
from shadowd.compare.tally import SliceTally

__all__ = ["PairedLossCheck"]


class PairedLossCheck(CheckBase):
    """With labels: is the candidate's mean loss higher than production's by more than the margin?
    Every stratum needs labels (losses differ even where the top classes agree)."""

    role: ClassVar[Role] = "quality"
    type: Literal["paired_loss"] = Field(description="Mean paired loss difference candidate minus production.")
    min_samples: int = Field(
        30,
        ge=1,
        description="Labels a cell (stratum x evaluation share) needs before its mean is trusted; with fewer, "
        "the worst case is assumed (for regression: unbounded, so the check waits).",
    )
    max_increase: float = Field(
        0.01, ge=0, description="Largest allowed mean loss increase per example (a non-inferiority margin)."
    )

    def evidence(self, tally: SliceTally, ctx: CheckContext) -> Evidence:
        # Classification loss is -log(p) with p clipped at PROB_FLOOR: differences are bounded.
        bound = -math.log(PROB_FLOOR) if ctx.task == "classification" else math.inf
        strata = ["flip", "divergent", "agree"] if ctx.task == "classification" else ["divergent", "agree"]
        est = stratified_estimate(tally.quality, strata, "loss", ctx, bound, self.min_samples)
        return Evidence(
            n=est.labels,
            unit="labels",
            value=est.value,
            threshold=self.max_increase,
            label="mean loss increase (candidate - production)",
            fails=lambda a, s: est.bounds(a, s)[0] > self.max_increase,
            passes=lambda a, s: est.bounds(a, s)[1] <= self.max_increase,
            interval=lambda a: est.bounds(a, 1.0),
            extra={
                "cells": {f"{c.stratum}@{c.share:g}": {"pairs": c.pairs, "labels": c.labels.n} for c in est.cells},
            },
            ready=est.pairs > 0,
        )

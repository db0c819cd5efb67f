"""Check kind ``paired_accuracy``: production accuracy minus candidate accuracy, from labels whose
selection is known, stratified by disagreement (``stratified``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from shadowd.compare.checks.base import CheckBase, CheckContext, Evidence, Role, Task
from shadowd.compare.checks.stratified import stratified_estimate
from shadowd.compare.tally import SliceTally

__all__ = ["PairedAccuracyCheck"]


class PairedAccuracyCheck(CheckBase):
    """Classification with labels: is the candidate's top-1 accuracy lower than production's by more than
    the margin? Only flipped pairs can differ, so only their labels are needed."""

    tasks: ClassVar[frozenset[Task]] = frozenset({"classification"})
    role: ClassVar[Role] = "quality"
    type: Literal["paired_accuracy"] = Field(description="Accuracy drop, stratified by flips.")
    min_samples: int = Field(
        30,
        ge=1,
        description="Labels a cell (stratum x evaluation share) needs before its mean is trusted; with fewer, "
        "the worst case is assumed (the check stays valid, just undecided).",
    )
    max_drop: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Largest allowed accuracy drop (production minus candidate); a non-inferiority margin: "
        "with 0 an equally good candidate can never pass.",
    )

    def evidence(self, tally: SliceTally, ctx: CheckContext) -> Evidence:
        est = stratified_estimate(tally.quality, ["flip"], "accuracy", ctx, 1.0, self.min_samples)
        flips = sum(c.pairs for c in est.cells)
        labelled = [c for c in est.cells if c.labels.n]
        conditional = sum(c.labels.mean * c.labels.n for c in labelled) / est.labels if est.labels else None
        return Evidence(
            n=est.labels,
            unit="labels",
            value=est.value,
            threshold=self.max_drop,
            label="accuracy drop (production - candidate)",
            fails=lambda a, s: est.bounds(a, s)[0] > self.max_drop,
            passes=lambda a, s: est.bounds(a, s)[1] <= self.max_drop,
            interval=lambda a: est.bounds(a, 1.0),
            extra={
                "flip_rate": flips / est.pairs if est.pairs else None,
                "drop_given_flip": conditional,
                "labels_on_flips": est.labels,
                "cells": {f"{c.stratum}@{c.share:g}": {"pairs": c.pairs, "labels": c.labels.n} for c in est.cells},
            },
            ready=est.pairs > 0,
        )

"""Statistical checks: one module per kind, each holding its config model and its evaluation.

The tagged union ``CheckConfig`` below is the registry: the config tree
(``checks:``), its JSON schema and the gate all follow it, so a new check kind
is one new module (a ``CheckBase`` subclass with ``type: Literal[...]`` and an
``evidence`` method), its tests, and one member here.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from shadowd.compare.checks.base import CheckBase, CheckContext, Evidence, more_needed, scale_needed
from shadowd.compare.checks.distribution_shift import DistributionShiftCheck
from shadowd.compare.checks.failure_rate import FailureRateCheck
from shadowd.compare.checks.flip_rate import FlipRateCheck
from shadowd.compare.checks.gross_flip_rate import GrossFlipRateCheck
from shadowd.compare.checks.latency_ratio import LatencyRatioCheck
from shadowd.compare.checks.mean_divergence import MeanDivergenceCheck
from shadowd.compare.checks.paired_accuracy import PairedAccuracyCheck
from shadowd.compare.checks.paired_loss import PairedLossCheck
from shadowd.records import OVERALL

__all__ = [
    "CheckBase",
    "CheckConfig",
    "CheckContext",
    "DistributionShiftCheck",
    "Evidence",
    "FailureRateCheck",
    "FlipRateCheck",
    "GrossFlipRateCheck",
    "LatencyRatioCheck",
    "MeanDivergenceCheck",
    "PairedAccuracyCheck",
    "PairedLossCheck",
    "default_checks",
    "more_needed",
    "scale_needed",
]

# The registry of check kinds, chosen by `type:` in the config.
CheckConfig = Annotated[
    FlipRateCheck
    | MeanDivergenceCheck
    | DistributionShiftCheck
    | FailureRateCheck
    | GrossFlipRateCheck
    | LatencyRatioCheck
    | PairedAccuracyCheck
    | PairedLossCheck,
    Field(discriminator="type"),
]


def default_checks(task: str = "classification") -> list[CheckConfig]:
    """The checks a config without ``checks:`` gets: operational bounds that FAIL a broken candidate,
    divergence checks that put slices under review, and the label-based quality check that decides
    "worse" (accuracy for classification, loss for regression). Kinds that do not fit the task are
    skipped at evaluation."""
    return [
        FlipRateCheck(type="flip_rate", name="flip_rate"),
        MeanDivergenceCheck(type="mean_divergence", name="mean_divergence"),
        DistributionShiftCheck(type="distribution_shift", name="distribution_shift"),
        FailureRateCheck(type="candidate_failure_rate", name="error_rate"),
        FailureRateCheck(type="candidate_failure_rate", name="timeout_rate", outcomes=["timeout"]),
        LatencyRatioCheck(type="latency_ratio", name="latency_p99_ratio", min_samples=1000, slices=[OVERALL]),
        GrossFlipRateCheck(type="gross_flip_rate", name="gross_flip_rate"),
        PairedAccuracyCheck(type="paired_accuracy", name="accuracy"),
        PairedLossCheck(type="paired_loss", name="loss", required=task == "regression"),
    ]

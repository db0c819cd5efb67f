"""Per-example loss once a label arrives (delayed ground truth).

Classification: negative log likelihood of the labelled class, with the
probability clipped so one confident miss costs a large but finite loss.
Regression: squared error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["LOSS_CAP", "PROB_FLOOR", "example_loss"]

PROB_FLOOR = 1e-7
LOSS_CAP = 1e300


def example_loss(task: str, values: Sequence[float], label: float | int | Sequence[float]) -> float:
    if task == "classification":
        if not isinstance(label, int | float):
            raise ValueError(f"label {label!r} is a list; classification takes a class index")
        k = int(label)
        if k != label or not 0 <= k < len(values):
            raise ValueError(f"label {label!r} is not a class index in [0, {len(values) - 1}]")
        return -math.log(min(max(float(values[k]), PROB_FLOOR), 1.0))
    if task == "regression":
        target = [float(label)] if isinstance(label, (int, float)) else [float(x) for x in label]
        if len(target) != len(values):
            raise ValueError(f"label has {len(target)} values; the model returns {len(values)}")
        mean_sq = sum((float(v) - t) * (float(v) - t) for v, t in zip(values, target, strict=True)) / len(target)
        return min(mean_sq, LOSS_CAP)  # an absurd output costs a huge loss, not an inf that breaks JSON
    raise ValueError(f"unknown task {task!r}")

"""Per-example loss once a label arrives (delayed ground truth).

Classification: negative log likelihood of the labelled class, with the
probability clipped so one confident miss costs a large but finite loss.
Regression: squared error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["example_loss", "PROB_FLOOR"]

PROB_FLOOR = 1e-7


def example_loss(task: str, values: Sequence[float], label: float | int | Sequence[float]) -> float:
    if task == "classification":
        k = int(label)
        if k != label or not 0 <= k < len(values):
            raise ValueError(f"label {label!r} is not a class index in [0, {len(values) - 1}]")
        return -math.log(min(max(float(values[k]), PROB_FLOOR), 1.0))
    if task == "regression":
        target = [float(label)] if isinstance(label, (int, float)) else [float(x) for x in label]
        if len(target) != len(values):
            raise ValueError(f"label has {len(target)} values; the model returns {len(values)}")
        return sum((float(v) - t) ** 2 for v, t in zip(values, target)) / len(target)
    raise ValueError(f"unknown task {task!r}")

"""What every model kind's config shares, and the interface a kind implements.

A kind module subclasses ``ModelBase`` with ``kind: Literal[...]``, its own
fields, and ``load()``. Heavy imports (torch, numpy) happen inside ``load``,
so the config tree loads with pydantic alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field

from shadowd.configbase import Strict

__all__ = ["ModelBase", "Predict"]

# One batch (a numpy array of n examples) in, n outputs out (anything numpy can read).
Predict = Callable[[Any], Any]


class ModelBase(Strict):
    """How to load one model and what its inputs and outputs look like (fields every kind has)."""

    name: str = Field(description="Model name shown in reports and metrics labels' help.", min_length=1)
    input_shape: list[Annotated[int, Field(gt=0)]] = Field(
        description="Shape of one example's inputs, e.g. [64]; requests with another shape get a 422."
    )
    output: Literal["probabilities", "logits", "values"] = Field(
        "probabilities",
        description="What the model returns per example: class probabilities, logits (softmaxed by shadowd), "
        "or regression values.",
    )
    max_batch_size: int = Field(1, ge=1, le=1024, description="Ray Serve batching: examples per model call.")
    batch_wait_timeout_s: float = Field(
        0.002, ge=0, le=1, description="Ray Serve batching: longest wait to fill a batch."
    )

    def load(self, torch_threads: int) -> Predict:
        """The model's batch function; raises ModelError naming the model and the cause."""
        raise NotImplementedError

    def with_base_dir(self, base_dir: Path) -> Self:
        """This config with its relative paths resolved against the config file's folder."""
        return self

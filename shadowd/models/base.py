"""What every model kind shares: its common config, the loaded model, output checks.

Both roles go through ``LoadedModel.predict`` so production and candidate
outputs have the same form: a float64 array of shape (n, k) holding class
probabilities (classification; logits are softmaxed here) or output values
(regression). ``check_rows`` says, per example, whether an output can be
compared at all (finite, right width).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import numpy as np
from pydantic import Field

from shadowd.configbase import Strict

__all__ = ["LoadedModel", "ModelBase", "Predict", "check_rows", "load_model"]

Predict = Callable[[np.ndarray], Any]


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


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


class LoadedModel:
    """One model, callable on a batch of examples of ``cfg.input_shape``."""

    def __init__(self, cfg: ModelBase, predict: Predict):
        self.cfg = cfg
        self.name = cfg.name
        self.input_shape = tuple(cfg.input_shape)
        self._predict = predict

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run the model; returns (n, k) float64. Raises whatever the model raises."""
        raw = self._predict(batch)
        if hasattr(raw, "detach"):  # a torch tensor from a python target
            raw = raw.detach().cpu().numpy()
        out = np.asarray(raw, dtype=np.float64)
        if out.ndim == 1:
            out = out.reshape(len(batch), -1) if out.size == len(batch) else out.reshape(1, -1)
        if out.ndim == 2 and self.cfg.output == "logits":
            out = _softmax(out)
        return out


def load_model(cfg: ModelBase, torch_threads: int = 1) -> LoadedModel:
    """Load a model as its config says; ModelError names the model and the cause."""
    return LoadedModel(cfg, cfg.load(torch_threads))


def check_rows(out: np.ndarray, n: int, width: int | None) -> tuple[list[str], str | None]:
    """Per-example outcome ('ok', 'nan', 'bad_shape') of a batch output, and a reason.

    ``width`` is the expected number of values per example (production's), or
    None to accept any width.
    """
    if out.ndim != 2 or out.shape[0] != n or (width is not None and out.shape[1] != width):
        want = f"({n}, {width if width is not None else 'k'})"
        return ["bad_shape"] * n, f"output shape {tuple(out.shape)}, expected {want}"
    finite = np.isfinite(out).all(axis=1)
    if finite.all():
        return ["ok"] * n, None
    return ["ok" if f else "nan" for f in finite], "output has NaN or inf"

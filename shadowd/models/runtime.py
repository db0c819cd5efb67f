"""Loaded models: one call shape for every kind and role.

Both roles go through ``LoadedModel.predict`` so production and candidate
outputs have the same form: a float64 array of shape (n, k) holding class
probabilities (classification; logits are softmaxed here) or output values
(regression). ``check_rows`` says, per example, whether an output can be
compared at all (finite, right width).
"""

from __future__ import annotations

import numpy as np

from shadowd.models.base import ModelBase, Predict
from shadowd.records import Outcome

__all__ = ["LoadedModel", "check_rows", "load_model"]


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


def check_rows(out: np.ndarray, n: int, width: int | None) -> tuple[list[Outcome], str | None]:
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
    outcomes: list[Outcome] = ["ok" if f else "nan" for f in finite]
    return outcomes, "output has NaN or inf"

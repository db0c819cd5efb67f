"""Model adapters: load a model from config and call it on a batch.

Both roles go through ``LoadedModel.predict`` so production and candidate
outputs have the same form: a float64 array of shape (n, k) holding class
probabilities (classification; logits are softmaxed here) or output values
(regression). ``check_rows`` says, per example, whether an output can be
compared at all (finite, right width).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from shadowd.config import ModelConfig
from shadowd.errors import ModelError

__all__ = ["LoadedModel", "check_rows", "load_model"]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _import_target(target: str) -> Any:
    module_name, _, attr_path = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(f"cannot import module {module_name!r} for target {target!r}: {err}") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelError(f"target {target!r}: {module_name} has no attribute {attr_path!r}") from None
    return obj


def _load_python(cfg: ModelConfig) -> Callable[[np.ndarray], Any]:
    obj = _import_target(cfg.target or "")
    if inspect.isclass(obj) or cfg.kwargs:
        obj = obj(**cfg.kwargs)
    predict = getattr(obj, "predict", obj)
    if not callable(predict):
        raise ModelError(
            f"target {cfg.target!r} gives {type(obj).__name__}, which has no predict() and is not callable"
        )
    return predict


def _load_torchscript(cfg: ModelConfig, torch_threads: int) -> Callable[[np.ndarray], Any]:
    import torch

    torch.set_num_threads(torch_threads)
    try:
        module = torch.jit.load(str(cfg.path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as err:
        raise ModelError(f"cannot load TorchScript model {cfg.name!r} from {cfg.path}: {err}") from None
    module.eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    return predict


class LoadedModel:
    """One model, callable on a batch of examples of ``cfg.input_shape``."""

    def __init__(self, cfg: ModelConfig, predict: Callable[[np.ndarray], Any]):
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


def load_model(cfg: ModelConfig, torch_threads: int = 1) -> LoadedModel:
    """Load a model as its config says; ModelError names the model and the cause."""
    if cfg.kind == "torchscript":
        return LoadedModel(cfg, _load_torchscript(cfg, torch_threads))
    return LoadedModel(cfg, _load_python(cfg))


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

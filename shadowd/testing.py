"""Small models for trying a shadowd setup: a deterministic toy classifier,
a sleepy one (latency without CPU), and a faulty candidate that raises,
hangs, returns NaN or the wrong shape. Reference them from a config as
``shadowd.testing:ToyClassifier`` etc.; the test suite and the benchmark do.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = ["ControlledFaultyModel", "FaultyModel", "SleepyModel", "ToyClassifier", "ToyRegressor", "WrongWhenDark"]


class ToyClassifier:
    """softmax(x @ W) with W fixed by ``seed``: deterministic, cheap, real probabilities."""

    def __init__(
        self, n_features: int = 8, n_classes: int = 4, seed: int = 0, temperature: float = 1.0, retrain: int = 0
    ):
        """``retrain`` > 0: the same model retrained (its weights moved by a little noise of that seed), which
        disagrees with it on a minority of inputs."""
        self.w = np.random.default_rng(seed).normal(size=(n_features, n_classes)) / temperature
        if retrain:
            self.w += 0.3 * np.random.default_rng(1000 + retrain).normal(size=self.w.shape) / temperature

    def predict(self, batch: np.ndarray) -> np.ndarray:
        z = np.asarray(batch, dtype=np.float64).reshape(len(batch), -1) @ self.w
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probs: np.ndarray = e / e.sum(axis=1, keepdims=True)
        return probs


class ToyRegressor:
    def __init__(self, n_features: int = 8, seed: int = 0):
        self.w = np.random.default_rng(seed).normal(size=(n_features, 1))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, dtype=np.float64).reshape(len(batch), -1) @ self.w


class SleepyModel(ToyClassifier):
    """A ToyClassifier that takes ``latency_ms`` per call without using CPU (``busy=False``) or with it."""

    def __init__(self, latency_ms: float = 5.0, busy: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.latency_s = latency_ms / 1000
        self.busy = busy

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self.busy:
            end = time.perf_counter() + self.latency_s
            while time.perf_counter() < end:
                pass
        else:
            time.sleep(self.latency_s)
        return super().predict(batch)


class FaultyModel(ToyClassifier):
    """A candidate that misbehaves on every call: mode raise | hang | nan | wrong_shape | none."""

    def __init__(self, mode: str, hang_s: float = 30.0, **kwargs: Any):
        super().__init__(**kwargs)
        if mode not in ("raise", "hang", "nan", "wrong_shape", "none"):
            raise ValueError(f"unknown FaultyModel mode {mode!r}")
        self.mode = mode
        self.hang_s = hang_s

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = super().predict(batch)
        if self.mode == "raise":
            raise RuntimeError("candidate exploded (FaultyModel)")
        if self.mode == "hang":
            time.sleep(self.hang_s)
        if self.mode == "nan":
            out[:, 0] = np.nan
        if self.mode == "wrong_shape":
            out = out[:, :-1]
        return out


class ControlledFaultyModel(FaultyModel):
    """A FaultyModel whose mode is read from a file at every call (``none`` when it is missing or empty):
    a running candidate can be made to fail and recover from outside (``bench/faults.py``)."""

    def __init__(self, control: str, **kwargs: Any):
        super().__init__(mode="none", **kwargs)
        self.control = control

    def predict(self, batch: np.ndarray) -> np.ndarray:
        try:
            with open(self.control, encoding="utf-8") as f:
                mode = f.read().strip() or "none"
        except FileNotFoundError:
            mode = "none"
        self.mode = mode if mode in ("raise", "hang", "nan", "wrong_shape") else "none"
        return super().predict(batch)


class WrongWhenDark:
    """A TorchScript classifier that answers a wrong class on a share of dim inputs (mean below
    ``dark_below``): a candidate broken on one slice, to try a gate on. Which inputs it breaks is
    decided by a hash of the input, so the same request always gets the same answer."""

    def __init__(self, path: str, share: float = 0.3, dark_below: float = 0.13):
        import torch

        torch.set_num_threads(1)
        self._module = torch.jit.load(path, map_location="cpu")  # type: ignore[no-untyped-call]
        self._share = share
        self._dark_below = dark_below

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)
        with torch.inference_mode():
            logits: np.ndarray = self._module(torch.from_numpy(x)).numpy().astype(np.float64)
        picked = (np.abs(x).sum(axis=1) * 1e4).astype(np.int64) % 1000 < self._share * 1000
        broken = (x.mean(axis=1) < self._dark_below) & picked
        logits[broken] = np.roll(logits[broken], 1, axis=1)  # the right class's score goes to its neighbour
        return logits

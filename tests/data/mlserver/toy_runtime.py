"""A custom MLServer runtime for the remote-model integration tests (run by MLServer in ``.venv-mlserver``,
``make mlserver``; started by tests/fixtures/mlserver.py).

A linear softmax classifier of 8 features and 4 classes whose weights come from ``seed`` (numpy only, so
MLServer needs no ML framework). It answers one FP64 output tensor, ``probabilities``, of shape [n, 4].
The model settings' ``parameters.extra`` may name a ``control`` file, read at every call, that makes it
misbehave: ``hang`` (waits ``hang_s`` before answering, without blocking MLServer's event loop) or
``error`` (raises: MLServer answers HTTP 500); anything else, or no file, answers normally.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from mlserver import MLModel  # type: ignore[import-not-found, unused-ignore]
from mlserver.codecs import NumpyCodec  # type: ignore[import-not-found, unused-ignore]
from mlserver.types import InferenceRequest, InferenceResponse  # type: ignore[import-not-found, unused-ignore]


class ToyRuntime(MLModel):  # type: ignore[misc, unused-ignore]
    async def load(self) -> bool:
        extra: dict[str, Any] = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        self._control = Path(extra["control"]) if extra.get("control") else None
        self._hang_s = float(extra.get("hang_s", 30.0))
        rng = np.random.default_rng(int(extra.get("seed", 0)))
        self._w = rng.normal(size=(8, 4))
        self._b = rng.normal(size=4)
        return True

    def _mode(self) -> str:
        try:
            return self._control.read_text().strip() if self._control is not None else "ok"
        except FileNotFoundError:
            return "ok"

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        mode = self._mode()
        if mode == "hang":
            await asyncio.sleep(self._hang_s)
        if mode == "error":
            raise RuntimeError("toy model exploded: Traceback (most recent call last) ...")
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float64).reshape(-1, 8)
        logits = x @ self._w + self._b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("probabilities", p)])

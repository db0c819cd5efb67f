"""Loaded models: one call shape for every kind and role.

Every role goes through ``LoadedModel`` so production and candidate outputs
have the same form: a float64 array of shape (n, k) holding class
probabilities (classification; logits are softmaxed here) or output values
(regression). ``apredict`` is the path for code on an event loop (the
ingress, the shadow worker): a model served elsewhere is awaited there, a
local one runs inline or in a thread as its config says. ``predict`` is the
synchronous path (worker threads, ``shadowd replay``, benchmarks).
``check_rows`` says, per example, whether an output can be compared at all
(finite, right width).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from shadowd.models.base import LocalModelBase, ModelBase, Predict, RemotePredict
from shadowd.records import Outcome

__all__ = ["LoadedModel", "check_rows", "load_model"]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


class LoadedModel:
    """One model, callable on a batch of examples of ``cfg.input_shape``."""

    def __init__(self, cfg: ModelBase, predict: Predict | None = None, remote: RemotePredict | None = None):
        if (predict is None) == (remote is None):
            raise ValueError("a LoadedModel needs exactly one of predict (local) and remote")
        self.cfg = cfg
        self.name = cfg.name
        self.input_shape = tuple(cfg.input_shape)
        self._predict = predict
        self._remote = remote
        self._pool: ThreadPoolExecutor | None = None
        if isinstance(cfg, LocalModelBase) and cfg.run_in_thread:
            self._pool = ThreadPoolExecutor(max_workers=cfg.run_threads, thread_name_prefix=f"model-{cfg.name}")
        self._loop: asyncio.AbstractEventLoop | None = None  # predict() on a remote model runs it on this one

    @property
    def remote(self) -> bool:
        """Served elsewhere: calls wait on the network, not on this process's CPU."""
        return self._remote is not None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run the model; returns (n, k) float64. Raises whatever the model raises. Blocks: not for an event
        loop (use ``apredict`` there)."""
        if self._remote is not None:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            raw = self._loop.run_until_complete(self._remote(batch))
        else:
            assert self._predict is not None
            raw = self._predict(batch)
        return self._finish(raw, len(batch))

    async def apredict(self, batch: np.ndarray) -> np.ndarray:
        """``predict`` for a caller on an event loop: a remote model is awaited, a local one runs inline or,
        with ``run_in_thread``, in this model's thread pool (the loop stays free meanwhile)."""
        if self._remote is not None:
            raw = await self._remote(batch)
        elif self._pool is not None:
            raw = await asyncio.get_running_loop().run_in_executor(self._pool, self._predict_local, batch)
        else:
            raw = self._predict_local(batch)
        return self._finish(raw, len(batch))

    def _predict_local(self, batch: np.ndarray) -> Any:
        assert self._predict is not None
        return self._predict(batch)

    def _finish(self, raw: Any, n: int) -> np.ndarray:
        if hasattr(raw, "detach"):  # a torch tensor from a python target
            raw = raw.detach().cpu().numpy()
        out = np.asarray(raw, dtype=np.float64)
        if out.ndim == 1:
            out = out.reshape(n, -1) if out.size == n else out.reshape(1, -1)
        if out.ndim == 2 and self.cfg.output == "logits":
            out = _softmax(out)
        return out

    async def aclose(self) -> None:
        """Release connections and threads (a replica shutting down)."""
        if self._remote is not None:
            await self._remote.aclose()
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def close(self) -> None:
        """``aclose`` for synchronous callers (``shadowd replay``)."""
        if self._remote is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.run_until_complete(self._remote.aclose())
            self._loop.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def load_model(cfg: ModelBase, torch_threads: int = 1) -> LoadedModel:
    """Load (or, for a model served elsewhere, connect to) a model as its config says; ModelError names the
    model and the cause."""
    remote = cfg.connect()
    if remote is not None:
        return LoadedModel(cfg, remote=remote)
    return LoadedModel(cfg, predict=cfg.load(torch_threads))


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

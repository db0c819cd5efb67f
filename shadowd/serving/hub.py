"""ShadowHub: the single stateful deployment beside the request path.

It owns the comparator (statistics, gate), the flywheel (annotation sink,
pair store, labels) and the daemon's /metrics endpoint, and persists the
comparator state under ``data_dir`` so a restart keeps the evidence. Pairs
arrive in batches from shadow workers; labels from ``POST /feedback`` and,
through the flywheel's consumer thread, from the labels topic.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from ray import serve

from shadowd.compare.comparator import Comparator
from shadowd.config import ShadowdConfig
from shadowd.flywheel.hub import Flywheel
from shadowd.observe.metrics import in_multiprocess_mode, serve_metrics
from shadowd.records import Label, Pair
from shadowd.serving.runtime import process_metrics

__all__ = ["ShadowHub", "comparator_state_path"]

log = logging.getLogger(__name__)

_PERSIST_EVERY_S = 5.0


def comparator_state_path(config: ShadowdConfig) -> Path:
    return config.data_dir / "comparator" / "state.json"


@serve.deployment
class ShadowHub:
    def __init__(self, config: ShadowdConfig):
        self._cfg = config
        self._metrics = process_metrics()
        self._lock = threading.Lock()  # the labels thread and the event loop both feed the comparator
        self._state_path = comparator_state_path(config)
        self._comparator = Comparator(config, self._metrics)
        if self._state_path.exists():
            self._comparator.load(self._state_path)
        self._dirty = False
        self._flywheel = Flywheel(config, self._metrics)
        self._flywheel.start(on_joined=self._on_joined)
        self._persist_task: asyncio.Task | None = None
        if config.metrics.port and in_multiprocess_mode():
            try:
                serve_metrics(config.metrics.port, config.metrics.host, config.data_dir / "metrics")
            except OSError as err:  # a restarted hub can race its predecessor's socket
                log.error("cannot serve /metrics on port %s: %s", config.metrics.port, err)

    def _on_joined(self, pair: Pair, label: Label, losses: dict[str, float]) -> None:
        with self._lock:
            self._comparator.add_labelled(pair, label)
            self._dirty = True

    def _ensure_persisting(self) -> None:
        if self._persist_task is None or self._persist_task.done():
            self._persist_task = asyncio.get_running_loop().create_task(self._persist_loop())

    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(_PERSIST_EVERY_S)
            self._save()

    def _save(self) -> None:
        with self._lock:
            if self._dirty:
                self._comparator.save(self._state_path)
                self._dirty = False

    async def add_pairs(self, pairs: list[Pair]) -> int:
        self._ensure_persisting()
        for pair in pairs:
            with self._lock:
                items = self._comparator.add(pair)
            self._flywheel.record(pair, items)
        self._dirty = True
        return len(pairs)

    async def feedback(self, label: Label) -> dict[str, Any]:
        result = self._flywheel.feedback(label)
        if result.status == "joined":
            self._on_joined(result.pair, label, result.losses)
        return result.as_dict()

    async def report(self) -> dict[str, Any]:
        with self._lock:
            report = self._comparator.report()
        report["annotations"] = self._flywheel.stats()
        return report

    async def reset(self) -> dict[str, Any]:
        with self._lock:
            self._comparator.reset()
            self._dirty = True
        self._save()
        return {"status": "reset", "window_started_ts": self._comparator.report()["window_started_ts"]}

    def __del__(self) -> None:
        # Ray Serve calls this on graceful shutdown: keep the evidence, flush the queue.
        if not hasattr(self, "_flywheel"):
            return  # the constructor failed; nothing to keep
        try:
            self._save()
        finally:
            self._flywheel.close(timeout_s=10.0)

"""Per-process singletons of a Ray replica (one metrics object per process:
prometheus-client's multiprocess files are keyed by process)."""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry

from shadowd.observe.metrics import ShadowdMetrics

__all__ = ["process_metrics"]


@functools.cache
def process_metrics() -> ShadowdMetrics:
    return ShadowdMetrics(CollectorRegistry())

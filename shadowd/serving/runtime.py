"""Per-process singletons of a Ray replica (one metrics object per process:
prometheus-client's multiprocess files are keyed by process)."""

from __future__ import annotations

import functools
import os

from prometheus_client import CollectorRegistry

from shadowd.observe.metrics import MULTIPROC_ENV, ShadowdMetrics

__all__ = ["process_metrics"]


@functools.cache
def process_metrics() -> ShadowdMetrics:
    multiproc_dir = os.environ.get(MULTIPROC_ENV)
    if multiproc_dir:  # a replica may start before anyone made the folder (serve deploy, KubeRay)
        os.makedirs(multiproc_dir, exist_ok=True)
    return ShadowdMetrics(CollectorRegistry())

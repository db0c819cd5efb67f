"""Per-process singletons of a Ray replica (one metrics object per process:
prometheus-client's multiprocess files are keyed by process), and the path
that brings the metrics of processes on other nodes to the lead hub's
``/metrics``.

Each process writes its multiprocess files in its node's folder
(``<data_dir>/metrics/node-<id>``); the lead hub serves the aggregate of its
own node's folder. A process on another node (a worker, an ingress, a hub
shard) sends the lead its own files every few seconds (``MetricsPublisher``;
the lead pulls its peer shards'), which the lead keeps in its folder under
the sender's node and pid, so one scrape sees every node. Files from the
lead's own node are refused (the publisher asks again every minute, in case the lead moves).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from shadowd.observe.metrics import MULTIPROC_ENV, ShadowdMetrics, node_metrics_dir, own_metric_files

__all__ = [
    "PUBLISH_EVERY_S",
    "MetricsPublisher",
    "behind_production",
    "node_id",
    "process_metrics",
    "process_metrics_dir",
]

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 5.0
_SAME_NODE_RECHECK_S = 60.0  # a restarted lead may come up on another node


def node_id() -> str | None:
    """This process's Ray node id (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


@functools.cache
def process_metrics() -> ShadowdMetrics:
    base = os.environ.get(MULTIPROC_ENV)
    if base:
        node = node_id()
        if node is not None:  # read by prometheus-client when each value is created, i.e. after this
            os.environ[MULTIPROC_ENV] = str(node_metrics_dir(Path(base), node))
        # a replica may start before anyone made the folder (serve deploy, KubeRay)
        os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)
    return ShadowdMetrics(CollectorRegistry())


def _in_replica() -> bool:
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True


def behind_production(priority: str) -> int:
    """Put this Serve replica's threads behind production on the CPU (``serving.shadow_cpu``: low, idle or
    normal); outside a replica (e.g. a test constructing the class) nothing changes. Linux keeps nice and
    the scheduling policy per thread, so every thread of the process is set; threads started later inherit
    them. Returns how many threads were set."""
    if priority == "normal" or not _in_replica() or not os.path.isdir("/proc/self/task"):
        return 0
    done = 0
    for tid in map(int, os.listdir("/proc/self/task")):
        try:
            if priority == "idle":
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.setpriority(os.PRIO_PROCESS, tid, 19)
            done += 1
        except OSError as err:  # a thread that ended meanwhile, or a platform that refuses
            log.debug("thread %s keeps its CPU priority: %s", tid, err)
    return done


def process_metrics_dir() -> Path | None:
    """The folder this process's multiprocess files are in (None when not in multiprocess mode)."""
    process_metrics()
    folder = os.environ.get(MULTIPROC_ENV)
    return Path(folder) if folder else None


class MetricsPublisher:
    """Sends this process's metric files to the lead hub (``lead.receive_metrics``) every
    ``PUBLISH_EVERY_S`` while the lead runs on another node (on the same node, asks again every minute: a
    restarted lead may run elsewhere); started lazily on the replica's loop."""

    def __init__(self, lead: Any, every_s: float = PUBLISH_EVERY_S):
        self._lead = lead
        self._every_s = every_s
        self._task: asyncio.Task[None] | None = None

    def ensure_started(self) -> None:
        if self._task is None and process_metrics_dir() is not None and node_id() is not None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        folder, node, pid = process_metrics_dir(), node_id(), os.getpid()
        assert folder is not None and node is not None
        pause_s = self._every_s
        while True:
            await asyncio.sleep(pause_s)
            pause_s = self._every_s
            try:
                files = await asyncio.to_thread(own_metric_files, folder, pid)
                if not await self._lead.receive_metrics.remote(node, pid, files):
                    pause_s = _SAME_NODE_RECHECK_S  # the lead reads these files itself, unless it moves
            except Exception as err:  # a restarting hub: the next round sends everything again
                log.debug("metrics not published to the lead hub: %s: %s", type(err).__name__, err)

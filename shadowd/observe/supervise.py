"""Background threads that never die silently.

Every loop shadowd runs beside the request path (the annotation spooler and
sender, the labels reader, the backlog probe) handles the errors it expects
itself. What it did not expect (a bug, a library raising something new) would
otherwise end the thread for good while the process looks healthy: the
annotation flywheel stops and nothing says so. ``supervised`` runs such a
loop in a daemon thread; when the loop raises, it logs the traceback, counts
``shadowd_thread_restarts_total{thread}`` (alert ShadowdBackgroundThreadRestarting)
and runs the loop again after a backoff (doubling up to ``max_backoff_s``,
reset after a loop that ran a while). A loop that returns has finished:
the supervisor ends with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from shadowd.observe.metrics import ShadowdMetrics

__all__ = ["supervised"]

log = logging.getLogger(__name__)

_HEALTHY_S = 60.0  # a loop that ran this long before raising starts the backoff afresh


def supervised(
    name: str,
    loop: Callable[[], None],
    stop: threading.Event,
    metrics: ShadowdMetrics | None = None,
    min_backoff_s: float = 0.1,
    max_backoff_s: float = 30.0,
) -> threading.Thread:
    """A started daemon thread running ``loop`` until it returns or ``stop`` is set, restarting it on errors."""

    def run() -> None:
        backoff_s = min_backoff_s
        while True:
            started = time.monotonic()
            try:
                loop()
                return
            except Exception:
                log.exception("background thread %s raised; restarting it in %.1f s", name, backoff_s)
            if metrics is not None:
                metrics.thread_restarts.labels(thread=name).inc()
            if time.monotonic() - started > _HEALTHY_S:
                backoff_s = min_backoff_s
            if stop.wait(backoff_s):
                return
            backoff_s = min(backoff_s * 2, max_backoff_s)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread

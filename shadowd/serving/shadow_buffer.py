"""The ingress side of the shadow path: buffer sampled pairs, send them in
one call per flush interval, and never let the candidate side push back on
production.

``offer`` is synchronous and O(1). Pairs waiting plus pairs in flight are
bounded in number (``max_in_flight``) and in bytes (``max_in_flight_bytes``,
each pair's size as the caller estimates it); beyond either a pair is dropped
and counted (reasons ``budget`` and ``bytes``), never queued. A failed send
drops (and counts) its pairs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["ShadowBuffer"]

log = logging.getLogger(__name__)


class ShadowBuffer:
    def __init__(
        self,
        send: Callable[[list[Any]], Awaitable[Any]],
        max_in_flight: int,
        flush_interval_s: float,
        max_flush_size: int,
        on_drop: Callable[[str, int], None],
        max_in_flight_bytes: int | None = None,
    ):
        self._send = send
        self._max = max_in_flight
        self._max_bytes = max_in_flight_bytes
        self._interval_s = flush_interval_s
        self._max_flush = max_flush_size
        self._on_drop = on_drop
        self._pending: deque[tuple[Any, int]] = deque()
        self._in_flight = 0
        self._bytes = 0  # of pairs waiting and in flight
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()

    @property
    def outstanding(self) -> int:
        return len(self._pending) + self._in_flight

    @property
    def outstanding_bytes(self) -> int:
        return self._bytes

    def offer(self, item: Any, nbytes: int = 0) -> bool:
        """Queue a pair (about ``nbytes`` in memory) for the shadow worker; False (and counted) when over budget."""
        if self.outstanding >= self._max:
            self._on_drop("budget", 1)
            return False
        if self._max_bytes is not None and self._bytes + nbytes > self._max_bytes:
            self._on_drop("bytes", 1)
            return False
        self._bytes += nbytes
        self._pending.append((item, nbytes))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(self._interval_s)
            self.flush()

    def flush(self) -> None:
        while self._pending:
            n = min(len(self._pending), self._max_flush)
            taken = [self._pending.popleft() for _ in range(n)]
            self._in_flight += n
            task = asyncio.get_running_loop().create_task(
                self._deliver([item for item, _ in taken], sum(b for _, b in taken))
            )
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _deliver(self, batch: list[Any], nbytes: int) -> None:
        try:
            await self._send(batch)
        except Exception as err:  # the worker died or raised: drop, count, keep serving
            log.warning("shadow worker call failed for %d pairs: %s", len(batch), err)
            self._on_drop("worker", len(batch))
        finally:
            self._in_flight -= len(batch)
            self._bytes -= nbytes

    async def drain(self, timeout_s: float) -> None:
        """Send what is buffered and wait (bounded) for what is in flight."""
        self.flush()
        if self._sends:
            await asyncio.wait(set(self._sends), timeout=timeout_s)

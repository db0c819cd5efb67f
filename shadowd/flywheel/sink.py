"""Annotation sink: annotation items leave the comparator here, off its hot path.

Data flow::

    Flywheel.record -> policy -> AnnotationSink.submit (bounded in-memory buffer, never waits)
        -> spooler thread: Spool.append (JSON lines, one fsync per batch)      [outbox]
        -> sender thread (a transport with a producer, e.g. Kafka): deliver pending
           records in order, Spool.commit only after the producer acked them

``submit`` never raises and never waits. When the spool cannot take items
(disk full, ``annotations.spool_max_bytes`` reached, an I/O error) queuing
pauses: the batch it refused waits and is retried with backoff, newer items
wait in the bounded buffer, and once that is full they are dropped and
counted by reason (``shadowd_annotation_items_dropped_total``); the
``shadowd_spool_paused`` gauge says why, and queuing resumes by itself when
an append succeeds again. Production never notices. An item the JSON writer
cannot take is dropped and counted (``unserializable``), never a dead thread.

With the spool transport the spool is the queue itself. With a producer, a
broker that is down or slow only makes the spool grow; the sender replays
from the committed offset, in order, when the broker answers again (at least
once; consumers dedup by the key, which is the request id). A record the
broker can never take (``DeliveryError.poison``) goes to ``dead-letter.jsonl``
next to the spool and counts as failed; every other error keeps the record in
the spool, retried with backoff, or only at the longest backoff when it is
not ``retriable`` (the setup is wrong).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shadowd.config import ShadowdConfig
from shadowd.errors import DeliveryError, SpoolError, SpoolWriteError
from shadowd.flywheel.spool import Spool, SpoolRecord, lane_spool_dir
from shadowd.flywheel.transports.base import Producer, SendResult
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.observe.supervise import supervised
from shadowd.records import AnnotationItem, Lane

__all__ = ["PAUSE_REASONS", "AnnotationSink", "SinkStats", "build_sink"]

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.2
# Why queuing pauses (the spool refused an append); each is a series of shadowd_spool_paused.
PAUSE_REASONS = ("disk_full", "spool_full", "write_error")
_LOG_EVERY_DROPS = 1000


@dataclass(frozen=True)
class SinkStats:
    """Counts since the sink was built; ``pending`` is what the spool still has to deliver.
    ``failed`` includes every dropped item; ``dropped`` splits those by reason; ``paused`` is
    why queuing is paused right now (None: it is not)."""

    queued: int
    spooled: int
    delivered: int
    failed: int
    buffered: int
    pending: int
    last_error: str | None
    dropped: dict[str, int]
    paused: str | None


class AnnotationSink:
    """Bounded, non-blocking front of the spool (and of a broker, with a producer).

    ``submit`` only enqueues. Two daemon threads do the work: the spooler
    moves buffered items into the spool in batches; the sender (only with a
    producer) moves spooled records to the broker. ``close`` flushes what it
    can within its timeout; what is left stays in the spool for the next run.
    """

    def __init__(
        self,
        spool: Spool,
        producer: Producer | None = None,
        metrics: ShadowdMetrics | None = None,
        max_buffered_items: int = 10_000,
        batch_items: int = 500,
        retry_backoff_s: tuple[float, float] = (0.1, 5.0),
        sleep: Callable[[float], None] | None = None,
        lane: Lane = "review",
        shard: int = 0,
    ):
        self.spool = spool
        self.lane = lane
        self.shard = str(shard)  # the hub shard this sink serves: a label of its gauges
        self._producer = producer
        self._metrics = metrics
        self._buffer: queue.Queue[AnnotationItem] = queue.Queue(maxsize=max_buffered_items)
        self._batch_items = batch_items
        self._backoff_min_s, self._backoff_max_s = retry_backoff_s
        self._stop = threading.Event()
        self._force = threading.Event()
        self._wake_sender = threading.Event()
        # Interruptible sleep by default, so close() does not wait out a backoff.
        self._sleep = sleep or (lambda s: self._force.wait(s))
        self._counts_lock = threading.Lock()
        self._counts = dict(queued=0, spooled=0, delivered=0, failed=0)
        self._dropped: dict[str, int] = {}
        self._last_error: str | None = None
        self._paused: str | None = None
        self._paused_since = 0.0
        self._threads: list[threading.Thread] = []
        self._held: list[tuple[str, str]] = []
        self._closed = False
        self._set_gauge()

    # --- public ---

    def start(self) -> AnnotationSink:
        if self._threads:
            return self
        # Supervised: an unexpected error restarts the loop (counted, alerted), never ends it for good.
        # They stop only when forced: a graceful close still wants them to drain.
        self._threads.append(supervised(f"spooler-{self.lane}", self._spooler, self._force, self._metrics))
        if self._producer is not None:
            self._threads.append(supervised(f"sender-{self.lane}", self._sender, self._force, self._metrics))
        return self

    def submit(self, item: AnnotationItem) -> None:
        """Queue one item; returns at once, never raises, never waits for the disk. After close, or
        with the buffer full (the spool paused, or behind), the item is dropped and counted by reason."""
        if self._closed:
            # Shutdown races (a last batch of pairs after close) must not break the caller.
            self._drop("closed", 1)
            return
        try:
            self._buffer.put_nowait(item)
        except queue.Full:
            self._drop(self._paused or "buffer_full", 1)
            return
        self._count("queued")

    def flush(self, timeout_s: float) -> bool:
        """Wait until every submitted item is spooled (and, with Kafka, delivered)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            buffered = self._buffer.unfinished_tasks
            if buffered == 0 and (self._producer is None or self.spool.pending_count == 0):
                return True
            self._wake_sender.set()
            time.sleep(0.01)
        return False

    def close(self, timeout_s: float = 10.0) -> SinkStats:
        """Flush for up to ``timeout_s``, then stop the threads; undelivered items stay spooled."""
        if self._closed:
            return self.stats()
        self._closed = True
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake_sender.set()
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._force.set()
        if self._producer is not None:
            self._producer.close()
        for t in self._threads:
            t.join(1.0)
        # Items still in memory (threads never started, or the spooler timed out) go to disk, or are counted.
        leftover = self._drain(len_limit=None)
        if leftover:
            records = self._records(leftover)
            done = self._append(records)
            self._drop(self._paused or "closed", len(records) - done)
        stats = self.stats()
        self.spool.close()
        return stats

    def stats(self) -> SinkStats:
        with self._counts_lock:
            c = dict(self._counts)
            dropped = dict(self._dropped)
        return SinkStats(
            queued=c["queued"],
            spooled=c["spooled"],
            delivered=c["delivered"],
            failed=c["failed"],
            buffered=self._buffer.qsize(),
            pending=self.spool.pending_count,
            last_error=self._last_error,
            dropped=dropped,
            paused=self._paused,
        )

    # --- internals ---

    def _count(self, outcome: str, n: int = 1) -> None:
        if n <= 0:
            return
        with self._counts_lock:
            self._counts[outcome] += n
        if self._metrics is not None:
            self._metrics.annotation_items.labels(outcome=outcome).inc(n)

    def _drop(self, reason: str, n: int) -> None:
        """Count ``n`` items lost for ``reason`` (also as outcome failed); log now and then, not per item."""
        if n <= 0:
            return
        with self._counts_lock:
            self._counts["failed"] += n
            before = self._dropped.get(reason, 0)
            self._dropped[reason] = before + n
        if self._metrics is not None:
            self._metrics.annotation_items.labels(outcome="failed").inc(n)
            self._metrics.annotation_items_dropped.labels(lane=self.lane, reason=reason).inc(n)
        if before == 0 or before // _LOG_EVERY_DROPS != (before + n) // _LOG_EVERY_DROPS:
            log.warning("annotation items dropped (%s): %d so far", reason, before + n)

    def _set_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.spool_items.labels(lane=self.lane, shard=self.shard).set(self.spool.pending_count)
            self._metrics.spool_bytes.labels(lane=self.lane, shard=self.shard).set(self.spool.size_bytes)
            if self.spool.max_bytes is not None:
                self._metrics.spool_max_bytes.labels(lane=self.lane, shard=self.shard).set(self.spool.max_bytes)

    def _set_paused(self, reason: str | None, message: str | None = None) -> None:
        if reason == self._paused:
            return
        if reason is not None:
            self._paused_since = time.monotonic()
            self._last_error = message
            log.error(
                "annotation queuing paused on the %s lane (%s): %s; production is unaffected; retrying, and items "
                "past the buffer of %d are dropped and counted until it resumes",
                self.lane,
                reason,
                message,
                self._buffer.maxsize,
            )
        else:
            self._last_error = None
            log.warning(
                "annotation queuing resumed on the %s lane after %.0f s paused (%s)",
                self.lane,
                time.monotonic() - self._paused_since,
                self._paused,
            )
        self._paused = reason
        if self._metrics is not None:
            for r in PAUSE_REASONS:
                gauge = self._metrics.spool_paused.labels(lane=self.lane, reason=r, shard=self.shard)
                gauge.set(1 if r == reason else 0)

    def _drain(self, len_limit: int | None) -> list[AnnotationItem]:
        items: list[AnnotationItem] = []
        while len_limit is None or len(items) < len_limit:
            try:
                items.append(self._buffer.get_nowait())
            except queue.Empty:
                break
        return items

    def _records(self, items: list[AnnotationItem]) -> list[tuple[str, str]]:
        """Spool records of the items; one the JSON writer refuses is dropped, never raised."""
        records = []
        for it in items:
            try:
                records.append((it.request_id, it.model_dump_json()))
            except Exception as err:  # e.g. nested past the serializer's recursion limit
                log.error("annotation item %s cannot be written as JSON: %s", it.request_id, str(err)[:200])
                self._drop("unserializable", 1)
        return records

    def _append(self, records: list[tuple[str, str]]) -> int:
        """Append to the spool; returns how many leading records are done with (spooled, or dropped
        because they can never fit). Fewer than all: queuing is paused, retry the rest later."""
        if not records:
            return 0
        try:
            self.spool.append(records)
        except SpoolWriteError as err:
            if err.reason != "too_large":
                self._set_paused(err.reason, str(err))
                return 0
            if len(records) == 1:
                log.error("annotation item %s dropped: %s", records[0][0], err)
                self._drop("too_large", 1)
                return 1
            half = len(records) // 2
            done = self._append(records[:half])
            return done if done < half else half + self._append(records[half:])
        except SpoolError:  # closed under us: the sink is shutting down
            self._drop("closed", len(records))
            return len(records)
        except Exception:  # a bug must cost these items, not the thread
            log.exception("annotation items dropped: unexpected error appending to the spool")
            self._drop("write_error", len(records))
            return len(records)
        self._set_paused(None)
        self._count("spooled", len(records))
        self._set_gauge()
        self._wake_sender.set()
        return len(records)

    def _spooler(self) -> None:
        backoff_s = self._backoff_min_s
        while True:
            held = self._held  # records the spool refused (paused); retried before anything newer
            if not held:
                try:
                    first = self._buffer.get(timeout=_IDLE_WAIT_S)
                except queue.Empty:
                    self._set_gauge()  # delivery and the rotation compact the spool meanwhile
                    if self._stop.is_set():
                        return
                    continue
                batch = [first, *self._drain(self._batch_items - 1)]
                held = self._held = self._records(batch)  # kept on the sink: a restarted loop goes on with them
                for _ in range(len(batch) - len(held)):  # dropped as unserializable
                    self._buffer.task_done()
            done = self._append(held)
            for _ in range(done):
                self._buffer.task_done()
            held = self._held = held[done:]
            if not held:
                backoff_s = self._backoff_min_s
                continue
            if self._stop.is_set():  # closing while paused: what the spool refuses now is lost, counted
                self._drop(self._paused or "closed", len(held))
                for _ in held:
                    self._buffer.task_done()
                self._held = []
                return
            self._stop.wait(backoff_s)  # paused: retry with backoff; close() cuts the wait short
            backoff_s = min(backoff_s * 2, self._backoff_max_s)

    def _sender(self) -> None:
        assert self._producer is not None
        backoff_s = self._backoff_min_s
        while not self._force.is_set():
            try:
                batch = self.spool.pending(self._batch_items)
            except SpoolError:
                return  # closed under us: what is left stays on disk
            except Exception as read_err:  # an unreadable segment: say so and retry, never end the thread
                self._last_error = f"spool read failed: {type(read_err).__name__}: {read_err}"[:300]
                log.error("annotation sink: %s", self._last_error)
                self._sleep(self._backoff_max_s)
                continue
            if not batch:
                if self._stop.is_set() and self._buffer.unfinished_tasks == 0:
                    return
                self._wake_sender.wait(_IDLE_WAIT_S)
                self._wake_sender.clear()
                continue
            result = self._producer.send(batch, self._producer.send_timeout_s)
            try:
                self._commit(batch, result)
            except SpoolError:
                return
            except OSError as commit_err:  # e.g. a full disk refuses the offset file: resent later (keyed, deduped)
                self._last_error = f"cannot record delivery: {commit_err}"
                log.error("annotation sink: %s", self._last_error)
                self._sleep(self._backoff_max_s)
                continue
            if result.error is None:
                backoff_s = self._backoff_min_s
                self._last_error = None
                continue
            err = result.error
            self._last_error = ("fatal: " if not err.retriable else "") + str(err)
            if self._metrics is not None:
                self._metrics.kafka_delivery_errors.inc()
            if err.poison:
                continue
            if self._stop.is_set():
                return  # closing: do not wait out a broker outage; the spool keeps the rest
            if not err.retriable:
                backoff_s = self._backoff_max_s
                log.error("annotation sink: %s; %d items wait in the spool", self._last_error, self.spool.pending_count)
            else:
                log.warning(
                    "annotation sink: %s; %d items wait in the spool", self._last_error, self.spool.pending_count
                )
            self._sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self._backoff_max_s)

    def _commit(self, batch: Sequence[SpoolRecord], result: SendResult) -> None:
        done = result.acked
        if result.error is not None and result.error.poison and done < len(batch):
            self._dead_letter(batch[done], result.error)
            self._count("failed")
            self.spool.commit(batch[done].seq)  # past the poison record too
        elif done:
            self.spool.commit(batch[done - 1].seq)
        self._count("delivered", done)
        self._set_gauge()

    def _dead_letter(self, record: SpoolRecord, error: DeliveryError) -> None:
        line = json.dumps({"seq": record.seq, "key": record.key, "error": str(error), "value": record.value})
        path = self.spool.directory / "dead-letter.jsonl"
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        log.error("annotation item %s set aside in %s: %s", record.key, path, error)


def build_sink(
    config: ShadowdConfig,
    producer: Producer | None,
    metrics: ShadowdMetrics | None = None,
    lane: Lane = "review",
    shard: int = 0,
) -> AnnotationSink:
    """A lane's sink, started: its spool (``spool.lane_spool_dir``), delivering to ``producer``; ``shard``: the
    hub shard it serves."""
    ann = config.annotations
    spool = Spool(
        lane_spool_dir(config.data_dir, lane), segment_items=ann.spool_segment_items, max_bytes=ann.spool_max_bytes
    )
    return AnnotationSink(
        spool,
        producer,
        metrics,
        max_buffered_items=ann.max_buffered_items,
        batch_items=ann.batch_items,
        lane=lane,
        shard=shard,
    ).start()

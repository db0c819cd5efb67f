"""Annotation sink: annotation items leave the comparator here, off its hot path.

Data flow::

    Flywheel.record -> policy -> AnnotationSink.submit (bounded in-memory buffer, never waits)
        -> spooler thread: Spool.append (JSON lines, one fsync per batch)      [outbox]
        -> sender thread (Kafka configured): produce pending records in order,
           Spool.commit only after the broker acked (acks=all, idempotent)

Without Kafka the spool is the queue itself. With Kafka, a broker that is
down or slow only makes the spool grow; the sender replays from the committed
offset, in order, when the broker answers again (at least once; consumers
dedup by the key, which is the request id). A record the broker can never
take (too large, corrupt) goes to ``dead-letter.jsonl`` next to the spool and
counts as failed; every other error keeps the record in the spool.
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
from pathlib import Path
from typing import Protocol

from shadowd.config import KafkaConfig, ShadowdConfig
from shadowd.errors import SinkError
from shadowd.flywheel.spool import Spool, SpoolError, SpoolRecord
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import AnnotationItem

__all__ = [
    "AnnotationSink",
    "KafkaTransport",
    "SendResult",
    "SinkStats",
    "Transport",
    "build_sink",
    "kafka_client_config",
]

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.2


@dataclass(frozen=True)
class SendResult:
    """What a transport did with a batch: the first ``acked`` records are delivered.

    ``error`` is set when fewer than all were; ``poison`` means the record at
    index ``acked`` can never be delivered (too large, corrupt) and should be
    set aside rather than retried; ``fatal`` means no retry will help until
    someone fixes the setup (authorization, protocol): the records stay
    spooled and retries slow to the longest backoff.
    """

    acked: int
    error: BaseException | None = None
    poison: bool = False
    fatal: bool = False


class Transport(Protocol):
    """Where spooled records go; ``send`` waits at most ``timeout_s``."""

    def send(self, records: Sequence[SpoolRecord], timeout_s: float) -> SendResult: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SinkStats:
    """Counts since the sink was built; ``pending`` is what the spool still has to deliver."""

    queued: int
    spooled: int
    delivered: int
    failed: int
    buffered: int
    pending: int
    kafka: bool
    last_error: str | None


class AnnotationSink:
    """Bounded, non-blocking front of the spool (and of Kafka, with a transport).

    ``submit`` only enqueues. Two daemon threads do the work: the spooler
    moves buffered items into the spool in batches; the sender (only with a
    transport) moves spooled records to the broker. ``close`` flushes what it
    can within its timeout; what is left stays in the spool for the next run.
    """

    def __init__(
        self,
        spool: Spool,
        transport: Transport | None = None,
        metrics: ShadowdMetrics | None = None,
        max_buffered_items: int = 10_000,
        batch_items: int = 500,
        send_timeout_s: float = 30.0,
        retry_backoff_s: tuple[float, float] = (0.1, 5.0),
        sleep: Callable[[float], None] | None = None,
    ):
        self.spool = spool
        self._transport = transport
        self._metrics = metrics
        self._buffer: queue.Queue[AnnotationItem] = queue.Queue(maxsize=max_buffered_items)
        self._batch_items = batch_items
        self._send_timeout_s = send_timeout_s
        self._backoff_min_s, self._backoff_max_s = retry_backoff_s
        self._stop = threading.Event()
        self._force = threading.Event()
        self._wake_sender = threading.Event()
        # Interruptible sleep by default, so close() does not wait out a backoff.
        self._sleep = sleep or (lambda s: self._force.wait(s))
        self._counts_lock = threading.Lock()
        self._counts = dict(queued=0, spooled=0, delivered=0, failed=0)
        self._last_error: str | None = None
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._set_gauge()

    # --- public ---

    def start(self) -> AnnotationSink:
        if self._threads:
            return self
        self._threads.append(threading.Thread(target=self._spooler, name="shadowd-spooler", daemon=True))
        if self._transport is not None:
            self._threads.append(threading.Thread(target=self._sender, name="shadowd-sender", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def submit(self, item: AnnotationItem) -> None:
        """Queue one item; returns at once and never raises (late items after close are counted as failed)."""
        if self._closed:
            # Shutdown races (a last batch of pairs after close) must not break the caller.
            self._count("failed")
            log.warning("annotation sink is closed; item %s not kept", item.request_id)
            return
        try:
            self._buffer.put_nowait(item)
        except queue.Full:
            # Rare (the spooler keeps up unless the disk stalls): rather than lose
            # the item, the caller pays for one spool append.
            self._count("queued")
            self._append_to_spool([item])
            return
        self._count("queued")

    def flush(self, timeout_s: float) -> bool:
        """Wait until every submitted item is spooled (and, with Kafka, delivered)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            buffered = self._buffer.unfinished_tasks
            if buffered == 0 and (self._transport is None or self.spool.pending_count == 0):
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
        if self._transport is not None:
            self._transport.close()
        for t in self._threads:
            t.join(1.0)
        # Items still in memory (threads never started, or the spooler timed out) go to disk.
        leftover = self._drain(len_limit=None)
        if leftover:
            self._append_to_spool(leftover)
        stats = self.stats()
        self.spool.close()
        return stats

    def stats(self) -> SinkStats:
        with self._counts_lock:
            c = dict(self._counts)
        return SinkStats(
            queued=c["queued"],
            spooled=c["spooled"],
            delivered=c["delivered"],
            failed=c["failed"],
            buffered=self._buffer.qsize(),
            pending=self.spool.pending_count,
            kafka=self._transport is not None,
            last_error=self._last_error,
        )

    # --- internals ---

    def _count(self, outcome: str, n: int = 1) -> None:
        if n <= 0:
            return
        with self._counts_lock:
            self._counts[outcome] += n
        if self._metrics is not None:
            self._metrics.annotation_items.labels(outcome=outcome).inc(n)

    def _set_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.spool_items.set(self.spool.pending_count)

    def _drain(self, len_limit: int | None) -> list[AnnotationItem]:
        items = []
        while len_limit is None or len(items) < len_limit:
            try:
                items.append(self._buffer.get_nowait())
            except queue.Empty:
                break
        return items

    def _append_to_spool(self, items: list[AnnotationItem]) -> bool:
        records = [(it.request_id, it.model_dump_json()) for it in items]
        try:
            self.spool.append(records)
        except (OSError, SpoolError) as err:
            self._last_error = f"spool append failed: {err}"
            log.error("annotation items lost: %s (%d items)", self._last_error, len(items))
            self._count("failed", len(items))
            return False
        self._count("spooled", len(items))
        self._set_gauge()
        self._wake_sender.set()
        return True

    def _spooler(self) -> None:
        while True:
            try:
                first = self._buffer.get(timeout=_IDLE_WAIT_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            batch = [first, *self._drain(self._batch_items - 1)]
            self._append_to_spool(batch)
            for _ in batch:
                self._buffer.task_done()

    def _sender(self) -> None:
        assert self._transport is not None
        backoff_s = self._backoff_min_s
        while not self._force.is_set():
            try:
                batch = self.spool.pending(self._batch_items)
            except SpoolError:
                return  # closed under us: what is left stays on disk
            if not batch:
                if self._stop.is_set() and self._buffer.unfinished_tasks == 0:
                    return
                self._wake_sender.wait(_IDLE_WAIT_S)
                self._wake_sender.clear()
                continue
            result = self._transport.send(batch, self._send_timeout_s)
            try:
                self._commit(batch, result)
            except SpoolError:
                return
            if result.error is None:
                backoff_s = self._backoff_min_s
                self._last_error = None
                continue
            self._last_error = ("fatal: " if result.fatal else "") + f"{type(result.error).__name__}: {result.error}"
            if self._metrics is not None:
                self._metrics.kafka_delivery_errors.inc()
            if result.poison:
                continue
            if self._stop.is_set():
                return  # closing: do not wait out a broker outage; the spool keeps the rest
            if result.fatal:
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
        if result.error is not None and result.poison and done < len(batch):
            self._dead_letter(batch[done], result.error)
            self._count("failed")
            self.spool.commit(batch[done].seq)  # past the poison record too
        elif done:
            self.spool.commit(batch[done - 1].seq)
        self._count("delivered", done)
        self._set_gauge()

    def _dead_letter(self, record: SpoolRecord, error: BaseException) -> None:
        line = json.dumps({"seq": record.seq, "key": record.key, "error": str(error), "value": record.value})
        path = self.spool.directory / "dead-letter.jsonl"
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        log.error("annotation item %s set aside in %s: %s", record.key, path, error)


# --- Kafka ---

# A record the broker will never take, whatever we do: set it aside.
_POISON_ERRORS = ("MessageSizeTooLargeError", "RecordListTooLargeError", "CorruptRecordError", "InvalidRecordError")
# The setup is wrong (credentials, ACLs, protocol): keep everything, retry slowly, say so loudly.
# Other non-retriable kafka-python errors (UnknownProducerIdError after a broker
# restart, ...) are cured by a fresh producer and are retried normally.
_FATAL_ERRORS = (
    "AuthorizationError",
    "SaslAuthenticationFailedError",
    "UnsupportedVersionError",
    "UnsupportedSaslMechanismError",
    "IllegalSaslStateError",
)


def _classify(err: BaseException) -> dict[str, bool]:
    names = {c.__name__ for c in type(err).__mro__}
    return {"poison": bool(names & set(_POISON_ERRORS)), "fatal": bool(names & set(_FATAL_ERRORS))}


def kafka_client_config(kafka: KafkaConfig) -> dict:
    """Connection settings shared by shadowd's producers and consumers (SASL secrets from env)."""
    cfg: dict = {"bootstrap_servers": list(kafka.bootstrap_servers), "security_protocol": kafka.security_protocol}
    if kafka.sasl_mechanism:
        cfg["sasl_mechanism"] = kafka.sasl_mechanism
        for env, key in (
            (kafka.sasl_username_env, "sasl_plain_username"),
            (kafka.sasl_password_env, "sasl_plain_password"),
        ):
            if env:
                if env not in os.environ:
                    raise SinkError(f"annotations.kafka: environment variable {env} is not set")
                cfg[key] = os.environ[env]
    if kafka.ssl_cafile:
        cfg["ssl_cafile"] = str(kafka.ssl_cafile)
    return cfg


class KafkaTransport:
    """Produces spooled records to one topic; key = record key (request id), value = the item JSON.

    A producer that failed is thrown away and a fresh one built on the next
    send: after a broker restart or a delivery timeout, kafka-python's
    idempotent producer does not recover on its own (measured here against
    tansu: UnknownProducerIdError, then every later send timing out).
    """

    def __init__(
        self, kafka: KafkaConfig, topic: str | None = None, client_factory: Callable[..., object] | None = None
    ):
        self._kafka = kafka
        self.topic = topic or kafka.annotations_topic
        self._factory = client_factory
        self._producer = None
        self._lock = threading.Lock()
        self._closed = False

    def _make(self):
        from kafka import KafkaProducer

        delivery_ms = self._kafka.delivery_timeout_ms
        factory = self._factory or KafkaProducer
        return factory(
            **kafka_client_config(self._kafka),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            # kafka-python needs delivery >= request timeout + linger.
            request_timeout_ms=max(1, min(30_000, delivery_ms - 5)),
            delivery_timeout_ms=delivery_ms,
            max_block_ms=min(delivery_ms, 10_000),
            bootstrap_timeout_ms=min(delivery_ms, 10_000),
        )

    def send(self, records: Sequence[SpoolRecord], timeout_s: float) -> SendResult:
        deadline = time.monotonic() + timeout_s
        # The lock guards only the producer reference: building a producer and
        # send() can block (bootstrap, metadata) and close() must not wait for that.
        with self._lock:
            if self._closed:
                return SendResult(0, SinkError("transport closed"))
            producer = self._producer
        try:
            if producer is None:
                producer = self._make()
                with self._lock:
                    if self._closed:
                        _force_close(producer)
                        return SendResult(0, SinkError("transport closed"))
                    self._producer = producer
            futures = [
                producer.send(
                    self.topic,
                    key=r.key.encode(),
                    value=json.dumps(r.value, separators=(",", ":")).encode(),
                )
                for r in records
            ]
        except Exception as err:
            self._discard(producer)
            return SendResult(0, err, fatal=_classify(err)["fatal"])
        acked = 0
        for fut in futures:
            try:
                fut.get(timeout=max(0.001, deadline - time.monotonic()))
            except Exception as err:
                self._discard(producer)
                return SendResult(acked, err, **_classify(err))
            acked += 1
        return SendResult(acked)

    def _discard(self, producer=None) -> None:
        """Throw away ``producer`` (if it is still the current one), or the current one."""
        with self._lock:
            if producer is None:
                producer = self._producer
            if producer is self._producer:
                self._producer = None
        if producer is not None:
            _force_close(producer)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._discard()


def _force_close(producer) -> None:
    try:
        producer.close(timeout=0, null_logger=True)
    except Exception:
        # close(0) raises when records are still in flight and then skips its
        # own force-close; do it so the client's I/O thread ends.
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()


def build_sink(config: ShadowdConfig, metrics: ShadowdMetrics | None = None) -> AnnotationSink:
    """The sink the config asks for, started: spool in ``<data_dir>/spool``, plus Kafka if configured."""
    ann = config.annotations
    spool = Spool(Path(config.data_dir) / "spool", segment_items=ann.spool_segment_items)
    transport = KafkaTransport(ann.kafka) if ann.kafka is not None else None
    send_timeout_s = ann.kafka.delivery_timeout_ms / 1000 if ann.kafka is not None else 30.0
    return AnnotationSink(
        spool,
        transport,
        metrics,
        max_buffered_items=ann.max_buffered_items,
        batch_items=ann.batch_items,
        send_timeout_s=send_timeout_s,
    ).start()

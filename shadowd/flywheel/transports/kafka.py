"""Transport ``kafka``: the annotation queue and the labels channel are topics on a broker.

Items are produced to the lane's topic (acks=all, idempotent, key = request
id) by the sink's sender from the spool; the rotation's annotators share one
consumer group per lane (``shadowd.annotate.<rotation>`` for the review lane,
``shadowd.annotate.<rotation>.evaluation`` for the evaluation lane) and commit
an item's offset only once its label is acked on the labels topic; the daemon
consumes the labels topic in group ``shadowd.labels-join`` and commits after
the joins. Every Kafka client shadowd builds is built here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from shadowd.configbase import Strict
from shadowd.errors import AnnotateError, ConfigError, DeliveryError
from shadowd.flywheel.spool import SpoolRecord
from shadowd.flywheel.transports.base import Backlog, Clock, LabelSource, QueueReader, SendResult, consumer_group
from shadowd.records import AnnotationItem, Label, Lane
from shadowd.sampling import Shard

__all__ = ["LABELS_GROUP", "KafkaProducerSide", "KafkaTransport", "KafkaTransportConfig", "kafka_backlog"]

log = logging.getLogger(__name__)

LABELS_GROUP = "shadowd.labels-join"


class KafkaTransportConfig(Strict):
    """Annotation items and annotators' labels on Kafka topics."""

    type: Literal["kafka"] = Field(description="kafka: items and labels travel on Kafka topics.")
    bootstrap_servers: list[str] = Field(min_length=1, description="host:port of the brokers.")
    annotations_topic: str = Field(
        "shadowd.annotations", description="Topic of the review lane (divergent, high-loss, expectation items)."
    )
    evaluation_topic: str = Field(
        "shadowd.annotations.evaluation",
        description="Topic of the evaluation lane (the random sample of disagreements annotators are served first).",
    )
    labels_topic: str = Field("shadowd.labels", description="Topic annotators' labels are produced to.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How clients talk to the brokers (kafka-python security_protocol)."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None,
        description="SASL mechanism with SASL_PLAINTEXT / SASL_SSL; the user name and password come from the "
        "sasl_*_env or sasl_*_file options.",
    )
    sasl_username_env: str | None = Field(None, description="Environment variable holding the SASL user name.")
    sasl_password_env: str | None = Field(None, description="Environment variable holding the SASL password.")
    sasl_username_file: Path | None = Field(
        None, description="File holding the SASL user name (e.g. a mounted Secret); instead of sasl_username_env."
    )
    sasl_password_file: Path | None = Field(
        None, description="File holding the SASL password (e.g. a mounted Secret); instead of sasl_password_env."
    )
    ssl_cafile: Path | None = Field(None, description="CA bundle for SSL.")
    ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM) for SSL / SASL_SSL: mutual TLS, the broker knows shadowd by it."
    )
    ssl_keyfile: Path | None = Field(None, description="Private key (PEM) of ssl_certfile, if not inside it.")
    ssl_password_env: str | None = Field(
        None, description="Environment variable holding the password of ssl_keyfile, if it is encrypted."
    )
    ssl_password_file: Path | None = Field(
        None, description="File holding the password of ssl_keyfile, if it is encrypted; instead of ssl_password_env."
    )
    delivery_timeout_ms: int = Field(
        30_000, gt=0, description="Give up on a send after this long; the item stays in the spool."
    )

    @model_validator(mode="after")
    def _credentials_fit(self) -> KafkaTransportConfig:
        for name in ("sasl_username", "sasl_password", "ssl_password"):
            if getattr(self, f"{name}_env") and getattr(self, f"{name}_file"):
                raise ValueError(f"give {name}_env or {name}_file, not both")
        if self.sasl_mechanism and not (
            (self.sasl_username_env or self.sasl_username_file) and (self.sasl_password_env or self.sasl_password_file)
        ):
            raise ValueError(
                f"sasl_mechanism {self.sasl_mechanism} needs the user name and password: "
                "sasl_username_env or sasl_username_file, and sasl_password_env or sasl_password_file"
            )
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate it belongs to)")
        ssl = [k for k in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(self, k)]
        if ssl and self.security_protocol not in ("SSL", "SASL_SSL"):
            raise ValueError(f"{', '.join(ssl)} need security_protocol SSL or SASL_SSL, not {self.security_protocol}")
        return self

    def build(self, data_dir: Path, shard: Shard | None = None) -> KafkaTransport:
        kafka_client_config(self)  # fail at start, naming the key, when a credential cannot be read
        # Each hub shard reads every label in a group of its own and keeps those of the request ids it owns.
        group = LABELS_GROUP if shard is None or shard.count == 1 else f"{LABELS_GROUP}.shard-{shard.index}"
        return KafkaTransport(self, group)


def _credential(kafka: KafkaTransportConfig, name: str) -> str | None:
    """The secret ``name`` (e.g. sasl_password) from its ``_env`` variable or ``_file``; None if neither is set.
    Errors name the key, never the value."""
    env: str | None = getattr(kafka, f"{name}_env")
    path: Path | None = getattr(kafka, f"{name}_file")
    if env:
        if env not in os.environ:
            raise ConfigError(f"annotations.sink.{name}_env: environment variable {env} is not set")
        return os.environ[env]
    if path:
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"annotations.sink.{name}_file: cannot read {path}: {err}") from None
    return None


def kafka_client_config(kafka: KafkaTransportConfig) -> dict[str, Any]:
    """Connection settings shared by every producer and consumer (secrets from env or files)."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": list(kafka.bootstrap_servers),
        "security_protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        cfg["sasl_mechanism"] = kafka.sasl_mechanism
        cfg["sasl_plain_username"] = _credential(kafka, "sasl_username")
        cfg["sasl_plain_password"] = _credential(kafka, "sasl_password")
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path: Path | None = getattr(kafka, key)
        if path is not None:
            if not path.is_file():
                raise ConfigError(f"annotations.sink.{key}: {path} is not a readable file")
            cfg[key] = str(path)
    password = _credential(kafka, "ssl_password")
    if password is not None:
        cfg["ssl_password"] = password
    return cfg


def _producer_settings(kafka: KafkaTransportConfig) -> dict[str, Any]:
    delivery_ms = kafka.delivery_timeout_ms
    return {
        **kafka_client_config(kafka),
        "acks": "all",
        "enable_idempotence": True,
        # kafka-python needs delivery >= request timeout + linger.
        "request_timeout_ms": max(1, min(30_000, delivery_ms - 5)),
        "delivery_timeout_ms": delivery_ms,
        "max_block_ms": min(delivery_ms, 10_000),
    }


def delivery_error(err: BaseException, of_a_record: bool = True) -> DeliveryError:
    """A Kafka client failure as shadowd's delivery error, with what retrying can do about it.

    A record the broker will never take (too large, corrupt) is poison: set
    aside. A setup that is wrong (credentials, ACLs, protocol) is not
    retriable: everything is kept and retried slowly, loudly. Anything else,
    including kafka-python's non-retriable UnknownProducerIdError after a
    broker restart, is cured by a fresh producer and retried normally.
    ``of_a_record`` False: the failure came before any record was sent, so no
    record is to blame.
    """
    from kafka import errors as ke

    poison = (ke.MessageSizeTooLargeError, ke.RecordListTooLargeError, ke.CorruptRecordError, ke.InvalidRecordError)
    setup = (
        ke.AuthorizationError,
        ke.SaslAuthenticationFailedError,
        ke.UnsupportedVersionError,
        ke.UnsupportedSaslMechanismError,
        ke.IllegalSaslStateError,
    )
    message = f"{type(err).__name__}: {err}"
    fixable_by_setup_only = isinstance(err, (*setup, ConfigError))  # e.g. a credentials file gone missing
    return DeliveryError(message, retriable=not fixable_by_setup_only, poison=of_a_record and isinstance(err, poison))


def _force_close(producer: Any) -> None:
    try:
        producer.close(timeout=0, null_logger=True)
    except Exception:
        # close(0) raises when records are still in flight and then skips its
        # own force-close; do it so the client's I/O thread ends.
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()


class KafkaProducerSide:
    """Produces spooled records to one topic; key = record key (request id), value = the item JSON.

    A producer that failed is thrown away and a fresh one built on the next
    send: after a broker restart or a delivery timeout, kafka-python's
    idempotent producer does not recover on its own (measured here against
    tansu: UnknownProducerIdError, then every later send timing out).
    """

    def __init__(
        self, kafka: KafkaTransportConfig, topic: str | None = None, client_factory: Callable[..., Any] | None = None
    ):
        self._kafka = kafka
        self.topic = topic or kafka.annotations_topic
        self.send_timeout_s = kafka.delivery_timeout_ms / 1000
        self._factory = client_factory
        self._producer: Any = None
        self._lock = threading.Lock()
        self._closed = False

    def _make(self) -> Any:
        from kafka import KafkaProducer

        delivery_ms = self._kafka.delivery_timeout_ms
        factory = self._factory or KafkaProducer
        return factory(**_producer_settings(self._kafka), linger_ms=5, bootstrap_timeout_ms=min(delivery_ms, 10_000))

    def send(self, records: Sequence[SpoolRecord], timeout_s: float) -> SendResult:
        deadline = time.monotonic() + timeout_s
        # The lock guards only the producer reference: building a producer and
        # send() can block (bootstrap, metadata) and close() must not wait for that.
        with self._lock:
            if self._closed:
                return SendResult(0, DeliveryError("transport closed"))
            producer = self._producer
        try:
            if producer is None:
                producer = self._make()
                with self._lock:
                    if self._is_closed():  # closed while the producer was being built
                        _force_close(producer)
                        return SendResult(0, DeliveryError("transport closed"))
                    self._producer = producer
            futures = [
                producer.send(self.topic, key=r.key.encode(), value=json.dumps(r.value, separators=(",", ":")).encode())
                for r in records
            ]
        except Exception as err:  # any client failure before the sends: retry later
            self._discard(producer)
            return SendResult(0, delivery_error(err, of_a_record=False))
        acked = 0
        for fut in futures:
            try:
                fut.get(timeout=max(0.001, deadline - time.monotonic()))
            except Exception as err:
                self._discard(producer)
                return SendResult(acked, delivery_error(err))
            acked += 1
        return SendResult(acked)

    def _is_closed(self) -> bool:
        return self._closed

    def _discard(self, producer: Any = None) -> None:
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


class _KafkaQueue:
    """The annotator's side: one record at a time from the rotation's consumer group."""

    def __init__(self, kafka: KafkaTransportConfig, topic: str, group: str):
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(
            topic,
            **kafka_client_config(kafka),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=1,  # hold one item at a time: the rest stay for other annotators
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )

    def next(self, timeout_s: float) -> tuple[AnnotationItem, Any] | None:
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            for tp, records in self._consumer.poll(timeout_ms=max(1, left_ms), max_records=1).items():
                rec = records[0]
                return AnnotationItem.model_validate_json(rec.value), (tp, rec.offset)
            if time.monotonic() >= deadline:
                return None

    def commit(self, handle: Any) -> None:
        from kafka.structs import OffsetAndMetadata

        tp, offset = handle
        try:
            self._consumer.commit({tp: OffsetAndMetadata(offset + 1, "", -1)})
        except Exception as err:
            raise AnnotateError(
                f"could not commit the queue offset ({type(err).__name__}: {err}); the label is saved, "
                "the item may come back and will be passed over by request id"
            ) from None

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class _KafkaLabelWriter:
    """The annotator's label, produced to the labels topic and acked before the item counts as done."""

    def __init__(self, kafka: KafkaTransportConfig):
        self._kafka = kafka
        self._producer: Any = None

    def write(self, label: Label) -> None:
        from kafka import KafkaProducer

        kafka = self._kafka
        try:
            if self._producer is None:
                self._producer = KafkaProducer(**_producer_settings(kafka))
            self._producer.send(
                kafka.labels_topic, key=label.request_id.encode(), value=label.model_dump_json().encode()
            ).get(timeout=kafka.delivery_timeout_ms / 1000)
        except Exception as err:
            producer, self._producer = self._producer, None
            if producer is not None:
                with contextlib.suppress(Exception):
                    producer.close(timeout=0, null_logger=True)
            raise AnnotateError(
                f"label for {label.request_id} not written to topic {kafka.labels_topic}: "
                f"{type(err).__name__}: {err}; the item stays current, try again"
            ) from None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)


class _KafkaLabelSource:
    """The daemon's side: the labels topic in group ``shadowd.labels-join`` (``.shard-<i>`` for each shard of
    a sharded hub), committed after the joins."""

    def __init__(self, kafka: KafkaTransportConfig, group: str = LABELS_GROUP):
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(
            kafka.labels_topic,
            **kafka_client_config(kafka),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1000,
        )

    def poll(self, timeout_s: float) -> list[bytes]:
        batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        return [rec.value for records in batches.values() for rec in records]

    def commit(self) -> None:
        self._consumer.commit()  # after the joins: a crash re-joins, duplicates are recognised

    def close(self) -> None:
        self._consumer.close()


def kafka_backlog(
    kafka: KafkaTransportConfig,
    rotation_name: str,
    clock: Clock,
    max_scan: int = 10_000,
    max_scan_s: float = 3.0,
    lane: Lane = "review",
) -> Backlog:
    """Items on the annotations topic past the rotation's committed offsets, and the oldest one's age.

    Reads from the committed offsets with a consumer that never joins the
    group nor commits, up to the end offsets as they were when the scan
    began (items arriving meanwhile are the next scan's, so steady traffic
    cannot keep it reading), at most ``max_scan`` records or ``max_scan_s``;
    beyond that the broker's end offsets give the count. (Counting, not end
    offsets alone: tansu 0.6 reports end offsets short of the last record for
    multi-record batches; a poll returns whole batches, so reading up to a
    short end offset still counts them.)
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        **kafka_client_config(kafka),
        group_id=consumer_group(rotation_name, lane),
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )
    topic = kafka.evaluation_topic if lane == "evaluation" else kafka.annotations_topic
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return Backlog(0, 0.0)
        begin = consumer.beginning_offsets(tps)
        snapshot_end = consumer.end_offsets(tps)
        start = {tp: max(consumer.committed(tp) or 0, begin[tp]) for tp in tps}
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start[tp])
        scanned = 0
        oldest = now = clock()
        empty_polls = 0
        deadline = time.monotonic() + max_scan_s
        while scanned < max_scan and empty_polls < 2 and time.monotonic() < deadline:
            batches = consumer.poll(timeout_ms=300, max_records=1000)
            empty_polls = 0 if batches else empty_polls + 1
            for records in batches.values():
                for rec in records:
                    created = json.loads(rec.value).get("created_ts")
                    oldest = min(oldest, created if created is not None else rec.timestamp / 1000)
                scanned += len(records)
            if all(consumer.position(tp) >= snapshot_end[tp] for tp in tps):
                break
        items = scanned
        if scanned >= max_scan or time.monotonic() >= deadline:
            end = consumer.end_offsets(tps)
            items = max(scanned, sum(max(0, end[tp] - start[tp]) for tp in tps))
        return Backlog(items, max(0.0, now - oldest) if items else 0.0)
    finally:
        consumer.close(autocommit=False)


class KafkaTransport:
    name = "kafka"
    backlog_every_s = 15.0  # a scan reads up to max_scan records: not every second

    def __init__(self, cfg: KafkaTransportConfig, labels_group: str = LABELS_GROUP):
        self.cfg = cfg
        self.labels_group = labels_group

    def topic(self, lane: Lane) -> str:
        return self.cfg.evaluation_topic if lane == "evaluation" else self.cfg.annotations_topic

    def producer(self, lane: Lane) -> KafkaProducerSide:
        return KafkaProducerSide(self.cfg, self.topic(lane))

    def queue_reader(self, rotation_name: str, lane: Lane, clock: Clock) -> QueueReader:
        return _KafkaQueue(self.cfg, self.topic(lane), consumer_group(rotation_name, lane))

    def label_writer(self) -> _KafkaLabelWriter:
        return _KafkaLabelWriter(self.cfg)

    def label_source(self) -> LabelSource:
        return _KafkaLabelSource(self.cfg, self.labels_group)

    def backlog(self, rotation_name: str, lane: Lane, clock: Clock) -> Backlog:
        return kafka_backlog(self.cfg, rotation_name, clock, lane=lane)

    def handled_seq(self, rotation_name: str, lane: Lane) -> int | None:
        return None  # delivery is the broker's ack, not the rotation's progress

"""The flywheel: the one object the comparator deployment ("hub") holds for it.

Data flow::

    Comparator.add(pair) -> items --> Flywheel.record(pair, items)
        -> PairStore.put(pair, tags=reasons)          (label joins, bounded, persistent)
        -> ItemPolicy.admit (dedup, quotas, rate, on-call assignee, redaction)
        -> AnnotationSink.submit                      (spool [-> Kafka])
    POST /feedback ------------> Flywheel.feedback(label) -> JoinResult
    labels topic (annotators) -> labels thread -----^     (same join; on_joined callback)
        join: pair + label -> per-role loss (example_loss)
           -> on_joined(pair, label, losses)          (the comparator's loss-based checks)
           -> high loss? queue the input (reason high_loss) even if the models agree
           -> hard example? append to suites (slice.<s>, tag.<t>, all)

A label whose request id was never stored gets "unknown" (404), one whose
pair aged out gets "expired" (410), one that does not fit the task gets
"rejected" (422), one delivered twice gets "duplicate" and is not counted again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shadowd.compare.loss import example_loss
from shadowd.compare.slices import SliceMatcher
from shadowd.config import ShadowdConfig
from shadowd.flywheel.pairs import PairStore
from shadowd.flywheel.policy import ItemPolicy
from shadowd.flywheel.rotation import Rotation
from shadowd.flywheel.sink import AnnotationSink, build_sink, kafka_client_config
from shadowd.flywheel.spool import SpoolError
from shadowd.flywheel.suites import SuiteExample, SuiteStore
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import AnnotationItem, Label, Pair

__all__ = ["LABELS_GROUP", "Flywheel", "JoinResult", "OnJoined", "suites_dir"]

log = logging.getLogger(__name__)

LABELS_GROUP = "shadowd.labels-join"
_BACKLOG_EVERY_S = 15.0

OnJoined = Callable[[Pair, Label, dict[str, float]], None]
JoinStatus = Literal["joined", "skipped", "duplicate", "unknown", "expired", "rejected"]
_HTTP = {"joined": 200, "skipped": 200, "duplicate": 200, "unknown": 404, "expired": 410, "rejected": 422}


@dataclass(frozen=True)
class JoinResult:
    """What became of one label; ``http_status`` is what ``POST /feedback`` answers."""

    status: JoinStatus
    request_id: str
    message: str
    pair: Pair | None = None
    losses: dict[str, float] = field(default_factory=dict)
    suites: list[str] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        return _HTTP[self.status]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "http_status": self.http_status,
            "request_id": self.request_id,
            "message": self.message,
            "losses": self.losses,
            "suites": self.suites,
        }


def suites_dir(config: ShadowdConfig) -> Path:
    return config.labels.suites_dir or Path(config.data_dir) / "suites"


class Flywheel:
    """Pair store, item policy, annotation sink, label joins, suites; thread-safe."""

    def __init__(
        self,
        config: ShadowdConfig,
        metrics: ShadowdMetrics | None = None,
        clock: Callable[[], float] = time.time,
        sink: AnnotationSink | None = None,
        backlog_every_s: float = _BACKLOG_EVERY_S,
    ):
        self.config = config
        self._metrics = metrics
        self._clock = clock
        ann, lab = config.annotations, config.labels
        self.rotation = Rotation(ann.rotation, clock) if ann.rotation is not None else None
        self.policy = ItemPolicy(ann.policy, ann.redaction, clock, self.rotation, metrics)
        self.pairs = PairStore(Path(config.data_dir) / "pairs", lab.pair_retention_s, lab.max_pairs, clock)
        self.suites = SuiteStore(suites_dir(config), config.task, clock)
        self.sink = sink if sink is not None else build_sink(config, metrics)
        self._slices = SliceMatcher(config.slices)
        self._lock = threading.Lock()
        self._recent_losses: deque[float] = deque(maxlen=lab.high_loss_window)
        self._on_joined: OnJoined | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counts = {s: 0 for s in _HTTP}
        self._high_loss_queued = 0
        self.backlog: dict[str, float] | None = None
        self._backlog_every_s = backlog_every_s

    # --- lifecycle ---

    def start(self, on_joined: OnJoined | None = None) -> Flywheel:
        """Start the labels-topic consumer (and the backlog monitor) when Kafka is configured."""
        self._on_joined = on_joined
        if self._threads:
            return self
        if self.config.annotations.kafka is not None:
            targets = [(self._consume_labels, "shadowd-labels"), (self._watch_backlog, "shadowd-backlog")]
        else:
            targets = [(self._tail_labels_file, "shadowd-labels")]
        for target, name in targets:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        for t in self._threads:
            t.join(max(0.1, (deadline - time.monotonic()) / 2))
        self.sink.close(max(0.1, deadline - time.monotonic()))
        self.pairs.close()

    # --- pairs in ---

    def record(self, pair: Pair, items: list[AnnotationItem]) -> None:
        """Keep the pair for label joins; send the items the policy admits to the annotation queue."""
        self.pairs.put(pair, tags=[it.reason for it in items])
        for item in items:
            self._submit(item)

    def submit(self, item: AnnotationItem) -> bool:
        """Queue an item that has no pair (e.g. an expectation violation) through the policy."""
        return self._submit(item)

    def _submit(self, item: AnnotationItem) -> bool:
        with self._lock:
            admitted = self.policy.admit(item)
        if admitted is None:
            return False
        self.sink.submit(admitted)
        return True

    # --- labels in ---

    def feedback(self, label: Label) -> JoinResult:
        """Join one label (POST /feedback or the labels topic) to its pair."""
        result = self._join(label)
        with self._lock:
            self._counts[result.status] += 1
        if self._metrics is not None:
            outcome = "joined" if result.status in ("joined", "skipped", "duplicate") else result.status
            self._metrics.labels.labels(source=label.source, outcome=outcome).inc()
        return result

    def _join(self, label: Label) -> JoinResult:
        rid = label.request_id
        look = self.pairs.get(rid)
        if look.status == "unknown":
            return JoinResult(
                "unknown",
                rid,
                f"no pair stored for request id {rid!r}: it was not sampled for shadowing, or shadowd never saw it",
            )
        if look.status == "expired":
            return JoinResult(
                "expired",
                rid,
                f"the pair for request id {rid!r} expired: labels are joined for "
                f"{self.config.labels.pair_retention_s:g} s (labels.pair_retention_s)",
            )
        pair = look.pair
        assert pair is not None
        if label.verdict != "label" or label.label is None:
            self.pairs.mark_labelled(rid, label.source)
            return JoinResult("skipped", rid, f"{label.verdict} recorded for {rid!r}; no loss computed", pair)
        try:
            losses = {
                role: example_loss(self.config.task, out.values, label.label)
                for role, out in (("production", pair.production), ("candidate", pair.candidate))
                if out is not None and out.ok and out.values
            }
        except (ValueError, TypeError) as err:
            return JoinResult("rejected", rid, f"label for {rid!r} does not fit the {self.config.task} task: {err}")
        if not self.pairs.mark_labelled(rid, label.source):
            return JoinResult("duplicate", rid, f"{label.source} label for {rid!r} was already joined", pair, losses)
        high = self._high_loss(pair, label, losses)
        tags = list(look.tags) + (["high_loss"] if high else []) + _outcome_tags(self.config.task, pair, label)
        suites = []
        if look.tags or high:
            suites = self._add_to_suites(pair, label, tags)
        return JoinResult("joined", rid, f"joined {label.source} label for {rid!r}", pair, losses, suites)

    def _high_loss(self, pair: Pair, label: Label, losses: dict[str, float]) -> bool:
        if not losses:
            return False
        worst = max(losses.values())
        cfg = self.config.labels
        with self._lock:
            window = np.asarray(self._recent_losses) if len(self._recent_losses) >= cfg.high_loss_min_labels else None
            self._recent_losses.append(worst)
        high = cfg.high_loss_threshold is not None and worst > cfg.high_loss_threshold
        if window is not None and worst > float(np.quantile(window, cfg.high_loss_quantile)):
            high = True
        if not high:
            return False
        if label.source != "annotator":  # a person already looked at annotator-labelled inputs
            detail = ", ".join(f"{role} loss {v:.3g}" for role, v in losses.items())
            item = AnnotationItem(
                request_id=pair.request_id,
                reason="high_loss",
                priority=worst,
                slices=list(self._slices.match(pair.features)),
                features=pair.features,
                inputs=pair.inputs,
                production=pair.production,
                candidate=pair.candidate,
                detail=f"label {label.label!r}: {detail}",
                created_ts=self._clock(),
            )
            if self._submit(item):
                with self._lock:
                    self._high_loss_queued += 1
        return True

    def _add_to_suites(self, pair: Pair, label: Label, tags: list[str]) -> list[str]:
        if pair.inputs is None:
            return []  # nothing to replay without inputs (shadow.store_inputs off)
        slices = list(self._slices.match(pair.features))
        example = SuiteExample(
            request_id=pair.request_id,
            inputs=pair.inputs,
            label=label.label,  # type: ignore[arg-type]
            slices=slices,
            tags=list(dict.fromkeys(tags)),
            features=self.policy.redactor.apply_features(pair.features),
            production=pair.production.values if pair.production.ok else None,
            candidate=pair.candidate.values if pair.candidate is not None and pair.candidate.ok else None,
            label_source=label.source,
            ts=self._clock(),
        )
        written = self.suites.add(example)
        if self._metrics is not None:
            for name, count in self.suites.counts().items():
                self._metrics.suite_examples.labels(suite=name).set(count)
        return written

    # --- background threads (Kafka) ---

    def _consume_labels(self) -> None:
        from kafka import KafkaConsumer

        kafka = self.config.annotations.kafka
        assert kafka is not None
        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = KafkaConsumer(
                        kafka.labels_topic,
                        **kafka_client_config(kafka),
                        group_id=LABELS_GROUP,
                        enable_auto_commit=False,
                        auto_offset_reset="earliest",
                        session_timeout_ms=10_000,
                        heartbeat_interval_ms=1000,
                    )
                batches = consumer.poll(timeout_ms=500)
                for records in batches.values():
                    for rec in records:
                        self._on_topic_label(rec.value)
                if batches:
                    consumer.commit()  # after the joins: a crash re-joins, duplicates are recognised
            except Exception as err:
                log.warning("labels consumer: %s: %s", type(err).__name__, err)
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        consumer.close()
                    consumer = None
                self._stop.wait(1.0)
        if consumer is not None:
            consumer.close()

    def _on_topic_label(self, raw: bytes) -> None:
        try:
            label = Label.model_validate_json(raw)
        except ValueError as err:
            log.error("labels topic: not a Label, skipped: %s", str(err).splitlines()[0])
            if self._metrics is not None:
                self._metrics.labels.labels(source="annotator", outcome="rejected").inc()
            return
        try:  # one bad label must not stop the stream (nor, on Kafka, be re-polled forever)
            result = self.feedback(label)
            if result.status == "joined" and self._on_joined is not None and result.pair is not None:
                self._on_joined(result.pair, label, result.losses)
        except Exception:
            log.exception("label for %s skipped", label.request_id)
            if self._metrics is not None:
                self._metrics.labels.labels(source=label.source, outcome="rejected").inc()

    def _tail_labels_file(self) -> None:
        """Embedded mode: annotators' labels arrive in the local labels file instead of a topic."""
        from shadowd.flywheel.annotate import labels_path, spool_backlog

        path = labels_path(self.config)
        offset_path = path.with_name("joined.offset")
        try:
            offset = int(offset_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            offset = 0
        name = self.rotation.name if self.rotation is not None else "default"
        handled_path = Path(self.config.data_dir) / "annotate" / f"{name}.offset"
        while not self._stop.wait(1.0):
            if path.exists() and path.stat().st_size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    for line in f:
                        if not line.endswith(b"\n"):
                            break  # half-written: read it next time
                        self._on_topic_label(line)
                        offset += len(line)
                offset_path.write_text(str(offset))  # a crash re-reads a little; duplicates are recognised
            try:
                handled = int(handled_path.read_text().strip()) if handled_path.exists() else 0
                spool = self.sink.spool
                # Embedded mode: "delivered" means handled by the rotation, so the
                # spool compacts what the annotators are done with.
                if spool.delivered_seq < min(handled, spool.last_seq):
                    spool.commit(min(handled, spool.last_seq))
                    if self._metrics is not None:
                        self._metrics.spool_items.set(spool.pending_count)
                backlog = spool_backlog(spool.directory, handled, self._clock)
            except (OSError, ValueError, SpoolError):
                continue
            self.backlog = {"items": backlog.items, "oldest_age_s": backlog.oldest_age_s}
            if self._metrics is not None:
                self._metrics.annotation_backlog.labels(rotation=name).set(backlog.items)
                self._metrics.annotation_oldest_age.labels(rotation=name).set(backlog.oldest_age_s)

    def _watch_backlog(self) -> None:
        from shadowd.flywheel.annotate import kafka_backlog

        kafka = self.config.annotations.kafka
        assert kafka is not None
        name = self.rotation.name if self.rotation is not None else "default"
        while not self._stop.wait(self._backlog_every_s if self.backlog is not None else 1.0):
            try:
                backlog = kafka_backlog(kafka, name, self._clock)
            except Exception as err:
                log.debug("backlog: %s", err)
                continue
            self.backlog = {"items": backlog.items, "oldest_age_s": backlog.oldest_age_s}
            if self._metrics is not None:
                self._metrics.annotation_backlog.labels(rotation=name).set(backlog.items)
                self._metrics.annotation_oldest_age.labels(rotation=name).set(backlog.oldest_age_s)

    # --- report ---

    def stats(self) -> dict[str, Any]:
        s = self.sink.stats()
        with self._lock:
            labels = dict(self._counts)
            policy = self.policy.stats()
            high = self._high_loss_queued
        return {
            "sink": {
                "queued": s.queued,
                "spooled": s.spooled,
                "delivered": s.delivered,
                "failed": s.failed,
                "pending": s.pending,
                "kafka": s.kafka,
                "last_error": s.last_error,
            },
            "policy": policy,
            "labels": labels,
            "high_loss_queued": high,
            "on_call": self.rotation.on_call() if self.rotation is not None else None,
            "backlog": self.backlog,
            "suites": self.suites.counts(),
        }


def _outcome_tags(task: str, pair: Pair, label: Label) -> list[str]:
    """Which model got a classification wrong: the failure tags suites are named by."""
    if task != "classification" or label.label is None or isinstance(label.label, list):
        return []

    def wrong(values: list[float] | None) -> bool | None:
        return None if not values else int(np.argmax(values)) != int(label.label)  # type: ignore[arg-type]

    prod = wrong(pair.production.values if pair.production.ok else None)
    cand = wrong(pair.candidate.values if pair.candidate is not None and pair.candidate.ok else None)
    if prod and cand:
        return ["both_wrong"]
    if cand:
        return ["candidate_wrong"]
    if prod:
        return ["production_wrong"]
    return []

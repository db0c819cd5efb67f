"""The flywheel: the annotation side of shadowd, one object the hub holds.

Data flow::

    Comparator.add(pair) -> items --> Flywheel.record(pair, items)      (one pair per candidate model)
        -> PairStore.put(pair, tags=reasons)          (label joins, bounded, persistent)
        -> ItemPolicy.admit (dedup, quotas, rate, on-call assignee, redaction)
        -> AnnotationSink.submit                      (spool [-> the transport's producer, e.g. Kafka])
    POST /feedback ------------> Flywheel.feedback(label) -> JoinResult
    transport's label source --> labels thread -----^     (annotators' labels; same join; on_joined callback)
        join: every candidate's pair of the request + label -> per-role loss (example_loss)
           -> provenance, per pair: random feedback / that candidate's own evaluation sample
              (used by its quality checks), or excluded with why (targeted feedback, the
              priority queue, a skip)
           -> on_joined(result, label)                 (the comparator's label-based checks)
           -> high loss? queue the input (reason high_loss) even if the models agree
           -> hard example? append to suites (slice.<s>, tag.<t>, all)

A label whose request id was never stored gets "unknown" (404), one whose
pair aged out gets "expired" (410), one that does not fit the task gets
"rejected" (422), one delivered twice gets "duplicate" and is not counted again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shadowd.compare.loss import example_loss
from shadowd.compare.slices import SliceMatcher
from shadowd.config import ShadowdConfig
from shadowd.flywheel.journal import Decision, JournalEntry, LabelJournal, journal_path
from shadowd.flywheel.pairs import PairStore, candidate_of
from shadowd.flywheel.policy import ItemPolicy
from shadowd.flywheel.rotation import Rotation
from shadowd.flywheel.sink import AnnotationSink
from shadowd.flywheel.suites import SuiteExample, SuiteStore
from shadowd.flywheel.transports.base import LabelSource, Transport
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.observe.supervise import supervised
from shadowd.records import AnnotationItem, Label, LabelChannel, Lane, Pair
from shadowd.sampling import Shard

__all__ = ["Flywheel", "JoinResult", "JoinedPair", "OnJoined", "merge_flywheel_stats", "suites_dir"]

log = logging.getLogger(__name__)

_RETRY_S = 1.0

OnJoined = Callable[["JoinResult", Label], None]
JoinStatus = Literal["joined", "skipped", "duplicate", "unknown", "expired", "rejected"]
_HTTP = {"joined": 200, "skipped": 200, "duplicate": 200, "unknown": 404, "expired": 410, "rejected": 422}
_NOT_STORED = "not stored when the label arrived"


@dataclass(frozen=True)
class JoinedPair:
    """One candidate's pair of a labelled request, and whether that candidate's quality checks may use the label."""

    pair: Pair
    channel: LabelChannel | None = None  # how the label was chosen, when they may
    excluded: str | None = None  # else why they may not


@dataclass(frozen=True)
class JoinResult:
    """What became of one label; ``http_status`` is what ``POST /feedback`` answers.

    A label reaches every candidate's pair of its request: ``joined`` holds one decision per pair
    (ordered by candidate name); ``pair``, ``channel`` and ``excluded`` are its first one's.
    """

    status: JoinStatus
    request_id: str
    message: str
    pair: Pair | None = None
    losses: dict[str, float] = field(default_factory=dict)
    suites: list[str] = field(default_factory=list)
    channel: LabelChannel | None = None  # how the label was chosen, when the quality checks may use it
    excluded: str | None = None  # else why they may not
    seq: int | None = None  # its entry in the labels journal (joined and skipped labels)
    joined: tuple[JoinedPair, ...] = ()  # every pair of the request (joined and skipped labels)

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
            "used_for_quality": self.channel is not None or any(j.channel is not None for j in self.joined),
            "excluded": self.excluded,
        }


def suites_dir(config: ShadowdConfig) -> Path:
    return config.labels.suites_dir or Path(config.data_dir) / "suites"


class Flywheel:
    """Pair store, item policy, annotation sink, label joins, suites; thread-safe."""

    def __init__(
        self,
        config: ShadowdConfig,
        transport: Transport,
        sinks: Mapping[Lane, AnnotationSink],
        metrics: ShadowdMetrics | None = None,
        clock: Callable[[], float] = time.time,
        shard: Shard = Shard(),
    ):
        self.config = config
        self.shard = shard  # a sharded hub's shard takes only the labels of the request ids it owns
        self.transport = transport
        self.sinks = dict(sinks)
        self._metrics = metrics
        self._clock = clock
        ann, lab = config.annotations, config.labels
        self.rotation = Rotation(ann.rotation, clock) if ann.rotation is not None else None
        self._rotation_name = self.rotation.name if self.rotation is not None else "default"
        self.policy = ItemPolicy(ann.policy, ann.redaction, clock, self.rotation, metrics)
        self.pairs = PairStore(
            Path(config.data_dir) / "pairs", lab.pair_retention_s, lab.max_pairs, clock, lab.max_pair_store_bytes
        )
        self.suites = SuiteStore(suites_dir(config), config.task, clock)
        self.journal = LabelJournal(journal_path(config.data_dir))
        self._join_lock = threading.Lock()  # one join at a time: check, journal, mark stay in order
        self._slices = SliceMatcher(config.slices)
        self._lock = threading.Lock()
        self._recent_losses: deque[float] = deque(maxlen=lab.high_loss_window)
        self._on_joined: OnJoined | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counts = dict.fromkeys(_HTTP, 0)
        self._high_loss_queued = 0
        self.backlog: dict[str, Any] | None = None

    # --- lifecycle ---

    def start(self, on_joined: OnJoined | None = None, replay_after: int | None = None) -> Flywheel:
        """Replay the labels journal past ``replay_after`` (the seq the saved comparator state holds;
        None: replay nothing), then start the threads reading annotators' labels and probing the backlog."""
        self._on_joined = on_joined
        if self._threads:
            return self
        after = self.journal.last_seq if replay_after is None else replay_after
        replayed = self.replay(after)
        if replayed:
            log.info("labels journal: %d labels past seq %d replayed into the comparator", replayed, after)
        self.journal.advance_to(after)
        for target, name in ((self._labels_loop, "labels"), (self._backlog_loop, "backlog")):
            self._threads.append(supervised(name, target, self._stop, self._metrics))
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        for t in self._threads:
            t.join(max(0.1, (deadline - time.monotonic()) / 2))
        for sink in self.sinks.values():
            sink.close(max(0.1, deadline - time.monotonic()))
        self.pairs.close()

    # --- pairs in ---

    def record(self, pair: Pair, items: list[AnnotationItem]) -> None:
        """Keep the pair for label joins (one per request and candidate: another candidate's pair of the
        request is kept beside it); send the items the policy admits to the annotation queue."""
        # At rest the pair is redacted like the items (its label still lands in its slices: the
        # comparator recorded them on pair.selection before this point).
        self.pairs.put(self.policy.redactor.apply_pair(pair), tags=[it.reason for it in items])
        for item in items:
            self._submit(item)

    def record_many(self, entries: Sequence[tuple[Pair, Sequence[AnnotationItem]]]) -> None:
        """``record`` for several pairs: every pair redacted and stored in one pair-store transaction,
        then the items, in order (a pair is in the store before any item of the batch is queued)."""
        redact = self.policy.redactor.apply_pair
        self.pairs.put_many([(redact(pair), [it.reason for it in items]) for pair, items in entries])
        for _, items in entries:
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
        self.sinks[admitted.lane].submit(admitted)
        return True

    def flush(self, timeout_s: float) -> bool:
        """Wait until every lane's submitted items are spooled (and delivered, where there is a producer)."""
        deadline = time.monotonic() + timeout_s
        return all(sink.flush(max(0.0, deadline - time.monotonic())) for sink in self.sinks.values())

    # --- labels in ---

    def feedback(self, label: Label) -> JoinResult:
        """Join one label (POST /feedback or the labels channel) to its pair; tell ``on_joined``. Joins and their
        ``on_joined`` calls happen one at a time, in journal order, so the comparators' ``labels_seq`` never
        passes a label they have not taken yet (a state saved then, with the journal compacted, would lose it)."""
        with self._join_lock:
            result = self._join_locked(label)
            if result.status in ("joined", "skipped") and self._on_joined is not None:
                self._on_joined(result, label)
        with self._lock:
            self._counts[result.status] += 1
        if self._metrics is not None:
            outcome = "joined" if result.status in ("joined", "skipped", "duplicate") else result.status
            self._metrics.labels.labels(source=label.source, outcome=outcome).inc()
        return result

    def replay(self, after: int) -> int:
        """Apply the journal's entries past ``after`` again: pair-store marks, suites, ``on_joined``.
        Every step is idempotent, so an entry applied before the crash changes nothing twice."""
        done = 0
        for entry in self.journal.entries(after):
            rid = entry.label.request_id
            look = self.pairs.get(rid)
            if not look.pairs:
                log.warning(
                    "labels journal: the pairs of %r are gone (%s); its label cannot be replayed", rid, look.status
                )
                continue
            self.pairs.mark_labelled(rid, entry.label.source)
            if entry.channel is not None or any(channel is not None for channel, _ in entry.others.values()):
                self.pairs.mark_labelled(rid, "quality")
            joined = _replayed(entry, look.pairs)
            first = joined[0]
            if entry.status == "joined" and look.tags:
                self._add_to_suites(
                    first.pair, entry.label, list(look.tags) + _outcome_tags(self.config.task, first.pair, entry.label)
                )
            result = JoinResult(
                entry.status,  # type: ignore[arg-type]
                rid,
                "replayed from the labels journal",
                first.pair,
                channel=first.channel,
                excluded=first.excluded,
                seq=entry.seq,
                joined=joined,
            )
            if self._on_joined is not None:
                self._on_joined(result, entry.label)
            done += 1
        return done

    def _provenance(self, pair: Pair, label: Label, counted: bool) -> Decision:
        """How the label was chosen, for one candidate's pair: a channel its quality checks may use, or why not.

        Random feedback and annotators' labels of evaluation-sample items are
        uniform within their pair's cell; feedback declared targeted and the
        priority-ordered review lane are not. Each candidate's evaluation sample
        is its own design: a label drawn by one candidate's sample counts for
        another only if that one's sample drew the request too. A request counts
        once (``counted``: an earlier label of it was used): a second usable
        label of it is left out for every pair.
        """
        if label.verdict != "label":
            return None, "skipped by the annotator" if label.verdict == "skip" else "marked bad data"
        channel: LabelChannel | None = None
        if label.source == "feedback":
            if self.config.labels.feedback_selection != "random":
                return None, "targeted feedback (labels.feedback_selection)"
            channel = "feedback"
        elif pair.selection is not None and pair.selection.in_sample:
            channel = "evaluation"
        else:
            return None, "priority queue (not a random sample)"
        if counted:
            return None, "a second label of a pair already counted"
        return channel, None

    def _join_locked(self, label: Label) -> JoinResult:
        """Decide, journal (fsync), then mark: a label counts once it is in the journal, never before."""
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
        pairs = look.pairs
        pair = pairs[0]  # what suites store (its inputs and features are every pair's)
        if self.pairs.is_labelled(rid, label.source):
            return JoinResult("duplicate", rid, f"{label.source} label for {rid!r} was already joined", pair)
        counted = self.pairs.is_labelled(rid, "quality")
        if label.verdict != "label" or label.label is None:
            joined = tuple(JoinedPair(p, None, self._provenance(p, label, counted)[1]) for p in pairs)
            seq = self._journal("skipped", joined, label)
            self.pairs.mark_labelled(rid, label.source)
            message = f"{label.verdict} recorded for {rid!r}; no loss computed"
            return JoinResult("skipped", rid, message, pair, excluded=joined[0].excluded, seq=seq, joined=joined)
        outputs = [("production", pair.production), ("candidate", pair.candidate)]
        outputs += [(f"candidate:{p.candidate.model}", p.candidate) for p in pairs[1:] if p.candidate is not None]
        try:
            losses = {
                role: example_loss(self.config.task, out.values, label.label)
                for role, out in outputs
                if out is not None and out.ok and out.values
            }
        except (ValueError, TypeError) as err:
            return JoinResult("rejected", rid, f"label for {rid!r} does not fit the {self.config.task} task: {err}")
        joined = tuple(JoinedPair(p, *self._provenance(p, label, counted)) for p in pairs)
        seq = self._journal("joined", joined, label)
        self.pairs.mark_labelled(rid, label.source)
        if any(j.channel is not None for j in joined):
            self.pairs.mark_labelled(rid, "quality")
        high = self._high_loss(pairs, label, losses)
        tags = list(look.tags) + (["high_loss"] if high else []) + _outcome_tags(self.config.task, pair, label)
        suites = []
        if look.tags or high:
            suites = self._add_to_suites(pair, label, tags)
        message = f"joined {label.source} label for {rid!r}"
        first = joined[0]
        return JoinResult("joined", rid, message, pair, losses, suites, first.channel, first.excluded, seq, joined)

    def _journal(self, status: str, joined: Sequence[JoinedPair], label: Label) -> int:
        """Journal the decision of every pair: the first's in the entry itself, the others' by candidate."""
        first, rest = joined[0], joined[1:]
        others = {candidate_of(j.pair): (j.channel, j.excluded) for j in rest}
        return self.journal.append(status, first.channel, first.excluded, label, others, candidate_of(first.pair))

    def _high_loss(self, pairs: Sequence[Pair], label: Label, losses: dict[str, float]) -> bool:
        """The worst loss over production and every candidate, against a threshold and the recent quantile;
        a high one queues the input, with the candidate whose loss was worst (the first for production's)."""
        if not losses:
            return False
        worst_role = max(losses, key=losses.__getitem__)
        worst = losses[worst_role]
        pair = next((p for p in pairs[1:] if f"candidate:{candidate_of(p)}" == worst_role), pairs[0])
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
                slices=self._slices_of(pair),
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

    def _slices_of(self, pair: Pair) -> list[str]:
        """The pair's slices as recorded when it was compared (stored features may be redacted)."""
        if pair.selection is not None and pair.selection.slices is not None:
            return list(pair.selection.slices)
        return list(self._slices.match(pair.features))

    def _add_to_suites(self, pair: Pair, label: Label, tags: list[str]) -> list[str]:
        if pair.inputs is None:
            return []  # nothing to replay without inputs (shadow.store_inputs off)
        slices = self._slices_of(pair)
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
            selected_by=pair.candidate.model
            if pair.candidate is not None and {"evaluation", "divergent", "high_loss"} & set(tags)
            else None,
        )
        written = self.suites.add(example)
        if self._metrics is not None:
            for name, count in self.suites.counts().items():
                self._metrics.suite_examples.labels(suite=name, shard=str(self.shard.index)).set(count)
        return written

    # --- background threads ---

    def _labels_loop(self) -> None:
        """Annotators' labels from the transport, joined, then committed: a crash re-joins (duplicates are
        recognised); a failing source is rebuilt after a pause."""
        source: LabelSource | None = None
        while not self._stop.is_set():
            try:
                if source is None:
                    source = self.transport.label_source()
                raws = source.poll(0.5)
                for raw in raws:
                    self._on_topic_label(raw)
                if raws:
                    source.commit()
            except Exception as err:  # broker trouble: retry, labels wait in the channel
                log.warning("labels source: %s: %s", type(err).__name__, err)
                if source is not None:
                    with contextlib.suppress(Exception):
                        source.close()
                    source = None
                self._stop.wait(_RETRY_S)
        if source is not None:
            source.close()

    def _on_topic_label(self, raw: bytes) -> None:
        """One record of the labels channel. A record that is not a label, or that the join cannot take,
        goes to ``labels/dead-letter.jsonl`` (counted as rejected): one bad record must not stop the
        stream, nor on Kafka be re-polled forever. A disk that refuses the journal holds the stream on
        this label, retried with backoff, never skipped; if the flywheel closes meanwhile, the channel
        is not committed and the label comes back at the next start."""
        try:
            label = Label.model_validate_json(raw)
        except ValueError as err:
            if self.shard.lead:  # every shard reads the channel: one dead letter, by the lead
                self._dead_letter(raw, f"not a Label: {str(err).splitlines()[0]}", "annotator")
            return
        if not self.shard.owns(label.request_id):
            return  # another shard holds its pair and joins it
        backoff_s = 0.1
        while True:
            try:
                self.feedback(label)
                return
            except OSError as err:
                log.error("label for %s waits: the labels journal cannot be written: %s", label.request_id, err)
                if self._stop.wait(backoff_s):
                    raise
                backoff_s = min(backoff_s * 2, 10.0)
            except Exception as err:
                log.exception("label for %s rejected", label.request_id)
                self._dead_letter(raw, f"{type(err).__name__}: {err}", label.source)
                return

    def _dead_letter(self, raw: bytes, error: str, source: str) -> None:
        path = Path(self.config.data_dir) / "labels" / "dead-letter.jsonl"
        record = {"ts": self._clock(), "error": error[:500], "raw": raw[:65536].decode("utf-8", "replace")}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            log.error("labels dead letter not written (%s): %s", err, error)
        else:
            log.error("labels channel: record rejected (%s); kept in %s", error, path)
        if self._metrics is not None:
            self._metrics.labels.labels(source=source, outcome="rejected").inc()

    def _backlog_loop(self) -> None:
        """Probe the backlog (first within a second, then at the transport's pace); where the spool is the
        queue, compact it up to what the rotation has handled ("delivered" means handled)."""
        name = self._rotation_name
        while not self._stop.wait(self.transport.backlog_every_s if self.backlog is not None else _RETRY_S):
            lanes: dict[str, dict[str, float]] = {}
            try:
                for lane, sink in self.sinks.items():
                    handled = self.transport.handled_seq(name, lane)
                    spool = sink.spool
                    if handled is not None and spool.delivered_seq < min(handled, spool.last_seq):
                        spool.commit(min(handled, spool.last_seq))
                        if self._metrics is not None:
                            shard = str(self.shard.index)
                            self._metrics.spool_items.labels(lane=lane, shard=shard).set(spool.pending_count)
                    backlog = self.transport.backlog(name, lane, self._clock)
                    lanes[lane] = {"items": backlog.items, "oldest_age_s": backlog.oldest_age_s}
            except Exception as err:  # a broker or disk hiccup: the next probe tries again
                log.debug("backlog: %s", err)
                continue
            self.backlog = {
                "items": sum(b["items"] for b in lanes.values()),
                "oldest_age_s": max((b["oldest_age_s"] for b in lanes.values()), default=0.0),
                "lanes": lanes,
            }
            if self._metrics is not None:
                for lane_name, b in lanes.items():
                    self._metrics.annotation_backlog.labels(rotation=name, lane=lane_name).set(b["items"])
                    self._metrics.annotation_oldest_age.labels(rotation=name, lane=lane_name).set(b["oldest_age_s"])

    # --- report ---

    def stats(self) -> dict[str, Any]:
        lanes = {lane: sink.stats() for lane, sink in self.sinks.items()}
        with self._lock:
            labels = dict(self._counts)
            policy = self.policy.stats()
            high = self._high_loss_queued

        def total(field: str) -> int:
            return sum(int(getattr(s, field)) for s in lanes.values())

        errors = [f"{lane}: {s.last_error}" for lane, s in lanes.items() if s.last_error]
        dropped: dict[str, int] = {}
        for s in lanes.values():
            for reason, n in s.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + n
        paused = {lane: s.paused for lane, s in lanes.items() if s.paused}
        return {
            "sink": {
                **{f: total(f) for f in ("queued", "spooled", "delivered", "failed", "pending")},
                "dropped": dropped,  # by reason; also counted in failed
                "paused": paused or None,  # lane -> why its queuing is paused right now
                "transport": self.transport.name,
                "last_error": "; ".join(errors) or None,
                "lanes": {
                    lane: {"queued": s.queued, "pending": s.pending, "dropped": s.dropped, "paused": s.paused}
                    for lane, s in lanes.items()
                },
            },
            "policy": policy,
            "labels": labels,
            "high_loss_queued": high,
            "pair_store": {"pairs": len(self.pairs), "bytes": self.pairs.bytes},
            "on_call": self.rotation.on_call() if self.rotation is not None else None,
            "backlog": self.backlog,
            "suites": self.suites.counts(),
        }


def _summed(a: Any, b: Any) -> Any:
    """Two shards' statistics added up: numbers summed, mappings key by key, text joined, None the other."""
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _summed(a.get(k), b.get(k)) for k in {**a, **b}}
    if isinstance(a, bool) or isinstance(b, bool):
        return a or b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    return a if a == b else f"{a}; {b}"


def merge_flywheel_stats(stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``Flywheel.stats()`` of every hub shard as one (the first is the lead's): counts summed; the rotation
    on call and the backlog, which every shard reads from the same transport, are the lead's."""
    merged = stats[0]
    for other in stats[1:]:
        merged = {k: _summed(merged.get(k), other.get(k)) for k in merged}
    return {**merged, "on_call": stats[0]["on_call"], "backlog": stats[0]["backlog"]}


def _replayed(entry: JournalEntry, pairs: Sequence[Pair]) -> tuple[JoinedPair, ...]:
    """The live join's decisions, from its journal entry, for the pairs stored now: the entry's first pair
    first, as the live join had it, the others by candidate name; a pair the entry does not name was not
    stored when the label arrived. (An entry from before entries named their pair is the first pair's.)"""
    first = entry.candidate if entry.candidate is not None else candidate_of(pairs[0])
    decisions: dict[str, Decision] = {**entry.others, first: (entry.channel, entry.excluded)}
    joined = [JoinedPair(p, *decisions.get(candidate_of(p), (None, _NOT_STORED))) for p in pairs]
    joined.sort(key=lambda j: candidate_of(j.pair) != first)  # stable: the rest keep their order
    return tuple(joined)


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

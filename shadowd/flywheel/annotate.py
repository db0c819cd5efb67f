"""The on-call annotators' side of the queue, without any front end.

Data flow::

    the transport's queue, evaluation lane first, then the review lane
    (Kafka group shadowd.annotate.<rotation> on each lane's topic, or the local spools)
        -> WorkQueue.lease(session)  -> a person (or Label Studio) decides
        -> WorkQueue.submit(session, label | "skip" | "bad_data")
        -> Label to the transport's labels channel (acked) and to the local labels file (fsync)
        -> only then the item counts as done; the queue is committed past every item
           up to the first one not done yet, in the order they were read
    labels channel -> the Flywheel's labels thread -> joined to the stored pair

``WorkQueue`` serves several sessions at once (the browser page's tabs, the
Label Studio bridge) and never leases one item to two of them. An item a
session holds longer than ``lease_s`` without renewing its lease (a closed
tab) goes back to the next session that asks. ``Annotator`` is one session
on its own ``WorkQueue``: the terminal front end (``annotate_ui``) and the
demo use it; the browser page (``annotate_web``) and the Label Studio bridge
(``labelstudio``) use a ``WorkQueue`` directly.

Killing the process mid-item leaves the queue uncommitted: the items come
back to the next annotator of the rotation. A label written but not yet
committed makes the item come back too; it is then recognised by its request
id in the labels file and passed over, so nothing is labelled twice.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shadowd.config import ShadowdConfig
from shadowd.errors import AnnotateError
from shadowd.flywheel.labels import LabelsFile, labels_path
from shadowd.flywheel.rotation import Rotation
from shadowd.flywheel.transports import Backlog, build_transport
from shadowd.flywheel.transports.base import QueueReader
from shadowd.records import AnnotationItem, Label, Lane

__all__ = ["LANES", "Annotator", "Answer", "Lease", "LeaseLost", "WorkQueue", "check_answer", "make_label"]

log = logging.getLogger(__name__)

Answer = float | int | list[float] | Literal["skip", "bad_data"]

# Evaluation first: its labels decide the gate; the review lane feeds suites and the flywheel.
LANES: tuple[Lane, ...] = ("evaluation", "review")
# How long one round of lease() waits on each lane: the evaluation lane is asked first and briefly.
_POLL_S: dict[Lane, float] = {"evaluation": 0.2, "review": 0.5}


class LeaseLost(AnnotateError):
    """The session no longer holds the item it answered (its lease ran out, or it never had it)."""

    http_status = 409


@dataclass(frozen=True)
class Lease:
    """An item one session holds: nobody else is served it until it is answered, released or expires."""

    item: AnnotationItem
    lane: Lane
    session: str


@dataclass
class _Entry:
    item: AnnotationItem
    lane: Lane
    handle: Any
    state: Literal["free", "leased", "done"] = "free"
    session: str | None = None
    expires: float = 0.0


@dataclass
class _Session:
    annotator: str
    entry: _Entry | None = None
    seen: float = 0.0
    done: int = 0


def make_label(item: AnnotationItem, lane: Lane, answer: Answer, annotator: str, ts: float) -> Label:
    """An annotator's label of ``item``, with how the item was chosen (its lane and inclusion probability)."""
    verdict: Literal["label", "skip", "bad_data"] = "label"
    value: float | int | list[float] | None = None
    if answer == "skip" or answer == "bad_data":
        verdict = answer
    else:
        value = answer
    return Label(
        request_id=item.request_id,
        label=value,
        source="annotator",
        verdict=verdict,
        annotator=annotator,
        ts=ts,
        lane=lane,
        inclusion=item.inclusion,
    )


def check_answer(value: Any, item: AnnotationItem, task: str, n_classes: int | None = None) -> Answer:
    """An answer as the queue takes it: "skip", "bad_data", a class index in range (classification), or a
    finite value or list of values (regression). Raises ValueError with a one-line reason for anything else.

    ``n_classes``: how many classes there are (annotations.class_names); default the width of production's
    output on the item.
    """
    if value in ("skip", "bad_data") and isinstance(value, str):
        return value  # type: ignore[return-value]
    if task == "classification":
        n = n_classes or (len(item.production.values or []) if item.production is not None else 0)
        if not isinstance(value, int) or isinstance(value, bool) or not (0 <= value < n if n else value >= 0):
            raise ValueError(f"{value!r} is not a class index" + (f" in 0..{n - 1}" if n else ""))
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        return [float(v) for v in value]
    raise ValueError(f"{value!r} is not a finite value or a list of values")


class WorkQueue:
    """The rotation's queue for several sessions at once: lease, answer, commit in order. Thread-safe.

    One lock guards the state and the queue readers (a Kafka consumer is not
    thread-safe); waits for new items poll in short rounds, letting go of it between them.
    """

    def __init__(
        self,
        config: ShadowdConfig,
        clock: Callable[[], float] = time.time,
        labels_file: str | Path | None = None,
        lease_s: float = 900.0,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self._clock = clock
        self._mono = monotonic
        self.lease_s = lease_s
        rot_cfg = config.annotations.rotation
        self.rotation = Rotation(rot_cfg, clock) if rot_cfg is not None else None
        self.rotation_name = rot_cfg.name if rot_cfg is not None else "default"
        self.labels = LabelsFile(labels_file or labels_path(config.data_dir))
        self.transport = build_transport(config.annotations.sink, config.data_dir)
        self._readers: dict[Lane, QueueReader] = {}
        try:
            for lane in LANES:
                self._readers[lane] = self.transport.queue_reader(self.rotation_name, lane, clock)
        except BaseException:
            self.close()
            raise
        self._writer = self.transport.label_writer()
        self._lock = threading.RLock()
        self._entries: dict[Lane, deque[_Entry]] = {lane: deque() for lane in LANES}
        self._sessions: dict[str, _Session] = {}
        self.passed_over = 0
        self.done = 0
        self._closed = False

    # --- sessions ---

    def open_session(self, annotator: str) -> str:
        """A new session id (unguessable) for one annotator's front end."""
        sid = secrets.token_urlsafe(16)
        with self._lock:
            self._sessions[sid] = _Session(annotator, seen=self._mono())
            self._forget_idle_sessions()
        return sid

    def has_session(self, session: str) -> bool:
        with self._lock:
            return session in self._sessions

    def session_annotator(self, session: str) -> str:
        return self._session(session).annotator

    def close_session(self, session: str) -> None:
        """Give back the session's item (if any) and forget the session."""
        with self._lock:
            self.release(session)
            self._sessions.pop(session, None)

    def _session(self, session: str) -> _Session:
        s = self._sessions.get(session)
        if s is None:
            raise LeaseLost(f"unknown session {session[:8]}...: it ended or expired; open a new one")
        return s

    def _forget_idle_sessions(self) -> None:
        now = self._mono()
        for sid, s in list(self._sessions.items()):
            if s.entry is None and now - s.seen > 2 * self.lease_s:
                del self._sessions[sid]

    # --- items ---

    def current(self, session: str) -> Lease | None:
        """The item the session holds now (renewing its lease), or None."""
        with self._lock:
            self._expire()
            s = self._session(session)
            s.seen = self._mono()
            if s.entry is None:
                return None
            s.entry.expires = s.seen + self.lease_s
            return Lease(s.entry.item, s.entry.lane, session)

    def lease(self, session: str, timeout_s: float = 10.0) -> Lease | None:
        """The session's item, or the next one nobody holds (evaluation lane first); None if none came
        within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s  # a real wait; leases run on the injected clock
        while True:
            with self._lock:
                if self._closed:
                    raise AnnotateError("the work queue is closed")
                held = self.current(session)
                if held is not None:
                    return held
                for lane in LANES:
                    entry = self._take_free(lane, session)
                    if entry is None:
                        left = max(0.0, deadline - time.monotonic())
                        entry = self._read(lane, min(left, _POLL_S[lane]), session)
                    if entry is not None:
                        return self._give(entry, session)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)  # let other sessions in between rounds

    def _give(self, entry: _Entry, session: str) -> Lease:
        s = self._session(session)
        entry.state, entry.session, entry.expires = "leased", session, self._mono() + self.lease_s
        s.entry, s.seen = entry, self._mono()
        return Lease(entry.item, entry.lane, session)

    def _held_ids(self) -> set[str]:
        return {s.entry.item.request_id for s in self._sessions.values() if s.entry is not None}

    def _take_free(self, lane: Lane, session: str) -> _Entry | None:
        """The oldest item of the lane that came back (released or expired), if nobody holds its request."""
        held = self._held_ids()
        for entry in self._entries[lane]:
            if entry.state != "free" or entry.item.request_id in held:
                continue
            if entry.item.request_id in self.labels:  # labelled meanwhile (the same request in the other lane)
                self._finish(entry)
                continue
            return entry
        return None

    def _read(self, lane: Lane, timeout_s: float, session: str) -> _Entry | None:
        """A new item from the lane's queue; labelled ones are passed over, redeliveries ignored."""
        while True:
            got = self._readers[lane].next(timeout_s)
            if got is None:
                return None
            timeout_s = 0.0  # what follows a passed-over item is read without waiting
            item, handle = got
            if any(e.item.request_id == item.request_id for e in self._entries[lane]):
                # Delivered again while its first delivery is still in flight (a Kafka rebalance):
                # the first one's commit covers it.
                continue
            entry = _Entry(item, lane, handle)
            self._entries[lane].append(entry)
            if item.request_id in self.labels:
                # Labelled before a crash, or a duplicate delivery: handled already.
                self.passed_over += 1
                self._finish(entry)
                continue
            if item.request_id in self._held_ids():  # the same request in the other lane, held by someone
                continue  # stays free for later
            return entry

    def _expire(self) -> None:
        now = self._mono()
        for s in self._sessions.values():
            e = s.entry
            if e is not None and e.expires < now:
                log.info("lease of %s by %s ran out; it goes to the next annotator", e.item.request_id, s.annotator)
                e.state, e.session = "free", None
                s.entry = None

    def release(self, session: str) -> None:
        """Give the session's item back to the queue, unanswered (a tab closed, a person stepped away)."""
        with self._lock:
            s = self._sessions.get(session)
            if s is not None and s.entry is not None:
                s.entry.state, s.entry.session = "free", None
                s.entry = None

    def _holding(self, session: str, request_id: str | None) -> _Entry:
        self._expire()
        s = self._session(session)
        e = s.entry
        if e is None or (request_id is not None and e.item.request_id != request_id):
            what = f"item {request_id!r}" if request_id is not None else "an item"
            raise LeaseLost(
                f"this session does not hold {what}: its lease ran out ({self.lease_s:g} s) and it went back to "
                "the queue, or it was answered already"
            )
        return e

    def submit(self, session: str, answer: Answer, request_id: str | None = None) -> Label:
        """Persist the session's answer for its item, then count the item done and commit what can be.

        ``request_id``: the item the answer is for; a session that lost that item gets ``LeaseLost``.
        """
        with self._lock:
            entry = self._holding(session, request_id)
            s = self._sessions[session]
            label = make_label(entry.item, entry.lane, answer, s.annotator, self._clock())
            if self._writer is not None:
                self._writer.write(label)  # acked, or AnnotateError: the item stays with the session
            self.labels.append(label)
            s.entry, s.seen = None, self._mono()
            s.done += 1
            self._finish(entry)
            return label

    def record(self, label: Label) -> bool:
        """Persist a label given elsewhere (Label Studio) the way one given here is: on the labels channel
        (acked), then in the labels file. False, and nothing written, if its request has a label already:
        a label counts once."""
        with self._lock:
            if label.request_id in self.labels:
                return False
            if self._writer is not None:
                self._writer.write(label)
            self.labels.append(label)
            return True

    def complete(self, session: str, request_id: str | None = None) -> AnnotationItem:
        """Count the session's item done without a label here (the Label Studio bridge: exported)."""
        with self._lock:
            entry = self._holding(session, request_id)
            s = self._sessions[session]
            s.entry, s.seen = None, self._mono()
            s.done += 1
            self._finish(entry)
            return entry.item

    def _finish(self, entry: _Entry) -> None:
        entry.state, entry.session = "done", None
        self.done += 1
        self._commit(entry.lane)

    def _commit(self, lane: Lane) -> None:
        """Commit the lane past every item up to the first one not done, in the order they were read."""
        entries = self._entries[lane]
        while entries and entries[0].state == "done":
            try:
                self._readers[lane].commit(entries[0].handle)
            except AnnotateError as err:  # the labels are saved; a later answer (or a restart) commits
                log.warning("%s", err)
                return
            entries.popleft()

    # --- status ---

    def backlog(self, lane: Lane | None = None) -> Backlog:
        """Items the rotation has not committed past, in one lane or in both (held and answered ones
        count until the queue is committed past them)."""
        lanes = LANES if lane is None else (lane,)
        each = [self.transport.backlog(self.rotation_name, one, self._clock) for one in lanes]
        return Backlog(sum(b.items for b in each), max(b.oldest_age_s for b in each))

    def in_flight(self) -> dict[str, int]:
        """Items read from the queue and not yet committed, by state (leased, free, done)."""
        with self._lock:
            counts = {"leased": 0, "free": 0, "done": 0}
            for entries in self._entries.values():
                for e in entries:
                    counts[e.state] += 1
            return counts

    def close(self) -> None:
        """Stop reading; nothing uncommitted is lost (it comes back to the rotation)."""
        self._closed = True
        for reader in getattr(self, "_readers", {}).values():
            reader.close()
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()


class Annotator:
    """One person working the queue: ``next_item()``, then ``submit(answer)``; no terminal needed.

    A single session on its own ``WorkQueue``: the same code the browser page runs.
    """

    def __init__(
        self,
        config: ShadowdConfig,
        annotator: str | None = None,
        clock: Callable[[], float] = time.time,
        labels_file: str | Path | None = None,
    ):
        self.config = config
        # One person at a terminal: the item is theirs until they answer it, however long they think.
        self.queue = WorkQueue(config, clock, labels_file, lease_s=math.inf)
        self.rotation = self.queue.rotation
        self.rotation_name = self.queue.rotation_name
        self.labels = self.queue.labels
        self.transport = self.queue.transport
        self.annotator = (
            annotator or (self.rotation.on_call() if self.rotation else None) or os.environ.get("USER", "annotator")
        )
        self._session = self.queue.open_session(self.annotator)

    @property
    def current(self) -> AnnotationItem | None:
        held = self.queue.current(self._session)
        return held.item if held is not None else None

    @property
    def passed_over(self) -> int:
        return self.queue.passed_over

    def next_item(self, timeout_s: float = 10.0) -> AnnotationItem | None:
        """The next item to label (the same one again until it is submitted), or None if the queue is empty."""
        held = self.queue.lease(self._session, timeout_s)
        return held.item if held is not None else None

    def submit(self, answer: Answer) -> Label:
        """Persist the answer for the current item, then commit the queue past it."""
        if self.queue.current(self._session) is None:
            raise AnnotateError("no current item: call next_item() first")
        return self.queue.submit(self._session, answer)

    def backlog(self, lane: Lane | None = None) -> Backlog:
        """Items the rotation has not handled, in one lane or in both."""
        return self.queue.backlog(lane)

    def close(self) -> None:
        self.queue.close()

"""The on-call annotator's side of the queue (``shadowd annotate``), without any terminal.

Data flow::

    the transport's queue, evaluation lane first, then the review lane
    (Kafka group shadowd.annotate.<rotation> on each lane's topic, or the local spools)
        -> Annotator.next_item() -> a person decides -> Annotator.submit(label | "skip" | "bad_data")
        -> Label to the transport's labels channel (acked) and to the local labels file (fsync)
        -> only then the queue is committed past the item
    labels channel -> the Flywheel's labels thread -> joined to the stored pair

Killing the annotator mid-item leaves the queue uncommitted: the item comes
back to the next annotator of the rotation. A label written but not yet
committed makes the item come back too; it is then recognised by its request
id in the labels file and passed over, so nothing is labelled twice. The
terminal UI is ``annotate_ui``; the browser and other front ends use this
same class.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from shadowd.config import ShadowdConfig
from shadowd.errors import AnnotateError
from shadowd.flywheel.labels import LabelsFile, labels_path
from shadowd.flywheel.rotation import Rotation
from shadowd.flywheel.transports import Backlog, build_transport
from shadowd.records import AnnotationItem, Label, Lane

__all__ = ["Annotator", "Answer"]

Answer = float | int | list[float] | Literal["skip", "bad_data"]

_LANES: tuple[Lane, ...] = ("evaluation", "review")
# How long one round of next() waits on each lane: the evaluation lane is asked first and briefly.
_POLL_S: dict[Lane, float] = {"evaluation": 0.2, "review": 0.5}


class Annotator:
    """One person working the queue: ``next_item()``, then ``submit(answer)``; no terminal needed."""

    def __init__(
        self,
        config: ShadowdConfig,
        annotator: str | None = None,
        clock: Callable[[], float] = time.time,
        labels_file: str | Path | None = None,
    ):
        self.config = config
        self._clock = clock
        rot_cfg = config.annotations.rotation
        self.rotation = Rotation(rot_cfg, clock) if rot_cfg is not None else None
        self.rotation_name = rot_cfg.name if rot_cfg is not None else "default"
        self.annotator = (
            annotator or (self.rotation.on_call() if self.rotation else None) or os.environ.get("USER", "annotator")
        )
        self.labels = LabelsFile(labels_file or labels_path(config.data_dir))
        self.transport = build_transport(config.annotations.sink, config.data_dir)
        # Evaluation first: its labels decide the gate; the review lane feeds suites and the flywheel.
        self._queues = {lane: self.transport.queue_reader(self.rotation_name, lane, clock) for lane in _LANES}
        self._writer = self.transport.label_writer()
        self.current: AnnotationItem | None = None
        self._handle: tuple[Lane, Any] | None = None
        self.passed_over = 0

    def next_item(self, timeout_s: float = 10.0) -> AnnotationItem | None:
        """The next item to label (the same one again until it is submitted), or None if the queue is empty."""
        if self.current is not None:
            return self.current
        deadline = time.monotonic() + timeout_s
        while True:
            got = self._next_from_lanes(deadline)
            if got is None:
                return None
            lane, item, handle = got
            if item.request_id in self.labels:
                # Labelled before a crash, or a duplicate delivery: handled already.
                self._queues[lane].commit(handle)
                self.passed_over += 1
                continue
            self.current, self._handle = item, (lane, handle)
            return item

    def _next_from_lanes(self, deadline: float) -> tuple[Lane, AnnotationItem, Any] | None:
        """The evaluation lane's next item if it has one now, else the review lane's; wait until the deadline."""
        while True:
            left = max(0.0, deadline - time.monotonic())
            for lane in _LANES:
                got = self._queues[lane].next(min(left, _POLL_S[lane]))
                if got is not None:
                    return lane, got[0], got[1]
            if time.monotonic() >= deadline:
                return None

    def submit(self, answer: Answer) -> Label:
        """Persist the answer for the current item, then commit the queue past it."""
        if self.current is None:
            raise AnnotateError("no current item: call next_item() first")
        if answer == "skip" or answer == "bad_data":
            label = Label(
                request_id=self.current.request_id,
                label=None,
                source="annotator",
                verdict=answer,
                annotator=self.annotator,
                ts=self._clock(),
            )
        else:
            label = Label(
                request_id=self.current.request_id,
                label=answer,
                source="annotator",
                verdict="label",
                annotator=self.annotator,
                ts=self._clock(),
            )
        if self._writer is not None:
            self._writer.write(label)
        self.labels.append(label)
        assert self._handle is not None
        lane, handle = self._handle
        self._queues[lane].commit(handle)
        self.current, self._handle = None, None
        return label

    def backlog(self, lane: Lane | None = None) -> Backlog:
        """Items the rotation has not handled, in one lane or in both."""
        lanes = _LANES if lane is None else (lane,)
        each = [self.transport.backlog(self.rotation_name, one, self._clock) for one in lanes]
        return Backlog(sum(b.items for b in each), max(b.oldest_age_s for b in each))

    def close(self) -> None:
        for queue in self._queues.values():
            queue.close()
        if self._writer is not None:
            self._writer.close()

"""What an annotation transport provides, whatever carries the items.

A transport is the queue between the daemon and the on-call rotation, and the
channel labels come back on. The queue has two lanes (``records.Lane``): the
evaluation sample, served to annotators first, and the priority-ordered review
lane. Each kind (``spool``: the local spools are the queue; ``kafka``: topics
on a broker) provides the same four sides, per lane where it matters:

- the producer side: a ``Producer`` the sink's sender moves spooled items to
  (None when the spool itself is the queue);
- the annotator's ``QueueReader``: one item at a time, committed only once its
  label is saved, and a ``LabelWriter`` publishing that label;
- the daemon's ``LabelSource``: annotators' labels, committed after the join;
- the backlog probe: items the rotation has not handled and the oldest one's age.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shadowd.errors import DeliveryError
from shadowd.flywheel.spool import SpoolRecord
from shadowd.records import AnnotationItem, Label, Lane

__all__ = [
    "Backlog",
    "Clock",
    "LabelSource",
    "LabelWriter",
    "Producer",
    "QueueReader",
    "SendResult",
    "Transport",
    "consumer_group",
]

Clock = Callable[[], float]


def consumer_group(rotation_name: str, lane: str = "review") -> str:
    """The consumer group of a rotation's lane: all its annotators share that lane's offsets."""
    suffix = "" if lane == "review" else f".{lane}"
    return f"shadowd.annotate.{rotation_name}{suffix}"


@dataclass(frozen=True)
class Backlog:
    """Items the rotation has not handled yet, and how long the oldest has waited."""

    items: int
    oldest_age_s: float


@dataclass(frozen=True)
class SendResult:
    """What a producer did with a batch: the first ``acked`` records are delivered.

    ``error`` (a ``DeliveryError``) is set when fewer than all were: its
    ``poison`` flag means the record at index ``acked`` can never be delivered
    (set it aside); ``retriable`` False means no retry will help until someone
    fixes the setup (the records stay spooled, retries slow to the longest
    backoff).
    """

    acked: int
    error: DeliveryError | None = None


class Producer(Protocol):
    """Moves spooled records on; ``send`` waits at most ``timeout_s`` (usually ``send_timeout_s``)."""

    send_timeout_s: float

    def send(self, records: Sequence[SpoolRecord], timeout_s: float) -> SendResult: ...

    def close(self) -> None: ...


class QueueReader(Protocol):
    """The annotator's end of the queue: an item and a handle to commit it by."""

    def next(self, timeout_s: float) -> tuple[AnnotationItem, Any] | None: ...

    def commit(self, handle: Any) -> None: ...

    def close(self) -> None: ...


class LabelWriter(Protocol):
    """Publishes an annotator's label to the daemon (acked before it returns)."""

    def write(self, label: Label) -> None: ...

    def close(self) -> None: ...


class LabelSource(Protocol):
    """The daemon's end of the labels channel: raw labels, committed after they are joined."""

    def poll(self, timeout_s: float) -> list[bytes]: ...

    def commit(self) -> None: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """One annotation transport: every side of the queue and the labels channel."""

    name: str
    backlog_every_s: float  # how often the daemon probes the backlog (a Kafka scan costs more)

    def producer(self, lane: Lane) -> Producer | None:
        """Where the lane's sink delivers spooled items; None when the spool is the queue."""
        ...

    def queue_reader(self, rotation_name: str, lane: Lane, clock: Clock) -> QueueReader: ...

    def label_writer(self) -> LabelWriter | None:
        """How an annotator publishes a label; None when the local labels file is the channel."""
        ...

    def label_source(self) -> LabelSource: ...

    def backlog(self, rotation_name: str, lane: Lane, clock: Clock) -> Backlog: ...

    def handled_seq(self, rotation_name: str, lane: Lane) -> int | None:
        """The last spool seq of the lane the rotation is done with, when the spool is the queue (compaction)."""
        ...

"""The on-call annotator's side of the queue (``shadowd annotate``).

Data flow::

    annotations topic (consumer group shadowd.annotate.<rotation>)   [or the local spool, embedded]
        -> Annotator.next_item() -> a person decides -> Annotator.submit(label | "skip" | "bad_data")
        -> Label to the labels topic (acked) and to the local labels file (fsync)
        -> only then the queue offset is committed
    labels topic -> Flywheel's labels thread -> joined to the stored pair

Killing the annotator mid-item leaves the offset uncommitted: the item comes
back to the next annotator of the rotation. A label written but not yet
committed makes the item come back too; it is then recognised by its request
id in the labels file and passed over, so nothing is labelled twice.

Without Kafka the queue is the daemon's spool (read without its lock) and the
offset a small file per rotation; the Flywheel tails the labels file.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from shadowd.config import KafkaConfig, ShadowdConfig
from shadowd.errors import ShadowdError
from shadowd.flywheel.rotation import Rotation, consumer_group
from shadowd.flywheel.sink import kafka_client_config
from shadowd.flywheel.spool import read_spool, spool_last_seq
from shadowd.records import AnnotationItem, Label

__all__ = [
    "AnnotateError",
    "Annotator",
    "Backlog",
    "LabelsFile",
    "annotate_session",
    "kafka_backlog",
    "labels_path",
    "parse_answer",
    "render_item",
    "spool_backlog",
]

Answer = float | int | list[float] | Literal["skip", "bad_data"]


class AnnotateError(ShadowdError):
    """The annotation queue or the labels topic cannot be used right now; nothing was committed."""

    retriable = True


@dataclass(frozen=True)
class Backlog:
    """Items the rotation has not handled yet, and how long the oldest has waited."""

    items: int
    oldest_age_s: float


def labels_path(config: ShadowdConfig) -> Path:
    return Path(config.data_dir) / "labels" / "labels.jsonl"


class LabelsFile:
    """Append-only local record of labels (JSON lines, fsync'd), and the ids already labelled."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._ids: set[str] = set()
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    if line.endswith("\n"):
                        self._ids.add(json.loads(line)["request_id"])

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._ids

    def append(self, label: Label) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(label.model_dump_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._ids.add(label.request_id)


# --- queues: where items come from, and how "handled" is recorded ---


class _Queue(Protocol):
    def next(self, timeout_s: float) -> tuple[AnnotationItem, Any] | None: ...

    def commit(self, handle: Any) -> None: ...

    def backlog(self) -> Backlog: ...

    def close(self) -> None: ...


class _KafkaQueue:
    def __init__(self, kafka: KafkaConfig, rotation_name: str, clock: Callable[[], float]):
        from kafka import KafkaConsumer

        self._kafka = kafka
        self._rotation_name = rotation_name
        self._clock = clock
        self._consumer = KafkaConsumer(
            kafka.annotations_topic,
            **kafka_client_config(kafka),
            group_id=consumer_group(rotation_name),
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

    def backlog(self) -> Backlog:
        return kafka_backlog(self._kafka, self._rotation_name, self._clock)

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class _SpoolQueue:
    """Embedded mode: the daemon's spool is the queue; a per-rotation file holds the offset."""

    def __init__(self, data_dir: Path, rotation_name: str, clock: Callable[[], float]):
        self._spool_dir = data_dir / "spool"
        self._offset_path = data_dir / "annotate" / f"{rotation_name}.offset"
        self._offset_path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock

    def _offset(self) -> int:
        try:
            return int(self._offset_path.read_text().strip())
        except FileNotFoundError:
            return 0

    def _pending(self):
        return read_spool(self._spool_dir, after_seq=self._offset(), limit=1) if self._spool_dir.exists() else []

    def next(self, timeout_s: float) -> tuple[AnnotationItem, Any] | None:
        deadline = time.monotonic() + timeout_s
        while True:
            pending = self._pending()
            if pending:
                return AnnotationItem.model_validate(pending[0].value), pending[0].seq
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def commit(self, handle: Any) -> None:
        tmp = self._offset_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(str(handle))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._offset_path)

    def backlog(self) -> Backlog:
        return spool_backlog(self._spool_dir, self._offset(), self._clock)

    def close(self) -> None:
        pass


def spool_backlog(spool_dir: Path, handled_seq: int, clock: Callable[[], float]) -> Backlog:
    """Embedded mode: spooled items after the rotation's offset, and the age of the first of them."""
    if not Path(spool_dir).exists():
        return Backlog(0, 0.0)
    first = read_spool(spool_dir, after_seq=handled_seq, limit=1)
    if not first:
        return Backlog(0, 0.0)
    items = spool_last_seq(spool_dir) - handled_seq
    return Backlog(items, max(0.0, clock() - first[0].value.get("created_ts", clock())))


def kafka_backlog(
    kafka: KafkaConfig,
    rotation_name: str,
    clock: Callable[[], float],
    max_scan: int = 10_000,
    max_scan_s: float = 3.0,
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
        group_id=consumer_group(rotation_name),
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )
    try:
        parts = consumer.partitions_for_topic(kafka.annotations_topic) or set()
        tps = [TopicPartition(kafka.annotations_topic, p) for p in sorted(parts)]
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


# --- the annotator ---


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
        self.labels = LabelsFile(labels_file or labels_path(config))
        kafka = config.annotations.kafka
        self._kafka = kafka
        self._queue: _Queue = (
            _KafkaQueue(kafka, self.rotation_name, clock)
            if kafka is not None
            else _SpoolQueue(Path(config.data_dir), self.rotation_name, clock)
        )
        self._producer = None
        self.current: AnnotationItem | None = None
        self._handle: Any = None
        self.passed_over = 0

    def next_item(self, timeout_s: float = 10.0) -> AnnotationItem | None:
        """The next item to label (the same one again until it is submitted), or None if the queue is empty."""
        if self.current is not None:
            return self.current
        deadline = time.monotonic() + timeout_s
        while True:
            got = self._queue.next(max(0.0, deadline - time.monotonic()))
            if got is None:
                return None
            item, handle = got
            if item.request_id in self.labels:
                # Labelled before a crash, or a duplicate delivery: handled already.
                self._queue.commit(handle)
                self.passed_over += 1
                continue
            self.current, self._handle = item, handle
            return item

    def submit(self, answer: Answer) -> Label:
        """Persist the answer for the current item, then commit the queue past it."""
        if self.current is None:
            raise AnnotateError("no current item: call next_item() first")
        if answer in ("skip", "bad_data"):
            label = Label(
                request_id=self.current.request_id,
                label=None,
                source="annotator",
                verdict=answer,
                annotator=self.annotator,
                ts=self._clock(),
            )  # type: ignore[arg-type]
        else:
            label = Label(
                request_id=self.current.request_id,
                label=answer,
                source="annotator",
                verdict="label",
                annotator=self.annotator,
                ts=self._clock(),
            )
        if self._kafka is not None:
            self._produce(label)
        self.labels.append(label)
        self._queue.commit(self._handle)
        self.current, self._handle = None, None
        return label

    def _produce(self, label: Label) -> None:
        from kafka import KafkaProducer

        assert self._kafka is not None
        try:
            if self._producer is None:
                self._producer = KafkaProducer(
                    **kafka_client_config(self._kafka),
                    acks="all",
                    enable_idempotence=True,
                    delivery_timeout_ms=self._kafka.delivery_timeout_ms,
                    request_timeout_ms=max(1, min(30_000, self._kafka.delivery_timeout_ms - 5)),
                    max_block_ms=min(self._kafka.delivery_timeout_ms, 10_000),
                )
            self._producer.send(
                self._kafka.labels_topic, key=label.request_id.encode(), value=label.model_dump_json().encode()
            ).get(timeout=self._kafka.delivery_timeout_ms / 1000)
        except Exception as err:
            producer, self._producer = self._producer, None
            if producer is not None:
                with contextlib.suppress(Exception):
                    producer.close(timeout=0, null_logger=True)
            raise AnnotateError(
                f"label for {label.request_id} not written to topic {self._kafka.labels_topic}: "
                f"{type(err).__name__}: {err}; the item stays current, try again"
            ) from None

    def backlog(self) -> Backlog:
        return self._queue.backlog()

    def close(self) -> None:
        self._queue.close()
        if self._producer is not None:
            self._producer.close(timeout=5)


# --- showing an item ---


def _summary(values: Any) -> str:
    try:
        import numpy as np

        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return json.dumps(values)[:200]
    if arr.size == 0:
        return "[]"
    return f"shape {list(arr.shape)}, min {arr.min():.3g}, mean {arr.mean():.3g}, max {arr.max():.3g}"


def _image(values: Any) -> str | None:
    """A small square input (e.g. 8x8 digits) as shaded text, so a person can label it."""
    try:
        import numpy as np

        arr = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    side = round(arr.size**0.5)
    if side * side != arr.size or not 4 <= side <= 32 or not np.isfinite(arr).all():
        return None
    lo, hi = float(arr.min()), float(arr.max())
    shades = " .:-=+*#%@"
    norm = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    rows = norm.reshape(side, side)
    return "\n".join("".join(shades[min(9, int(v * 9.999))] * 2 for v in row) for row in rows)


def _top(values: list[float] | None, task: str) -> str:
    if not values:
        return "-"
    if task == "regression":
        return ", ".join(f"{v:.4g}" for v in values)
    order = sorted(range(len(values)), key=lambda k: -values[k])[:3]
    return "  ".join(f"class {k}: {values[k]:.2f}" for k in order)


def render_item(item: AnnotationItem, task: str):
    """A rich renderable of one item: why it was queued, inputs, both outputs."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("request", item.request_id)
    table.add_row("why", f"{item.reason} (priority {item.priority:.3g})" + (f": {item.detail}" if item.detail else ""))
    table.add_row("slices", ", ".join(item.slices) or "-")
    table.add_row("assigned", item.assignee or "-")
    if item.features:
        table.add_row("features", json.dumps(item.features)[:300])
    table.add_row("inputs", _summary(item.inputs) if item.inputs is not None else "(not stored)")
    for out in (item.production, item.candidate):
        if out is not None:
            shown = _top(out.values, task) if out.ok else f"{out.outcome}: {out.detail or ''}"
            table.add_row(f"{out.role} ({out.model})", shown)
    parts: list[Any] = [table]
    picture = _image(item.inputs) if item.inputs is not None else None
    if picture:
        parts.append(Panel(picture, title="inputs", expand=False))
    return Panel(Group(*parts), title=f"annotation item ({item.reason})")


def parse_answer(text: str, item: AnnotationItem, task: str) -> Answer | None:
    """A typed answer: a class index or value(s), 's' skip, 'b' bad data; None for 'q' (quit).

    Raises ValueError with a one-line reason for anything else.
    """
    text = text.strip()
    if text in ("q", "quit"):
        return None
    if text in ("s", "skip"):
        return "skip"
    if text in ("b", "bad", "bad_data"):
        return "bad_data"
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a label; type a number, s, b or q") from None
    if task == "classification":
        n = len(item.production.values or []) if item.production is not None else 0
        if not isinstance(value, int) or isinstance(value, bool) or not (0 <= value < n if n else value >= 0):
            raise ValueError(f"{text!r} is not a class index" + (f" in 0..{n - 1}" if n else ""))
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        return [float(v) for v in value]
    raise ValueError(f"{text!r} is not a value or a list of values")


def annotate_session(
    annotator: Annotator,
    console,
    ask: Callable[[str], str],
    max_items: int | None = None,
    wait_s: float = 10.0,
) -> int:
    """Show items one at a time and record answers until the queue is empty, ``q``, or ``max_items``."""
    task = annotator.config.task
    done = 0
    console.print(f"annotating as [bold]{annotator.annotator}[/bold] (rotation {annotator.rotation_name})")
    while max_items is None or done < max_items:
        item = annotator.next_item(timeout_s=wait_s)
        if item is None:
            console.print("the queue is empty")
            break
        console.print(render_item(item, task))
        while True:
            try:
                answer = parse_answer(ask("label (class / value), s skip, b bad data, q quit"), item, task)
            except ValueError as err:
                console.print(f"[red]{err}[/red]")
                continue
            if answer is None:
                return done
            try:
                label = annotator.submit(answer)
            except AnnotateError as err:
                console.print(f"[red]{err}[/red]")
                continue
            console.print(f"saved: {label.verdict} {'' if label.label is None else label.label}")
            done += 1
            break
    return done

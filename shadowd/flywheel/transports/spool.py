"""Transport ``spool`` (the embedded default): the daemon's local spool is the queue.

No broker: ``shadowd annotate`` on the same machine (or volume) reads the
spool directly, past a per-rotation offset file; its labels go to the local
labels file, which the daemon tails. "Delivered" means handled by the
rotation, so the daemon compacts the spool up to the rotation's offset.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from shadowd.configbase import Strict
from shadowd.errors import AnnotateError
from shadowd.flywheel.labels import labels_path
from shadowd.flywheel.spool import lane_spool_dir, read_offset, read_spool, spool_last_seq, write_atomic
from shadowd.flywheel.transports.base import Backlog, Clock, LabelSource, LabelWriter, Producer, QueueReader
from shadowd.records import AnnotationItem, Lane
from shadowd.sampling import Shard

__all__ = ["SpoolTransport", "SpoolTransportConfig", "spool_backlog"]


class SpoolTransportConfig(Strict):
    """The local spool is the queue; annotators on the same machine or volume label from it."""

    type: Literal["spool"] = Field("spool", description="spool: no broker; the local spool is the queue.")

    def build(self, data_dir: Path, shard: Shard | None = None) -> SpoolTransport:
        return SpoolTransport(self, data_dir)  # one process's queue: the config allows no sharded hub on it


def spool_backlog(spool_dir: Path, handled_seq: int, clock: Clock) -> Backlog:
    """Spooled items after the rotation's offset, and the age of the first of them."""
    if not Path(spool_dir).exists():
        return Backlog(0, 0.0)
    first = read_spool(spool_dir, after_seq=handled_seq, limit=1)
    if not first:
        return Backlog(0, 0.0)
    items = spool_last_seq(spool_dir) - handled_seq
    return Backlog(items, max(0.0, clock() - first[0].value.get("created_ts", clock())))


class _SpoolQueue:
    """The annotator's side: spooled items past the rotation's offset file, one after another.

    ``next`` moves a read cursor (several items can be out at once, e.g. one per browser tab);
    ``commit`` moves the offset file, which is the rotation's position for the next process. One
    process at a time reads a lane of a rotation (an exclusive lock beside the offset file): two
    readers of the same spool would be served the same items.
    """

    def __init__(self, spool_dir: Path, offset_path: Path, rotation_name: str, lane: Lane):
        self._spool_dir = spool_dir
        self._offset_path = offset_path
        self._cursor = 0
        offset_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = offset_path.with_name(offset_path.name + ".lock")
        self._lock_fd: int | None = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise AnnotateError(
                f"another annotator process is working rotation {rotation_name!r}'s {lane} lane on this data dir "
                f"(it holds {lock_path}), e.g. `shadowd annotate --web`: label through it; two readers of the "
                "local spool would be served the same items"
            ) from None

    def next(self, timeout_s: float) -> tuple[AnnotationItem, Any] | None:
        deadline = time.monotonic() + timeout_s
        while True:
            after = max(read_offset(self._offset_path), self._cursor)
            pending = read_spool(self._spool_dir, after_seq=after, limit=1) if self._spool_dir.exists() else []
            if pending:
                self._cursor = pending[0].seq
                return AnnotationItem.model_validate(pending[0].value), pending[0].seq
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def commit(self, handle: Any) -> None:
        write_atomic(self._offset_path, str(handle))

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None


class _LabelsFileTail:
    """The daemon's side of the labels channel: new whole lines of the local labels file."""

    def __init__(self, path: Path):
        self._path = path
        self._offset_path = path.with_name("joined.offset")
        self._offset = read_offset(self._offset_path)
        self._read_to = self._offset

    def poll(self, timeout_s: float) -> list[bytes]:
        lines: list[bytes] = []
        if self._path.exists() and self._path.stat().st_size > self._offset:
            with open(self._path, "rb") as f:
                f.seek(self._offset)
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # half-written: read it next time
                    lines.append(line)
            self._read_to = self._offset + sum(len(line) for line in lines)
        if not lines:
            time.sleep(timeout_s)
        return lines

    def commit(self) -> None:
        # A crash before this re-reads a little; duplicates are recognised by the join.
        if self._read_to != self._offset:
            write_atomic(self._offset_path, str(self._read_to))
            self._offset = self._read_to

    def close(self) -> None:
        pass


class SpoolTransport:
    name = "spool"
    backlog_every_s = 1.0  # reading one spool line is cheap

    def __init__(self, cfg: SpoolTransportConfig, data_dir: Path):
        self.cfg = cfg
        self._data_dir = Path(data_dir)

    def _offset_path(self, rotation_name: str, lane: Lane) -> Path:
        suffix = "" if lane == "review" else f".{lane}"
        return self._data_dir / "annotate" / f"{rotation_name}{suffix}.offset"

    def producer(self, lane: Lane) -> Producer | None:
        return None

    def queue_reader(self, rotation_name: str, lane: Lane, clock: Clock) -> QueueReader:
        return _SpoolQueue(
            lane_spool_dir(self._data_dir, lane), self._offset_path(rotation_name, lane), rotation_name, lane
        )

    def label_writer(self) -> LabelWriter | None:
        return None

    def label_source(self) -> LabelSource:
        return _LabelsFileTail(labels_path(self._data_dir))

    def backlog(self, rotation_name: str, lane: Lane, clock: Clock) -> Backlog:
        handled = read_offset(self._offset_path(rotation_name, lane))
        return spool_backlog(lane_spool_dir(self._data_dir, lane), handled, clock)

    def handled_seq(self, rotation_name: str, lane: Lane) -> int | None:
        return read_offset(self._offset_path(rotation_name, lane))

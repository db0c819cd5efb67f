"""Durable local spool: the outbox in front of the annotation queue.

Data flow: ``AnnotationSink`` writes every item here first (JSON lines,
fsync'd per batch); with Kafka configured, the sink's sender reads what is
pending, produces it and, once the broker has acked, moves the committed
offset forward. Without Kafka the spool is the queue itself. After a crash or
restart, everything past the committed offset is replayed in order.

On disk, under ``<data_dir>/spool``::

    seg-00000000000000000001.jsonl   {"seq": 1, "key": "req-1", "value": {...}} per line
    seg-00000000000000001001.jsonl   ...
    delivered                        the highest seq delivered (written atomically)
    lock                             flock'd by the one process that owns the spool

Segments hold ``segment_items`` records each; a segment whose last record is
delivered is deleted (compaction). Memory is bounded: only the segment index
(first seq and count per segment) is held, never the records.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowd.errors import SpoolError

__all__ = ["Spool", "SpoolRecord", "lane_spool_dir", "read_offset", "read_spool", "spool_last_seq", "write_atomic"]

_SEGMENT_PREFIX = "seg-"
_SEGMENT_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class SpoolRecord:
    """One spooled record: ``seq`` increases by one per record, across restarts."""

    seq: int
    key: str
    value: dict[str, Any]


@dataclass
class _Segment:
    first_seq: int
    count: int
    path: Path

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


def _segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{_SEGMENT_PREFIX}{first_seq:020d}{_SEGMENT_SUFFIX}"


def _fsync_dir(directory: Path) -> None:
    # A new or renamed file is durable only once its directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lane_spool_dir(data_dir: Path, lane: str) -> Path:
    """Where a lane's spool lives: ``<data_dir>/spool`` (review) and ``<data_dir>/spool-evaluation``."""
    return Path(data_dir) / ("spool" if lane == "review" else f"spool-{lane}")


def write_atomic(path: Path, text: str, fsync: bool = True) -> None:
    """Replace a small file (an offset) so that a crash leaves the old content or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


def read_offset(path: Path) -> int:
    """An offset written by ``write_atomic``; 0 when there is none yet."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    try:
        return int(text)
    except ValueError:
        raise SpoolError(f"{path}: expected an integer offset, got {text[:40]!r}") from None


class Spool:
    """Append-only, crash-safe record log with a committed (delivered) offset.

    Thread-safe: the sink's spooler thread appends while its sender thread
    reads and commits.
    """

    def __init__(self, directory: str | Path, segment_items: int = 1000, fsync: bool = True):
        if segment_items < 1:
            raise ValueError(f"got {segment_items} for segment_items; must be >= 1")
        self.directory = Path(directory)
        self.segment_items = segment_items
        self._fsync = fsync
        self._lock = threading.Lock()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.directory / "lock", "a+")  # noqa: SIM115 - held (flock) while the spool is open
        except OSError as err:
            raise SpoolError(f"{self.directory}: cannot open spool: {err.strerror}") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolError(f"{self.directory}: spool is in use by another process") from None
        self._delivered = self._read_delivered()
        self._segments = self._scan()
        self._next_seq = self._segments[-1].last_seq + 1 if self._segments else self._delivered + 1
        # A crash can leave delivered ahead of the log (segments compacted, offset kept): fine.
        self._next_seq = max(self._next_seq, self._delivered + 1)
        self._closed = False

    # --- opening ---

    def _read_delivered(self) -> int:
        return read_offset(self.directory / "delivered")

    def _scan(self) -> list[_Segment]:
        paths = sorted(self.directory.glob(f"{_SEGMENT_PREFIX}*{_SEGMENT_SUFFIX}"))
        segments = []
        for i, path in enumerate(paths):
            first = int(path.name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)])
            count = self._repair(path, first, last=i == len(paths) - 1)
            if count:
                segments.append(_Segment(first, count, path))
            else:
                path.unlink()
        return segments

    def _repair(self, path: Path, first_seq: int, last: bool) -> int:
        """Count whole records; cut a torn tail (a crash mid-write) off the last segment."""
        good_bytes = 0
        count = 0
        with open(path, "rb") as f:
            for line in f:
                try:
                    rec = json.loads(line) if line.endswith(b"\n") else None
                except ValueError:
                    rec = None
                if rec is None or rec.get("seq") != first_seq + count:
                    if not last:
                        raise SpoolError(f"{path}: corrupt record after seq {first_seq + count - 1}")
                    break
                good_bytes += len(line)
                count += 1
        if last and good_bytes != path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(good_bytes)
                os.fsync(f.fileno())
        return count

    # --- writing ---

    def append(self, records: Sequence[tuple[str, str]]) -> int:
        """Append ``(key, value_json)`` records durably (one fsync); return the last seq."""
        if not records:
            return self._next_seq - 1
        with self._lock:
            self._check_open()
            i = 0
            while i < len(records):
                seg = self._segments[-1] if self._segments else None
                if seg is None or seg.count >= self.segment_items:
                    seg = _Segment(self._next_seq, 0, _segment_path(self.directory, self._next_seq))
                    self._segments.append(seg)
                    new_file = True
                else:
                    new_file = False
                take = records[i : i + self.segment_items - seg.count]
                lines = []
                for offset, (key, value_json) in enumerate(take):
                    lines.append(f'{{"seq":{self._next_seq + offset},"key":{json.dumps(key)},"value":{value_json}}}\n')
                with open(seg.path, "a", encoding="utf-8") as f:
                    f.write("".join(lines))
                    f.flush()
                    if self._fsync:
                        os.fsync(f.fileno())
                if new_file and self._fsync:
                    _fsync_dir(self.directory)
                seg.count += len(take)
                self._next_seq += len(take)
                i += len(take)
            return self._next_seq - 1

    def commit(self, seq: int) -> None:
        """Mark every record up to ``seq`` delivered; delete fully delivered segments."""
        with self._lock:
            self._check_open()
            if seq <= self._delivered:
                return
            if seq >= self._next_seq:
                raise ValueError(f"cannot commit seq {seq}; the last record is {self._next_seq - 1}")
            write_atomic(self.directory / "delivered", str(seq), fsync=self._fsync)
            self._delivered = seq
            while self._segments and self._segments[0].last_seq <= seq and len(self._segments) > 1:
                self._segments.pop(0).path.unlink()
            # Keep the newest segment file (appends continue there) unless it is
            # fully delivered and full.
            if self._segments and self._segments[0].last_seq <= seq and self._segments[0].count >= self.segment_items:
                self._segments.pop(0).path.unlink()

    # --- reading ---

    def pending(self, max_records: int) -> list[SpoolRecord]:
        """The oldest ``max_records`` undelivered records, in order."""
        with self._lock:
            self._check_open()
            start = self._delivered + 1
            segments = [s for s in self._segments if s.last_seq >= start]
            snapshot = [(s.path, s.first_seq, s.count) for s in segments]
        out: list[SpoolRecord] = []
        for path, _first, count in snapshot:
            for rec in _read_segment(path, count):
                if rec.seq >= start:
                    out.append(rec)
                    if len(out) >= max_records:
                        return out
        return out

    def __iter__(self) -> Iterator[SpoolRecord]:
        """Every record still on disk, delivered or not, oldest first."""
        with self._lock:
            snapshot = [(s.path, s.count) for s in self._segments]
        for path, count in snapshot:
            yield from _read_segment(path, count)

    @property
    def delivered_seq(self) -> int:
        return self._delivered

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    @property
    def pending_count(self) -> int:
        return self._next_seq - 1 - self._delivered

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                self._lock_file.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"{self.directory}: spool is closed")

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_segment(path: Path, count: int) -> Iterator[SpoolRecord]:
    # Read only the first `count` lines: a concurrent append may be half-written.
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                if n >= count:
                    return
                rec = json.loads(line)
                yield SpoolRecord(rec["seq"], rec["key"], rec["value"])
    except FileNotFoundError:
        return  # compacted while we were reading: delivered, nothing to yield


def _segment_files(directory: Path) -> list[tuple[int, Path]]:
    paths = sorted(directory.glob(f"{_SEGMENT_PREFIX}*{_SEGMENT_SUFFIX}"))
    return [(int(p.name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)]), p) for p in paths]


def _line_seq(line: str) -> int:
    """The seq of a spooled line, read from the prefix ``append`` writes (``{"seq":N,``); -1 if it is not there."""
    if line.startswith('{"seq":'):
        end = line.find(",", 7)
        if end > 7 and line[7:end].isdigit():
            return int(line[7:end])
    return -1


def read_spool(
    directory: str | Path, pending_only: bool = False, after_seq: int = 0, limit: int | None = None
) -> list[SpoolRecord]:
    """Read a spool's records without taking its lock (``shadowd demo``, the embedded annotator).

    ``pending_only``: only records not yet delivered; ``after_seq``: only
    records after it (segments wholly before it are not opened); ``limit``:
    at most this many, oldest first.
    """
    directory = Path(directory)
    delivered = read_offset(directory / "delivered")
    floor = max(after_seq, delivered if pending_only else 0)
    files = _segment_files(directory)
    # skip segments that end before `floor`: the next segment starts at or below floor + 1
    while len(files) > 1 and files[1][0] <= floor + 1:
        files.pop(0)
    out: list[SpoolRecord] = []
    for _, path in files:
        try:
            f = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the `with f` below
        except FileNotFoundError:
            continue  # compacted meanwhile
        with f:
            for line in f:
                if not line.endswith("\n"):
                    break
                if 0 <= _line_seq(line) <= floor:
                    continue  # skipped without parsing the item (an annotator reads one past its offset)
                rec = json.loads(line)
                if rec["seq"] > floor:
                    out.append(SpoolRecord(rec["seq"], rec["key"], rec["value"]))
                    if limit is not None and len(out) >= limit:
                        return out
    return out


def spool_last_seq(directory: str | Path) -> int:
    """The newest record's seq on disk (0 for an empty spool), reading only the last segment."""
    files = _segment_files(Path(directory))
    if not files:
        return read_offset(Path(directory) / "delivered")
    first, path = files[-1]
    with open(path, "rb") as f:
        whole = sum(1 for line in f if line.endswith(b"\n"))
    return first + whole - 1 if whole else first - 1

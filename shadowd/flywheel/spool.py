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
(first seq, count and size per segment) is held, never the records.

An append is all-or-nothing: on any error (a failed write, a short write on a
full disk, a failed fsync) every byte of it is cut off again and fsync'd, so
no half record and no record that was not acknowledged stays behind, and the
next append reuses its sequence numbers. ``max_bytes`` caps the segments'
size on disk; an append past it is refused (``SpoolWriteError``, reason
``spool_full``) until delivery or the rotation's progress compacts segments.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowd.errors import SpoolError, SpoolWriteError

__all__ = [
    "SegmentFile",
    "Spool",
    "SpoolRecord",
    "lane_spool_dir",
    "read_offset",
    "read_spool",
    "spool_last_seq",
    "write_atomic",
]

log = logging.getLogger(__name__)

_SEGMENT_PREFIX = "seg-"
_SEGMENT_SUFFIX = ".jsonl"
# No space, no quota, or over the process's file size limit: space can come back.
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


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
    size_bytes: int

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


@dataclass(frozen=True)
class _Chunk:
    """The part of one append that goes to one segment file."""

    first_seq: int
    path: Path
    new: bool
    data: bytes
    count: int


class SegmentFile:
    """A segment file opened for appending. Every byte the spool appends goes through one of
    these (tests pass a subclass that fails where a real disk would)."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def write(self, data: bytes | memoryview) -> int:
        return os.write(self.fd, data)

    def sync(self) -> None:
        os.fsync(self.fd)

    def truncate(self, size_bytes: int) -> None:
        os.ftruncate(self.fd, size_bytes)

    def close(self) -> None:
        os.close(self.fd)


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
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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

    def __init__(
        self,
        directory: str | Path,
        segment_items: int = 1000,
        fsync: bool = True,
        max_bytes: int | None = None,
        open_segment: Callable[[Path], SegmentFile] = SegmentFile,
    ):
        if segment_items < 1:
            raise ValueError(f"got {segment_items} for segment_items; must be >= 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"got {max_bytes} for max_bytes; must be >= 1")
        self.directory = Path(directory)
        self.segment_items = segment_items
        self.max_bytes = max_bytes
        self._fsync = fsync
        self._open_segment = open_segment
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
        self._bytes = sum(s.size_bytes for s in self._segments)
        self._next_seq = self._segments[-1].last_seq + 1 if self._segments else self._delivered + 1
        # A crash can leave delivered ahead of the log (segments compacted, offset kept): fine.
        self._next_seq = max(self._next_seq, self._delivered + 1)
        # Cuts a failed append could not make yet (path, size to cut back to, file made by it).
        self._uncut: list[tuple[Path, int, bool]] = []
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
                segments.append(_Segment(first, count, path, path.stat().st_size))
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
        """Append ``(key, value_json)`` records durably (one fsync per segment touched); return the
        last seq. All or nothing: ``SpoolWriteError`` means none of them is on disk."""
        if not records:
            return self._next_seq - 1
        with self._lock:
            self._check_open()
            self._cut_leftovers()
            chunks = self._plan(records)
            size = sum(len(c.data) for c in chunks)
            if self.max_bytes is not None:
                if size > self.max_bytes:
                    raise SpoolWriteError(
                        f"{len(records)} records are {size} bytes, more than the spool's cap of {self.max_bytes} "
                        "(annotations.spool_max_bytes)",
                        "too_large",
                    )
                if self._bytes + size > self.max_bytes:
                    raise SpoolWriteError(
                        f"{self.directory}: spool holds {self._bytes} of {self.max_bytes} bytes "
                        f"(annotations.spool_max_bytes); {size} more do not fit until items are delivered",
                        "spool_full",
                    )
            touched: list[tuple[Path, int, bool]] = []
            try:
                for c in chunks:
                    self._write(c, touched)
            except OSError as err:
                self._cut(touched)
                reason = "disk_full" if err.errno in _DISK_FULL_ERRNOS else "write_error"
                raise SpoolWriteError(
                    f"{self.directory}: append of {len(records)} records failed "
                    f"({err.strerror or err}); none of them was kept",
                    reason,
                ) from None
            for c in chunks:  # all on disk: now the index
                if c.new:
                    self._segments.append(_Segment(c.first_seq, c.count, c.path, len(c.data)))
                else:
                    self._segments[-1].count += c.count
                    self._segments[-1].size_bytes += len(c.data)
            self._next_seq += len(records)
            self._bytes += size
            return self._next_seq - 1

    def _plan(self, records: Sequence[tuple[str, str]]) -> list[_Chunk]:
        """Split records over the newest segment's room and new segments."""
        chunks = []
        seq = self._next_seq
        last = self._segments[-1] if self._segments else None
        room = self.segment_items - last.count if last is not None else 0
        i = 0
        while i < len(records):
            if room <= 0 or last is None:
                new, room, path = True, self.segment_items, _segment_path(self.directory, seq)
            else:
                new, path = False, last.path
            take = records[i : i + room]
            lines = [
                f'{{"seq":{seq + n},"key":{json.dumps(key)},"value":{value_json}}}\n'
                for n, (key, value_json) in enumerate(take)
            ]
            chunks.append(_Chunk(seq, path, new, "".join(lines).encode(), len(take)))
            seq += len(take)
            i += len(take)
            room = 0
        return chunks

    def _write(self, chunk: _Chunk, touched: list[tuple[Path, int, bool]]) -> None:
        """Append one chunk and fsync it; ``touched`` learns where to cut back to before any byte is written."""
        f = self._open_segment(chunk.path)
        try:
            touched.append((chunk.path, f.size(), chunk.new))
            view = memoryview(chunk.data)
            while view:
                n = f.write(view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, "short write")
                view = view[n:]  # a full disk or a file size limit can take part of it
            if self._fsync:
                f.sync()
        finally:
            f.close()
        if chunk.new and self._fsync:
            _fsync_dir(self.directory)

    def _cut(self, touched: list[tuple[Path, int, bool]]) -> None:
        """Cut every touched file back to its size before the failed append, newest first, and fsync."""
        left = []
        for path, size, new in reversed(touched):
            try:
                f = self._open_segment(path)
                try:
                    f.truncate(size)
                    f.sync()
                finally:
                    f.close()
            except OSError as err:
                log.error("spool: cannot cut %s back to %d bytes (%s); appends wait until it can", path, size, err)
                left.append((path, size, new))
                continue
            if new and size == 0:
                path.unlink(missing_ok=True)
        self._uncut = left + self._uncut

    def _cut_leftovers(self) -> None:
        """Before appending again, finish cuts a failed append could not make (their seqs are reused)."""
        if not self._uncut:
            return
        pending, self._uncut = self._uncut, []
        self._cut(list(reversed(pending)))
        if self._uncut:
            raise SpoolWriteError(
                f"{self.directory}: a failed append is not cut back yet; no append until it is", "write_error"
            )

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
                self._drop_first_segment()
            # Keep the newest segment file (appends continue there) unless it is
            # fully delivered and full.
            if self._segments and self._segments[0].last_seq <= seq and self._segments[0].count >= self.segment_items:
                self._drop_first_segment()

    def _drop_first_segment(self) -> None:
        seg = self._segments.pop(0)
        seg.path.unlink()
        self._bytes -= seg.size_bytes

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

    @property
    def size_bytes(self) -> int:
        """Bytes of the segment files on disk (what ``max_bytes`` caps)."""
        return self._bytes

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

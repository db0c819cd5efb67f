"""The labels journal: every joined label, on disk before anyone is told it counts.

Data flow::

    Flywheel.feedback(label) -> join decided (status, channel or why excluded)
        -> LabelJournal.append(entry)     fsync'd: only now the pair store marks it,
                                          POST /feedback answers 200, a queue is committed
        -> on_joined -> the comparator's tallies (saved every few seconds with the
                        journal seq they include: ``Comparator.labels_seq``)
    start: LabelJournal.entries(after=saved labels_seq) -> replayed into the comparator

A crash between the 200 and the next state save therefore loses no label:
the entries past the saved seq are applied again at start. ``compact(seq)``
empties the file once the saved state holds every entry (it never grows
without bound); sequence numbers continue from the state's seq after that.

One JSON object per line: ``{"seq", "status", "channel", "excluded", "label"}``,
the decision for the request's first pair (by candidate name). With several
candidates shadowed, a label reaches every candidate's pair and each gets its
own decision: ``"candidate"`` names the first pair's candidate and
``"others": {candidate: [channel, excluded]}`` holds the rest; both are written
only when there is something to say, and entries without them still read.
A torn last line (a crash mid-append) is cut off at open.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowd.flywheel.spool import write_atomic
from shadowd.records import Label, LabelChannel

__all__ = ["Decision", "JournalEntry", "LabelJournal", "journal_path"]

log = logging.getLogger(__name__)

# What the join decided for one pair: the channel the quality checks may use it by, else why not.
Decision = tuple[LabelChannel | None, str | None]


def journal_path(data_dir: Path) -> Path:
    return Path(data_dir) / "labels" / "journal.jsonl"


@dataclass(frozen=True)
class JournalEntry:
    seq: int
    status: str  # joined | skipped
    channel: LabelChannel | None
    excluded: str | None
    label: Label
    others: Mapping[str, Decision] = field(default_factory=dict)  # the request's further pairs, by candidate
    candidate: str | None = None  # the first pair's candidate (None: an entry from before several candidates)

    def to_json(self) -> str:
        head: dict[str, Any] = {
            "seq": self.seq,
            "status": self.status,
            "channel": self.channel,
            "excluded": self.excluded,
        }
        if self.candidate is not None:
            head["candidate"] = self.candidate
        if self.others:
            head["others"] = {name: list(decision) for name, decision in self.others.items()}
        return json.dumps(head)[:-1] + f', "label": {self.label.model_dump_json()}}}'

    @classmethod
    def from_json(cls, line: str) -> JournalEntry:
        d: dict[str, Any] = json.loads(line)
        raw_others = d.get("others", {})
        if not isinstance(raw_others, dict):
            raise TypeError(f"others must be an object of candidate -> [channel, excluded]; got {raw_others!r}")
        others: dict[str, Decision] = {}
        for name, (channel, excluded) in raw_others.items():
            others[name] = (channel, excluded)
        candidate = d.get("candidate")
        return cls(
            d["seq"],
            d["status"],
            d["channel"],
            d["excluded"],
            Label.model_validate(d["label"]),
            others,
            None if candidate is None else str(candidate),
        )


class LabelJournal:
    """Append-only, fsync'd per entry; thread-safe."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._last_seq = 0
        self._count = 0
        self._repair_and_scan()

    def _repair_and_scan(self) -> None:
        """Cut a torn last entry (never acknowledged); move an unreadable one to the dead letters."""
        if not self.path.exists():
            return
        good: list[bytes] = []
        bad: list[bytes] = []
        torn = False
        with open(self.path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    torn = True
                    break
                try:
                    entry = JournalEntry.from_json(raw.decode("utf-8"))
                except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                    bad.append(raw)
                    continue
                self._last_seq = max(self._last_seq, entry.seq)
                good.append(raw)
        self._count = len(good)
        if bad:
            dead = self.path.with_name("journal.dead-letter.jsonl")
            with open(dead, "ab") as f:
                f.writelines(bad)
                f.flush()
                os.fsync(f.fileno())
            log.error("labels journal %s: %d unreadable entries moved to %s", self.path, len(bad), dead)
        if bad or torn:
            if torn:
                log.warning("labels journal %s: cutting a torn last entry", self.path)
            write_atomic(self.path, b"".join(good).decode("utf-8"))

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def __len__(self) -> int:
        return self._count

    def advance_to(self, seq: int) -> None:
        """Number the next entry after ``seq`` (the saved state's), whatever the file still holds."""
        with self._lock:
            self._last_seq = max(self._last_seq, seq)

    def append(
        self,
        status: str,
        channel: LabelChannel | None,
        excluded: str | None,
        label: Label,
        others: Mapping[str, Decision] | None = None,
        candidate: str | None = None,
    ) -> int:
        """Write one entry and fsync it; returns its seq. On any error nothing of it stays behind.
        ``channel``/``excluded`` decide the first pair (of candidate ``candidate``), ``others`` the rest."""
        with self._lock:
            entry = JournalEntry(self._last_seq + 1, status, channel, excluded, label, dict(others or {}), candidate)
            data = (entry.to_json() + "\n").encode("utf-8")
            with open(self.path, "ab") as f:
                start = f.tell()
                try:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                except BaseException:
                    f.truncate(start)
                    raise
            self._last_seq = entry.seq
            self._count += 1
            return entry.seq

    def entries(self, after: int = 0) -> Iterator[JournalEntry]:
        with self._lock:
            if not self.path.exists():
                return iter(())
            with open(self.path, encoding="utf-8") as f:
                lines = [line for line in f if line.endswith("\n")]
        return (e for e in map(JournalEntry.from_json, lines) if e.seq > after)

    def compact(self, saved_seq: int) -> bool:
        """Empty the file when the saved state holds every entry (seq <= ``saved_seq``); True if it did."""
        with self._lock:
            if self._count == 0 or self._last_seq > saved_seq:
                return False
            with open(self.path, "r+b") as f:
                f.truncate(0)
                f.flush()
                os.fsync(f.fileno())
            self._count = 0
            return True

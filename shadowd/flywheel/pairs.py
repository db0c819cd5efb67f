"""Bounded, persistent pair store: where labels find the pair they belong to.

Data flow: ``Flywheel.record`` puts every compared pair here; a label from
``POST /feedback`` or the labels topic looks its pair up by request id. Pairs
older than ``retention_s``, beyond ``max_pairs`` or beyond ``max_bytes`` of
stored pair JSON (oldest first) are evicted;
their ids are remembered (bounded too) so a late label gets "expired", not
"unknown".

SQLite in ``<data_dir>/pairs/pairs.sqlite3`` (WAL: a crashed process loses
nothing it committed; the comparator is the only writer).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shadowd.records import Pair

__all__ = ["Lookup", "PairStore"]

_PRUNE_EVERY_PUTS = 500


@dataclass(frozen=True)
class Lookup:
    status: Literal["found", "unknown", "expired"]
    pair: Pair | None = None
    age_s: float | None = None
    tags: tuple[str, ...] = ()


class PairStore:
    def __init__(
        self,
        directory: str | Path,
        retention_s: float,
        max_pairs: int,
        clock: Callable[[], float],
        max_bytes: int | None = None,
    ):
        if retention_s <= 0 or max_pairs < 1:
            raise ValueError(f"got retention_s={retention_s}, max_pairs={max_pairs}; both must be > 0")
        self.max_bytes = max_bytes
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.retention_s = retention_s
        self.max_pairs = max_pairs
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.directory / "pairs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pairs (request_id TEXT PRIMARY KEY, ts REAL NOT NULL, body TEXT NOT NULL, "
            "tags TEXT NOT NULL DEFAULT '')"
        )
        # Which sources already labelled a pair: a label delivered twice is joined once.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS labelled (request_id TEXT NOT NULL, source TEXT NOT NULL, "
            "PRIMARY KEY (request_id, source))"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS pairs_ts ON pairs (ts)")
        if "size" not in {row[1] for row in self._db.execute("PRAGMA table_info(pairs)")}:  # a store from before
            self._db.execute("ALTER TABLE pairs ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
            self._db.execute("UPDATE pairs SET size = length(body)")
        # Byte totals and oldest-first eviction read this index alone, never the bodies.
        self._db.execute("CREATE INDEX IF NOT EXISTS pairs_ts_size ON pairs (ts, size)")
        self._bytes = 0
        self._db.execute("CREATE TABLE IF NOT EXISTS evicted (request_id TEXT PRIMARY KEY, evicted_ts REAL NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS evicted_ts ON evicted (evicted_ts)")
        self._puts = 0
        self.prune()

    def put(self, pair: Pair, tags: Sequence[str] = ()) -> None:
        """Store a pair; ``tags`` are why it is interesting (annotation reasons), kept for suites."""
        body = pair.model_dump_json()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO pairs (request_id, ts, body, tags, size) VALUES (?, ?, ?, ?, ?)",
                (pair.request_id, pair.ts, body, ",".join(dict.fromkeys(tags)), len(body)),
            )
            self._puts += 1
            self._bytes += len(body)  # an upper bound between prunes (a replaced row counts twice)
            over_bytes = self.max_bytes is not None and self._bytes > self.max_bytes
            due = self._puts % _PRUNE_EVERY_PUTS == 0 or over_bytes
        if due:
            self.prune()

    def put_many(self, entries: Sequence[tuple[Pair, Sequence[str]]]) -> None:
        """Store several (pair, tags) in one transaction: what ``put`` on each does, in order, with one
        commit instead of one per pair. Pruning (every 500 puts, or over ``max_bytes``) runs after the
        whole batch, so the byte cap is exceeded by at most one batch's pairs before it evicts."""
        if not entries:
            return
        rows = []
        for pair, tags in entries:
            body = pair.model_dump_json()
            rows.append((pair.request_id, pair.ts, body, ",".join(dict.fromkeys(tags)), len(body)))
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO pairs (request_id, ts, body, tags, size) VALUES (?, ?, ?, ?, ?)", rows
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            before = self._puts
            self._puts += len(rows)
            self._bytes += sum(r[4] for r in rows)  # an upper bound between prunes, as in put
            over_bytes = self.max_bytes is not None and self._bytes > self.max_bytes
            due = self._puts // _PRUNE_EVERY_PUTS > before // _PRUNE_EVERY_PUTS or over_bytes
        if due:
            self.prune()

    def get(self, request_id: str) -> Lookup:
        now = self._clock()
        with self._lock:
            row = self._db.execute("SELECT ts, body, tags FROM pairs WHERE request_id = ?", (request_id,)).fetchone()
            if row is None:
                gone = self._db.execute("SELECT 1 FROM evicted WHERE request_id = ?", (request_id,)).fetchone()
                return Lookup("expired" if gone else "unknown")
        ts, body, tags = row
        if now - ts > self.retention_s:
            return Lookup("expired", age_s=now - ts)
        return Lookup(
            "found", Pair.model_validate_json(body), age_s=now - ts, tags=tuple(t for t in tags.split(",") if t)
        )

    def is_labelled(self, request_id: str, source: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM labelled WHERE request_id = ? AND source = ?", (request_id, source)
            ).fetchone()
            return row is not None

    def mark_labelled(self, request_id: str, source: str) -> bool:
        """Record that ``source`` labelled the pair; False if it already had (a duplicate delivery)."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO labelled VALUES (?, ?)", (request_id, source))
            return cur.rowcount == 1

    @property
    def bytes(self) -> int:
        """Stored pair JSON in bytes (exact after each prune)."""
        return self._bytes

    def prune(self) -> int:
        """Evict pairs past retention, then the oldest beyond ``max_pairs`` and beyond ``max_bytes``
        (down to 90 % of it, so a full store does not prune on every put); return how many."""
        now = self._clock()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            cutoff = now - self.retention_s
            self._db.execute(
                "INSERT OR REPLACE INTO evicted SELECT request_id, ? FROM pairs WHERE ts < ?", (now, cutoff)
            )
            n = self._db.execute("DELETE FROM pairs WHERE ts < ?", (cutoff,)).rowcount
            over = self._db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] - self.max_pairs
            if over > 0:
                oldest = "SELECT request_id FROM pairs ORDER BY ts LIMIT ?"
                self._db.execute(f"INSERT OR REPLACE INTO evicted SELECT request_id, ? FROM ({oldest})", (now, over))
                n += self._db.execute(f"DELETE FROM pairs WHERE request_id IN ({oldest})", (over,)).rowcount
            total = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM pairs").fetchone()[0])
            if self.max_bytes is not None and total > self.max_bytes:
                target, freed, cut_ts = total - int(0.9 * self.max_bytes), 0, None
                for ts, size in self._db.execute("SELECT ts, size FROM pairs ORDER BY ts"):
                    freed += size
                    cut_ts = ts
                    if freed >= target:
                        break
                self._db.execute(
                    "INSERT OR REPLACE INTO evicted SELECT request_id, ? FROM pairs WHERE ts <= ?", (now, cut_ts)
                )
                n += self._db.execute("DELETE FROM pairs WHERE ts <= ?", (cut_ts,)).rowcount
                total = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM pairs").fetchone()[0])
            self._bytes = total
            self._db.execute("DELETE FROM labelled WHERE request_id NOT IN (SELECT request_id FROM pairs)")
            # Remember as many evicted ids as pairs kept: bounded, and enough for late labels.
            extra = self._db.execute("SELECT COUNT(*) FROM evicted").fetchone()[0] - self.max_pairs
            if extra > 0:
                self._db.execute(
                    "DELETE FROM evicted WHERE request_id IN "
                    "(SELECT request_id FROM evicted ORDER BY evicted_ts LIMIT ?)",
                    (extra,),
                )
            return n

    def __len__(self) -> int:
        with self._lock:
            count: int = self._db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            return count

    def close(self) -> None:
        with self._lock:
            self._db.close()

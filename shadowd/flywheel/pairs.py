"""Bounded, persistent pair store: where labels find the pairs they belong to.

Data flow: ``Flywheel.record`` puts every compared pair here, keyed by
(request id, candidate model name): with several candidates shadowed at once,
one request has one pair per candidate. A label from ``POST /feedback`` or the
labels topic carries only the request id; ``get`` returns every candidate's pair
of it, so the label reaches all of them. Requests whose pairs are older than
``retention_s``, beyond ``max_pairs`` pairs or beyond ``max_bytes`` of stored
pair JSON (oldest first) are evicted, all of a request's pairs together; their
ids are remembered (bounded too) so a late label gets "expired", not "unknown".
Labels (``labelled``) and evictions are per request id: a label is per request.

SQLite in ``<data_dir>/pairs/pairs.sqlite3`` (WAL: a crashed process loses
nothing it committed; the comparator is the only writer).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shadowd.records import Pair

__all__ = ["Lookup", "PairStore", "candidate_of"]

log = logging.getLogger(__name__)

_PRUNE_EVERY_PUTS = 500


_PAIRS_TABLE = (
    "CREATE TABLE IF NOT EXISTS {name} (request_id TEXT NOT NULL, candidate TEXT NOT NULL DEFAULT '', "
    "ts REAL NOT NULL, body TEXT NOT NULL, tags TEXT NOT NULL DEFAULT '', size INTEGER NOT NULL DEFAULT 0, "
    "PRIMARY KEY (request_id, candidate))"
)
_INSERT = "INSERT OR REPLACE INTO pairs (request_id, candidate, ts, body, tags, size) VALUES (?, ?, ?, ?, ?, ?)"


def candidate_of(pair: Pair) -> str:
    """The pair's key beside its request id: the candidate model's name ("" for a pair without one)."""
    return pair.candidate.model if pair.candidate is not None else ""


@dataclass(frozen=True)
class Lookup:
    """What the store holds for one request id: every candidate's pair, ordered by candidate name."""

    status: Literal["found", "unknown", "expired"]
    pairs: tuple[Pair, ...] = ()
    age_s: float | None = None  # of the request's newest pair
    tags: tuple[str, ...] = ()  # the union over its pairs, in order

    @property
    def pair(self) -> Pair | None:
        """The first pair (by candidate name), for callers that want one."""
        return self.pairs[0] if self.pairs else None


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
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(pairs)")}
        if columns and "candidate" not in columns:
            self._migrate(columns)
        self._db.execute(_PAIRS_TABLE.format(name="pairs"))
        # Which sources already labelled a request: a label delivered twice is joined once.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS labelled (request_id TEXT NOT NULL, source TEXT NOT NULL, "
            "PRIMARY KEY (request_id, source))"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS pairs_ts ON pairs (ts)")
        # Byte totals and oldest-first eviction read this index alone, never the bodies.
        self._db.execute("CREATE INDEX IF NOT EXISTS pairs_ts_size ON pairs (ts, size)")
        self._bytes = 0
        self._db.execute("CREATE TABLE IF NOT EXISTS evicted (request_id TEXT PRIMARY KEY, evicted_ts REAL NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS evicted_ts ON evicted (evicted_ts)")
        # The request ids one prune evicts (all their pairs go together); this connection's own scratch table.
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (request_id TEXT PRIMARY KEY)")
        self._puts = 0
        self.prune()

    def _migrate(self, columns: set[str]) -> None:
        """A store from before several candidates (keyed by request id alone): SQLite cannot change a primary
        key, so copy every row into a table keyed by (request id, candidate), the candidate read from the
        stored pair, and swap the tables; all in one transaction."""
        size = "size" if "size" in columns else "length(body)"  # a store from before the byte cap
        tags = "tags" if "tags" in columns else "''"
        candidate = "CASE WHEN json_valid(body) THEN COALESCE(json_extract(body, '$.candidate.model'), '') ELSE '' END"
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DROP TABLE IF EXISTS pairs_migrating")
            self._db.execute(_PAIRS_TABLE.format(name="pairs_migrating"))
            copied = self._db.execute(
                "INSERT OR REPLACE INTO pairs_migrating (request_id, candidate, ts, body, tags, size) "
                f"SELECT request_id, {candidate}, ts, body, {tags}, {size} FROM pairs"
            ).rowcount
            self._db.execute("DROP TABLE pairs")
            self._db.execute("ALTER TABLE pairs_migrating RENAME TO pairs")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        log.info("pair store %s: %d pairs moved to the (request id, candidate) key", self.directory, copied)

    @staticmethod
    def _row(pair: Pair, tags: Sequence[str]) -> tuple[str, str, float, str, str, int]:
        body = pair.model_dump_json()
        return (pair.request_id, candidate_of(pair), pair.ts, body, ",".join(dict.fromkeys(tags)), len(body))

    def put(self, pair: Pair, tags: Sequence[str] = ()) -> None:
        """Store a pair, replacing the one of the same request id and candidate; ``tags`` are why it is
        interesting (annotation reasons), kept for suites."""
        row = self._row(pair, tags)
        with self._lock:
            self._db.execute(_INSERT, row)
            self._puts += 1
            self._bytes += row[5]  # an upper bound between prunes (a replaced row counts twice)
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
        rows = [self._row(pair, tags) for pair, tags in entries]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(_INSERT, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            before = self._puts
            self._puts += len(rows)
            self._bytes += sum(r[5] for r in rows)  # an upper bound between prunes, as in put
            over_bytes = self.max_bytes is not None and self._bytes > self.max_bytes
            due = self._puts // _PRUNE_EVERY_PUTS > before // _PRUNE_EVERY_PUTS or over_bytes
        if due:
            self.prune()

    def get(self, request_id: str) -> Lookup:
        """Every stored pair of the request (one per candidate); expired once its newest pair is past retention."""
        now = self._clock()
        with self._lock:
            rows = self._db.execute(
                "SELECT ts, body, tags FROM pairs WHERE request_id = ? ORDER BY candidate", (request_id,)
            ).fetchall()
            if not rows:
                gone = self._db.execute("SELECT 1 FROM evicted WHERE request_id = ?", (request_id,)).fetchone()
                return Lookup("expired" if gone else "unknown")
        age_s = now - max(ts for ts, _, _ in rows)
        if age_s > self.retention_s:
            return Lookup("expired", age_s=age_s)
        tags = dict.fromkeys(t for _, _, row_tags in rows for t in row_tags.split(",") if t)
        return Lookup("found", tuple(Pair.model_validate_json(body) for _, body, _ in rows), age_s, tuple(tags))

    def is_labelled(self, request_id: str, source: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM labelled WHERE request_id = ? AND source = ?", (request_id, source)
            ).fetchone()
            return row is not None

    def mark_labelled(self, request_id: str, source: str) -> bool:
        """Record that ``source`` labelled the request; False if it already had (a duplicate delivery)."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO labelled VALUES (?, ?)", (request_id, source))
            return cur.rowcount == 1

    @property
    def bytes(self) -> int:
        """Stored pair JSON in bytes (exact after each prune)."""
        return self._bytes

    def _evict(self, request_ids: str, params: tuple[float | int, ...], now: float) -> int:
        """Evict every pair of the request ids the SELECT ``request_ids`` names (a request is labelled
        whole or not at all); remember the ids; return how many pairs went."""
        self._db.execute("DELETE FROM doomed")
        self._db.execute(f"INSERT OR IGNORE INTO doomed {request_ids}", params)
        self._db.execute("INSERT OR REPLACE INTO evicted SELECT request_id, ? FROM doomed", (now,))
        deleted: int = self._db.execute(
            "DELETE FROM pairs WHERE request_id IN (SELECT request_id FROM doomed)"
        ).rowcount
        return deleted

    def prune(self) -> int:
        """Evict requests whose newest pair is past retention, then the oldest beyond ``max_pairs`` pairs and
        beyond ``max_bytes`` (down to 90 % of it, so a full store does not prune on every put); return how many
        pairs went."""
        now = self._clock()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            cutoff = now - self.retention_s
            n = self._evict(
                "SELECT request_id FROM pairs AS old WHERE ts < ? AND NOT EXISTS "
                "(SELECT 1 FROM pairs WHERE request_id = old.request_id AND ts >= ?)",
                (cutoff, cutoff),
                now,
            )
            over = self._db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] - self.max_pairs
            if over > 0:
                n += self._evict("SELECT request_id FROM pairs ORDER BY ts LIMIT ?", (over,), now)
            total = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM pairs").fetchone()[0])
            if self.max_bytes is not None and total > self.max_bytes:
                target, freed, cut_ts = total - int(0.9 * self.max_bytes), 0, 0.0
                for ts, size in self._db.execute("SELECT ts, size FROM pairs ORDER BY ts"):
                    freed += size
                    cut_ts = ts
                    if freed >= target:
                        break
                n += self._evict("SELECT request_id FROM pairs WHERE ts <= ?", (cut_ts,), now)
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
        """Stored pairs (one per request and candidate)."""
        with self._lock:
            count: int = self._db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            return count

    def close(self) -> None:
        with self._lock:
            self._db.close()

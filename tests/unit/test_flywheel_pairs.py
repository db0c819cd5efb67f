"""PairStore: persistence, retention, capacity, unknown vs expired."""

import sqlite3

import pytest

from shadowd.flywheel.pairs import PairStore
from shadowd.records import ModelOutput, Pair


class Clock:
    def __init__(self, t=10_000.0):
        self.t = t

    def __call__(self):
        return self.t


def pair(i, ts):
    return Pair(
        request_id=f"r{i}",
        ts=ts,
        features={"b": i},
        inputs=[i, i],
        production=ModelOutput(role="production", model="p", values=[0.2, 0.8]),
        candidate=ModelOutput(role="candidate", model="c", values=[0.6, 0.4]),
    )


def test_put_get_survives_reopen(tmp_path):
    clock = Clock()
    store = PairStore(tmp_path, retention_s=100, max_pairs=10, clock=clock)
    p = pair(1, clock.t)
    store.put(p)
    store.close()
    store = PairStore(tmp_path, retention_s=100, max_pairs=10, clock=clock)
    got = store.get("r1")
    assert got.status == "found" and got.pair == p
    assert store.get("nope").status == "unknown"
    store.close()


def test_retention_makes_ids_expired_not_unknown(tmp_path):
    clock = Clock()
    store = PairStore(tmp_path, retention_s=100, max_pairs=10, clock=clock)
    store.put(pair(1, clock.t))
    clock.t += 101
    look = store.get("r1")
    assert look.status == "expired" and look.age_s == 101
    assert store.prune() == 1
    assert len(store) == 0
    assert store.get("r1").status == "expired"  # remembered after eviction
    store.close()


def test_capacity_evicts_oldest_first(tmp_path):
    clock = Clock()
    store = PairStore(tmp_path, retention_s=10_000, max_pairs=5, clock=clock)
    for i in range(8):
        store.put(pair(i, clock.t + i))
    store.prune()
    assert len(store) == 5
    assert [store.get(f"r{i}").status for i in range(8)] == ["expired"] * 3 + ["found"] * 5
    store.close()


def test_remembered_evictions_are_bounded(tmp_path):
    clock = Clock()
    store = PairStore(tmp_path, retention_s=10_000, max_pairs=3, clock=clock)
    for i in range(20):
        store.put(pair(i, clock.t + i))
        clock.t += 1
        store.prune()
    rows = store._db.execute("SELECT COUNT(*) FROM evicted").fetchone()[0]
    assert rows == 3 and len(store) == 3
    assert store.get("r0").status == "unknown"  # forgotten long ago
    assert store.get("r16").status == "expired"
    store.close()


def test_tags_and_duplicate_labels(tmp_path):
    clock = Clock()
    store = PairStore(tmp_path, retention_s=100, max_pairs=10, clock=clock)
    store.put(pair(1, clock.t), tags=["divergent", "uncertain", "divergent"])
    assert store.get("r1").tags == ("divergent", "uncertain")
    assert store.mark_labelled("r1", "feedback") is True
    assert store.mark_labelled("r1", "feedback") is False
    assert store.mark_labelled("r1", "annotator") is True
    clock.t += 101
    store.prune()  # the pair goes, and with it what labelled it
    assert store._db.execute("SELECT COUNT(*) FROM labelled").fetchone()[0] == 0
    store.close()


def test_byte_cap_evicts_oldest_pairs_and_they_answer_expired(tmp_path):
    """Capping rows alone let a store of large pairs (features up to serving.max_feature_bytes) fill the disk."""
    clock = Clock()
    store = PairStore(tmp_path, retention_s=10_000, max_pairs=1000, clock=clock, max_bytes=50_000)
    for i in range(40):
        clock.t += 1
        big = pair(i, clock.t).model_copy(update={"features": {"note": "x" * 4000}})
        store.put(big)
        assert store.bytes <= 50_000 + 5_000  # never more than one pair over the cap
    assert 9 <= len(store) <= 12
    assert store.get("r0").status == "expired" and store.get("r39").status == "found"
    reopened = PairStore(tmp_path, retention_s=10_000, max_pairs=1000, clock=clock, max_bytes=50_000)
    assert reopened.bytes == store.bytes  # the total is read back from the store, not assumed


def _rows(store):
    return store._db.execute("SELECT request_id, ts, body, tags, size FROM pairs ORDER BY request_id").fetchall()


def test_put_many_stores_what_put_one_by_one_stores(tmp_path):
    """One transaction per batch (the hub's batched path), the same rows as a put per pair: replaced ids
    (twice in one batch too), tags deduplicated, sizes, the byte total, pruning past max_pairs."""
    clock = Clock()
    one = PairStore(tmp_path / "one", retention_s=10_000, max_pairs=700, clock=clock)
    many = PairStore(tmp_path / "many", retention_s=10_000, max_pairs=700, clock=clock)
    entries = []
    for i in range(1200):
        p = pair(i % 1000, clock.t + i)  # ids 0..199 come twice: the later pair replaces the earlier
        entries.append((p, ["divergent", "evaluation", "divergent"][: i % 4]))
    for p, tags in entries:
        one.put(p, tags)
    for start in range(0, len(entries), 256):
        many.put_many(entries[start : start + 256])
    many.put_many([])
    one.prune()
    many.prune()
    assert len(one) == len(many) == 700
    assert _rows(one) == _rows(many)
    assert one.bytes == many.bytes > 0
    assert many.get("r7").tags == ("divergent", "evaluation") and many.get("r7").pair.ts == clock.t + 1007
    assert many.get("r0").status == one.get("r0").status == "found"
    assert many.get("r300").status == one.get("r300").status == "expired"


def test_put_many_keeps_the_byte_cap_within_a_batch(tmp_path):
    clock = Clock()
    store = PairStore(tmp_path, retention_s=10_000, max_pairs=1000, clock=clock, max_bytes=50_000)
    for b in range(10):
        batch = []
        for i in range(4):
            clock.t += 1
            big = pair(b * 4 + i, clock.t).model_copy(update={"features": {"note": "x" * 4000}})
            batch.append((big, []))
        store.put_many(batch)
        assert store.bytes <= 50_000 + 4 * 5_000  # at most one batch over the cap
    assert store.bytes <= 50_000
    assert store.get("r0").status == "expired" and store.get("r39").status == "found"


def test_put_many_is_all_or_nothing(tmp_path):
    store = PairStore(tmp_path, retention_s=100, max_pairs=10, clock=Clock())
    store.put(pair(0, 10_000.0))
    bad = pair(2, 10_000.0).model_copy(update={"ts": None})  # NOT NULL fails inside the transaction
    with pytest.raises(sqlite3.IntegrityError):
        store.put_many([(pair(1, 10_000.0), []), (bad, [])])
    assert len(store) == 1 and store.get("r1").status == "unknown"
    store.put_many([(pair(3, 10_000.0), [])])  # the store still takes batches after a failed one
    assert len(store) == 2

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


def cand_pair(rid, candidate, ts, values=(0.6, 0.4)):
    """One candidate's pair of a request (several candidates shadowed: one pair each, same production)."""
    return Pair(
        request_id=rid,
        ts=ts,
        features={"b": 1},
        inputs=[1, 1],
        production=ModelOutput(role="production", model="p", values=[0.2, 0.8]),
        candidate=ModelOutput(role="candidate", model=candidate, values=list(values)),
    )


def test_each_candidates_pair_of_a_request_is_kept_and_a_lookup_returns_all(tmp_path):
    clock = Clock()
    store = PairStore(tmp_path, retention_s=100, max_pairs=10, clock=clock)
    b, a = cand_pair("r1", "b", clock.t), cand_pair("r1", "a", clock.t)
    store.put(b, tags=["divergent"])
    store.put(a, tags=["evaluation", "divergent"])
    store.put_many([(cand_pair("r2", "b", clock.t), []), (cand_pair("r2", "a", clock.t), ["uncertain"])])
    assert len(store) == 4
    look = store.get("r1")
    assert look.status == "found" and look.pairs == (a, b) and look.pair == a  # by candidate name
    assert look.tags == ("evaluation", "divergent")  # the union, first pair's first, no duplicates
    assert [p.candidate.model for p in store.get("r2").pairs] == ["a", "b"]
    store.close()
    reopened = PairStore(tmp_path, retention_s=100, max_pairs=10, clock=clock)
    assert reopened.get("r1").pairs == (a, b)
    reopened.close()


def test_a_pair_put_again_replaces_only_its_own_candidates(tmp_path):
    clock = Clock()
    store = PairStore(tmp_path, retention_s=100, max_pairs=10, clock=clock)
    store.put(cand_pair("r1", "a", clock.t), tags=["divergent"])
    store.put(cand_pair("r1", "b", clock.t))
    newer = cand_pair("r1", "a", clock.t + 1, values=(0.1, 0.9))
    store.put_many([(newer, ["uncertain"])])
    look = store.get("r1")
    assert len(store) == 2 and look.pairs == (newer, cand_pair("r1", "b", clock.t))
    assert look.tags == ("uncertain",)  # the replaced row's tags went with it
    no_candidate = Pair(request_id="r1", ts=clock.t, production=ModelOutput(role="production", model="p"))
    store.put(no_candidate)  # keyed by candidate "": first
    assert len(store) == 3 and store.get("r1").pair == no_candidate


def test_capacity_counts_pairs_and_evicts_whole_requests(tmp_path):
    clock = Clock()
    store = PairStore(tmp_path, retention_s=10_000, max_pairs=5, clock=clock)
    store.put(cand_pair("r0", "a", clock.t))
    store.put(cand_pair("r0", "b", clock.t + 5))  # r0's pairs straddle r1's
    for i in (1, 2):
        store.put_many([(cand_pair(f"r{i}", "a", clock.t + i), []), (cand_pair(f"r{i}", "b", clock.t + i), [])])
    assert store.prune() == 2  # 6 pairs, 3 requests, max 5 pairs: the oldest pair's request goes, both its pairs
    assert len(store) == 4
    assert store.get("r0").status == "expired"  # never half a request: a label reaches all its pairs or none
    assert [len(store.get(f"r{i}").pairs) for i in (1, 2)] == [2, 2]
    store.close()


def test_retention_goes_by_a_requests_newest_pair(tmp_path):
    clock = Clock()
    store = PairStore(tmp_path, retention_s=100, max_pairs=10, clock=clock)
    store.put(cand_pair("r1", "a", clock.t - 150))
    store.put(cand_pair("r1", "b", clock.t - 50))
    store.put(cand_pair("r2", "a", clock.t - 150))
    assert store.prune() == 1
    look = store.get("r1")
    assert look.status == "found" and len(look.pairs) == 2 and look.age_s == 50
    assert store.get("r2").status == "expired"
    clock.t += 51
    assert store.get("r1").status == "expired" and store.prune() == 2 and len(store) == 0


@pytest.mark.parametrize("with_size", [True, False])
def test_a_store_keyed_by_request_id_alone_is_migrated_at_open(tmp_path, with_size):
    """A store from before several candidates: request_id PRIMARY KEY, no candidate column (and, older
    still, no size column). Its rows are kept, each under the candidate its stored pair names."""
    clock = Clock()
    db = sqlite3.connect(tmp_path / "pairs.sqlite3")
    size = ", size INTEGER NOT NULL DEFAULT 0" if with_size else ""
    db.execute(
        "CREATE TABLE pairs (request_id TEXT PRIMARY KEY, ts REAL NOT NULL, body TEXT NOT NULL, "
        f"tags TEXT NOT NULL DEFAULT ''{size})"
    )
    db.execute("CREATE INDEX pairs_ts ON pairs (ts)")
    db.execute(
        "CREATE TABLE labelled (request_id TEXT NOT NULL, source TEXT NOT NULL, PRIMARY KEY (request_id, source))"
    )
    db.execute("CREATE TABLE evicted (request_id TEXT PRIMARY KEY, evicted_ts REAL NOT NULL)")
    old = cand_pair("r1", "c", clock.t)
    bare = Pair(request_id="r2", ts=clock.t, production=ModelOutput(role="production", model="p", values=[1.0]))
    for p, tags in ((old, "divergent,uncertain"), (bare, "")):
        body = p.model_dump_json()
        cols = "request_id, ts, body, tags" + (", size" if with_size else "")
        values = (p.request_id, p.ts, body, tags) + ((len(body),) if with_size else ())
        db.execute(f"INSERT INTO pairs ({cols}) VALUES ({', '.join('?' * len(values))})", values)
    db.execute("INSERT INTO labelled VALUES ('r1', 'feedback')")
    db.execute("INSERT INTO evicted VALUES ('r0', ?)", (clock.t,))
    db.commit()
    db.close()

    store = PairStore(tmp_path, retention_s=100, max_pairs=10, clock=clock)
    rows = store._db.execute("SELECT request_id, candidate, tags, size, length(body) FROM pairs ORDER BY 1").fetchall()
    assert [r[:3] for r in rows] == [("r1", "c", "divergent,uncertain"), ("r2", "", "")]
    assert all(r[3] == r[4] for r in rows) and store.bytes == sum(r[4] for r in rows)
    key = [r[1] for r in sorted(store._db.execute("PRAGMA table_info(pairs)"), key=lambda r: r[5]) if r[5]]
    assert key == ["request_id", "candidate"]
    assert store.get("r1").pairs == (old,) and store.get("r1").tags == ("divergent", "uncertain")
    assert store.get("r2").pair == bare
    assert store.is_labelled("r1", "feedback") and store.get("r0").status == "expired"
    other = cand_pair("r1", "d", clock.t)
    store.put(other)  # under the old key this replaced r1's pair
    assert store.get("r1").pairs == (old, other)
    store.close()
    again = PairStore(tmp_path, retention_s=100, max_pairs=10, clock=clock)  # migrated once: opens as is
    assert len(again) == 3
    again.close()

"""Spool: durable order, committed offset, restart replay, torn-tail repair, compaction."""

import json
import multiprocessing
import os

import pytest

from shadowd.errors import SpoolError
from shadowd.flywheel.spool import Spool, read_spool


def _recs(start, n):
    return [(f"req-{i}", json.dumps({"i": i})) for i in range(start, start + n)]


def test_append_then_pending_in_order_across_segments(tmp_path):
    with Spool(tmp_path, segment_items=3) as sp:
        assert sp.append(_recs(0, 7)) == 7
        got = sp.pending(100)
        assert [r.seq for r in got] == list(range(1, 8))
        assert [r.key for r in got] == [f"req-{i}" for i in range(7)]
        assert [r.value["i"] for r in got] == list(range(7))
        assert len(list(tmp_path.glob("seg-*.jsonl"))) == 3  # 3 + 3 + 1
        assert [r.seq for r in sp.pending(2)] == [1, 2]


def test_commit_moves_offset_and_compacts_delivered_segments(tmp_path):
    with Spool(tmp_path, segment_items=3) as sp:
        sp.append(_recs(0, 7))
        sp.commit(4)
        assert sp.pending_count == 3
        assert [r.seq for r in sp.pending(100)] == [5, 6, 7]
        # segment 1..3 fully delivered -> deleted; 4..6 still holds 5, 6
        assert sorted(p.name for p in tmp_path.glob("seg-*.jsonl")) == [
            "seg-00000000000000000004.jsonl",
            "seg-00000000000000000007.jsonl",
        ]
        with pytest.raises(ValueError, match="last record is 7"):
            sp.commit(8)


def test_restart_replays_exactly_the_undelivered_in_order(tmp_path):
    sp = Spool(tmp_path, segment_items=4)
    sp.append(_recs(0, 10))
    sp.commit(6)
    sp.close()
    sp = Spool(tmp_path, segment_items=4)
    assert [r.value["i"] for r in sp.pending(100)] == [6, 7, 8, 9]
    # sequence numbers keep increasing after a restart
    assert sp.append(_recs(10, 2)) == 12
    sp.commit(12)
    sp.close()
    sp = Spool(tmp_path, segment_items=4)
    assert sp.pending_count == 0 and sp.pending(10) == []
    assert sp.append(_recs(12, 1)) == 13
    sp.close()


def test_torn_tail_from_a_crash_is_cut_and_the_rest_survives(tmp_path):
    sp = Spool(tmp_path, segment_items=100)
    sp.append(_recs(0, 3))
    sp.close()
    seg = next(tmp_path.glob("seg-*.jsonl"))
    with open(seg, "a") as f:
        f.write('{"seq":4,"key":"req-3","val')  # the process died mid-line
    sp = Spool(tmp_path, segment_items=100)
    assert [r.seq for r in sp.pending(10)] == [1, 2, 3]
    assert sp.append(_recs(3, 1)) == 4
    assert [r.key for r in sp.pending(10)] == ["req-0", "req-1", "req-2", "req-3"]
    sp.close()


def test_corruption_in_an_older_segment_is_an_error_not_silence(tmp_path):
    sp = Spool(tmp_path, segment_items=2)
    sp.append(_recs(0, 4))
    sp.close()
    first = sorted(tmp_path.glob("seg-*.jsonl"))[0]
    first.write_text(first.read_text().replace('"seq":2', '"seq":9'))
    with pytest.raises(SpoolError, match="corrupt record"):
        Spool(tmp_path, segment_items=2)


def test_bad_offset_file_names_the_file(tmp_path):
    (tmp_path / "delivered").write_text("twelve")
    with pytest.raises(SpoolError, match="delivered: expected an integer offset"):
        Spool(tmp_path)


def _try_open(path, q):
    try:
        Spool(path)
        q.put("opened")
    except SpoolError as err:
        q.put(str(err))


def test_a_second_process_cannot_open_the_same_spool(tmp_path):
    with Spool(tmp_path):
        q = multiprocessing.get_context("fork").Queue()
        p = multiprocessing.get_context("fork").Process(target=_try_open, args=(tmp_path, q))
        p.start()
        p.join(10)
        assert "in use by another process" in q.get(timeout=5)


def test_read_spool_without_the_lock(tmp_path):
    with Spool(tmp_path, segment_items=2) as sp:
        sp.append(_recs(0, 5))
        sp.commit(2)
        assert [r.seq for r in read_spool(tmp_path, pending_only=True)] == [3, 4, 5]
        assert [r.seq for r in read_spool(tmp_path)] == [3, 4, 5]  # 1..2 compacted away
        assert [r.seq for r in sp] == [3, 4, 5]


def test_appends_are_fsynced(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    with Spool(tmp_path, segment_items=1000) as sp:
        calls.clear()
        sp.append(_recs(0, 50))  # one batch in a new segment: file + directory
        assert len(calls) == 2
        calls.clear()
        sp.append(_recs(50, 50))  # existing segment: one fsync per batch
        assert len(calls) == 1


def test_read_spool_after_seq_and_limit_and_last_seq(tmp_path):
    from shadowd.flywheel.spool import spool_last_seq

    assert spool_last_seq(tmp_path) == 0
    with Spool(tmp_path, segment_items=3) as sp:
        sp.append(_recs(0, 10))
        assert [r.seq for r in read_spool(tmp_path, after_seq=4)] == [5, 6, 7, 8, 9, 10]
        assert [r.seq for r in read_spool(tmp_path, after_seq=4, limit=2)] == [5, 6]
        assert [r.seq for r in read_spool(tmp_path, after_seq=9)] == [10]
        assert read_spool(tmp_path, after_seq=10) == []
        assert spool_last_seq(tmp_path) == 10
        sp.commit(10)
    assert spool_last_seq(tmp_path) == 10

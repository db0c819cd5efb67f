"""Spool: durable order, committed offset, restart replay, torn-tail repair, compaction."""

import errno
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shadowd.errors import SpoolError, SpoolWriteError
from shadowd.flywheel.spool import SegmentFile, Spool, read_spool


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


# --- an append is all-or-nothing (issue 12) ---


def _segment(tmp_path):
    (seg,) = tmp_path.glob("seg-*.jsonl")
    return seg


def test_a_failed_fsync_leaves_nothing_and_the_next_acknowledged_record_survives(tmp_path, monkeypatch):
    """On main a failed fsync left the records in the file: the next acknowledged append reused
    their sequence numbers and was cut off as a 'torn tail' on reopen."""
    real = os.fsync
    failures = []

    def fsync(fd):
        if failures:
            failures.pop()
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    sp = Spool(tmp_path, segment_items=100)
    sp.append(_recs(0, 2))
    before = _segment(tmp_path).stat().st_size
    failures.append(1)
    with pytest.raises((OSError, SpoolError)) as err:
        sp.append(_recs(2, 3))
    after_failure = _segment(tmp_path).stat().st_size
    assert sp.append(_recs(5, 1)) == 3  # acknowledged: seq 3 is reused, so nothing else may hold it
    sp.close()
    sp = Spool(tmp_path, segment_items=100)
    assert [(r.seq, r.key) for r in sp.pending(10)] == [(1, "req-0"), (2, "req-1"), (3, "req-5")]
    sp.close()
    assert after_failure == before  # cut back to the last acknowledged byte
    assert isinstance(err.value, SpoolWriteError) and err.value.reason == "write_error"
    assert "none of them was kept" in str(err.value)


_SHORT_WRITE = """
import json, resource, signal, sys
from pathlib import Path
from shadowd.flywheel.spool import Spool

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG instead
directory = Path(sys.argv[1])
sp = Spool(directory, segment_items=100)
pad = "x" * 100
sp.append([("a", json.dumps({"pad": pad}))])
(seg,) = directory.glob("seg-*.jsonl")
# Room for one more record and a half: the next batch of three is cut short by the "disk".
resource.setrlimit(resource.RLIMIT_FSIZE, (seg.stat().st_size + 200, resource.RLIM_INFINITY))
try:
    sp.append([(k, json.dumps({"pad": pad})) for k in ("b", "c", "d")])
    print(json.dumps({"refused": None}))
except Exception as err:  # noqa: BLE001 - reported, the test decides
    print(json.dumps({"refused": getattr(err, "reason", type(err).__name__)}))
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # space returns
print(json.dumps({"seq": sp.append([("e", json.dumps({"pad": pad}))])}))
try:
    print(json.dumps({"pending": [r.key for r in sp.pending(10)]}))
except ValueError as err:  # a half record glued to the next one
    print(json.dumps({"pending": f"unreadable: {err}"}))
sp.close()
print(json.dumps({"reopened": [r.key for r in Spool(directory).pending(10)]}))
"""


def test_a_short_write_on_a_full_disk_is_cut_back_and_the_spool_resumes(tmp_path):
    """A real short write: a process over its file size limit (RLIMIT_FSIZE) writes part of a batch.
    On main the half record stayed: pending() raised (the sender died) and reopening cut off the
    record acknowledged after it."""
    out = subprocess.run(
        [sys.executable, "-c", _SHORT_WRITE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines[1:] == [{"seq": 2}, {"pending": ["a", "e"]}, {"reopened": ["a", "e"]}]
    assert lines[0] == {"refused": "disk_full"}


class FailingCut(SegmentFile):
    """Writes fail (disk full); the first cut back fails too (an I/O error)."""

    cut_failures = 1

    def write(self, data):
        super().write(bytes(data[:10]))  # part of it reaches the file
        raise OSError(errno.ENOSPC, "No space left on device")

    def truncate(self, size_bytes):
        if FailingCut.cut_failures:
            FailingCut.cut_failures -= 1
            raise OSError(errno.EIO, "Input/output error")
        super().truncate(size_bytes)


def test_a_cut_that_fails_blocks_appends_until_it_succeeds(tmp_path):
    opener = {"cls": SegmentFile}
    sp = Spool(tmp_path, segment_items=100, open_segment=lambda p: opener["cls"](p))
    sp.append(_recs(0, 1))
    before = _segment(tmp_path).stat().st_size
    opener["cls"] = FailingCut
    with pytest.raises(SpoolWriteError) as err:
        sp.append(_recs(1, 2))
    assert err.value.reason == "disk_full"
    assert _segment(tmp_path).stat().st_size == before + 10  # the cut failed: 10 stray bytes
    opener["cls"] = SegmentFile
    assert sp.append(_recs(3, 1)) == 2  # the leftover cut is made first, then the append
    assert [r.key for r in sp.pending(10)] == ["req-0", "req-3"]
    sp.close()
    assert [r.key for r in Spool(tmp_path).pending(10)] == ["req-0", "req-3"]


def test_a_batch_failing_in_its_second_segment_is_cut_from_both(tmp_path):
    calls = {"n": 0}

    class SecondFileFails(SegmentFile):
        def write(self, data):
            calls["n"] += 1
            if calls["n"] == 3:  # the third write: the second segment of the second batch
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    sp = Spool(tmp_path, segment_items=3, open_segment=SecondFileFails)
    sp.append(_recs(0, 2))
    with pytest.raises(SpoolWriteError):
        sp.append(_recs(2, 3))  # one record fits the first segment, two go to a new one
    assert [p.name for p in tmp_path.glob("seg-*.jsonl")] == ["seg-00000000000000000001.jsonl"]
    assert len(_segment(tmp_path).read_text().splitlines()) == 2
    assert sp.append(_recs(5, 3)) == 5
    assert [r.key for r in sp.pending(10)] == ["req-0", "req-1", "req-5", "req-6", "req-7"]
    sp.close()


def test_the_byte_cap_refuses_appends_until_delivery_frees_space(tmp_path):
    line = len(f'{{"seq":1,"key":"req-0","value":{json.dumps({"i": 0})}}}\n')
    sp = Spool(tmp_path, segment_items=2, max_bytes=4 * line + 5)
    sp.append(_recs(0, 4))  # two full segments
    assert sp.size_bytes == sum(p.stat().st_size for p in tmp_path.glob("seg-*.jsonl"))
    with pytest.raises(SpoolWriteError) as err:
        sp.append(_recs(4, 1))
    assert err.value.reason == "spool_full" and "annotations.spool_max_bytes" in str(err.value)
    assert sp.last_seq == 4
    sp.commit(2)  # the first segment is delivered and deleted: its bytes are free again
    assert sp.append(_recs(4, 1)) == 5
    with pytest.raises(SpoolWriteError) as err:
        sp.append(_recs(5, 10))  # more than the cap on its own: can never fit
    assert err.value.reason == "too_large" and not err.value.retriable
    sp.close()


def test_offsets_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """On main before write_atomic, the labels offset (joined.offset) was written in place: a crash
    mid-write left a truncated number, and the next start re-joined or skipped labels."""
    import os as _os

    from shadowd.flywheel.spool import read_offset, write_atomic

    path = tmp_path / "joined.offset"
    write_atomic(path, "1234")
    assert read_offset(path) == 1234

    def crash(fd):
        raise OSError(5, "I/O error")  # the machine dies between writing the new number and making it durable

    monkeypatch.setattr(_os, "fsync", crash)
    with pytest.raises(OSError):
        write_atomic(path, "99999")
    monkeypatch.undo()
    assert read_offset(path) == 1234  # the old value, whole
    assert not list(tmp_path.glob("*.tmp"))  # nothing half-made left behind
    write_atomic(path, "99999")
    assert read_offset(path) == 99999

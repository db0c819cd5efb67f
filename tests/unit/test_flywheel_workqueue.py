"""WorkQueue: several sessions on one rotation's queue (the page's tabs, the Label Studio bridge), on the
real local spool. No two sessions hold the same item, an item counts as done only once its label is
persisted, the queue is committed in read order, and a lease that runs out gives the item to the next."""

import json

import pytest

from shadowd.errors import AnnotateError
from shadowd.flywheel.annotate import Annotator, LeaseLost, WorkQueue, check_answer
from shadowd.flywheel.spool import Spool, read_offset
from shadowd.records import AnnotationItem, ModelOutput
from tests.unit.test_flywheel_annotate import config, item, spool_items


def evaluation_item(i):
    return item(i).model_copy(update={"reason": "evaluation", "inclusion": 0.25, "request_id": f"e{i}"})


def spool_evaluation(tmp_path, items):
    with Spool(tmp_path / "spool-evaluation") as sp:
        sp.append([(it.request_id, it.model_dump_json()) for it in items])


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def labels(tmp_path):
    return [json.loads(x) for x in (tmp_path / "labels" / "labels.jsonl").read_text().splitlines()]


def test_sessions_never_hold_the_same_item_and_evaluation_comes_first(tmp_path):
    spool_items(tmp_path, [item(i) for i in range(3)])
    spool_evaluation(tmp_path, [evaluation_item(i) for i in range(2)])
    q = WorkQueue(config(tmp_path))
    try:
        sessions = [q.open_session(name) for name in ("ana", "bo", "cy", "di", "ed", "fay")]
        held = [q.lease(s, timeout_s=0.5) for s in sessions]
        got = [h.item.request_id if h is not None else None for h in held]
        assert got == ["e0", "e1", "r0", "r1", "r2", None]  # five items, five sessions, none twice
        assert [h.lane for h in held[:5]] == ["evaluation", "evaluation", "review", "review", "review"]
        assert q.lease(sessions[0], timeout_s=0.1).item.request_id == "e0"  # the same until answered
    finally:
        q.close()


def test_commit_waits_for_every_earlier_item_then_moves_past_all(tmp_path):
    cfg = config(tmp_path)
    spool_items(tmp_path, [item(i) for i in range(3)])
    q = WorkQueue(cfg)
    offset = tmp_path / "annotate" / "digits.offset"
    try:
        a, b, c = (q.open_session(n) for n in ("ana", "bo", "cy"))
        assert [q.lease(s, 0.5).item.request_id for s in (a, b, c)] == ["r0", "r1", "r2"]
        q.submit(c, 2)
        q.submit(b, "bad_data")
        assert read_offset(offset) == 0  # r0 is still out: a crash now brings all three back
        assert [x["request_id"] for x in labels(tmp_path)] == ["r2", "r1"]  # but the labels are saved
        q.submit(a, 1)
        assert read_offset(offset) == 3  # r0 done: the queue moves past r0, r1 and r2
        assert q.in_flight() == {"leased": 0, "free": 0, "done": 0}
    finally:
        q.close()


def test_a_crash_before_the_commit_passes_labelled_items_over(tmp_path):
    cfg = config(tmp_path)
    spool_items(tmp_path, [item(i) for i in range(3)])
    q = WorkQueue(cfg)
    a, b = q.open_session("ana"), q.open_session("bo")
    q.lease(a, 0.5)
    q.lease(b, 0.5)
    q.submit(b, 0)  # r1 labelled, r0 still out: nothing committed
    q.close()  # the process dies
    q2 = WorkQueue(cfg)
    try:
        s = q2.open_session("cy")
        assert q2.lease(s, 0.5).item.request_id == "r0"
        q2.submit(s, 1)
        assert q2.lease(s, 0.5).item.request_id == "r2"  # r1 was labelled: passed over
        assert q2.passed_over == 1
        assert read_offset(tmp_path / "annotate" / "digits.offset") == 2
    finally:
        q2.close()
    assert sorted(x["request_id"] for x in labels(tmp_path)) == ["r0", "r1"]  # r1 once


def test_a_lease_that_runs_out_goes_to_the_next_session(tmp_path):
    spool_items(tmp_path, [item(0)])
    mono = Clock()
    q = WorkQueue(config(tmp_path), lease_s=60, monotonic=mono)
    try:
        a, b = q.open_session("ana"), q.open_session("bo")
        assert q.lease(a, 0.1).item.request_id == "r0"
        assert q.lease(b, 0.1) is None
        mono.t = 59
        assert q.current(a) is not None  # renewed: another 60 s from now
        mono.t = 100
        assert q.lease(b, 0.1) is None
        mono.t = 120
        assert q.lease(b, 0.1).item.request_id == "r0"  # a stopped asking for 61 s
        with pytest.raises(LeaseLost, match="lease ran out"):
            q.submit(a, 1, request_id="r0")
        label = q.submit(b, 2, request_id="r0")
        assert (label.annotator, label.label) == ("bo", 2)
        assert [x["annotator"] for x in labels(tmp_path)] == ["bo"]
    finally:
        q.close()


def test_release_gives_the_item_back_and_a_label_carries_its_provenance(tmp_path):
    spool_evaluation(tmp_path, [evaluation_item(0)])
    q = WorkQueue(config(tmp_path))
    try:
        a, b = q.open_session("ana"), q.open_session("bo")
        assert q.lease(a, 0.5).item.request_id == "e0"
        q.release(a)
        assert q.lease(b, 0.1).item.request_id == "e0"
        label = q.submit(b, 1)
        assert (label.lane, label.inclusion, label.source) == ("evaluation", 0.25, "annotator")
        assert labels(tmp_path)[0]["lane"] == "evaluation"
    finally:
        q.close()


def test_complete_counts_an_item_done_without_a_label(tmp_path):
    """The Label Studio bridge: the item is exported, its label comes later."""
    spool_items(tmp_path, [item(0), item(1)])
    q = WorkQueue(config(tmp_path))
    try:
        s = q.open_session("label-studio")
        assert q.lease(s, 0.5).item.request_id == "r0"
        q.complete(s, "r0")
        assert read_offset(tmp_path / "annotate" / "digits.offset") == 1
        assert not (tmp_path / "labels" / "labels.jsonl").exists() or labels(tmp_path) == []
        with pytest.raises(LeaseLost):
            q.complete(s, "r0")
    finally:
        q.close()


def test_one_process_at_a_time_reads_the_local_spool(tmp_path):
    cfg = config(tmp_path)
    spool_items(tmp_path, [item(0)])
    a = Annotator(cfg, annotator="ana")
    try:
        with pytest.raises(AnnotateError, match="another annotator process"):
            Annotator(cfg, annotator="bo")
    finally:
        a.close()
    b = Annotator(cfg, annotator="bo")  # free again once the first is gone
    assert b.next_item(timeout_s=0.5).request_id == "r0"
    b.close()


def test_check_answer():
    it = item(0)  # three classes
    assert check_answer(2, it, "classification") == 2
    assert check_answer("skip", it, "classification") == "skip"
    bad: object
    for bad in (3, -1, True, 1.5, "2", None, [1]):
        with pytest.raises(ValueError):
            check_answer(bad, it, "classification")
    assert check_answer(12, it, "classification", n_classes=20) == 12
    reg = AnnotationItem(
        request_id="x",
        reason="divergent",
        priority=1,
        production=ModelOutput(role="production", model="m", values=[1.0]),
        created_ts=0,
    )
    assert check_answer(2, reg, "regression") == 2.0
    assert check_answer([1, 2.5], reg, "regression") == [1.0, 2.5]
    for bad in (float("nan"), float("inf"), [], ["a"], True, {"a": 1}):
        with pytest.raises(ValueError):
            check_answer(bad, reg, "regression")

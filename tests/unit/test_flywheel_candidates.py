"""Flywheel with several candidates shadowed at once: a request has one pair per candidate, and a label
(by request id) reaches every one of them, each with its own provenance; the journal replays exactly
the decisions the live join made. Embedded mode (no broker)."""

import math

import pytest

from shadowd.app import build_flywheel
from shadowd.flywheel.spool import read_spool
from shadowd.records import AnnotationItem, Label, ModelOutput, Pair, Selection
from tests.unit.test_flywheel_hub import Clock, config

PRIORITY = "priority queue (not a random sample)"
COUNTED = "a second label of a pair already counted"


def cand_pair(rid, candidate, ts, values=(0.2, 0.8), in_sample=None):
    """``candidate``'s pair of request ``rid``; ``in_sample``: whether its own evaluation sample drew it."""
    selection = None if in_sample is None else Selection(stratum="flip", evaluation_share=0.2, in_sample=in_sample)
    return Pair(
        request_id=rid,
        ts=ts,
        features={},
        inputs=[1.0, 0.0],
        production=ModelOutput(role="production", model="p", values=[0.9, 0.1]),
        candidate=ModelOutput(role="candidate", model=candidate, values=list(values)),
        selection=selection,
    )


def label(rid, value, clock, source="feedback", verdict="label"):
    return Label(request_id=rid, label=value, source=source, verdict=verdict, ts=clock())


def decisions(result):
    return [(j.pair.candidate.model, j.channel, j.excluded) for j in result.joined]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def fw(tmp_path, clock):
    flywheel = build_flywheel(config(tmp_path, high_loss_threshold=5.0), None, clock)
    yield flywheel
    flywheel.close(timeout_s=2)


def test_every_candidates_pair_is_kept_in_one_batch_or_in_several(fw, clock):
    fw.record_many([(cand_pair("r1", "b", clock()), []), (cand_pair("r1", "a", clock()), [])])
    fw.record(cand_pair("r2", "a", clock()), [])
    fw.record_many([(cand_pair("r2", "b", clock()), [])])
    for rid in ("r1", "r2"):
        assert [p.candidate.model for p in fw.pairs.get(rid).pairs] == ["a", "b"]
    assert fw.stats()["pair_store"]["pairs"] == 4


def test_a_label_counts_for_the_candidates_whose_own_sample_drew_the_request(fw, clock):
    fw.record_many(
        [(cand_pair("r1", "a", clock(), in_sample=True), []), (cand_pair("r1", "b", clock(), in_sample=False), [])]
    )
    res = fw.feedback(label("r1", 1, clock, source="annotator"))
    assert res.status == "joined"
    assert decisions(res) == [("a", "evaluation", None), ("b", None, PRIORITY)]
    assert (res.pair.candidate.model, res.channel, res.excluded) == ("a", "evaluation", None)
    assert res.as_dict()["used_for_quality"] is True
    # a second label of the request, even random feedback that every candidate could use, counts for none
    again = fw.feedback(label("r1", 1, clock))
    assert decisions(again) == [("a", None, COUNTED), ("b", None, COUNTED)]
    assert again.as_dict()["used_for_quality"] is False


def test_only_a_later_candidates_sample_drew_it_and_used_for_quality_says_so(fw, clock):
    fw.record_many(
        [(cand_pair("r1", "a", clock(), in_sample=False), []), (cand_pair("r1", "b", clock(), in_sample=True), [])]
    )
    res = fw.feedback(label("r1", 1, clock, source="annotator"))
    assert decisions(res) == [("a", None, PRIORITY), ("b", "evaluation", None)]
    body = res.as_dict()
    assert body["used_for_quality"] is True and body["excluded"] == PRIORITY  # the first pair's why
    assert decisions(fw.feedback(label("r1", 1, clock))) == [("a", None, COUNTED), ("b", None, COUNTED)]


def test_random_feedback_counts_for_every_candidate_and_targeted_for_none(tmp_path, clock, fw):
    fw.record_many([(cand_pair("r1", "a", clock(), in_sample=False), []), (cand_pair("r1", "b", clock()), [])])
    assert decisions(fw.feedback(label("r1", 0, clock))) == [("a", "feedback", None), ("b", "feedback", None)]
    targeted = build_flywheel(config(tmp_path / "t", feedback_selection="targeted"), None, clock)
    try:
        targeted.record_many([(cand_pair("r1", "a", clock(), in_sample=True), []), (cand_pair("r1", "b", clock()), [])])
        why = "targeted feedback (labels.feedback_selection)"
        assert decisions(targeted.feedback(label("r1", 0, clock))) == [("a", None, why), ("b", None, why)]
    finally:
        targeted.close(timeout_s=2)


def test_a_skip_excludes_every_pair_with_why(fw, clock):
    fw.record_many([(cand_pair("r1", "a", clock(), in_sample=True), []), (cand_pair("r1", "b", clock()), [])])
    res = fw.feedback(label("r1", None, clock, source="annotator", verdict="bad_data"))
    assert res.status == "skipped" and res.excluded == "marked bad data"
    assert decisions(res) == [("a", None, "marked bad data"), ("b", None, "marked bad data")]


def test_each_candidates_loss_and_the_worst_of_them_decides_high_loss(fw, clock, tmp_path):
    fw.record_many(
        [(cand_pair("r1", "a", clock(), values=(0.9, 0.1)), []), (cand_pair("r1", "b", clock(), (0.999, 0.001)), [])]
    )
    res = fw.feedback(label("r1", 1, clock))  # production -log(0.1), a -log(0.1), b -log(0.001) = 6.9 > 5
    assert res.losses == pytest.approx(
        {"production": -math.log(0.1), "candidate": -math.log(0.1), "candidate:b": -math.log(0.001)}
    )
    assert "tag.high_loss" in res.suites
    assert fw.flush(timeout_s=5)
    items = [AnnotationItem.model_validate(r.value) for r in read_spool(tmp_path / "spool")]
    assert [(i.reason, i.candidate.model) for i in items] == [("high_loss", "b")]  # the worst candidate's pair
    assert items[0].priority == pytest.approx(-math.log(0.001))


def test_the_journal_replays_every_pairs_decision(tmp_path, clock):
    """A fresh flywheel on the same data dir (a restart after a crash) gives ``on_joined`` the very
    decisions the live join gave, pair by pair, however often it replays."""
    cfg = config(tmp_path)
    live = build_flywheel(cfg, None, clock)
    live.record_many(
        [(cand_pair(f"r{i}", "a", clock(), in_sample=i == 1), []) for i in range(4)]
        + [(cand_pair(f"r{i}", "b", clock(), in_sample=i == 2), []) for i in range(4)]
    )
    results = [
        live.feedback(label("r1", 1, clock, source="annotator")),
        live.feedback(label("r1", 1, clock)),
        live.feedback(label("r2", 0, clock, source="annotator")),
        live.feedback(label("r3", None, clock, source="annotator", verdict="skip")),
        live.feedback(label("r0", 0, clock)),
    ]
    expected = [(r.seq, r.status, r.channel, r.excluded, decisions(r)) for r in results]
    assert expected[0][4] == [("a", "evaluation", None), ("b", None, PRIORITY)]
    assert expected[2][4] == [("a", None, PRIORITY), ("b", "evaluation", None)]
    live.close(timeout_s=2)

    replayed = []
    for _ in range(2):  # the marks, suites and callbacks are idempotent: replaying twice changes nothing
        replayed.clear()
        again = build_flywheel(cfg, None, clock)
        again.start(on_joined=lambda result, lab: replayed.append(result), replay_after=0)
        try:
            assert [(r.seq, r.status, r.channel, r.excluded, decisions(r)) for r in replayed] == expected
            assert again.feedback(label("r2", 0, clock, source="annotator")).status == "duplicate"
        finally:
            again.close(timeout_s=2)
    after = build_flywheel(cfg, None, clock)  # the replayed marks hold: r2 counted once, for both candidates
    try:
        assert decisions(after.feedback(label("r2", 0, clock))) == [("a", None, COUNTED), ("b", None, COUNTED)]
    finally:
        after.close(timeout_s=2)


def test_a_pair_stored_after_its_label_is_replayed_as_not_stored(tmp_path, clock):
    """The entry names its first pair: a pair stored later, even one sorting before it, does not take
    the entry's decision on replay."""
    cfg = config(tmp_path)
    live = build_flywheel(cfg, None, clock)
    live.record(cand_pair("r1", "z", clock(), in_sample=True), [])
    res = live.feedback(label("r1", 1, clock, source="annotator"))
    assert decisions(res) == [("z", "evaluation", None)]
    live.record(cand_pair("r1", "a", clock(), in_sample=True), [])  # another candidate's pair, late
    live.close(timeout_s=2)

    replayed = []
    again = build_flywheel(cfg, None, clock)
    again.start(on_joined=lambda result, lab: replayed.append(result), replay_after=0)
    try:
        (result,) = replayed
        assert (result.pair.candidate.model, result.channel) == ("z", "evaluation")
        assert decisions(result) == [("z", "evaluation", None), ("a", None, "not stored when the label arrived")]
    finally:
        again.close(timeout_s=2)

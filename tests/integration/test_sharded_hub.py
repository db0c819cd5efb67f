"""A sharded hub on real Ray Serve with a real Kafka-protocol broker (tansu).

Issue 14: pairs are routed to a hub shard by a hash of the request id, labels
(over HTTP and from the labels topic) to the shard that holds the pair, and
the lead merges every shard's state into the report. The same stream and the
same labels through one hub give the same counts and the same verdicts.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
import requests
from kafka import KafkaProducer

from shadowd.launcher import APP_NAME, wait_for_pairs
from shadowd.sampling import shard_of
from tests.fixtures.kafka import kafka_sink
from tests.fixtures.ray_serve import toy_model

pytestmark = pytest.mark.integration

N = 240
SHARDS = 2


def _config(bootstrap: str, shards: int) -> dict[str, Any]:
    return {
        "task": "classification",
        "models": {"production": toy_model("prod", seed=0), "candidate": toy_model("cand", seed=5)},
        "shadow": {"sample_share": 1.0, "noise_share": 0.5, "candidate_timeout_s": 5.0},
        "slices": [{"name": "night", "where": {"field": "hour", "op": "in", "value": [0, 1, 2, 3, 4, 5, 22, 23]}}],
        "annotations": {
            "sink": kafka_sink(bootstrap, "shards"),
            "policy": {"dedup_window_items": 0, "rate_per_s": 10_000, "burst_items": 10_000},
            # The evaluation draw must not depend on when a report put a slice under review: same share.
            "evaluation": {"share": 0.3, "review_share": 0.3},
        },
        "serving": {"hub_shards": shards},
    }


def _stream() -> list[tuple[str, dict[str, Any], int]]:
    """(request id, body, true label): the same stream for both runs."""
    rng = np.random.default_rng(14)
    return [
        (
            f"shard-{i}",
            {"inputs": rng.normal(size=8).round(4).tolist(), "features": {"hour": int(rng.integers(24))}},
            int(rng.integers(0, 3)),
        )
        for i in range(N)
    ]


def _run(shadowd_app, bootstrap: str, shards: int) -> tuple[dict[str, Any], list[int]]:
    """Send the stream, labels for the first two thirds over HTTP and the rest on the labels topic;
    returns the report once every label has joined, and the pairs each shard counted."""
    daemon = shadowd_app(_config(bootstrap, shards))
    stream = _stream()
    with requests.Session() as s:
        for rid, body, _ in stream:
            assert s.post(f"{daemon.url}/predict", json=body, headers={"X-Request-ID": rid}, timeout=30).ok
    report = wait_for_pairs(daemon.url, N, 90, daemon.token)
    assert report["overall"]["pairs"] == N
    by_http = 2 * N // 3
    with requests.Session() as s:
        for rid, _, label in stream[:by_http]:
            resp = s.post(
                f"{daemon.url}/feedback", json={"request_id": rid, "label": label}, headers=daemon.headers, timeout=30
            )
            assert resp.status_code == 200 and resp.json()["status"] == "joined", resp.text
    producer = KafkaProducer(bootstrap_servers=[bootstrap])
    labels_topic = daemon.config.annotations.sink.labels_topic
    for rid, _, label in stream[by_http:]:
        record = {"request_id": rid, "label": label, "ts": time.time(), "source": "annotator"}
        producer.send(labels_topic, key=rid.encode(), value=json.dumps(record).encode())
    producer.flush(30)
    producer.close()
    deadline = time.monotonic() + 90
    while True:
        report = requests.get(f"{daemon.url}/shadow/report", headers=daemon.headers, timeout=30).json()
        if report["annotations"]["labels"]["joined"] >= N or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return report, _pairs_per_shard(shards)


def _pairs_per_shard(shards: int) -> list[int]:
    from ray import serve

    names = ["ShadowHub", *(f"ShadowHub-{i}" for i in range(1, shards))]
    states = [serve.get_deployment_handle(n, APP_NAME).shard_state.remote({}).result() for n in names]
    return [sum(t["slices"]["overall"]["pairs"] for t in s.values()) for s in states]  # every test's pairs


def _counts(report: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on the number of shards: counts per slice, the labels, the status of every check
    but latency's (two runs' latencies differ)."""
    slices = {"overall": report["overall"], **report["slices"]}
    return {
        "slices": {
            name: {k: s[k] for k in ("pairs", "compared", "candidate_outcomes", "flips", "divergent")}
            | {"noise": (s["noise"]["compared"], s["noise"]["flips"])}
            | {k: s["labels"][k] for k in ("used", "by_channel", "excluded", "strata", "feedback", "accuracy")}
            for name, s in slices.items()
        },
        "checks": sorted(
            (c["check"], c["slice"], c["status"], c["n"]) for c in report["checks"] if c["type"] != "latency_ratio"
        ),
        "labels": report["annotations"]["labels"],
    }


def test_shards_count_each_pair_once_join_labels_anywhere_and_report_like_one_hub(shadowd_app, kafka_broker):
    sharded, per_shard = _run(shadowd_app, kafka_broker.bootstrap, SHARDS)
    owners = [shard_of(rid, SHARDS) for rid, _, _ in _stream()]
    assert per_shard == [owners.count(s) for s in range(SHARDS)]  # each pair on its shard, exactly once
    assert min(per_shard) > N / 4
    assert sharded["annotations"]["labels"]["joined"] == N  # over HTTP and from the topic, on every shard
    assert sharded["annotations"]["labels"]["unknown"] == 0
    labels = sharded["overall"]["labels"]
    assert labels["used"] + sum(labels["excluded"].values()) == N  # each label in its slice's evidence once

    single, _ = _run(shadowd_app, kafka_broker.bootstrap, 1)
    assert _counts(sharded) == _counts(single)
    decided = [c for c in sharded["checks"] if c["status"] != "inconclusive" and c["type"] != "latency_ratio"]
    assert decided, "the same verdicts only mean something when some check decided"


def test_a_lineup_change_reaches_every_shard(shadowd_app, kafka_broker):
    """A new candidate starts a new window on the lead and on the other shard, and the pairs after the change
    are the new candidate's, on the shard that owns each."""
    from ray import serve

    lineup = {"python_targets": ["shadowd.testing:ToyClassifier"]}  # a runtime toy model with other kwargs
    daemon = shadowd_app({**_config(kafka_broker.bootstrap, SHARDS), "lineup": lineup})
    stream = _stream()

    def send(part: list[tuple[str, dict[str, Any], int]], tag: str) -> None:
        with requests.Session() as s:
            for rid, body, _ in part:
                headers = {"X-Request-ID": f"{tag}-{rid}"}
                assert s.post(f"{daemon.url}/predict", json=body, headers=headers, timeout=30).ok

    send(stream[:60], "before")
    assert wait_for_pairs(daemon.url, 60, 90, daemon.token)["overall"]["pairs"] == 60
    change = {"action": "set", "candidate": toy_model("cand2", seed=0, retrain=3), "replace": "cand"}
    resp = requests.post(f"{daemon.url}/shadow/candidates", json=change, headers=daemon.headers, timeout=120)
    assert resp.status_code == 200, resp.text
    lead, other = (serve.get_deployment_handle(n, APP_NAME) for n in ("ShadowHub", "ShadowHub-1"))
    for hub in (lead, other):  # the lead told its peer before it answered
        (state,) = hub.shard_state.remote({}).result().values()  # one test: the new candidate's
        assert state["models"]["candidate"] == "cand2" and state["slices"]["overall"]["pairs"] == 0
    time.sleep(1.5)  # every replica follows within a second
    send(stream[60:180], "after")
    report = wait_for_pairs(daemon.url, 120, 90, daemon.token)
    assert report["overall"]["pairs"] == 120 and report["models"]["candidate"] == "cand2"
    owners = [shard_of(f"after-{rid}", SHARDS) for rid, _, _ in stream[60:180]]
    assert _pairs_per_shard(SHARDS) == [owners.count(s) for s in range(SHARDS)]

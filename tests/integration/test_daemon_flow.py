"""Whole-daemon flows on real Ray Serve: divergent items reach a real Kafka-protocol
broker keyed by request id, labels join over HTTP and the evidence survives a
restart, and data expectations answer or reject as configured."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests
from kafka import KafkaConsumer
from typer.testing import CliRunner

from shadowd.cli import app
from shadowd.flywheel.spool import read_spool
from shadowd.launcher import wait_for_pairs
from shadowd.records import AnnotationItem
from shadowd.sampling import hash_unit
from shadowd.testing import ToyClassifier
from tests.fixtures.grafana import TOKEN as GRAFANA_TOKEN
from tests.fixtures.kafka import consumer_config, unique_topic
from tests.fixtures.ray_serve import GRAFANA_TOKEN_ENV, toy_model

pytestmark = pytest.mark.integration

NO_BUDGET = {"dedup_window_items": 0, "rate_per_s": 10_000, "burst_items": 10_000}


def _bodies(n: int, seed: int) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed)
    return [
        (
            f"flow-{seed}-{i}",
            {"inputs": rng.normal(size=8).round(4).tolist(), "features": {"hour": int(rng.integers(24))}},
        )
        for i in range(n)
    ]


def _send(url: str, reqs) -> None:
    with requests.Session() as s:
        for rid, body in reqs:
            assert s.post(f"{url}/predict", json=body, headers={"X-Request-ID": rid}, timeout=30).status_code == 200


def _expected_divergent(reqs, tvd_threshold: float = 0.3) -> set[str]:
    x = np.asarray([b["inputs"] for _, b in reqs], dtype=np.float32)
    p, c = ToyClassifier(seed=0).predict(x), ToyClassifier(seed=5).predict(x)
    tvd = 0.5 * np.abs(p - c).sum(1)
    divergent = (p.argmax(1) != c.argmax(1)) | (tvd > tvd_threshold)
    return {rid for (rid, _), d in zip(reqs, divergent, strict=True) if d}


def test_divergent_items_reach_kafka_keyed_by_request_id(shadowd_app, kafka_broker):
    topic = unique_topic("annotations")
    daemon = shadowd_app(
        {
            "task": "classification",
            "models": {"production": toy_model("prod", seed=0), "candidate": toy_model("cand", seed=5)},
            "annotations": {
                "sink": {
                    "type": "kafka",
                    "bootstrap_servers": [kafka_broker.bootstrap],
                    "annotations_topic": topic,
                    "evaluation_topic": f"{topic}.evaluation",
                },
                "policy": NO_BUDGET,
            },
        }
    )
    reqs = _bodies(60, seed=11)
    expected = _expected_divergent(reqs)
    assert 5 < len(expected) < 60
    _send(daemon.url, reqs)
    assert wait_for_pairs(daemon.url, 60, 60, daemon.token)["overall"]["divergent"] == len(expected)

    topics = (topic, f"{topic}.evaluation")  # the review lane and the evaluation lane
    consumer = KafkaConsumer(*topics, **consumer_config(kafka_broker.bootstrap, group_id=f"g-{topic}"))
    seen: dict[str, AnnotationItem] = {}
    deadline = time.monotonic() + 60
    while set(seen) != expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for rec in records:
                item = AnnotationItem.model_validate_json(rec.value)
                assert rec.key.decode() == item.request_id
                assert rec.topic == topics[item.lane == "evaluation"]
                seen[item.request_id] = item
    consumer.close()
    assert set(seen) == expected
    # the disagreements drawn by the hash of their id (default share 0.2) went to the evaluation lane
    drawn = {rid for rid in expected if hash_unit(rid, "evaluation") < 0.2}
    assert {rid for rid, item in seen.items() if item.reason == "evaluation"} == drawn
    assert all(item.reason in ("divergent", "evaluation") and item.inputs is not None for item in seen.values())


def test_labels_join_over_http_and_evidence_survives_restart(shadowd_app):
    raw = {
        "task": "classification",
        "models": {"production": toy_model("prod", seed=0), "candidate": toy_model("cand", seed=5)},
    }
    daemon = shadowd_app(raw)
    reqs = _bodies(30, seed=12)
    _send(daemon.url, reqs)
    assert wait_for_pairs(daemon.url, 30, 60, daemon.token)["overall"]["pairs"] == 30
    url, auth = daemon.url, daemon.headers  # the run's generated token (loopback, none configured)
    for rid, _ in reqs[:10]:
        r = requests.post(f"{url}/feedback", json={"request_id": rid, "label": 1}, headers=auth, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "joined", r.text
        assert set(r.json()["losses"]) == {"production", "candidate"}
    unknown = requests.post(f"{url}/feedback", json={"request_id": "never-seen", "label": 1}, headers=auth, timeout=10)
    assert unknown.status_code == 404 and "never-seen" in unknown.json()["error"]
    wrong = requests.post(f"{url}/feedback", json={"request_id": reqs[10][0], "label": 99}, headers=auth, timeout=10)
    assert wrong.status_code == 422 and "class index" in wrong.json()["message"]
    before = requests.get(f"{url}/shadow/report", headers=auth, timeout=10).json()
    assert before["overall"]["labels"]["used"] == 10 and before["overall"]["labels"]["by_channel"] == {"feedback": 10}

    daemon.stop()  # graceful: the hub saves its state
    again = shadowd_app(raw)
    after = requests.get(f"{again.url}/shadow/report", headers=again.headers, timeout=10).json()
    assert after["overall"]["pairs"] == 30 and after["overall"]["flips"] == before["overall"]["flips"]
    assert after["overall"]["labels"]["used"] == 10
    # The pair store survived too: a late label for an old request still joins.
    late = requests.post(
        f"{again.url}/feedback", json={"request_id": reqs[20][0], "label": 2}, headers=again.headers, timeout=10
    )
    assert late.status_code == 200 and late.json()["status"] == "joined"

    # The CLI against the live daemon: the gate's exit code, then a new window.
    runner = CliRunner(env={"SHADOWD_TOKEN": again.token})
    gated = runner.invoke(app, ["report", "--url", again.url, "--gate", "--format", "json"])
    # 30 pairs and 11 labels are below every check's minimum sample: no verdict yet.
    assert json.loads(gated.stdout)["gate"]["verdict"] == "INCONCLUSIVE"
    assert gated.exit_code == 3
    assert runner.invoke(app, ["report", "--url", again.url, "--reset"]).exit_code == 0
    assert requests.get(f"{again.url}/shadow/report", headers=again.headers, timeout=10).json()["overall"]["pairs"] == 0


@pytest.mark.parametrize("mode", ["answer", "reject"])
def test_expectations_on_live_traffic(shadowd_app, tmp_path, mode):
    daemon = shadowd_app(
        {
            "task": "classification",
            "models": {"production": toy_model("prod", seed=0), "candidate": toy_model("cand", seed=5)},
            "expectations": {
                "on_violation": mode,
                "features": {"hour": {"type": "integer", "required": True, "min": 0, "max": 23}},
            },
            "annotations": {"policy": NO_BUDGET},
        }
    )
    good = {"inputs": [0.1] * 8, "features": {"hour": 3}}
    bad = [{"inputs": [0.1] * 8, "features": {"hour": 30}}, {"inputs": [0.2] * 8, "features": {}}]
    assert requests.post(f"{daemon.url}/predict", json=good, timeout=10).status_code == 200
    answers = [requests.post(f"{daemon.url}/predict", json=b, timeout=10) for b in bad]
    if mode == "reject":
        assert [a.status_code for a in answers] == [422, 422]
        assert "features.hour" in answers[0].json()["error"] and "30" in answers[0].json()["error"]
        assert "required" in answers[1].json()["error"]
        return
    assert [a.status_code for a in answers] == [200, 200]
    report = wait_for_pairs(daemon.url, 3, 60, daemon.token)
    violations = report["expectations"]["violations"]["overall"]
    assert violations == {"features.hour.range": 1, "features.hour.required": 1}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        report = requests.get(f"{daemon.url}/shadow/report", headers=daemon.headers, timeout=10).json()
        if report["annotations"]["sink"]["queued"] >= 2:
            break
        time.sleep(0.2)
    daemon.stop()
    reasons: dict[str, set[str]] = {}
    for rec in read_spool(tmp_path / "data" / "spool"):
        item = AnnotationItem.model_validate(rec.value)
        reasons.setdefault(item.reason, set()).add(item.request_id)
    violating = reasons.get("expectation_violation", set())
    assert len(violating) == 2
    items = [AnnotationItem.model_validate(r.value) for r in read_spool(tmp_path / "data" / "spool")]
    assert any("30" in (i.detail or "") for i in items if i.reason == "expectation_violation")


def test_gate_verdict_changes_become_grafana_annotations(shadowd_app, grafana):
    """Grafana cannot run here: ``grafana`` is the stand-in HTTP server from tests/fixtures/grafana.py."""
    daemon = shadowd_app(
        {
            "task": "classification",
            "models": {"production": toy_model("prod", seed=0), "candidate": toy_model("cand", seed=5)},
            "grafana": {"url": grafana.url, "token_env": GRAFANA_TOKEN_ENV},
        }
    )
    _send(daemon.url, _bodies(400, seed=13))
    assert wait_for_pairs(daemon.url, 400, 60, daemon.token)["overall"]["pairs"] == 400
    verdict = requests.get(f"{daemon.url}/shadow/report", headers=daemon.headers, timeout=10).json()["gate"]["verdict"]
    assert verdict == "FAIL"  # a candidate that flips a large share of answers
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("FAIL" in str(a.get("tags")).upper() for a in grafana.annotations):
        time.sleep(0.5)
    posts = [r for r in grafana.requests if (r.method, r.path) == ("POST", "/api/annotations")]
    assert posts and all(r.auth == f"Bearer {GRAFANA_TOKEN}" for r in posts)
    verdicts = [r.body["tags"][-1].upper() for r in posts]
    assert verdicts[-1] == "FAIL" and "gate verdict" in posts[-1].body["text"]
    assert len(verdicts) == len(set(verdicts))  # one annotation per change, not per evaluation


def _hub_actor():
    import ray

    (name,) = [a for a in ray.util.list_named_actors(all_namespaces=True) if "ShadowHub" in a["name"]]
    return ray.get_actor(name["name"], namespace=name["namespace"])


def test_labels_acknowledged_just_before_the_hub_is_killed_survive_it(shadowd_app, tmp_path):
    """The hub replica is killed like SIGKILL (ray.kill: no shutdown hook, no state save) right after
    answering 200 to labels; Serve starts a new replica, which replays the labels journal. Before the
    journal, those labels were lost with the unsaved tallies and a resend was answered "duplicate"."""
    import ray

    from shadowd.compare.comparator import report_from_data_dir

    daemon = shadowd_app(
        {
            "task": "classification",
            "models": {"production": toy_model("prod", seed=0), "candidate": toy_model("cand", seed=5)},
            "shadow": {"sample_share": 1.0},
        }
    )
    reqs = _bodies(40, seed=21)
    _send(daemon.url, reqs)
    assert wait_for_pairs(daemon.url, 40, 60, daemon.token)["overall"]["pairs"] == 40
    deadline = time.monotonic() + 30  # the hub's periodic save holds the pairs (not yet the labels)
    while True:
        try:
            if report_from_data_dir(daemon.config.data_dir).overall.pairs == 40:
                break
        except Exception:  # no state written yet
            pass
        assert time.monotonic() < deadline, "the hub never saved its state"
        time.sleep(0.5)
    auth = daemon.headers
    for rid, _ in reqs[:10]:
        r = requests.post(f"{daemon.url}/feedback", json={"request_id": rid, "label": 1}, headers=auth, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "joined"
    ray.kill(_hub_actor(), no_restart=False)  # within the save interval of the labels

    deadline = time.monotonic() + 90
    while True:
        r = requests.get(f"{daemon.url}/shadow/report", headers=auth, timeout=30)
        if r.status_code == 200:
            break
        assert r.status_code == 503 and "retry" in r.json()["error"], r.text  # never a 500 while it restarts
        assert time.monotonic() < deadline, "no new hub replica"
        time.sleep(1)
    assert r.json()["overall"]["pairs"] == 40 and r.json()["overall"]["labels"]["used"] == 10
    again = requests.post(
        f"{daemon.url}/feedback", json={"request_id": reqs[0][0], "label": 1}, headers=auth, timeout=10
    )
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    late = requests.post(
        f"{daemon.url}/feedback", json={"request_id": reqs[11][0], "label": 1}, headers=auth, timeout=10
    )
    assert late.status_code == 200 and late.json()["status"] == "joined"

"""Redaction wherever request data rests, not only in the annotation queue.

On main before this, ``annotations.redaction`` applied to queue items only:
the pair store (``pairs.sqlite3``) and the hard-example suites kept raw
features and inputs, and the report's expectation examples showed raw feature
values. Here a request's e-mail (dropped) and user id (hashed) must not appear
in any file under the data dir, nor in the report, while the label still
counts in the slice defined on a redacted (hashed) feature.
"""

import asyncio
from dataclasses import asdict

from prometheus_client import CollectorRegistry

from shadowd.app import build_flywheel
from shadowd.config import parse_config
from shadowd.expect import ExpectationSet
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import Label, ModelOutput, Pair
from shadowd.serving.hub import HubParts, ShadowHub

EMAIL = "alice@example.org"
USER = 9137


def cfg(tmp_path):
    return parse_config(
        {
            "task": "classification",
            "data_dir": str(tmp_path / "data"),
            "models": {
                "production": {"name": "p", "kind": "python", "target": "m:f", "input_shape": [2]},
                "candidate": {"name": "c", "kind": "python", "target": "m:f", "input_shape": [2]},
            },
            "slices": [{"name": "corporate", "where": {"field": "user_id", "op": "gt", "value": 9000}}],
            "annotations": {
                "evaluation": {"share": 1.0},
                "redaction": {"drop": ["features.email"], "hash": ["features.user_id"], "salt_env": "TEST_SALT"},
            },
            "expectations": {"features": {"email": {"allowed": ["nobody@example.org"]}}},
            "labels": {"high_loss_threshold": 0.5},
            "metrics": {"port": 0},
        }
    )


def parts(config, shard=None):
    metrics = ShadowdMetrics(CollectorRegistry())
    return HubParts(metrics=metrics, flywheel=build_flywheel(config, metrics))


def test_no_raw_feature_value_rests_anywhere_and_labels_still_count_in_their_slice(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_SALT", "a-secret")
    config = cfg(tmp_path)
    expect = ExpectationSet(config.expectations, redaction=config.annotations.redaction)
    features = {"email": EMAIL, "user_id": USER, "hour": 3}
    violations = expect.check_request(features, None)
    assert violations and EMAIL not in violations[0].message  # the report's examples come from these
    hub = ShadowHub(config, parts)
    pairs = [
        Pair(
            request_id=f"r{i}",
            ts=1_800_000_000.0,
            features=features,
            inputs=[float(i), 1.0],
            production=ModelOutput(role="production", model="p", values=[0.9, 0.1]),
            candidate=ModelOutput(role="candidate", model="c", values=[0.1, 0.9]),  # flips: evaluation items
            violations=[asdict(v) for v in violations],
        )
        for i in range(6)
    ]
    asyncio.run(hub.add_pairs(pairs))
    for i in range(6):  # labels that make the candidate wrong: high loss, suites, quality cells
        status, body = asyncio.run(hub.feedback(Label(request_id=f"r{i}", label=0, ts=1_800_000_100.0)))
        assert status == 200 and body["status"] == "joined" and body["used_for_quality"]
    report = asyncio.run(hub.report())
    assert report["slices"]["corporate"]["labels"]["used"] == 6  # the slice is on a hashed feature
    assert report["expectations"]["examples"]
    hub._save()
    flywheel = hub._flywheel
    del hub._flywheel
    flywheel.close(timeout_s=5)

    hashed = flywheel.policy.redactor.hash_value(USER)
    leaks, found_hash = [], False
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file() and path.suffix in {".jsonl", ".json", ".sqlite3", ".sqlite3-wal", ""}:
            data = path.read_bytes()
            if EMAIL.encode() in data or f'"user_id":{USER}'.encode() in data.replace(b" ", b""):
                leaks.append(str(path.relative_to(tmp_path)))
            found_hash |= hashed.encode() in data
    report_text = str(report)
    assert leaks == [] and EMAIL not in report_text
    assert found_hash  # hashed, not lost: equal values still match
    assert list((tmp_path / "data" / "suites").glob("*/examples.jsonl"))  # suites were written, redacted

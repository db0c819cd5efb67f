"""Item policy: dedup, per-slice quotas, token bucket, assignment, redaction (injected clock)."""

import hashlib
import json
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from shadowd.config import AnnotationPolicyConfig, RedactionConfig, RotationConfig
from shadowd.errors import ConfigError
from shadowd.flywheel.policy import ItemPolicy, Redactor, TokenBucket
from shadowd.flywheel.rotation import Rotation
from shadowd.flywheel.transports import consumer_group
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import AnnotationItem, ModelOutput


class Clock:
    def __init__(self, t=1_800_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def item(i, inputs=None, slices=(), features=None, reason="divergent"):
    return AnnotationItem(
        request_id=f"r{i}",
        reason=reason,
        priority=1.0,
        slices=list(slices),
        features=features or {},
        inputs=[float(i), 1.0] if inputs is None else inputs,
        production=ModelOutput(role="production", model="p", values=[0.9, 0.1]),
        created_ts=0.0,
    )


def unlimited(**kw):
    return AnnotationPolicyConfig.model_validate({"rate_per_s": 1e9, "burst_items": 10**9, **kw})


def test_token_bucket_rate_and_burst():
    clock = Clock(0.0)
    bucket = TokenBucket(rate_per_s=2.0, burst=5, clock=clock)
    assert sum(bucket.take() for _ in range(20)) == 5  # the burst, then nothing
    clock.t += 1.0
    assert sum(bucket.take() for _ in range(20)) == 2  # 2 per second
    clock.t += 100.0
    assert sum(bucket.take() for _ in range(20)) == 5  # saving up stops at the burst


def test_near_identical_items_are_deduped_and_counted():
    metrics = ShadowdMetrics(CollectorRegistry())
    pol = ItemPolicy(unlimited(dedup_decimals=2), RedactionConfig(), Clock(), metrics=metrics)
    assert pol.admit(item(1, inputs=[0.1234, 5.0])) is not None
    assert pol.admit(item(2, inputs=[0.1229, 5.001])) is None  # same to 2 decimals
    assert pol.admit(item(3, inputs=[0.13, 5.0])) is not None  # differs at 2 decimals
    assert pol.admit(item(4, inputs=[0.1234, 5.0], reason="high_loss")) is not None  # another question
    assert pol.held_back == {"duplicate": 1}
    assert metrics.registry.get_sample_value("shadowd_annotation_items_total", {"outcome": "held_back"}) == 1


def test_dedup_window_forgets_oldest():
    pol = ItemPolicy(unlimited(dedup_window_items=2), RedactionConfig(), Clock())
    for i in range(3):
        assert pol.admit(item(i)) is not None
    assert pol.admit(item(0)) is not None  # 0 fell out of a window of 2
    assert pol.admit(item(2)) is None


def test_slice_quota_per_window_and_rare_slice_not_starved():
    clock = Clock(3600.0 * 1000)
    pol = ItemPolicy(unlimited(slice_quotas={"dark": 3, "overall": 2}, quota_window_s=3600), RedactionConfig(), clock)
    dark = [pol.admit(item(i, slices=["dark"])) for i in range(10)]
    assert sum(x is not None for x in dark) == 3
    plain = [pol.admit(item(100 + i)) for i in range(5)]
    assert sum(x is not None for x in plain) == 2
    # an item in the flooded slice and in an unlimited one still gets through
    assert pol.admit(item(200, slices=["dark", "tiny"])) is not None
    assert pol.held_back == {"slice_quota": 10}
    clock.t += 3600  # next window
    assert pol.admit(item(300, slices=["dark"])) is not None


def test_default_slice_quota_applies_to_unnamed_slices():
    pol = ItemPolicy(unlimited(default_slice_quota=1), RedactionConfig(), Clock())
    assert pol.admit(item(1, slices=["a"])) is not None
    assert pol.admit(item(2, slices=["a"])) is None
    assert pol.admit(item(3, slices=["b"])) is not None


def test_global_rate_limit_holds_back_a_flood():
    clock = Clock()
    pol = ItemPolicy(AnnotationPolicyConfig(rate_per_s=5, burst_items=10), RedactionConfig(), clock)
    admitted = 0
    for step in range(100):  # 100 items over 10 s (10 per second)
        admitted += pol.admit(item(step)) is not None
        clock.t += 0.1
    # burst of 10 plus 5 per second for ~10 s
    assert 55 <= admitted <= 61
    assert pol.held_back["rate_limit"] == 100 - admitted


def test_redaction_drops_and_hashes_with_salt(monkeypatch):
    monkeypatch.setenv("SALT", "pepper")
    red = RedactionConfig(drop=["features.email", "detail"], hash=["features.user_id"], salt_env="SALT")
    pol = ItemPolicy(unlimited(), red, Clock())
    it = item(1, features={"email": "a@b.c", "user_id": 42, "brightness": 0.2})
    it = it.model_copy(update={"detail": "user a@b.c said"})
    out = pol.admit(it)
    assert "email" not in out.features and out.detail is None
    expected = hashlib.sha256(b"pepper" + json.dumps(42).encode()).hexdigest()[:32]
    assert out.features["user_id"] == f"sha256:{expected}"
    assert out.features["brightness"] == 0.2
    assert "a@b.c" not in out.model_dump_json()


def test_redaction_of_whole_inputs_and_missing_salt():
    red = Redactor(RedactionConfig(drop=["inputs"]))
    assert red.apply(item(1)).inputs is None
    with pytest.raises(ConfigError, match="NOPE_SALT is not set"):
        Redactor(RedactionConfig(hash=["features.x"], salt_env="NOPE_SALT"))


def test_rotation_shifts_wrap_and_items_get_the_on_call_person():
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    cfg = RotationConfig(name="digits", annotators=["ana", "bo", "cy"], shift_s=8 * 3600, start=start)
    clock = Clock(start.timestamp())
    rot = Rotation(cfg, clock)
    assert rot.on_call() == "ana"
    clock.t += 8 * 3600 - 1
    assert rot.on_call() == "ana"
    clock.t += 1
    assert rot.on_call() == "bo"
    assert rot.on_call(start.timestamp() + 3 * 8 * 3600 + 5) == "ana"  # wrapped
    assert rot.on_call(start.timestamp() - 1) == "cy"  # the shift before the start
    shift = rot.shift_at(start.timestamp() + 9 * 3600)
    assert (shift.annotator, shift.start_ts - start.timestamp()) == ("bo", 8 * 3600)
    assert rot.group == consumer_group("digits") == "shadowd.annotate.digits"
    pol = ItemPolicy(unlimited(), RedactionConfig(), clock, rotation=rot)
    assert pol.admit(item(1)).assignee == "bo"


def test_hashing_needs_a_salt_named_in_the_config():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="salt_env is required"):
        RedactionConfig(hash=["features.user_id"])
    assert RedactionConfig(drop=["features.email"]).salt_env is None  # dropping needs none


def test_redaction_covers_nested_paths_both_ways():
    red = RedactionConfig(drop=["features.user.email"], hash=["features.user_id"], salt_env="S")
    assert red.covers("features.user.email") and red.covers("features.user")  # the parent shows the child
    assert red.covers("features.user_id") and not red.covers("features.user_idx") and not red.covers("inputs")

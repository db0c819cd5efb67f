"""Request-path expectations on real data (scikit-learn's bundled datasets) with real anomalies injected."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import LogisticRegression

from shadowd.config import ExpectationsConfig
from shadowd.errors import BadRequest, ExpectationFailed
from shadowd.expect import ExpectationSet, ViolationTally, record_violations, violation_item
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import AnnotationItem

# Physical ranges of the raw diabetes features (age in years, BMI, mean blood pressure in mmHg,
# s5 = log of serum triglycerides); every one of the 442 real rows satisfies them.
DIABETES_EXPECTATIONS = {
    "features": {
        "age": {"type": "number", "required": True, "min": 18, "max": 100},
        "sex": {"type": "number", "allowed": [1, 2]},
        "bmi": {"type": "number", "min": 10, "max": 70},
        "bp": {"type": "number", "min": 40, "max": 250},
        "s5": {"type": "number", "not_null": True},
        "site": {"type": "string", "required": True, "allowed": ["site_a", "site_b"]},
    },
    "inputs": {"shape": [10], "finite": True},
}


@pytest.fixture(scope="module")
def diabetes():
    d = load_diabetes(scaled=False)
    return d.data, list(d.feature_names)


def _rows(data, names, rng):
    """Each real row as request features plus the inputs array, with a random site."""
    for row in data:
        f = dict(zip(names, row.tolist(), strict=True))
        f["site"] = "site_a" if rng.random() < 0.5 else "site_b"
        yield f, row.astype(np.float32)


def test_clean_real_data_has_no_violations(diabetes):
    data, names = diabetes
    exp = ExpectationSet(ExpectationsConfig.model_validate(DIABETES_EXPECTATIONS))
    rng = np.random.default_rng(0)
    found = [v for f, x in _rows(data, names, rng) for v in exp.check_request(f, x)]
    assert found == []


def test_anomalies_injected_into_one_slice_are_flagged_there_only(diabetes):
    data, names = diabetes
    exp = ExpectationSet(ExpectationsConfig.model_validate(DIABETES_EXPECTATIONS))
    rng = np.random.default_rng(1)
    tally = ViolationTally()
    injected = {"features.s5.not_null": 0, "features.age.range": 0, "features.bp.range": 0, "inputs.finite": 0}
    for f, x in _rows(data, names, rng):
        if f["site"] == "site_b":
            u = rng.random()
            if u < 0.1:  # a broken upstream join: the lab value is null, and NaN in the inputs
                f["s5"] = None
                x[names.index("s5")] = np.nan
                injected["features.s5.not_null"] += 1
                injected["inputs.finite"] += 1
            elif u < 0.15:  # age sent in months for a few records
                f["age"] = f["age"] * 12
                injected["features.age.range"] += 1
            elif u < 0.2:  # blood pressure in kPa instead of mmHg
                f["bp"] = f["bp"] * 0.1333
                injected["features.bp.range"] += 1
        tally.add(exp.check_request(f, x), [f["site"]])
    rep = tally.report()
    assert "site_a" not in rep["violations"]
    assert rep["violations"]["site_b"] == {k: v for k, v in injected.items() if v}
    assert rep["violations"]["overall"] == rep["violations"]["site_b"]
    assert rep["requests"]["overall"] == len(data)
    assert all(n > 0 for n in injected.values())


def test_each_rule_names_the_value_and_rule():
    cfg = ExpectationsConfig.model_validate(
        {
            "features": {
                "age": {"type": "integer", "required": True, "min": 0, "max": 120},
                "country": {"type": "string", "allowed": ["de", "fr"]},
                "flag": {"type": "boolean"},
                "emb": {"type": "list", "shape": [2, 2]},
                "score": {"type": "number", "not_null": True},
            }
        }
    )
    exp = ExpectationSet(cfg)
    ok = {"age": 30, "country": "de", "flag": True, "emb": [[1, 2], [3, 4]], "score": 0.5}
    assert exp.check_request(ok, None) == []

    def only(features):
        vs = exp.check_request({**ok, **features}, None)
        assert len(vs) == 1, vs
        return vs[0]

    v = only({"age": 150})
    assert (v.expectation, v.field, v.rule) == ("features.age.range", "features.age", "range")
    assert "150" in v.message and "[0, 120]" in v.message
    assert only({"age": 3.5}).rule == "type"
    assert exp.check_request({**ok, "age": 30.0}, None) == []  # 30.0 is an integer
    assert only({"country": "us"}).expectation == "features.country.allowed"
    assert only({"flag": 1}).rule == "type"  # 1 is not a boolean
    assert only({"emb": [[1, 2, 3], [4, 5, 6]]}).rule == "shape"
    assert only({"emb": [[1], [2, 3]]}).rule == "shape"  # ragged
    assert only({"score": None}).expectation == "features.score.not_null"
    assert only({"score": math.nan}).expectation == "features.score.not_null"
    assert only({"score": math.inf}).expectation == "features.score.finite"
    missing = exp.check_request({k: v for k, v in ok.items() if k != "age"}, None)
    assert [v.expectation for v in missing] == ["features.age.required"]
    # not required and absent, or null when nulls are allowed: fine
    assert exp.check_request({**{k: v for k, v in ok.items() if k != "country"}, "flag": None}, None) == []


def test_allowed_keeps_booleans_apart_from_numbers():
    exp = ExpectationSet(ExpectationsConfig.model_validate({"features": {"k": {"allowed": [1, 2]}}}))
    assert exp.check_request({"k": 1}, None) == []
    assert exp.check_request({"k": 2.0}, None) == []
    assert [v.rule for v in exp.check_request({"k": True}, None)] == ["allowed"]


def test_inputs_rules_on_real_digits():
    digits = load_digits()
    exp = ExpectationSet(
        ExpectationsConfig.model_validate({"inputs": {"shape": [64], "finite": True, "min": 0, "max": 16}})
    )
    x = digits.data.astype(np.float32)
    assert all(exp.check_request({}, row) == [] for row in x)
    bad = x[0].copy()
    bad[[3, 7]] = [np.nan, np.inf]
    bad[10] = 255.0  # an 8-bit image slipped through unscaled
    vs = exp.check_request({}, bad)
    assert [v.expectation for v in vs] == ["inputs.finite", "inputs.range"]
    assert "2 of 64" in vs[0].message and "255" in vs[1].message
    vs = exp.check_request({}, x[0].reshape(8, 8))
    assert [v.expectation for v in vs] == ["inputs.shape"]
    neg = x[0] - 1
    assert [v.rule for v in exp.check_request({}, neg)] == ["range"]
    assert "< min 0" in exp.check_request({}, neg)[0].message


def test_reject_raises_422_naming_the_expectation():
    cfg = ExpectationsConfig.model_validate(
        {"on_violation": "reject", "features": {"age": {"type": "number", "min": 0, "max": 120}}}
    )
    exp = ExpectationSet(cfg)
    exp.raise_if_rejected(exp.check_request({"age": 40}, None))  # fine: no exception
    with pytest.raises(ExpectationFailed) as info:
        exp.raise_if_rejected(exp.check_request({"age": -4}, None))
    assert isinstance(info.value, BadRequest) and info.value.http_status == 422
    assert "features.age.range" in info.value.reason and "-4" in info.value.reason
    answering = ExpectationSet(cfg.model_copy(update={"on_violation": "answer"}))
    answering.raise_if_rejected(answering.check_request({"age": -4}, None))  # answer: never raises


def _digit_models():
    digits = load_digits()
    x = digits.data / 16.0
    model = LogisticRegression(max_iter=300).fit(x[:1000], digits.target[:1000])
    return model, x[1000:]


def test_output_checks_on_a_real_model_and_numerical_blowups():
    model, x = _digit_models()
    exp = ExpectationSet(
        ExpectationsConfig.model_validate({"outputs": {"min": 0, "max": 1, "sum_to_one": True, "shape": [10]}})
    )
    probs = model.predict_proba(x)
    assert exp.check_output("production", probs, batched=True) == []
    assert all(exp.check_output("production", p) == [] for p in probs[:50])
    # a candidate with a naive softmax at a low temperature: exp overflows to inf, inf / inf is NaN
    logits = model.decision_function(x) / 0.001
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(logits)
        broken = e / e.sum(axis=1, keepdims=True)
    nonfinite_rows = int((~np.isfinite(broken).all(axis=1)).sum())
    assert nonfinite_rows > 0
    vs = exp.check_output("candidate", broken, batched=True)
    fin = [v for v in vs if v.rule == "finite"]
    assert len(fin) == 1 and fin[0].count == nonfinite_rows and fin[0].role == "candidate"
    assert fin[0].expectation == "outputs.candidate.finite"
    rows = exp.check_output_rows("candidate", broken)
    assert [bool(r) for r in rows] == (~np.isfinite(broken).all(axis=1)).tolist()
    assert all(v.expectation == "outputs.candidate.finite" for r in rows for v in r)
    assert exp.check_output_rows("production", probs) == [[] for _ in probs]
    # logits returned where probabilities were promised: out of range and not summing to one
    raw = model.decision_function(x[:20])
    rules = {v.rule: v.count for v in exp.check_output("candidate", raw, batched=True)}
    expected_range = int(((raw < 0) | (raw > 1)).any(axis=1).sum())
    expected_sum = int((np.abs(raw.sum(axis=1) - 1) > 1e-3).sum())
    assert rules == {"range": expected_range, "sum_to_one": expected_sum}


def test_record_violations_counts_per_expectation_and_nonfinite_per_role():
    reg = CollectorRegistry()
    metrics = ShadowdMetrics(reg)
    exp = ExpectationSet(
        ExpectationsConfig.model_validate({"features": {"age": {"min": 0}}, "outputs": {"sum_to_one": True}})
    )
    record_violations(metrics, exp.check_request({"age": -1}, None))
    record_violations(metrics, exp.check_request({"age": -2}, None))
    out = np.array([[0.5, 0.5], [np.nan, 1.0], [np.inf, 0.0], [0.2, 0.2]])
    record_violations(metrics, exp.check_output("noise", out, batched=True))
    get = reg.get_sample_value
    assert get("shadowd_expectation_violations_total", {"expectation": "features.age.range"}) == 2
    assert get("shadowd_nonfinite_outputs_total", {"role": "noise"}) == 2
    assert get("shadowd_expectation_violations_total", {"expectation": "outputs.noise.finite"}) == 2
    assert get("shadowd_expectation_violations_total", {"expectation": "outputs.noise.sum_to_one"}) == 1
    assert get("shadowd_nonfinite_outputs_total", {"role": "production"}) is None
    names = set(exp.expectation_names)
    assert {"features.age.range", "outputs.noise.finite", "outputs.candidate.sum_to_one"} <= names


def test_annotate_share_samples_violating_requests_by_id():
    exp = ExpectationSet(ExpectationsConfig.model_validate({"features": {"a": {"min": 0}}, "annotate_share": 0.25}))
    vs = exp.check_request({"a": -1}, None)
    chosen = sum(exp.should_annotate(f"req-{i}", vs) for i in range(4000))
    assert 850 < chosen < 1150  # binomial(4000, 0.25): mean 1000, sd 27
    assert exp.should_annotate("req-1", vs) == exp.should_annotate("req-1", vs)
    assert not exp.should_annotate("req-1", [])


def test_tally_merges_like_one_stream():
    exp = ExpectationSet(ExpectationsConfig.model_validate({"features": {"a": {"min": 0}}}))
    one, a, b = ViolationTally(), ViolationTally(), ViolationTally()
    for i in range(40):
        vs = exp.check_request({"a": -1 if i % 3 == 0 else 1}, None)
        sl = ["s1"] if i % 2 else []
        one.add(vs, sl)
        (a if i < 17 else b).add(vs, sl)
    a.merge(b)
    assert a.report()["requests"] == one.report()["requests"]
    assert a.report()["violations"] == one.report()["violations"]


def test_violation_item_is_a_valid_annotation_record():
    exp = ExpectationSet(ExpectationsConfig.model_validate({"features": {"age": {"min": 0}, "bmi": {"max": 70}}}))
    vs = exp.check_request({"age": -3, "bmi": 90}, None)
    item = violation_item("r-1", vs, created_ts=5.0, slices=["overall", "site_b"], features={"age": -3, "bmi": 90})
    again = AnnotationItem.model_validate_json(item.model_dump_json())  # survives the Kafka round trip
    assert again == item
    assert item.reason == "expectation_violation" and item.priority == 2.0 and item.slices == ["site_b"]
    assert "features.age: got -3" in item.detail and "features.bmi: got 90" in item.detail

"""Absurd but well-formed values from clients or models: counted as what they are, never an
exception that could turn into a 500 or lose a batch of other clients' pairs."""

from __future__ import annotations

import json

import pytest

from shadowd.compare.comparator import Comparator
from shadowd.compare.loss import LOSS_CAP, example_loss
from shadowd.config import ExpectationsConfig, parse_config
from shadowd.expect import ExpectationSet
from shadowd.records import ModelOutput, Pair

BASE = {
    "task": "regression",
    "models": {
        "production": {
            "name": "p",
            "kind": "python",
            "target": "shadowd.testing:ToyRegressor",
            "input_shape": [8],
            "output": "values",
        }
    },
}


def _pair(rid: str, prod: float, cand: float) -> Pair:
    return Pair(
        request_id=rid,
        ts=0.0,
        production=ModelOutput(role="production", model="p", values=[prod]),
        candidate=ModelOutput(role="candidate", model="c", values=[cand]),
    )


def test_an_absurd_candidate_output_is_counted_as_nan_and_state_still_saves(tmp_path):
    cfg = parse_config({**BASE, "data_dir": str(tmp_path)})
    comp = Comparator(cfg)
    comp.add(_pair("a", 1.0, 1.1))
    comp.add(_pair("b", 0.0, 1e300))  # finite, but its relative difference overflows to inf
    comp.add(_pair("c", 1.0, 1e200))  # finite, but its square in the running variance would
    overall = comp.report().to_json()["overall"]
    assert overall["candidate_outcomes"]["nan"] == 2 and overall["compared"] == 1
    path = comp.save(tmp_path / "state.json")
    json.loads(path.read_text())  # strict JSON: no NaN or inf crept in


def test_loss_of_an_absurd_output_is_capped_not_inf():
    assert example_loss("regression", [1e200], 0.0) == LOSS_CAP
    with pytest.raises(ValueError):
        example_loss("classification", [0.5, 0.5], [1, 0])


def test_a_feature_too_large_for_a_float_is_a_violation_not_an_error():
    expect = ExpectationSet(
        ExpectationsConfig.model_validate({"features": {"age": {"type": "number", "min": 0, "max": 150}}})
    )
    violations = expect.check_request({"age": 10**400}, None)
    assert [v.rule for v in violations] == ["finite"]

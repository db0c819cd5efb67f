"""The 'expectations' config section: strict, with errors naming the file and key."""

from __future__ import annotations

import pytest

from shadowd.config import load_config
from shadowd.errors import ConfigError

BASE = """\
task: classification
models:
  production: {name: prod, kind: python, target: "mod:attr", input_shape: [4]}
"""


def _load(tmp_path, section: str):
    path = tmp_path / "shadowd.yaml"
    path.write_text(BASE + section)
    return load_config(path)


def test_defaults_and_full_section(tmp_path):
    cfg = _load(tmp_path, "")
    assert cfg.expectations.on_violation == "answer" and cfg.expectations.drift is None
    assert cfg.expectations.outputs.finite is True
    cfg = _load(
        tmp_path,
        """\
expectations:
  on_violation: reject
  features:
    age: {type: number, required: true, min: 0, max: 120}
    country: {type: string, allowed: [de, fr]}
  inputs: {shape: [4], min: 0, max: 1}
  outputs: {min: 0, max: 1, sum_to_one: true, sum_tolerance: 0.01}
  drift:
    profile: profiles/train.json
    window_size: 500
    features: [age, "inputs[2]"]
""",
    )
    exp = cfg.expectations
    assert exp.on_violation == "reject" and exp.features["age"].max == 120
    # relative to the config file, like every other path in the config
    assert exp.drift.profile == (tmp_path / "profiles" / "train.json").resolve()
    assert exp.drift.features == ["age", "inputs[2]"] and exp.drift.window_size == 500


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "expectations: {features: {age: {min: 5, max: 1}}}",
            "expectations.features.age: min 5.0 is greater than max 1.0",
        ),
        ("expectations: {features: {c: {type: string, max: 3}}}", "min/max need type 'number', 'integer' or 'any'"),
        ("expectations: {features: {c: {type: number, shape: [2]}}}", "shape needs type 'list'"),
        ("expectations: {features: {c: {allowed: []}}}", "expectations.features.c.allowed"),
        ("expectations: {on_violation: drop}", "expectations.on_violation"),
        ("expectations: {inputs: {shape: [0]}}", "expectations.inputs.shape"),
        ("expectations: {outputs: {sum_tolerance: 0}}", "expectations.outputs.sum_tolerance"),
        ("expectations: {features: {a: {typo: 1}}}", "expectations.features.a.typo: Extra inputs are not permitted"),
        ("expectations: {drift: {window_size: 100}}", "expectations.drift.profile: Field required"),
        ("expectations: {drift: {profile: p.json, alpha: 1.5}}", "expectations.drift.alpha"),
        ("expectations: {drift: {profile: p.json, correction: bonferroni}}", "expectations.drift.correction"),
    ],
)
def test_bad_sections_name_file_and_key(tmp_path, section, message):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, section + "\n")
    text = str(info.value)
    assert text.startswith(str(tmp_path / "shadowd.yaml") + ": "), text
    assert message in text, text


def test_the_documented_example_is_a_valid_section():
    import re
    from pathlib import Path

    import yaml

    from shadowd.config import parse_config

    doc = (Path(__file__).resolve().parents[2] / "docs" / "expectations.md").read_text()
    section = yaml.safe_load(re.search(r"```yaml\n(.*?)```", doc, re.S).group(1))
    prod = {"name": "p", "kind": "python", "target": "mod:attr", "input_shape": [64]}
    cfg = parse_config({"task": "classification", "models": {"production": prod}, **section}, "docs/expectations.md")
    assert cfg.expectations.features["hour"].max == 23 and cfg.expectations.drift.correction == "bh"

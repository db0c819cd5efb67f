"""Config: valid files load; every kind of mistake names the file and key and exits 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from shadowd.cli import app
from shadowd.config import load_config, parse_config, shard_config
from shadowd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {
    "task": "classification",
    "models": {
        "production": {"name": "p", "kind": "python", "target": "shadowd.testing:ToyClassifier", "input_shape": [8]}
    },
}


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "shadowd.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _error(tmp_path: Path, data) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, data))
    return str(err.value)


def test_example_config_is_valid_and_resolves_paths():
    cfg = load_config(ROOT / "examples" / "shadowd.yaml")
    assert cfg.models.candidate is not None and cfg.shadow.sample_share == 0.5
    assert cfg.data_dir == (ROOT / "shadowd-data" / "example").resolve()
    assert [s.name for s in cfg.slices] == ["night", "new_users"]


@pytest.mark.parametrize(
    "patch, key, words",
    [
        ({"shadow": {"sample_share": 1.5}}, "shadow.sample_share", "less than or equal to 1"),
        ({"shadow": {"candidate_timeout_s": -1}}, "shadow.candidate_timeout_s", "-1"),
        ({"shadow": {"sample_rate": 0.5}}, "shadow.sample_rate", "Extra inputs"),
        ({"task": "ranking"}, "task", "'classification' or 'regression'"),
        (
            {"slices": [{"name": "Bad Name", "where": {"field": "a", "op": "eq", "value": 1}}]},
            "slices[0].name",
            "pattern",
        ),
        (
            {"slices": [{"name": "a", "where": {"field": "x", "op": "lt", "value": "late"}}]},
            "slices[0].where",
            "needs a number",
        ),
        (
            {"slices": [{"name": "a", "where": {"field": "x", "op": "in", "value": 3}}]},
            "slices[0].where",
            "needs a list",
        ),
        ({"slices": [{"name": "a", "where": {"all": [{"fild": "x"}]}}]}, "slices[0].where.all[0]", "a predicate is"),
        ({"slices": [{"name": "overall", "where": {"field": "x", "op": "exists"}}]}, "(top level)", "reserved"),
        (
            {"serving": {"hub_shards": 2}},
            "(top level)",
            "serving.hub_shards is 2: a sharded hub needs annotations.sink",
        ),
        ({"serving": {"hub_shards": 17}}, "serving.hub_shards", "less than or equal to 16"),
        (
            {"serving": {"hub_shards": 1, "hub_shard_resources": [{"a": 1}, {"b": 1}]}},
            "serving",
            "hub_shard_resources has 2 entries for 1 hub_shards",
        ),
    ],
)
def test_errors_name_file_key_and_value(tmp_path, patch, key, words):
    message = _error(tmp_path, {**BASE, **patch})
    assert message.startswith(str(tmp_path / "shadowd.yaml") + ": ")
    assert f": {key}: " in message, message
    assert words in message, message


def test_model_source_must_match_kind(tmp_path):
    bad = {**BASE, "models": {"production": {"name": "p", "kind": "torchscript", "input_shape": [8]}}}
    assert ": models.production.path: Field required" in _error(tmp_path, bad)
    python = {**BASE, "models": {"production": {"name": "p", "kind": "python", "input_shape": [8]}}}
    assert ": models.production.target: Field required" in _error(tmp_path, python)
    unknown = {**BASE, "models": {"production": {"name": "p", "kind": "onnx", "input_shape": [8]}}}
    message = _error(tmp_path, unknown)
    assert ": models.production: " in message and "'torchscript', 'python'" in message, message


def test_candidate_shape_must_match_production(tmp_path):
    cand = {**BASE["models"]["production"], "name": "c", "input_shape": [9]}
    message = _error(tmp_path, {**BASE, "models": {**BASE["models"], "candidate": cand}})
    assert "input_shape [9] differs" in message


def test_bad_yaml_and_missing_file(tmp_path):
    assert "not valid YAML at line 2, column 6" in _error(tmp_path, "task: classification\n  bad: indent\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")
    assert "top level must be a mapping" in _error(tmp_path, "- a list\n")


def test_validate_config_command_exits_2_with_the_reason(tmp_path):
    runner = CliRunner()
    good = runner.invoke(app, ["validate-config", str(_write(tmp_path, BASE))])
    assert good.exit_code == 0 and "ok (classification" in good.output
    bad = runner.invoke(app, ["validate-config", str(_write(tmp_path, {**BASE, "shadow": {"max_in_flight": 0}}))])
    assert bad.exit_code == 2
    assert "shadow.max_in_flight" in bad.output


def test_relative_model_path_resolves_against_config_file(tmp_path):
    data = {
        **BASE,
        "models": {"production": {"name": "p", "kind": "torchscript", "path": "m/model.pt", "input_shape": [8]}},
    }
    cfg = parse_config(data, "x.yaml", tmp_path)
    assert cfg.models.production.path == tmp_path / "m" / "model.pt"


def test_union_tags_are_not_shown_as_keys(tmp_path):
    message = _error(tmp_path, {**BASE, "checks": [{"type": "flip_rate", "name": "flips", "abs_margin": -1}]})
    assert ": checks[0].abs_margin: " in message and "flip_rate.abs_margin" not in message
    top = _error(tmp_path, {**BASE, "slices": [{"name": "overall", "where": {"field": "x", "op": "exists"}}]})
    assert "(got" not in top  # a top-level rule does not dump the whole file


def test_every_config_field_is_described():
    """Users read field descriptions in the Helm values schema and error messages: none may be missing."""
    from pydantic import BaseModel

    from shadowd.config import ShadowdConfig

    missing, seen = [], set()

    def models_in(annotation):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield annotation
        for arg in getattr(annotation, "__args__", ()) or ():
            yield from models_in(arg)
        for meta in getattr(annotation, "__metadata__", ()) or ():
            yield from models_in(meta) if isinstance(meta, type) else ()

    def walk(model):
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            if not field.description and name != "schema_version":
                missing.append(f"{model.__name__}.{name}")
            for sub in models_in(field.annotation):
                walk(sub)

    walk(ShadowdConfig)
    assert len(seen) > 20  # the walk reached the nested sections
    assert not missing, missing


def test_each_hub_shard_keeps_its_files_apart(tmp_path):
    kafka = {"type": "kafka", "bootstrap_servers": ["127.0.0.1:9092"]}
    policy = {"rate_per_s": 6.0, "burst_items": 10, "slice_quotas": {"dark": 5}, "default_slice_quota": 0}
    annotations = {"sink": kafka, "policy": policy}
    data = {**BASE, "data_dir": str(tmp_path / "d"), "annotations": annotations, "serving": {"hub_shards": 3}}
    cfg = load_config(_write(tmp_path, data))
    one, two = shard_config(cfg, 1), shard_config(cfg, 2)
    assert one.data_dir == tmp_path / "d" / "shards" / "1" and two.data_dir == tmp_path / "d" / "shards" / "2"
    assert one.labels.suites_dir == tmp_path / "d" / "suites" / "shard-1"
    mine = one.annotations.policy  # a third of the rate and quotas each, rounded up: never none
    assert (mine.rate_per_s, mine.burst_items, mine.slice_quotas, mine.default_slice_quota) == (2.0, 4, {"dark": 2}, 0)
    caps = (one.annotations.spool_max_bytes, one.labels.max_pairs, one.labels.max_pair_store_bytes)
    assert caps == ((1 << 30) // 3, 66_667, 2 * 2**30 // 3)  # the disk holds what one hub would keep
    assert cfg.data_dir == tmp_path / "d" and cfg.labels.suites_dir is None  # the config itself is unchanged
    single = load_config(_write(tmp_path, {**data, "serving": {}}))
    assert shard_config(single, 0) is single  # one hub: where it always kept them

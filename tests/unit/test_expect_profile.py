"""Reference profiles: built from CSV, JSONL and NPZ alike, checked against numpy/scipy computed directly."""

from __future__ import annotations

import csv
import itertools
import json
from collections import Counter

import numpy as np
import pytest
from sklearn.datasets import load_wine
from typer.testing import CliRunner

from shadowd.cli import app
from shadowd.errors import ConfigError
from shadowd.expect.profile import OTHER, build_profile, category_key, load_profile, read_table, save_profile


@pytest.fixture(scope="module")
def wine():
    d = load_wine()
    return d.data, d.target, list(d.feature_names)


def _write_all_formats(tmp_path, data, target, names):
    colors = ["red", "white", "rose"]
    npz = tmp_path / "wine.npz"
    np.savez(npz, inputs=data, y=target)
    rows = [{"inputs": row.tolist(), "y": int(t), "color": colors[int(t)]} for row, t in zip(data, target, strict=True)]
    rows[5]["color"] = None  # a null category
    jsonl = tmp_path / "wine.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    csv_path = tmp_path / "wine.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([f"inputs[{i}]" for i in range(data.shape[1])] + ["y", "color"])
        for r in rows:
            w.writerow(r["inputs"] + [r["y"], r["color"] or ""])
    return npz, jsonl, csv_path


def test_numeric_profile_matches_numpy(wine, tmp_path):
    data, target, names = wine
    npz, _, _ = _write_all_formats(tmp_path, data, target, names)
    prof = build_profile(read_table(npz), output_column="y", bins=10, sample_size=50, seed=3)
    assert prof.rows == len(data) and set(prof.features) == {f"inputs[{i}]" for i in range(13)}
    for i in range(13):
        col = data[:, i]
        f = prof.features[f"inputs[{i}]"]
        assert f.kind == "numeric" and f.count == len(col) and f.missing == 0
        edges = np.unique(np.quantile(col, np.linspace(0, 1, 11)))
        assert f.bin_edges == pytest.approx(edges.tolist())
        # bin i holds edges[i] <= x < edges[i+1]; the last bin also holds the maximum
        expected = [int(((col >= lo) & (col < hi)).sum()) for lo, hi in itertools.pairwise(edges[:-1])]
        expected.append(int((col >= edges[-2]).sum()))
        assert f.bin_counts == expected and sum(f.bin_counts) == len(col)
        assert f.stats["mean"] == pytest.approx(col.mean()) and f.stats["std"] == pytest.approx(col.std())
        assert f.stats["min"] == col.min() and f.stats["max"] == col.max()
        assert len(f.sample) == 50 and set(f.sample) <= set(col.tolist())
    assert prof.outputs.kind == "categorical"
    assert prof.outputs.frequencies == {str(k): int(v) for k, v in Counter(target.tolist()).items()}


def test_same_profile_from_every_format(wine, tmp_path):
    data, target, names = wine
    npz, jsonl, csv_path = _write_all_formats(tmp_path, data, target, names)
    profs = [build_profile(read_table(p), output_column="y", seed=1, now_s=0.0) for p in (npz, jsonl, csv_path)]
    numeric = [{k: v for k, v in p.features.items() if k.startswith("inputs")} for p in profs]
    assert numeric[0] == numeric[1] == numeric[2]
    assert profs[0].outputs == profs[1].outputs == profs[2].outputs
    color_json, color_csv = profs[1].features["color"], profs[2].features["color"]
    assert color_json == color_csv
    assert color_json.missing == 1
    want = Counter(["red", "white", "rose"][t] for t in target.tolist())
    want[["red", "white", "rose"][int(target[5])]] -= 1
    assert color_json.frequencies == dict(want)


def test_rare_categories_are_pooled_and_keys_keep_types_apart():
    values = ["a"] * 50 + ["b"] * 30 + ["c"] * 3 + ["d"] * 2 + [None] * 4
    prof = build_profile({"cat": values}, max_categories=2)
    f = prof.features["cat"]
    assert f.frequencies == {"a": 50, "b": 30, OTHER: 5} and f.missing == 4
    assert [category_key(v) for v in ("1", 1, 1.0, True, np.int64(1))] == ["1", "1", "1", "true", "1"]
    forced = build_profile({"region": [1, 2, 2, 3]}, categorical=["region"]).features["region"]
    assert forced.kind == "categorical" and forced.frequencies == {"1": 1, "2": 2, "3": 1}


def test_round_trip_and_bad_profiles_name_file_and_key(wine, tmp_path):
    data, target, _ = wine
    prof = build_profile({"x": data[:, 0], "y": target}, output_column="y")
    path = save_profile(prof, tmp_path / "p" / "profile.json")
    assert load_profile(path) == prof
    doc = json.loads(path.read_text())
    doc["features"]["x"]["bin_counts"] = [1, 2]
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"profile\.json: not a valid shadowd profile: features\.x"):
        load_profile(path)
    doc = json.loads(prof.model_dump_json())
    doc["schema_version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="schema_version 99 is not supported"):
        load_profile(path)
    with pytest.raises(ConfigError, match=r"missing\.json: cannot read"):
        load_profile(tmp_path / "missing.json")


def test_bad_data_files_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl: line 2: not valid JSON"):
        read_table(bad)
    with pytest.raises(ConfigError, match=r"unknown data format '\.parquet'"):
        read_table(tmp_path / "x.parquet")
    with pytest.raises(ConfigError, match="output column 'nope' not found"):
        build_profile({"a": [1.0, 2.0]}, output_column="nope")


def test_cli_profile_build(wine, tmp_path):
    data, target, names = wine
    npz, _, _ = _write_all_formats(tmp_path, data, target, names)
    out = tmp_path / "profile.json"
    res = CliRunner().invoke(app, ["profile", "build", str(npz), "--out", str(out), "--output-column", "y"])
    assert res.exit_code == 0, res.output
    assert "178 rows, 13 numeric and 0 categorical features; outputs categorical" in res.output
    assert load_profile(out).features["inputs[0]"].count == 178
    res = CliRunner().invoke(app, ["profile", "build", str(tmp_path / "nope.csv"), "--out", str(out)])
    assert res.exit_code == 2 and "nope.csv: cannot read training data" in res.output

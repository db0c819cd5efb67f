"""Hard-example suites: built from labelled items by the real Comparator and Flywheel,
replayed with the real model loader (python targets below) through `shadowd replay`.

The proof: the suite fails a candidate that has the regression (wrong on dark
inputs) and passes one that does not.
"""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from shadowd.app import build_flywheel
from shadowd.cli import app
from shadowd.compare.comparator import Comparator
from shadowd.config import SuiteThresholds, parse_config
from shadowd.errors import SuiteError
from shadowd.flywheel.suites import SuiteExample, SuiteStore, load_suite, replay_suite, resolve_suites
from shadowd.records import Label, ModelOutput, Pair


def _truth(x: np.ndarray) -> np.ndarray:
    return (x[:, 0] > 0.5).astype(int)


def _probs(cls: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    out = np.full((len(cls), 2), 1 - confidence)
    out[np.arange(len(cls)), cls] = confidence
    return out


class GoodModel:
    """Right everywhere."""

    def predict(self, batch):
        return _probs(_truth(np.asarray(batch)))


class RegressedModel:
    """The regression: wrong whenever the input is dark (brightness, column 1, below 0.3)."""

    def predict(self, batch):
        x = np.asarray(batch)
        cls = _truth(x)
        dark = x[:, 1] < 0.3
        cls[dark] = 1 - cls[dark]
        return _probs(cls, 0.9)


def model_cfg(name, target):
    return {"name": name, "kind": "python", "target": f"tests.unit.test_flywheel_suites:{target}", "input_shape": [2]}


def daemon_config(tmp_path):
    return parse_config(
        {
            "task": "classification",
            "data_dir": str(tmp_path / "data"),
            "models": {
                "production": model_cfg("good", "GoodModel"),
                "candidate": model_cfg("regressed", "RegressedModel"),
            },
            "slices": [{"name": "dark", "where": {"field": "brightness", "op": "lt", "value": 0.3}}],
            "annotations": {"policy": {"rate_per_s": 1e6, "burst_items": 10**6}},
            "labels": {"suites_dir": str(tmp_path / "suites"), "suite_thresholds": {"min_accuracy": 0.9}},
        }
    )


def build_suites(tmp_path, n=200):
    """Shadow traffic through the real Comparator + Flywheel, then ground truth for every request."""
    cfg = daemon_config(tmp_path)
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 1, size=(n, 2))
    prod, cand = GoodModel().predict(x), RegressedModel().predict(x)
    comparator = Comparator(cfg, None, clock=lambda: 1e9)
    fw = build_flywheel(cfg, None, clock=lambda: 1e9)
    try:
        for i in range(n):
            pair = Pair(
                request_id=f"r{i}",
                ts=1e9,
                features={"brightness": float(x[i, 1])},
                inputs=x[i].tolist(),
                production=ModelOutput(role="production", model="good", values=prod[i].tolist()),
                candidate=ModelOutput(role="candidate", model="regressed", values=cand[i].tolist()),
            )
            fw.record(pair, comparator.add(pair))
        for i, y in enumerate(_truth(x)):
            assert fw.feedback(Label(request_id=f"r{i}", label=int(y), ts=1e9)).status == "joined"
    finally:
        fw.close(timeout_s=5)
    return cfg, x


def test_suite_from_labelled_items_fails_the_regression_and_passes_the_fix(tmp_path):
    cfg, x = build_suites(tmp_path)
    dark = int((x[:, 1] < 0.3).sum())
    manifest, examples = load_suite(tmp_path / "suites" / "slice.dark")
    # every dark request diverged (the regression flips it), was queued and labelled
    assert manifest.count == dark == len(examples) and manifest.schema_version == 1
    assert all(e.features["brightness"] < 0.3 for e in examples)
    thresholds = SuiteThresholds(min_accuracy=0.9)
    bad = replay_suite(tmp_path / "suites" / "slice.dark", RegressedModel().predict, [2], thresholds)
    good = replay_suite(tmp_path / "suites" / "slice.dark", GoodModel().predict, [2], thresholds)
    assert (bad.passed, bad.accuracy) == (False, 0.0)
    assert bad.reasons == ["accuracy 0.000 < min_accuracy 0.9"]
    assert (good.passed, good.accuracy) == (True, 1.0)
    assert good.mean_loss == pytest.approx(-np.log(0.95))
    assert bad.mean_loss == pytest.approx(-np.log(0.1))

    runner = CliRunner()
    cfg_path = tmp_path / "shadowd.yaml"
    cfg_path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    # the candidate whose own disagreements chose these examples is not tested on them (circular) ...
    assert {e.selected_by for e in examples} == {"regressed"}
    res = runner.invoke(
        app, ["replay", "slice.dark", "tag.candidate_wrong", "-c", str(cfg_path), "--role", "candidate"]
    )
    assert res.exit_code == 0, res.output
    assert "SKIPPED" in res.output and f"0 ({dark})" in res.output
    # ... unless asked to, when it fails by construction
    res = runner.invoke(
        app,
        ["replay", "slice.dark", "tag.candidate_wrong", "-c", str(cfg_path), "--role", "candidate", "--include-own"],
    )
    assert res.exit_code == 1 and "FAIL: slice.dark, tag.candidate_wrong" in res.output
    # the suites gate the next candidate: another model with the same regression fails them
    nxt = tmp_path / "next.yaml"
    nxt.write_text(yaml.safe_dump(model_cfg("regressed-v2", "RegressedModel")))
    res = runner.invoke(app, ["replay", "slice.dark", "tag.candidate_wrong", "-c", str(cfg_path), "--model", str(nxt)])
    assert res.exit_code == 1 and "FAIL: slice.dark, tag.candidate_wrong" in res.output
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(yaml.safe_dump(model_cfg("fixed", "GoodModel")))
    res = runner.invoke(app, ["replay", "all-suites", "-c", str(cfg_path), "--model", str(fixed)])
    assert res.exit_code == 0, res.output
    assert "PASS: 5 suites" in res.output  # all, slice.dark, tag.divergent, tag.evaluation, tag.candidate_wrong


def test_replay_cli_errors_are_clear(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["replay", "nope", "--suites-dir", str(tmp_path), "--model", str(tmp_path / "m.yaml")])
    assert res.exit_code == 2 and "m.yaml: cannot read model config" in res.output
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(model_cfg("g", "GoodModel")))
    res = runner.invoke(app, ["replay", "nope", "--suites-dir", str(tmp_path), "--model", str(tmp_path / "m.yaml")])
    assert res.exit_code == 2 and "no suite 'nope'" in res.output
    res = runner.invoke(app, ["replay", "x", "--role", "candidate"])
    assert res.exit_code == 2 and "--role needs --config" in res.output


def test_suite_store_versions_and_detects_edits(tmp_path):
    store = SuiteStore(tmp_path, "classification", clock=lambda: 5.0)
    ex = SuiteExample(request_id="a", inputs=[1, 2], label=1, slices=["dark"], tags=["divergent"], ts=5.0)
    assert store.add(ex) == ["all", "slice.dark", "tag.divergent"]
    assert store.add(ex) == []  # once per request id
    store.add(ex.model_copy(update={"request_id": "b", "slices": []}))
    manifest, examples = load_suite(tmp_path / "all")
    assert (manifest.version, manifest.count, [e.request_id for e in examples]) == (2, 2, ["a", "b"])
    # a reopened store continues the same files
    store2 = SuiteStore(tmp_path, "classification", clock=lambda: 6.0)
    store2.add(ex.model_copy(update={"request_id": "c"}))
    assert load_suite(tmp_path / "all")[0].count == 3
    with pytest.raises(SuiteError, match="for task 'classification'"):
        SuiteStore(tmp_path, "regression", clock=lambda: 6.0).add(ex.model_copy(update={"request_id": "d"}))
    # hand edits are noticed
    path = tmp_path / "all" / "examples.jsonl"
    path.write_text("\n".join(path.read_text().splitlines()[:2]) + "\n")
    with pytest.raises(SuiteError, match="do not match the manifest"):
        load_suite(tmp_path / "all")


def test_regression_suite_mae_threshold(tmp_path):
    store = SuiteStore(tmp_path, "regression", clock=lambda: 1.0)
    for i in range(10):
        store.add(SuiteExample(request_id=f"r{i}", inputs=[float(i)], label=2.0 * i, ts=1.0))
    thresholds = SuiteThresholds(max_mae=0.5)
    exact = replay_suite(tmp_path / "all", lambda b: 2.0 * np.asarray(b), [1], thresholds)
    off = replay_suite(tmp_path / "all", lambda b: 2.0 * np.asarray(b) + 1.0, [1], thresholds)
    assert exact.passed and exact.mae == 0.0
    assert not off.passed and off.mae == pytest.approx(1.0) and off.mean_loss == pytest.approx(1.0)


def test_replay_against_a_baseline_judges_by_regression_not_by_absolute_accuracy(tmp_path):
    cfg, _ = build_suites(tmp_path)
    cfg_path = tmp_path / "shadowd.yaml"
    cfg_path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    runner = CliRunner()
    own = ["--include-own"]  # these suites were selected by this very candidate (circular unless asked)
    # The regressed candidate against production (the good model): worse on the dark suites.
    res = runner.invoke(
        app, ["replay", "all-suites", "-c", str(cfg_path), "--role", "candidate", "--baseline", "production", *own]
    )
    assert res.exit_code == 1, res.output
    assert "FAIL: all, slice.dark, tag.candidate_wrong, tag.divergent, tag.evaluation" in res.output
    # Without --include-own, baseline and candidate both leave those examples out: nothing circular is judged.
    res = runner.invoke(
        app, ["replay", "all-suites", "-c", str(cfg_path), "--role", "candidate", "--baseline", "production"]
    )
    assert res.exit_code == 0 and "SKIPPED" in res.output, res.output
    # The same regressed model judged against itself: as good as its baseline everywhere, so it
    # passes, although its absolute accuracy on the dark suites is 0.
    res = runner.invoke(
        app, ["replay", "all-suites", "-c", str(cfg_path), "--role", "candidate", "--baseline", "candidate", *own]
    )
    assert res.exit_code == 0, res.output
    absolute = runner.invoke(app, ["replay", "all-suites", "-c", str(cfg_path), "--role", "candidate", *own])
    assert absolute.exit_code == 1
    model_file = tmp_path / "good.yaml"
    model_file.write_text(yaml.safe_dump(model_cfg("good", "GoodModel")))
    no_config = runner.invoke(
        app,
        [
            "replay",
            "all-suites",
            "--suites-dir",
            str(tmp_path / "suites"),
            "--model",
            str(model_file),
            "--baseline",
            "production",
        ],
    )
    assert no_config.exit_code == 2 and "--baseline needs --config" in no_config.output


def test_a_crash_between_append_and_manifest_is_repaired_when_the_suite_opens(tmp_path):
    """On main, a crash after an example's append and before its manifest write left a suite
    that never loaded again (every later join into it failed too)."""
    store = SuiteStore(tmp_path, "classification", clock=lambda: 5.0)
    ex = SuiteExample(request_id="a", inputs=[1, 2], label=1, tags=["divergent"], ts=5.0)
    store.add(ex)
    store.add(ex.model_copy(update={"request_id": "b"}))
    folder = tmp_path / "all"
    committed = load_suite(folder)[0]
    # the crash: "c" appended (fsync'd), its manifest never written, then a torn append of "d"
    with open(folder / "examples.jsonl", "ab") as f:
        f.write((ex.model_copy(update={"request_id": "c"}).model_dump_json() + "\n").encode())
        f.write(ex.model_copy(update={"request_id": "d"}).model_dump_json().encode()[:30])
    # a reader (shadowd replay) meanwhile sees the last commit, not an error
    manifest, examples = load_suite(folder)
    assert manifest == committed and [e.request_id for e in examples] == ["a", "b"]

    reopened = SuiteStore(tmp_path, "classification", clock=lambda: 6.0)
    assert reopened.add(ex.model_copy(update={"request_id": "e"})) == ["all", "tag.divergent"]
    manifest, examples = load_suite(folder)
    assert [e.request_id for e in examples] == ["a", "b", "c", "e"]  # the fsync'd example kept, the torn one cut
    assert manifest.count == 4 and manifest.version > committed.version


def test_unreadable_lines_and_a_lost_manifest_are_repaired_not_fatal(tmp_path):
    store = SuiteStore(tmp_path, "classification", clock=lambda: 5.0)
    ex = SuiteExample(request_id="a", inputs=[1, 2], label=1, ts=5.0)
    for rid in "abc":
        store.add(ex.model_copy(update={"request_id": rid}))
    folder = tmp_path / "all"
    lines = (folder / "examples.jsonl").read_text().splitlines(keepends=True)
    (folder / "examples.jsonl").write_text(lines[0] + "{not json\n" + lines[2])
    (folder / "manifest.json").unlink()
    with pytest.raises(SuiteError, match=r"manifest\.json: missing"):
        load_suite(folder)  # a reader says what is wrong ...
    SuiteStore(tmp_path, "classification", clock=lambda: 6.0).add(ex.model_copy(update={"request_id": "z"}))
    manifest, examples = load_suite(folder)  # ... the writer repairs it
    assert [e.request_id for e in examples] == ["a", "c", "z"] and manifest.count == 3
    assert (folder / "examples.dead-letter.jsonl").read_text() == "{not json\n"


def test_a_suite_written_by_several_hub_shards_replays_as_one(tmp_path):
    """A sharded hub writes each suite in <suites_dir>/shard-<i>/<name>: found by name, replayed together."""
    for shard, xs in ((0, [0.1, 0.9]), (1, [0.2, 0.8, 0.7])):
        store = SuiteStore(tmp_path / f"shard-{shard}", "classification", clock=lambda: 5.0)
        for i, x0 in enumerate(xs):
            label = int(x0 > 0.5)
            store.add(SuiteExample(request_id=f"{shard}-{i}", inputs=[x0, 0.1], label=label, slices=["dark"], ts=5.0))
    SuiteStore(tmp_path, "classification", clock=lambda: 5.0).add(
        SuiteExample(request_id="own", inputs=[0.9, 0.9], label=1, ts=5.0)  # one not sharded: found beside them
    )
    suites = resolve_suites(["all-suites"], tmp_path)
    assert [[p.relative_to(tmp_path).as_posix() for p in s] for s in suites] == [
        ["all", "shard-0/all", "shard-1/all"],
        ["shard-0/slice.dark", "shard-1/slice.dark"],
    ]
    assert resolve_suites(["slice.dark"], tmp_path) == [suites[1]]
    thresholds = SuiteThresholds(min_accuracy=0.9)
    good = replay_suite(suites[1], GoodModel().predict, [2], thresholds)
    bad = replay_suite(suites[1], RegressedModel().predict, [2], thresholds)  # every example is dark
    assert (good.suite, good.examples, good.version, good.accuracy, good.passed) == ("slice.dark", 5, 5, 1.0, True)
    assert bad.accuracy == 0.0 and not bad.passed
    with pytest.raises(SuiteError, match=r"no suite 'slice\.night'"):
        resolve_suites(["slice.night"], tmp_path)

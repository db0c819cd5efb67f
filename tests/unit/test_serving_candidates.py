"""Several candidates at once, in one process: the real worker and hub (the real-Ray-Serve version of this is
tests/integration/test_lineup.py). Each candidate runs on its own share, is counted by its own comparator, gets
every label of its requests, and is reported and gated on its own; changing one leaves the others' windows."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from shadowd.compare.comparator import report_from_data_dir, state_path
from shadowd.compare.report import ShadowReport
from shadowd.config import parse_config
from shadowd.records import Label
from shadowd.sampling import is_sampled
from shadowd.serving.hub import ShadowHub
from shadowd.serving.lineup import LineupStore
from shadowd.serving.worker import ShadowWorker
from shadowd.testing import ToyClassifier
from tests.unit.test_serving_lineup import _change, _close, _Handle, _model, _parts, _served

N = 1600  # the twin, on half, needs about 700 pairs to rule out a failure rate over 1 %


def _config(tmp_path, candidates=None):
    cfg = parse_config(
        {
            "task": "classification",
            "data_dir": str(tmp_path),
            "lineup": {"python_targets": ["shadowd.testing:ToyClassifier"]},
            "models": {
                "production": _model("prod", 0),
                "candidates": candidates
                or [
                    _model("retrain", 0, retrain=1),  # disagrees with production on about 22 %
                    _model("twin", 0, sample_share=0.5),  # production's own recipe and seed, on half the requests
                ],
            },
            "shadow": {"sample_share": 1.0, "noise_share": 0.0},
            "annotations": {"policy": {"rate_per_s": 100000, "burst_items": 100000, "dedup_window_items": 0}},
            "labels": {"pair_retention_s": 10**9},
        }
    )
    # The toy models' microsecond timings are scheduling noise: the verdicts here are the labels'.
    return cfg.model_copy(update={"checks": [c for c in cfg.checks if c.type != "latency_ratio"]})


def test_two_candidates_are_counted_labelled_reported_and_gated_each_on_its_own(tmp_path):
    cfg = _config(tmp_path)
    hub = ShadowHub(cfg, _parts)
    try:
        worker = ShadowWorker(cfg, [_Handle(hub)])
        x = np.random.default_rng(11).normal(size=(N, 8)).astype(np.float32)
        now = time.time()

        async def feed() -> int:
            return sum([await worker.process(_served("prod", x[s : s + 200], now, s)) for s in range(0, N, 200)])

        in_half = sum(is_sampled(f"m{i}", 0.5) for i in range(N))
        assert asyncio.run(feed()) == N + in_half  # production ran once per request; each test has its pairs
        assert hub.comparator("retrain").report().overall.pairs == N
        assert hub.comparator("twin").report().overall.pairs == in_half
        # One request, two pairs in the store: the same production answer, each candidate's own.
        both = next(i for i in range(N) if is_sampled(f"m{i}", 0.5))
        pairs = hub._flywheel.pairs.get(f"m{both}").pairs
        assert sorted(p.candidate.model for p in pairs) == ["retrain", "twin"]
        assert pairs[0].production.values == pairs[1].production.values

        truth = ToyClassifier(n_features=8, n_classes=4, seed=0).predict(x).argmax(axis=1)  # production is right

        def label(i: int) -> None:  # random feedback: a uniform label of each request, for every test
            result = hub._flywheel.feedback(Label(request_id=f"m{i}", label=int(truth[i]), ts=now))
            assert result.status == "joined" and result.as_dict()["used_for_quality"], result

        # From several threads at once, as POST /feedback and the labels thread do: none may be lost.
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(label, range(N)))
        assert hub.comparator("retrain").tally().labels.labels == N
        assert hub.comparator("twin").tally().labels.labels == in_half

        document = asyncio.run(hub.verdict())
        verdicts = {name: c["verdict"] for name, c in document["candidates"].items()}
        assert verdicts == {"retrain": "FAIL", "twin": "PASS"}, document
        assert document["verdict"] == "FAIL" and all(r.startswith("retrain: ") for r in document["reasons"])
        assert document["candidates"]["twin"]["evidence"]["pairs"] == in_half
        report = asyncio.run(hub.report("twin"))
        assert report["models"]["candidate"] == "twin" and report["gate"]["verdict"] == "PASS"
        assert report["candidates"] == {"retrain": "FAIL", "twin": "PASS"}
        registry = hub._metrics.registry
        for name, verdict in verdicts.items():
            gauge = registry.get_sample_value("shadowd_gate_verdict", {"candidate": name})
            assert gauge == {"PASS": 0, "FAIL": 1}[verdict]
        status, body = asyncio.run(hub.report_response("nobody"))
        assert status == 404 and "this daemon shadows: retrain, twin" in body["error"]

        # Removing the failing one closes its window alone: its report kept, the other's evidence untouched.
        status, body = _change(hub, action="remove", candidate="retrain")
        assert status == 200 and [c["name"] for c in body["lineup"]["candidates"]] == ["twin"]
        assert list(body["kept_reports"]) == ["retrain"]
        entry = LineupStore(cfg.data_dir).history()[-1]
        assert list(entry["evidence"]) == ["retrain"] and entry["evidence"]["retrain"]["verdict"] == "FAIL"
        assert hub.comparator("twin").report().overall.pairs == in_half
        assert hub.comparator("twin").tally().labels.labels == in_half
        closed = asyncio.run(hub.verdict("retrain"))["candidates"]["retrain"]
        assert closed["window"] == "closed" and closed["verdict"] == "FAIL"
        kept = ShadowReport.from_json(asyncio.run(hub.report("retrain")))  # what `report --candidate` reads
        assert kept.window == "closed" and kept.gate.verdict == "FAIL" and kept.overall.pairs == N
        assert registry.get_sample_value("shadowd_gate_verdict", {"candidate": "retrain"}) is None
        # Adding another starts its window alone; the twin's goes on.
        status, body = _change(hub, action="set", candidate=_model("retrain2", 0, retrain=2))
        assert status == 200 and body["kept_reports"] == {}
        assert hub.comparator("retrain2").report().overall.pairs == 0
        assert hub.comparator("twin").report().overall.pairs == in_half
    finally:
        _close(hub)

    hub = ShadowHub(cfg, _parts)  # a restart resumes each test's window from its own state file
    try:
        assert hub.comparator("twin").report().overall.pairs == in_half
        assert hub.comparator("retrain2").report().overall.pairs == 0
        # Until the config drops the twin: the config wins at the next start (audited) ...
    finally:
        _close(hub)
    only_retrain = _config(tmp_path, candidates=[_model("retrain", 0, retrain=1)])
    hub = ShadowHub(only_retrain, _parts)
    try:
        assert list(hub._tests) == ["retrain"] and hub.comparator().report().overall.pairs == 0
    finally:
        _close(hub)
    # ... the twin's state set aside, never reported as current: one test, so --data-dir needs no --candidate.
    assert [p.name for p in (tmp_path / "comparator" / "candidates").glob("*.json")] == [
        state_path(tmp_path, "retrain").name
    ]
    assert len(list((tmp_path / "comparator" / "closed").glob("*twin*.json"))) == 1
    assert report_from_data_dir(tmp_path).models["candidate"] == "retrain"
    hub = ShadowHub(cfg, _parts)  # the twin back: a new window, not the old one resumed
    try:
        assert hub.comparator("twin").report().overall.pairs == 0
    finally:
        _close(hub)


def test_kept_reports_of_names_that_read_alike_stay_apart(tmp_path):
    store = LineupStore(tmp_path)
    a = store.keep_report(3, {"models": {"candidate": "m v1"}})
    b = store.keep_report(3, {"models": {"candidate": "m_v1"}})
    assert a != b and store.last_report_of("m v1") == {"models": {"candidate": "m v1"}}


def test_a_scheduled_start_shadows_nothing_before_it_and_opens_the_window_then(tmp_path):
    cfg = _config(tmp_path, candidates=[_model("retrain", 0, retrain=1)])
    hub = ShadowHub(cfg, _parts)
    try:
        worker = ShadowWorker(cfg, [_Handle(hub)])
        start = time.time() + 3600
        schedule = {"start_at": start, "max_duration_s": 60}
        status, body = _change(hub, action="set", candidate=_model("later", 0, retrain=2), schedule=schedule)
        assert status == 200 and body["lineup"]["candidates"][1]["window_started_ts"] == start
        x = np.random.default_rng(2).normal(size=(50, 8)).astype(np.float32)

        async def feed(ts: float) -> int:
            await worker._lineup.sync()  # the replica follows the lineup (every second in a daemon)
            return await worker.process(_served("prod", x, ts))

        assert asyncio.run(feed(time.time())) == 50  # the running test's rows only: "later" is not called yet
        assert hub.comparator("later").report().overall.pairs == 0
        assert hub.comparator("later").window_started_ts == start  # its window begins at its start
        assert hub._lineup.due({"later": "FAIL"}, start - 1) == {}  # nothing stops a test before it starts
        assert hub._lineup.due({}, start + 61) == {"later": "its maximum duration of 60 s is reached"}
        assert asyncio.run(feed(start + 1)) == 100  # from its start on, both tests have the rows
        assert hub.comparator("later").report().overall.pairs == 50
    finally:
        _close(hub)


def test_candidates_set_sends_a_start_time(tmp_path, monkeypatch):
    import requests
    import yaml
    from typer.testing import CliRunner

    from shadowd.cli import app

    sent: list[dict] = []

    class Answer:
        status_code = 200

        @staticmethod
        def json() -> dict:
            cand = {"name": "c2", "kind": "python", "schedule": {"start_at": time.time() + 7200}}
            lineup = {"version": 1, "live": "production", "served": "prod", "shadowed": ["c2"], "candidates": [cand]}
            return {"lineup": lineup, "kept_reports": {}}

    def post(url: str, json: dict, headers: dict, timeout: float) -> Answer:
        sent.append(json)
        return Answer()

    monkeypatch.setattr(requests, "post", post)
    model_file = tmp_path / "c2.yaml"
    model_file.write_text(yaml.safe_dump(_model("c2", 2)))
    args = ["candidates", "set", str(model_file), "--url", "http://d:8000", "--token", "t"]
    before = time.time()
    result = CliRunner().invoke(app, [*args, "--start-in", "2h"])
    assert result.exit_code == 0 and "its test starts at " in result.output, result.output
    assert before + 7200 <= sent[0]["schedule"]["start_at"] <= time.time() + 7200
    result = CliRunner().invoke(app, [*args, "--start-at", "2026-12-04T02:00:00Z"])
    assert result.exit_code == 0 and sent[1]["schedule"]["start_at"] == 1796349600.0
    naive = CliRunner().invoke(app, [*args, "--start-at", "2026-12-04T02:00:00"])
    assert naive.exit_code == 2 and "give the time zone" in naive.output and len(sent) == 2

"""The model lineup changed at runtime: the rules (``apply_change``), its file and audit log, and the hub
and worker following it. No Ray: the hub and the worker are plain classes, the worker reaches the hub
through a stand-in for its handle (the integration test runs them on real Ray Serve)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from shadowd.app import build_flywheel
from shadowd.compare.comparator import Comparator
from shadowd.config import parse_config
from shadowd.errors import BadRequest
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import Label, Mirrored, MirroredBatch, ModelOutput, Pair, PairBatch
from shadowd.serving.hub import HubParts, ShadowHub
from shadowd.serving.lineup import LineupStore, apply_change, lineup_config, parse_change
from shadowd.serving.worker import ShadowWorker
from shadowd.testing import ToyClassifier


def _model(name: str, seed: int, retrain: int = 0, **extra: Any) -> dict[str, Any]:
    kwargs = {"n_features": 8, "n_classes": 4, "seed": seed, "retrain": retrain}
    target = "shadowd.testing:ToyClassifier"
    return {"name": name, "kind": "python", "target": target, "kwargs": kwargs, "input_shape": [8], **extra}


def _config(data_dir, candidate: dict[str, Any] | None = None, **models: Any):
    return parse_config(
        {
            "task": "classification",
            "data_dir": str(data_dir),
            "models": {"production": _model("prod", 0), "candidate": candidate or _model("cand", 1), **models},
            "shadow": {"sample_share": 1.0, "noise_share": 0.0},
            "annotations": {"policy": {"rate_per_s": 100000, "burst_items": 100000, "dedup_window_items": 0}},
            "labels": {"pair_retention_s": 10**9},
        }
    )


def _parts(cfg, _shard=None) -> HubParts:
    metrics = ShadowdMetrics(CollectorRegistry())
    return HubParts(metrics=metrics, comparator=Comparator(cfg, metrics), flywheel=build_flywheel(cfg, metrics))


def _close(hub: ShadowHub) -> None:
    hub.__del__()  # what Serve calls on shutdown
    del hub.__dict__["_flywheel"]


def _change(hub: ShadowHub, who: str = "release-ci", **body: Any) -> tuple[int, dict[str, Any]]:
    return asyncio.run(hub.change_lineup(body, who))


# --- the rules ---


def test_each_change_moves_the_lineup_as_documented_and_refuses_what_does_not_fit(tmp_path):
    models = _config(tmp_path).models
    other = parse_change({"action": "set", "candidate": _model("cand2", 2)})
    replaced = apply_change(models, other)
    assert replaced.candidate is not None and replaced.candidate.name == "cand2" and replaced.live == "production"
    assert apply_change(models, parse_change({"action": "remove"})).candidate is None

    promoted = apply_change(models, parse_change({"action": "promote", "candidate": "cand"}))
    assert promoted.served.name == "cand" and promoted.shadowed is not None and promoted.shadowed.name == "prod"
    assert promoted.production.name == "prod"  # still the baseline of every comparison
    assert apply_change(promoted, parse_change({"action": "rollback"})) == models
    finished = apply_change(promoted, parse_change({"action": "finish"}))
    assert finished.production.name == "cand" and finished.candidate is None and finished.served.name == "cand"

    refused = [
        (promoted, {"action": "set", "candidate": _model("cand2", 2)}, "rollback or finish first"),
        (promoted, {"action": "remove"}, "rollback or finish first"),
        (promoted, {"action": "promote", "candidate": "cand"}, "already promoted"),
        (models, {"action": "promote", "candidate": "cand2"}, "the candidate is 'cand', not 'cand2'"),
        (models, {"action": "rollback"}, "nothing is promoted"),
        (models, {"action": "finish"}, "nothing is promoted"),
        (finished, {"action": "remove"}, "nothing to remove"),
        (models, {"action": "set", "candidate": _model("prod", 2)}, "'prod' is taken"),
    ]
    for before, body, reason in refused:
        with pytest.raises(BadRequest, match=reason) as err:
            apply_change(before, parse_change(body))
        assert err.value.http_status == 409


@pytest.mark.parametrize(
    "body, where",
    [
        ({"action": "launch"}, "body"),
        ({"action": "set"}, "set.candidate"),
        ({"action": "set", "candidate": {**_model("c", 1), "input_shape": "big"}}, "set.candidate.python.input_shape"),
        ({"action": "promote"}, "promote.candidate"),
        ({"action": "remove", "force": True}, "remove.force"),
        ([1, 2], "body"),
    ],
)
def test_a_malformed_change_is_a_422_naming_the_key(body, where):
    with pytest.raises(BadRequest) as err:
        parse_change(body)
    assert err.value.http_status == 422 and err.value.reason.startswith(where), err.value.reason


def test_a_candidate_that_does_not_fit_the_config_is_a_422(tmp_path):
    cfg = _config(tmp_path)
    for bad, reason in [
        ({**_model("c9", 1), "input_shape": [9]}, "input_shape"),
        ({**_model("c9", 1), "output": "values"}, "output"),
    ]:
        models = apply_change(cfg.models, parse_change({"action": "set", "candidate": bad}))
        with pytest.raises(BadRequest, match=reason):
            lineup_config(cfg, models)


def test_the_saved_lineup_survives_a_restart_unless_the_config_changed(tmp_path):
    cfg = _config(tmp_path)
    store = LineupStore(tmp_path)
    lineup, dropped = store.load(cfg.models)
    assert lineup.version == 0 and lineup.models == cfg.models and not dropped
    promoted = apply_change(cfg.models, parse_change({"action": "promote", "candidate": "cand"}))
    from shadowd.serving.lineup import Lineup

    store.save(Lineup(3, promoted, since=5.0), cfg.models)
    assert store.load(cfg.models) == (Lineup(3, promoted, since=5.0), False)
    # A deploy changed the config's models (GitOps): the config wins, a newer version.
    changed = _config(tmp_path, candidate=_model("cand2", 2)).models
    lineup, dropped = store.load(changed)
    assert dropped and lineup.models == changed and lineup.version == 4


# --- the hub: the lead commits, audits and keeps the closing window ---


def _batch(served: str, shadowed: str, n: int, ts: float, seed: int = 0) -> PairBatch:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        p = rng.dirichlet(np.ones(4)).tolist()
        c = rng.dirichlet(np.ones(4)).tolist()
        pairs.append(
            Pair(
                request_id=f"r{seed}-{i}",
                ts=ts,
                features={},
                production=ModelOutput(role="production", model=served, values=p, latency_s=0.001),
                candidate=ModelOutput(role="candidate", model=shadowed, values=c, latency_s=0.001),
            )
        )
    return PairBatch.of(pairs)


def test_a_new_candidate_starts_a_new_window_audited_with_the_evidence_of_the_closed_one(tmp_path):
    cfg = _config(tmp_path)
    hub = ShadowHub(cfg, _parts)
    try:
        assert asyncio.run(hub.add_batch(_batch("prod", "cand", 50, time.time()))) == 50

        status, body = _change(hub, action="set", candidate=_model("nope", 3, target="shadowd.testing:Nope"))
        assert status == 422 and "does not load" in body["error"]
        status, body = _change(hub, action="rollback")
        assert status == 409
        assert not LineupStore(cfg.data_dir).audit_path.exists()  # refused changes change nothing
        assert hub._comparator.report().overall.pairs == 50

        status, body = _change(hub, action="set", candidate=_model("cand2", 2))
        assert status == 200, body
        assert body["lineup"]["candidate"] == {"name": "cand2", "kind": "python"} and body["lineup"]["version"] == 1
        # The closed window's report is kept, and the audit line says who, what, and the evidence then.
        store = LineupStore(cfg.data_dir)
        kept = json.loads((store.reports / body["kept_report"]).read_text())
        assert kept["models"]["candidate"] == "cand" and kept["overall"]["pairs"] == 50
        [entry] = store.history()
        assert entry["who"] == "release-ci" and entry["action"] == "set"
        assert entry["before"]["candidate"]["name"] == "cand" and entry["after"]["candidate"]["name"] == "cand2"
        assert entry["evidence"]["pairs"] == 50 and entry["evidence"]["verdict"] == kept["gate"]["verdict"]
        assert "target" not in json.dumps(entry)  # names and kinds only: no paths, URLs or headers

        # The new window starts empty; pairs still in flight from the old candidate, or from before the
        # change, never reach it (dropped and counted).
        report = hub._comparator.report()
        assert report.overall.pairs == 0 and report.models["candidate"] == "cand2"
        now = time.time()
        assert asyncio.run(hub.add_batch(_batch("prod", "cand", 20, now, seed=1))) == 0
        assert asyncio.run(hub.add_batch(_batch("prod", "cand2", 20, now - 60, seed=2))) == 0
        assert asyncio.run(hub.add_batch(_batch("prod", "cand2", 30, now, seed=3))) == 30
        assert hub._metrics.pairs_dropped.labels("lineup")._value.get() == 40
        assert hub._comparator.report().overall.pairs == 30

        # A label for a pair of the closed window does not count in the new one.
        status, _ = asyncio.run(hub.feedback(Label(request_id="r0-1", label=1, ts=now)))
        assert status == 200 and hub._comparator.tally().labels.labels == 0
    finally:
        _close(hub)

    # A restart resumes the lineup and the new window's evidence.
    hub = ShadowHub(cfg, _parts)
    try:
        assert hub._lineup.version == 1 and hub._lineup.models.candidate.name == "cand2"
        assert hub._comparator.report().overall.pairs == 30
    finally:
        _close(hub)
    # A deploy with another models section: the config wins, and the audit log says so.
    changed = _config(tmp_path, candidate=_model("cand3", 4))
    hub = ShadowHub(changed, _parts)
    try:
        assert hub._lineup.models.candidate.name == "cand3" and hub._lineup.version == 2
        assert LineupStore(cfg.data_dir).history()[-1]["action"] == "config"
    finally:
        _close(hub)


# --- the worker follows the lead; a promotion reverses the sides ---


class _Handle:
    """The lead hub as the worker's handle reaches it."""

    def __init__(self, hub: ShadowHub):
        class _Method:
            def __init__(self, fn):
                self.remote = fn

        self.add_batch = _Method(hub.add_batch)
        self.lineup = _Method(hub.lineup)


def _served(served: str, x: np.ndarray, ts: float, first: int = 0, retrain: int = 0) -> MirroredBatch:
    out = ToyClassifier(n_features=8, n_classes=4, seed=0, retrain=retrain).predict(x)
    return MirroredBatch.of(
        [Mirrored(f"m{first + i}", ts, {}, x[i], out[i].tolist(), "ok", 0.001, [], served) for i in range(len(x))]
    )


@pytest.mark.parametrize("truth, verdict", [("prod", "FAIL"), ("cand", "PASS")])
def test_after_a_promotion_the_promoted_model_is_judged_against_its_predecessor(tmp_path, truth, verdict):
    """The promoted candidate answers; production runs in the shadow and stays the pair's production side. Labels
    that agree with the predecessor FAIL the promoted model; labels that agree with it do not."""
    cfg = _config(tmp_path, candidate=_model("cand", 0, retrain=1))  # a retrain: disagrees on about 22%
    hub = ShadowHub(cfg, _parts)
    try:
        status, body = _change(hub, action="promote", candidate="cand")
        assert status == 200 and body["lineup"]["served"] == "cand" and body["lineup"]["shadowed"] == "prod"
        worker = ShadowWorker(cfg, [_Handle(hub)])
        dropped = worker._metrics.pairs_dropped.labels("lineup")  # this process's registry: count the change
        dropped_before = dropped._value.get()
        x = np.random.default_rng(7).normal(size=(1200, 8)).astype(np.float32)
        now = time.time()

        async def feed() -> int:
            sent = 0
            for start in range(0, 1200, 200):
                sent += await worker.process(_served("cand", x[start : start + 200], now, start, retrain=1))
            # A row answered by the old production (an ingress replica not yet following) is dropped.
            sent += await worker.process(_served("prod", x[:10], now))
            return sent

        assert asyncio.run(feed()) == 1200
        assert dropped._value.get() - dropped_before == 10
        stored = hub._flywheel.pairs.get("m5").pair
        prod = ToyClassifier(n_features=8, n_classes=4, seed=0).predict(x[5:6])[0]
        cand = ToyClassifier(n_features=8, n_classes=4, seed=0, retrain=1).predict(x[5:6])[0]
        assert stored.production.model == "prod" and np.allclose(stored.production.values or [], prod)
        assert stored.candidate.model == "cand" and np.allclose(stored.candidate.values or [], cand)

        labeller = ToyClassifier(n_features=8, n_classes=4, seed=0, retrain=0 if truth == "prod" else 1)
        labels = labeller.predict(x).argmax(axis=1)
        for i, y in enumerate(labels):
            status, _ = asyncio.run(hub.feedback(Label(request_id=f"m{i}", label=int(y), ts=now)))
            assert status == 200
        report = asyncio.run(hub.report())
        assert report["models"] == {"production": "prod", "candidate": "cand", "live": "cand"}
        assert report["gate"]["verdict"] == verdict, report["gate"]["reasons"]
    finally:
        _close(hub)

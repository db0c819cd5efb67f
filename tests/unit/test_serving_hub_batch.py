"""The shadow path in columns: the worker sends the hub a ``PairBatch``; the hub counts it in one step.

No Ray: the worker and the hub are plain classes (app.py makes them Serve
deployments). The hub's batched path is checked against the per-pair path it
replaced (``Comparator.add`` then ``Flywheel.record`` per pair): the same
tallies, the same pairs in the pair store (selection included, so labels
find their cell) and the same items in each lane's spool.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from shadowd.app import build_flywheel
from shadowd.compare.comparator import Comparator
from shadowd.config import parse_config
from shadowd.flywheel.spool import lane_spool_dir, read_spool
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import Label, Mirrored, MirroredBatch, ModelOutput, PairBatch
from shadowd.sampling import is_sampled
from shadowd.serving.hub import HubParts, ShadowHub
from shadowd.serving.worker import ShadowWorker
from tests.unit.test_compare_batch import SLICES, Clock, assert_same, random_pairs


def _config(data_dir, redaction=None, **shadow):
    def model(name, seed):
        kwargs = {"n_features": 8, "n_classes": 4, "seed": seed}
        return {"name": name, "kind": "python", "target": "shadowd.testing:ToyClassifier", "kwargs": kwargs}

    return parse_config(
        {
            "task": "classification",
            "data_dir": str(data_dir),
            "models": {
                "production": {**model("prod", 0), "input_shape": [8]},
                "candidate": {**model("cand", 1), "input_shape": [8]},
                "reference": {**model("ref", 2), "input_shape": [8]},
            },
            "slices": SLICES,
            "shadow": shadow,
            "annotations": {
                "evaluation": {"share": 0.3, "slice_shares": {"dark": 0.6}},
                "policy": {"rate_per_s": 100000, "burst_items": 100000, "dedup_window_items": 0},
                **({"redaction": redaction} if redaction else {}),
            },
            "labels": {"pair_retention_s": 10**9},
        }
    )


def _parts(cfg, clock):
    metrics = ShadowdMetrics(CollectorRegistry())
    return HubParts(metrics=metrics, flywheel=build_flywheel(cfg, metrics, clock), clock=clock)


def _as_served(out: ModelOutput | None) -> ModelOutput | None:
    """A non-finite output as the ingress and the worker record it: outcome nan, no values."""
    if out is None or out.values is None or all(np.isfinite(out.values)):
        return out
    return out.model_copy(update={"outcome": "nan", "values": None})


def _json_safe(pairs):
    """The random stream as served (the pair store keeps JSON, which has no NaN or inf)."""
    out = []
    for p in pairs:
        p = p.model_copy(
            update={role: _as_served(getattr(p, role)) for role in ("production", "candidate", "noise", "reference")}
        )
        feats = {k: v for k, v in p.features.items() if not isinstance(v, float) or np.isfinite(v)}
        feats = {k: (int(v) if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in feats.items()}
        feats = {k: v for k, v in feats.items() if not (isinstance(v, int) and abs(v) > 2**64)}
        out.append(p.model_copy(update={"features": feats, "ts": Clock().t - 1000 + p.ts}))
    return out


# Redaction at rest: the slices "de" and "not_fr" are on a hashed feature, "anon" on a dropped one.
_REDACT = {"drop": ["features.user"], "hash": ["features.country"], "salt_env": "TEST_HUB_SALT"}


@pytest.mark.parametrize("redaction", [None, _REDACT], ids=["plain", "redacted"])
def test_hub_counts_a_batch_as_the_per_pair_path_did(tmp_path, monkeypatch, redaction):
    monkeypatch.setenv("TEST_HUB_SALT", "salt")
    clock = Clock()
    pairs = _json_safe(random_pairs(21, 600))
    cfg = _config(tmp_path / "hub", redaction)
    hub = ShadowHub(cfg, lambda c, _shard: _parts(c, clock))
    ref_cfg = _config(tmp_path / "ref", redaction)
    ref = _parts(ref_cfg, clock)
    try:

        async def feed() -> None:
            for start in range(0, len(pairs), 128):
                assert await hub.add_batch(PairBatch.of(pairs[start : start + 128])) == len(pairs[start : start + 128])
            assert await hub.add_pairs(pairs[:0]) == 0

        asyncio.run(feed())
        ref_comparator = Comparator(ref_cfg, ref.metrics, clock=clock)
        for p in copy.deepcopy(pairs):  # the per-pair path the hub had
            ref.flywheel.record(p, ref_comparator.add(p))

        assert_same(hub.comparator().state_dict()["slices"], ref_comparator.state_dict()["slices"])
        kept = 0
        for p in pairs:
            got, want = hub._flywheel.pairs.get(p.request_id), ref.flywheel.pairs.get(p.request_id)
            assert got.status == want.status == "found" and got.tags == want.tags
            assert_same(got.pair.model_dump(), want.pair.model_dump())
            kept += got.pair.selection is not None
        assert kept > 200
        if redaction:  # stored redacted (as the per-pair path stores them), their slices kept on the selection
            raw = [p for p in pairs if p.features.get("country") == "de"]
            assert len(raw) > 50
            for p in raw:
                stored = hub._flywheel.pairs.get(p.request_id).pair
                assert stored.features["country"] != "de" and "user" not in stored.features
                assert stored.selection is None or "de" in (stored.selection.slices or [])
        assert hub._flywheel.flush(10) and ref.flywheel.flush(10)
        for lane in ("evaluation", "review"):
            mine = [r.value for r in read_spool(lane_spool_dir(cfg.data_dir, lane))]
            theirs = [r.value for r in read_spool(lane_spool_dir(ref_cfg.data_dir, lane))]
            assert mine == theirs and mine, lane

        # A label joins the stored pair and lands in the cell the batch counted it in.
        # (A pair in "de" where that is known: with redaction, only from the selection's slices.)
        in_sample = next(
            p
            for p in pairs
            if (hub._flywheel.pairs.get(p.request_id).pair.selection or _No).in_sample
            and p.features.get("country") == "de"
        )
        status, body = asyncio.run(hub.feedback(Label(request_id=in_sample.request_id, label=1, ts=clock())))
        assert status == 200 and body["used_for_quality"]
        assert hub.comparator().tally().quality.labels == 1
        selection = hub._flywheel.pairs.get(in_sample.request_id).pair.selection
        assert selection is not None and selection.slices is not None and "de" in selection.slices
        for name in ["de", *selection.slices]:
            assert hub.comparator().tally(name).quality.labels == 1, name
    finally:
        hub.__del__()  # what Serve calls on shutdown: close the flywheel, save the state
        del hub.__dict__["_flywheel"]  # and not again when the object goes
        ref.flywheel.close(timeout_s=2)


class _No:
    in_sample = False


class _FakeHub:
    """Takes what the worker sends, as the hub's handle would."""

    def __init__(self) -> None:
        self.batches: list[PairBatch] = []
        outer = self

        class _Remote:
            async def remote(self, batch: PairBatch) -> int:
                outer.batches.append(batch)
                return len(batch)

        self.add_batch = _Remote()


@pytest.mark.parametrize("store_inputs", [True, False])
def test_worker_sends_the_batch_in_columns(tmp_path, store_inputs):
    cfg = _config(tmp_path, noise_share=0.5, reference_share=0.5, store_inputs=store_inputs)
    hub = _FakeHub()
    worker = ShadowWorker(cfg, [hub])
    rng = np.random.default_rng(22)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    from shadowd.testing import ToyClassifier

    prod = ToyClassifier(n_features=8, n_classes=4, seed=0).predict(x)
    cand = ToyClassifier(n_features=8, n_classes=4, seed=1).predict(x)
    ref = ToyClassifier(n_features=8, n_classes=4, seed=2).predict(x)
    items = [
        Mirrored(
            request_id=f"w{i}",
            ts=float(i),
            features={"brightness": float(rng.random())},
            x=x[i],
            production_values=prod[i].tolist() if i != 3 else None,
            production_outcome="ok" if i != 3 else "error",
            production_latency_s=0.002 * (i + 1),
            violations=[{"expectation": "x.range", "count": 1}] if i == 5 else [],
            served_model="prod",
        )
        for i in range(40)
    ]
    assert asyncio.run(worker.process(MirroredBatch.of(items))) == 40
    (batch,) = hub.batches
    for i, m in enumerate(items):
        p = batch.pair(i)
        assert p.request_id == m.request_id and p.ts == m.ts and p.features == m.features
        assert p.inputs == (x[i].tolist() if store_inputs else None)
        assert p.violations == m.violations
        assert p.production == ModelOutput(
            role="production",
            model="prod",
            outcome=m.production_outcome,
            values=m.production_values,
            latency_s=m.production_latency_s,
        )
        assert p.candidate is not None and p.candidate.values == cand[i].tolist() and p.candidate.model == "cand"
        for role, want, salt in (("noise", prod, "noise"), ("reference", ref, "reference")):
            out: Any = getattr(p, role)
            if is_sampled(m.request_id, 0.5, salt):
                assert out is not None and out.role == role and out.values == want[i].tolist()
            else:
                assert out is None
    assert batch.noise is not None and batch.reference is not None


class _StuckPeer:
    """A peer shard's handle whose every call never answers (a shard restarting or stuck)."""

    def __getattr__(self, method):
        class _Method:
            def remote(self, *args):
                return asyncio.sleep(3600)

        return _Method()


def test_a_stuck_shard_makes_the_report_fail_and_the_gate_inconclusive_never_stale(tmp_path):
    from shadowd.serving.hub import ShardUnavailable

    clock = Clock()
    cfg = _config(tmp_path / "hub")
    cfg = cfg.model_copy(update={"serving": cfg.serving.model_copy(update={"hub_timeout_s": 0.2})})
    parts: list[HubParts] = []
    hub = ShadowHub(cfg, lambda c, _shard: parts.append(_parts(c, clock)) or parts[0], peers=[_StuckPeer()])
    gauge = parts[0].metrics.gate_verdict.labels(candidate="cand")
    try:
        gauge.set(0)  # a PASS from before the shard got stuck
        with pytest.raises(ShardUnavailable, match="hub shard 1: shard_state"):
            asyncio.run(hub.report())
        asyncio.run(hub._persist_tick())  # the 5 s tick: no verdict from part of the evidence
        assert parts[0].metrics.registry.get_sample_value("shadowd_gate_verdict", {"candidate": "cand"}) == 2
    finally:
        hub._flywheel.close(timeout_s=5)
        del hub.__dict__["_flywheel"]


class _BrokenHub:
    """A hub shard's handle whose add_batch fails (the replica died)."""

    def __init__(self) -> None:
        class _Remote:
            async def remote(self, batch: PairBatch) -> int:
                raise RuntimeError("ActorDiedError")

        self.add_batch = _Remote()


def _mirrored(n: int) -> MirroredBatch:
    x = np.random.default_rng(3).normal(size=(n, 8)).astype(np.float32)
    return MirroredBatch.of(
        [
            Mirrored(f"s{i}", float(i), {}, x[i], [0.25] * 4, "ok", 0.001, [], "prod")
            for i in range(n)  # production's values as the ingress recorded them
        ]
    )


def test_the_worker_sends_each_shard_its_rows_and_counts_only_a_failed_shards_part(tmp_path):
    from shadowd.sampling import shard_of

    cfg = _config(tmp_path)
    hubs: list[Any] = [_FakeHub(), _BrokenHub(), _FakeHub()]
    worker = ShadowWorker(cfg, hubs)
    batch = _mirrored(90)
    owner = [shard_of(r, 3) for r in batch.request_ids]
    assert asyncio.run(worker.process(batch)) == 90
    for s in (0, 2):
        (got,) = hubs[s].batches
        assert got.request_ids == [r for r, o in zip(batch.request_ids, owner, strict=True) if o == s]
    lost = worker._metrics.registry.get_sample_value("shadowd_pairs_dropped_total", {"reason": "hub"})
    assert lost == owner.count(1) > 0  # shard 1's rows only; the ingress counts nothing (no exception)

    with pytest.raises(RuntimeError, match="ActorDiedError"):  # none arrived: as with one hub, the call fails
        asyncio.run(ShadowWorker(cfg, [_BrokenHub(), _BrokenHub()]).process(_mirrored(20)))

"""Comparator counts, metrics, annotation items, merge and persistence.

Expected numbers are computed independently from the generated stream with
numpy, never read back from the comparator.
"""

import json
import random
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from shadowd.compare.comparator import Comparator, state_path
from shadowd.compare.tally import LogHistogram
from shadowd.config import parse_config
from shadowd.errors import BadRequest
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import Label, ModelOutput, Pair
from shadowd.sampling import hash_unit

SLICES = [
    {"name": "dark", "where": {"field": "brightness", "op": "lt", "value": 0.3}},
    {"name": "de", "where": {"field": "country", "op": "eq", "value": "de"}},
]


def make_config(tmp_path, task="classification", slices=SLICES, candidate="cand-v2", **extra):
    models = {
        "production": {
            "name": "prod-v1",
            "kind": "python",
            "target": "m:p",
            "input_shape": [4],
            "output": "probabilities" if task == "classification" else "values",
        },
        "candidate": {
            "name": candidate,
            "kind": "python",
            "target": "m:c",
            "input_shape": [4],
            "output": "probabilities" if task == "classification" else "values",
        },
    }
    return parse_config({"task": task, "data_dir": str(tmp_path), "models": models, "slices": slices, **extra})


class Clock:
    def __init__(self, t=1_000.0):
        self.t = t

    def __call__(self):
        return self.t


def out(role, values, outcome="ok", latency_s=0.01):
    return ModelOutput(
        role=role, model=role, outcome=outcome, values=values if outcome == "ok" else None, latency_s=latency_s
    )


def stream(n, seed, k=3):
    """Random classification pairs with every outcome, optional noise, assorted features."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        p = rng.dirichlet(np.ones(k))
        feats: dict[str, object] = {}
        if rng.random() < 0.8:
            feats["brightness"] = float(rng.random())
        if rng.random() < 0.5:
            feats["country"] = str(rng.choice(["de", "fr", "us"]))
        u = rng.random()
        if u < 0.1:
            cand = None
        elif u < 0.15:
            cand = out("candidate", None, outcome=str(rng.choice(["error", "timeout", "nan", "bad_shape"])))
        else:
            q = p if rng.random() < 0.3 else rng.dirichlet(np.ones(k))
            cand = out("candidate", q.tolist(), latency_s=float(rng.uniform(0.001, 0.1)))
        noise = out("noise", (0.9 * p + 0.1 * rng.dirichlet(np.ones(k))).tolist()) if rng.random() < 0.3 else None
        pairs.append(
            Pair(
                request_id=f"{seed}-{i}",
                ts=float(i),
                features=feats,
                production=out("production", p.tolist(), latency_s=float(rng.uniform(0.001, 0.05))),
                candidate=cand,
                noise=noise,
            )
        )
    return pairs


def expected_counts(pairs, in_slice, tvd_threshold=0.3):
    e: dict[str, Any] = dict(
        pairs=0,
        production_only=0,
        compared=0,
        flips=0,
        divergent=0,
        tvds=[],
        noise_compared=0,
        noise_flips=0,
        outcomes=dict.fromkeys(["ok", "error", "timeout", "nan", "bad_shape"], 0),
    )
    for pr in pairs:
        if not in_slice(pr.features):
            continue
        e["pairs"] += 1
        p = np.array(pr.production.values)
        if pr.noise is not None:
            e["noise_compared"] += 1
            e["noise_flips"] += int(np.argmax(pr.noise.values) != np.argmax(p))
        if pr.candidate is None:
            e["production_only"] += 1
            continue
        e["outcomes"][pr.candidate.outcome] += 1
        if pr.candidate.outcome != "ok":
            continue
        q = np.array(pr.candidate.values)
        e["compared"] += 1
        flip = int(np.argmax(p)) != int(np.argmax(q))
        tvd = 0.5 * np.abs(p - q).sum()
        e["flips"] += flip
        e["divergent"] += flip or tvd > tvd_threshold
        e["tvds"].append(tvd)
    return e


SLICE_FNS = {
    "overall": lambda f: True,
    "dark": lambda f: isinstance(f.get("brightness"), float) and f["brightness"] < 0.3,
    "de": lambda f: f.get("country") == "de",
}


def test_counts_are_exact_for_a_generated_stream(tmp_path):
    pairs = stream(600, seed=1)
    comp = Comparator(make_config(tmp_path), clock=Clock())
    items = comp.add_many(pairs)
    rep = comp.report().to_json()
    for name, fn in SLICE_FNS.items():
        e = expected_counts(pairs, fn)
        r = rep["overall"] if name == "overall" else rep["slices"][name]
        assert r["pairs"] == e["pairs"] > 0
        assert r["production_only"] == e["production_only"]
        assert r["candidate_outcomes"] == e["outcomes"]
        assert r["compared"] == e["compared"]
        assert r["flips"] == e["flips"]
        assert r["flip_rate"] == e["flips"] / e["compared"]
        assert r["divergent"] == e["divergent"]
        assert r["mean_divergence"] == pytest.approx(np.mean(e["tvds"]), rel=1e-12)
        assert r["noise"]["compared"] == e["noise_compared"]
        assert r["noise"]["flips"] == e["noise_flips"]
        assert r["latency_s"]["candidate"]["n"] == e["compared"]
        assert r["latency_s"]["production"]["n"] == e["pairs"]
    e = expected_counts(pairs, SLICE_FNS["overall"])
    assert len(items) == e["divergent"]  # every disagreement is queued: drawn ones to the evaluation lane
    drawn = {p.request_id for p in pairs if hash_unit(p.request_id, "evaluation") < 0.2}
    for it in items:
        if it.request_id in drawn:
            assert (it.reason, it.lane, it.inclusion) == ("evaluation", "evaluation", 0.2)
        else:
            assert (it.reason, it.lane, it.inclusion) == ("divergent", "review", None)
    assert any(it.lane == "evaluation" for it in items) and any(it.lane == "review" for it in items)
    # every compared pair is counted in its stratum, labelled or not
    for name, fn in SLICE_FNS.items():
        e = expected_counts(pairs, fn)
        strata = (rep["overall"] if name == "overall" else rep["slices"][name])["labels"]["strata"]
        assert strata.get("flip", 0) == e["flips"]
        assert sum(strata.values()) == e["compared"]
    json.dumps(rep, allow_nan=False)


def test_annotation_items_carry_priority_slices_and_outputs(tmp_path):
    comp = Comparator(make_config(tmp_path), clock=Clock(42.0))
    pair = Pair(
        request_id="r1",
        ts=1.0,
        features={"brightness": 0.1, "country": "de"},
        inputs=[1, 2, 3, 4],
        production=out("production", [0.7, 0.2, 0.1]),
        candidate=out("candidate", [0.2, 0.7, 0.1]),
    )
    (item,) = comp.add(pair)
    assert item.request_id == "r1"
    assert item.priority == pytest.approx(0.5)
    assert item.slices == ["dark", "de"]
    assert item.inputs == [1, 2, 3, 4]
    assert item.candidate.values == [0.2, 0.7, 0.1]
    assert item.created_ts == 42.0
    assert "0 -> 1" in item.detail
    calm = pair.model_copy(update={"request_id": "r2", "candidate": out("candidate", [0.65, 0.25, 0.1])})
    assert comp.add(calm) == []


def test_incomparable_candidate_values_are_counted_not_compared(tmp_path):
    comp = Comparator(make_config(tmp_path, slices=[]))
    prod = out("production", [0.5, 0.5])
    comp.add(Pair(request_id="a", ts=0, production=prod, candidate=out("candidate", [0.2, 0.3, 0.5])))
    comp.add(Pair(request_id="b", ts=0, production=prod, candidate=out("candidate", [float("nan"), 0.5])))
    comp.add(
        Pair(
            request_id="c",
            ts=0,
            production=out("production", None, outcome="error"),
            candidate=out("candidate", [0.5, 0.5]),
        )
    )
    r = comp.report().to_json()["overall"]
    assert r["candidate_outcomes"]["bad_shape"] == 1 and r["candidate_outcomes"]["nan"] == 1
    assert r["compared"] == 0 and r["pairs"] == 3 and r["production_failed"] == 1


def test_metrics_follow_the_counts(tmp_path):
    reg = CollectorRegistry()
    pairs = stream(300, seed=2)
    comp = Comparator(make_config(tmp_path), metrics=ShadowdMetrics(reg))
    comp.add_many(pairs)
    assert comp.candidate_name == "cand-v2"  # models.candidate.name: the candidate label of its series
    for name, fn in SLICE_FNS.items():
        e = expected_counts(pairs, fn)
        lab = {"candidate": comp.candidate_name, "slice": name}
        assert reg.get_sample_value("shadowd_pairs_compared_total", lab) == e["compared"]
        assert reg.get_sample_value("shadowd_pairs_divergent_total", lab) == e["divergent"]
        assert reg.get_sample_value("shadowd_label_flips_total", lab) == e["flips"]
        assert reg.get_sample_value("shadowd_pair_divergence_count", lab) == e["compared"]
        assert reg.get_sample_value("shadowd_pair_divergence_sum", lab) == pytest.approx(sum(e["tvds"]))


def test_regression_pairs(tmp_path):
    cfg = make_config(tmp_path, task="regression", slices=[], divergence={"abs_threshold": 0.5, "rel_threshold": 0.1})
    comp = Comparator(cfg)
    items = comp.add_many(
        [
            Pair(request_id="a", ts=0, production=out("production", [10.0]), candidate=out("candidate", [11.5])),
            Pair(request_id="b", ts=0, production=out("production", [10.0]), candidate=out("candidate", [10.2])),
        ]
    )
    r = comp.report().to_json()["overall"]
    assert [i.request_id for i in items] == ["a"]
    assert r["flips"] is None and r["flip_rate"] is None
    assert r["mean_divergence"] == pytest.approx((0.15 + 0.02) / 2)
    assert r["divergent"] == 1


def _assert_states_equal(a, b):
    """Counts exactly equal; floats (moments) equal up to rounding."""

    def walk(x, y, path):
        if isinstance(x, dict):
            assert x.keys() == y.keys(), path
            for k in x:
                walk(x[k], y[k], f"{path}.{k}")
        elif isinstance(x, list) and all(isinstance(v, float) for v in x + y):
            assert sorted(x) == pytest.approx(sorted(y)), path  # the loss-difference sample: order is arrival order
        elif isinstance(x, list):
            assert x == y, path
        elif isinstance(x, float):
            assert x == pytest.approx(y, rel=1e-9, abs=1e-12), path
        else:
            assert x == y, path

    walk(a, b, "state")


def test_merge_of_two_replicas_equals_one_fed_both(tmp_path):
    cfg = make_config(tmp_path)
    a_pairs, b_pairs = stream(400, seed=3), stream(250, seed=4)
    labels = {
        p.request_id: Label(request_id=p.request_id, label=int(i % 3), ts=0.0) for i, p in enumerate(a_pairs + b_pairs)
    }
    a, b, both = (Comparator(cfg, clock=Clock()) for _ in range(3))
    for comp, pairs in ((a, a_pairs), (b, b_pairs), (both, a_pairs + b_pairs)):
        for p in pairs:
            comp.add(p)
            comp.add_labelled(p, labels[p.request_id], "feedback")
    a.merge(json.loads(json.dumps(b.state_dict())))
    _assert_states_equal(a.state_dict(), both.state_dict())
    assert a.report().to_json()["overall"]["flips"] == both.report().to_json()["overall"]["flips"]


def test_save_load_roundtrip_and_new_candidate_starts_fresh(tmp_path):
    cfg = make_config(tmp_path)
    comp = Comparator(cfg, clock=Clock(5.0))
    comp.add_many(stream(100, seed=5))
    path = comp.save()
    assert path == state_path(tmp_path) and path.exists()
    assert not list(path.parent.glob(".state-*"))  # no temp file left behind
    again = Comparator(cfg, clock=Clock(99.0))
    assert again.load() is True
    assert again.state_dict() == comp.state_dict()
    assert again.window_started_ts == 5.0
    other = Comparator(make_config(tmp_path, candidate="cand-v3"))
    assert other.load() is False
    assert other.report().to_json()["overall"]["pairs"] == 0


def test_unreadable_state_is_moved_aside_not_lost(tmp_path):
    cfg = make_config(tmp_path)
    path = state_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    comp = Comparator(cfg, clock=Clock(7.0))
    assert comp.load() is False
    aside = path.with_name("state.json.unreadable-7")
    assert aside.read_text() == "{not json" and not path.exists()


def test_merge_refuses_another_task(tmp_path):
    cls = Comparator(make_config(tmp_path))
    reg = Comparator(make_config(tmp_path, task="regression"))
    with pytest.raises(Exception, match="task"):
        cls.merge(reg.state_dict())


def test_reset_starts_a_new_window(tmp_path):
    clock = Clock(1.0)
    comp = Comparator(make_config(tmp_path), clock=clock)
    comp.add_many(stream(50, seed=6))
    clock.t = 2.0
    comp.reset()
    rep = comp.report().to_json()
    assert rep["window_started_ts"] == 2.0
    assert rep["overall"]["pairs"] == 0 and rep["slices"]["dark"]["pairs"] == 0


def test_add_labelled_losses_and_accuracy(tmp_path):
    comp = Comparator(make_config(tmp_path))
    pair = Pair(
        request_id="r",
        ts=0,
        features={"country": "de"},
        production=out("production", [0.8, 0.1, 0.1]),
        candidate=out("candidate", [0.3, 0.6, 0.1]),
    )
    comp.add(pair)  # classes the pair: a flip, drawn or not
    assert pair.selection is not None and pair.selection.stratum == "flip"
    losses = comp.add_labelled(pair, Label(request_id="r", label=0, ts=0), "feedback")
    assert losses == {"production": pytest.approx(-np.log(0.8)), "candidate": pytest.approx(-np.log(0.3))}
    r = comp.report().to_json()
    assert r["slices"]["de"]["labels"]["used"] == 1 and r["slices"]["dark"]["labels"]["used"] == 0
    assert r["overall"]["labels"]["by_channel"] == {"feedback": 1}
    assert r["overall"]["labels"]["accuracy"] == {"production": 1.0, "candidate": 0.0}  # random feedback
    cell = comp.tally("de").quality.cell("flip", pair.selection.evaluation_share)
    assert (cell.pairs, cell.accuracy.n, cell.accuracy.mean) == (1, 1, 1.0)  # production right, candidate wrong
    assert comp.add_labelled(pair, Label(request_id="r", label=None, verdict="skip", ts=0), None) == {}
    with pytest.raises(BadRequest, match="request r"):
        comp.add_labelled(pair, Label(request_id="r", label=7, ts=0), "feedback")
    only_prod = pair.model_copy(update={"candidate": None})
    assert set(comp.add_labelled(only_prod, Label(request_id="r", label=1, ts=0), "feedback")) == {"production"}
    # a label chosen some other way is counted as excluded, never in the cells or the plain accuracies
    comp.add_labelled(pair, Label(request_id="r", label=1, ts=0), None)
    comp.exclude_label(pair, "priority queue (not a random sample)")
    r = comp.report().to_json()["overall"]["labels"]
    assert r["used"] == 1 and r["feedback"] == 1
    # every usable label is accounted for: the one without a candidate answer says so
    assert r["excluded"] == {
        "priority queue (not a random sample)": 1,
        "no candidate answer to compare (failed, timed out or not sampled)": 1,
    }


def test_log_histogram_quantiles_within_one_percent_of_numpy():
    rng = random.Random(11)
    xs = [rng.lognormvariate(-4, 1.0) for _ in range(5000)]
    h = LogHistogram()
    for x in xs:
        h.add(x)
    for q in (0.01, 0.5, 0.9, 0.99):
        exact = float(np.quantile(xs, q, method="inverted_cdf"))
        assert h.quantile(q) == pytest.approx(exact, rel=0.0101)
    h2 = LogHistogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert h2.quantile(0.5) == h.quantile(0.5) and h2.n == 5000


def test_raw_and_noise_tallies_cannot_be_swapped():
    from shadowd.compare.tally import CandidateTally, NoiseTally

    with pytest.raises(TypeError, match="NoiseTally"):
        CandidateTally().merge(NoiseTally())
    with pytest.raises(TypeError, match="CandidateTally"):
        NoiseTally().merge(CandidateTally())


def test_loss_difference_reservoir_stays_bounded_and_proportional(monkeypatch):
    from shadowd.compare.tally import LabelTally

    monkeypatch.setattr(LabelTally, "SAMPLE_CAP", 30)
    rng = random.Random(0)
    a, b = LabelTally(), LabelTally()
    for _ in range(200):
        a.add(1.0, 2.0, (True, False), rng)  # difference +1
    for _ in range(100):
        b.add(2.0, 1.0, (False, True), rng)  # difference -1
    assert len(a.diff_sample) == 30 and set(a.diff_sample) == {1.0}
    a.merge(b, rng)
    assert len(a.diff_sample) == 30
    assert a.diff_sample.count(1.0) == 20 and a.diff_sample.count(-1.0) == 10  # 2:1 as the streams
    assert a.loss_diff.n == 300 and a.loss_diff.mean == pytest.approx(1 / 3)
    assert (a.prod_only_correct, a.cand_only_correct) == (200, 100)

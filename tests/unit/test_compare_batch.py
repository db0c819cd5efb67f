"""The batched comparator path (``Comparator.add_batch``) against the per-pair path (``Comparator.add``).

Every test feeds one seeded random stream through both and asks for exactly
the same state: counts, classes, buckets and cells equal, moments equal up to
float rounding; the same selection (stratum, evaluation share, drawn) on
every pair, the same annotation items, the same report and metrics. The
streams hold the edge cases on purpose: no candidate, every failure outcome,
NaN and inf values, the wrong width, empty values, ties in the top class,
zero and bucket-edge latencies, noise and reference runs with their own
failures, features of every type (and a few the columns do not cover), and
labels joined after the pairs.
"""

from __future__ import annotations

import copy
import enum
import math
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from shadowd.compare.comparator import Comparator
from shadowd.compare.divergence import compare_columns, pair_divergence
from shadowd.compare.slices import SliceMatcher
from shadowd.compare.tally import LogHistogram
from shadowd.config import parse_config
from shadowd.observe.metrics import DIVERGENCE_BOUNDS, ShadowdMetrics, observe_counts
from shadowd.records import OUTCOMES, Label, ModelOutput, OutputColumns, Pair, PairBatch


class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Tier(enum.IntEnum):  # an int subclass: judged row by row, never in a column
    GOLD = 1


class Code(str):  # a str subclass: likewise
    pass


SLICES: list[dict[str, Any]] = [
    {"name": "dark", "where": {"field": "brightness", "op": "lt", "value": 0.3}},
    {"name": "bright", "where": {"field": "brightness", "op": "ge", "value": 0.7}},
    {"name": "de", "where": {"field": "country", "op": "eq", "value": "de"}},
    {"name": "not_fr", "where": {"field": "country", "op": "ne", "value": "fr"}},
    {
        "name": "night",
        "where": {"any": [{"field": "hour", "op": "gt", "value": 21}, {"field": "hour", "op": "le", "value": 5}]},
    },
    {"name": "vip", "where": {"field": "tier", "op": "in", "value": [1, "gold", True, 2**60]}},
    {"name": "not_vip", "where": {"field": "tier", "op": "not_in", "value": [1, "gold"]}},
    {"name": "new", "where": {"field": "new_user", "op": "eq", "value": True}},
    {"name": "one", "where": {"field": "hour", "op": "eq", "value": 1.0}},
    {"name": "big", "where": {"field": "hour", "op": "eq", "value": 2**60}},
    {"name": "huge", "where": {"field": "hour", "op": "gt", "value": float(2**53)}},  # 2**53 + 1 is above it
    {
        "name": "anon",
        "where": {"all": [{"field": "user", "op": "missing"}, {"not": {"field": "country", "op": "exists"}}]},
    },
]


def make_config(tmp_path, task="classification", slices=SLICES, **extra):
    out = "probabilities" if task == "classification" else "values"
    models = {
        role: {"name": name, "kind": "python", "target": "m:f", "input_shape": [2], "output": out}
        for role, name in (("production", "prod"), ("candidate", "cand"), ("reference", "ref"))
    }
    evaluation = {"share": 0.3, "slice_shares": {"dark": 0.6, "vip": 0.45}, "review_share": 0.9}
    return parse_config(
        {
            "task": task,
            "data_dir": str(tmp_path),
            "models": models,
            "slices": slices,
            "annotations": {"evaluation": evaluation},
            **extra,
        }
    )


def comparators(cfg, metrics=False):
    made = []
    for _ in range(2):
        m = ShadowdMetrics(CollectorRegistry()) if metrics else None
        c = Comparator(cfg, m, clock=Clock(), seed=7)
        c.set_review_slices(["de", "night"])
        made.append(c)
    return made


# --- random streams with the edge cases ---


def _latency(rng):
    u = rng.random()
    if u < 0.05:
        return 0.0
    if u < 0.07:
        return 1e-10  # below MIN_VALUE: the zero bucket
    if u < 0.08:
        return LogHistogram.MIN_VALUE  # at it: the zero bucket too
    if u < 0.2:
        return float(LogHistogram.GAMMA ** int(rng.integers(-700, -100)))  # exactly on a bucket edge
    if u < 0.23:
        return float(10 ** rng.uniform(-8, 4))  # anywhere from 10 ns to hours: more buckets than one batch's columns
    return float(rng.uniform(0.0005, 0.2))


def _class_values(rng, k):
    u = rng.random()
    if u < 0.1:  # a tie for the top class
        v = np.zeros(k)
        top = rng.choice(k, size=2, replace=False)
        v[top] = 0.4
        v[[i for i in range(k) if i not in top][:1]] = 0.2
        return v
    if u < 0.13:
        return rng.normal(size=k)  # logits, negative values included
    return rng.dirichlet(np.ones(k))


def _second(rng, role, prod, task, k):
    """Another model's output next to production's: every failure, or close to / far from it."""
    u = rng.random()
    latency = _latency(rng)
    if u < 0.08:
        outcome = OUTCOMES[int(rng.integers(1, len(OUTCOMES)))]  # error, timeout, nan, bad_shape
        return ModelOutput(role=role, model=role, outcome=outcome, latency_s=latency, detail="broken")
    if u < 0.11:
        values = [float(x) for x in rng.random(k + 1)]  # the wrong width
    elif u < 0.13:
        values = [float(x) for x in rng.random(k)]
        values[int(rng.integers(k))] = float(rng.choice([math.nan, math.inf, -math.inf]))
    elif u < 0.14:
        values = []
    elif not prod or u < 0.35:
        values = [float(x) for x in (_class_values(rng, k) if task == "classification" else rng.normal(size=k))]
    elif u < 0.55:
        values = list(prod)  # the same answer
    elif task == "classification":
        q = np.abs(np.asarray(prod) + rng.normal(scale=0.15, size=k))
        values = [float(x) for x in q / q.sum()] if q.sum() > 0 else list(prod)
    else:
        scale = float(rng.choice([1e-3, 0.1, 1.0, 10.0]))
        values = [float(x) for x in np.asarray(prod) + rng.normal(scale=scale, size=k)]
    return ModelOutput(role=role, model=role, values=values, latency_s=latency)


def _features(rng):
    f: dict[str, Any] = {}
    u = rng.random()
    if u < 0.6:
        f["brightness"] = float(rng.random())
    elif u < 0.65:
        f["brightness"] = math.nan
    elif u < 0.7:
        f["brightness"] = int(rng.integers(0, 2))
    elif u < 0.75:
        f["brightness"] = bool(rng.random() < 0.5)
    elif u < 0.8:
        f["brightness"] = "0.1"
    elif u < 0.85:
        f["brightness"] = None
    country = rng.random()
    if country < 0.7:
        f["country"] = str(rng.choice(["de", "fr", "us"]))
    elif country < 0.75:
        f["country"] = Code("de")
    elif country < 0.8:
        f["country"] = ["de"]
    elif country < 0.85:
        f["country"] = 1
    hour = rng.random()
    if hour < 0.7:
        f["hour"] = int(rng.integers(0, 24))
    elif hour < 0.75:
        f["hour"] = 1.0
    elif hour < 0.8:
        f["hour"] = 2**60
    elif hour < 0.82:
        f["hour"] = 2**53 + 1
    elif hour < 0.84:
        f["hour"] = 10**400  # beyond any float
    elif hour < 0.86:
        f["hour"] = math.inf
    tier = rng.random()
    if tier < 0.2:
        f["tier"] = 1
    elif tier < 0.3:
        f["tier"] = "gold"
    elif tier < 0.35:
        f["tier"] = True
    elif tier < 0.4:
        f["tier"] = Tier.GOLD
    elif tier < 0.45:
        f["tier"] = 2**60
    elif tier < 0.5:
        f["tier"] = {"nested": 1}
    elif tier < 0.7:
        f["tier"] = "silver"
    if rng.random() < 0.2:
        f["new_user"] = bool(rng.random() < 0.5)
    if rng.random() < 0.5:
        f["user"] = "u" if rng.random() < 0.8 else None
    return f


def random_pairs(seed, n, task="classification", k=4, noise=0.3, reference=0.3):
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        u = rng.random()
        if u < 0.05:
            prod = ModelOutput(role="production", model="prod", outcome="error", latency_s=_latency(rng))
        elif u < 0.07:
            prod = ModelOutput(role="production", model="prod", values=[], latency_s=_latency(rng))
        else:
            if task == "classification":
                values = [float(x) for x in _class_values(rng, k)]
            else:
                scale = float(rng.choice([1e-4, 1.0, 1e3]))
                values = [float(x) for x in rng.normal(scale=scale, size=k)]
                if rng.random() < 0.05:
                    values[0] = 0.0  # the relative difference's floor
                if rng.random() < 0.02:
                    values[0] = 1e200  # a score past the limit: counted as nan
            if rng.random() < 0.02:
                values[int(rng.integers(k))] = math.nan
            prod = ModelOutput(role="production", model="prod", values=values, latency_s=_latency(rng))
        cand = None if rng.random() < 0.08 else _second(rng, "candidate", prod.values, task, k)
        nz = _second(rng, "noise", prod.values, task, k) if rng.random() < noise else None
        ref = _second(rng, "reference", prod.values, task, k) if rng.random() < reference else None
        pairs.append(
            Pair(
                request_id=f"s{seed}-{i}",
                ts=float(i),
                features=_features(rng),
                inputs=[float(i), 0.5] if rng.random() < 0.5 else None,
                production=prod,
                candidate=cand,
                noise=nz,
                reference=ref,
            )
        )
    return pairs


def chunks(seq, rng):
    """Batches of random sizes, some empty, some of one pair."""
    out, i = [], 0
    while i < len(seq):
        size = int(rng.choice([0, 1, 2, 7, 64, 256]))
        out.append(seq[i : i + size])
        i += size
    return out


# --- equality up to float rounding in the moments ---


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Equal, with floats within 1e-9 relative (the moments' rounding); ints, strings, keys exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, set(a) ^ set(b))
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), (path, a, b)
        else:
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (path, a, b)
    else:
        assert type(a) is type(b) and a == b, (path, a, b)


def feed_both(cfg, pairs, seed, metrics=False):
    """(per-pair comparator, its items and pairs; batched comparator, its items and stored pairs)."""
    one, batched = comparators(cfg, metrics)
    mine = copy.deepcopy(pairs)
    items_one = [item for p in mine for item in one.add(p)]
    items_batched, stored = [], []
    for chunk in chunks(pairs, np.random.default_rng(seed)):
        batch = PairBatch.of(chunk)
        result = batched.add_batch(batch)
        items_batched += result.all_items()
        stored += [batch.pair(i, result.selection(i)) for i in range(len(batch))]
    return one, items_one, mine, batched, items_batched, stored


# --- the tests ---


@pytest.mark.parametrize(
    ("task", "k", "seed"),
    [
        ("classification", 4, 1),
        ("classification", 10, 2),
        ("classification", 3, 3),
        ("classification", 40, 6),  # 1600 (production, candidate) class pairs: counted with np.unique
        ("regression", 1, 4),
        ("regression", 3, 5),
    ],
)
def test_batched_counts_equal_per_pair_counts(tmp_path, task, k, seed):
    cfg = make_config(tmp_path, task)
    pairs = random_pairs(seed, 1500, task, k)
    one, items_one, mine, batched, items_batched, stored = feed_both(cfg, pairs, seed)
    assert one.tally().pairs == 1500
    assert one.tally().candidate.compared > 300  # the stream compares plenty, and fails plenty
    assert sum(one.tally().candidate_outcomes.values()) - one.tally().candidate_outcomes["ok"] > 50
    assert_same(one.state_dict(), batched.state_dict())
    assert items_one == items_batched
    assert {i.reason for i in items_one} == {"evaluation", "divergent"}
    assert [p.selection for p in mine] == [p.selection for p in stored]
    assert sum(p.selection is not None and p.selection.in_sample for p in mine) > 10
    assert_same(one.report().to_json(), batched.report().to_json())


def test_stored_pairs_are_the_pairs_with_their_selection(tmp_path):
    cfg = make_config(tmp_path)
    pairs = random_pairs(6, 300)
    _, _, mine, _, _, stored = feed_both(cfg, pairs, 6)
    # Every field, the comparator's selection included (NaN values compare as NaN).
    assert_same([p.model_dump() for p in stored], [p.model_dump() for p in mine])
    assert sum(p.selection is not None for p in stored) > 100


def test_labels_joined_later_land_in_the_same_cells(tmp_path):
    cfg = make_config(tmp_path)
    pairs = random_pairs(8, 1200)
    one, _, mine, batched, _, stored = feed_both(cfg, pairs, 8)
    rng = np.random.default_rng(9)
    used = 0
    for p, q in zip(mine, stored, strict=True):
        if rng.random() < 0.5:
            continue
        label = Label(request_id=p.request_id, label=int(rng.integers(0, 4)), ts=1.0)
        u = rng.random()
        if u < 0.1:
            one.exclude_label(p, "priority queue (not a random sample)")
            batched.exclude_label(q, "priority queue (not a random sample)")
            continue
        channel = "evaluation" if p.selection is not None and p.selection.in_sample and u < 0.5 else "feedback"
        assert_same(one.add_labelled(p, label, channel), batched.add_labelled(q, label, channel))
        used += 1
    assert used > 300 and one.tally().quality.labels > 200
    assert_same(one.state_dict(), batched.state_dict())
    assert_same(one.report().to_json(), batched.report().to_json())


def test_add_many_is_the_batched_path_and_sets_selections(tmp_path):
    cfg = make_config(tmp_path)
    pairs = random_pairs(10, 400)
    one, batched = comparators(cfg)
    mine = copy.deepcopy(pairs)
    items = [item for p in mine for item in one.add(p)]
    assert batched.add_many(pairs) == items
    assert [p.selection for p in pairs] == [p.selection for p in mine]
    assert_same(one.state_dict(), batched.state_dict())


def test_add_many_takes_pairs_with_mislabelled_roles_one_by_one(tmp_path):
    cfg = make_config(tmp_path)
    pairs = random_pairs(11, 50)
    odd = pairs[3].model_copy(update={"noise": ModelOutput(role="reference", model="r", values=[0.25] * 4)})
    with pytest.raises(ValueError, match="'reference' output in the 'noise' column"):
        PairBatch.of([odd])
    one, batched = comparators(cfg)
    stream = [*pairs[:3], odd, *pairs[4:]]
    mine = copy.deepcopy(stream)
    assert batched.add_many(stream) == [item for p in mine for item in one.add(p)]
    assert batched.tally().reference.compared == one.tally().reference.compared  # per the output's role
    assert_same(one.state_dict(), batched.state_dict())


def test_empty_batch_changes_nothing(tmp_path):
    cfg = make_config(tmp_path)
    fresh, batched = comparators(cfg)
    empty = PairBatch.of([])
    result = batched.add_batch(empty)
    assert len(result) == 0 and result.all_items() == []
    assert fresh.state_dict() == batched.state_dict()


@pytest.mark.parametrize("outcome", ["error", "timeout", "nan", "bad_shape"])
def test_a_batch_of_failures_counts_failures_only(tmp_path, outcome):
    cfg = make_config(tmp_path)
    pairs = [
        Pair(
            request_id=f"f{i}",
            ts=0.0,
            features={"brightness": 0.1},
            production=ModelOutput(role="production", model="p", values=[0.7, 0.2, 0.1], latency_s=0.01),
            candidate=ModelOutput(role="candidate", model="c", outcome=outcome, latency_s=2.0),
        )
        for i in range(20)
    ]
    one, _, _, batched, items, _ = feed_both(cfg, pairs, 12)
    t = batched.tally()
    assert t.candidate_outcomes[outcome] == 20 and t.candidate.compared == 0 and items == []
    assert "candidate" not in t.latency_s  # latency is counted for compared pairs only
    assert_same(one.state_dict(), batched.state_dict())


def test_nan_and_inf_outputs_are_counted_as_nan_not_compared(tmp_path):
    cfg = make_config(tmp_path)
    bad = [[math.nan, 0.5, 0.5], [0.2, math.inf, 0.1], [-math.inf, 1.0, 0.0]]
    pairs = [
        Pair(
            request_id=f"n{i}",
            ts=0.0,
            production=ModelOutput(role="production", model="p", values=[0.7, 0.2, 0.1]),
            candidate=ModelOutput(role="candidate", model="c", values=bad[i % 3]),
            noise=ModelOutput(role="noise", model="p", values=bad[(i + 1) % 3]),
        )
        for i in range(9)
    ]
    one, _, _, batched, _, _ = feed_both(cfg, pairs, 13)
    t = batched.tally()
    assert t.candidate_outcomes["nan"] == 9 and t.noise.outcomes["nan"] == 9
    assert t.candidate.compared == 0 and t.noise.compared == 0
    assert_same(one.state_dict(), batched.state_dict())


def test_ties_go_to_the_lowest_class_in_both_paths(tmp_path):
    cfg = make_config(tmp_path)
    prod = [0.4, 0.4, 0.2]
    cands = [[0.4, 0.4, 0.2], [0.3, 0.35, 0.35], [0.35, 0.3, 0.35], [0.2, 0.4, 0.4]]
    pairs = [
        Pair(
            request_id=f"t{i}",
            ts=0.0,
            production=ModelOutput(role="production", model="p", values=prod),
            candidate=ModelOutput(role="candidate", model="c", values=cands[i]),
        )
        for i in range(4)
    ]
    one, _, _, batched, _, _ = feed_both(cfg, pairs, 14)
    assert batched.tally().candidate.classes == {(0, 0): 2, (0, 1): 2}
    assert_same(one.state_dict(), batched.state_dict())


def test_metrics_follow_the_same_counts(tmp_path):
    cfg = make_config(tmp_path)
    pairs = random_pairs(15, 800)
    one, _, _, batched, _, _ = feed_both(cfg, pairs, 15, metrics=True)

    def samples(c: Comparator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        reg = c._metrics.registry
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in reg.collect()
            for s in fam.samples
            if not s.name.endswith("_created")
        }

    a, b = samples(one), samples(batched)
    assert set(a) == set(b)  # the same series: none made for a slice with nothing to count
    for key, value in a.items():
        if key[0].endswith("_sum"):
            assert value == pytest.approx(b[key], rel=1e-9)
        else:
            assert value == b[key], key
    overall = (("candidate", one.candidate_name), ("slice", "overall"))
    assert one.candidate_name and a[("shadowd_pairs_compared_total", overall)] == one.tally().candidate.compared


def test_observe_counts_is_observe_on_each_value():
    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    a, b = ShadowdMetrics(reg_a), ShadowdMetrics(reg_b)
    values = np.random.default_rng(16).random(500) ** 3
    values[:5] = [0.01, 0.05, 1.0, 0.0, 0.3]  # on the bounds
    for v in values:
        a.divergence.labels(candidate="c", slice="x").observe(float(v))
    buckets = np.bincount(np.searchsorted(DIVERGENCE_BOUNDS, values, side="left"), minlength=len(DIVERGENCE_BOUNDS))
    assert observe_counts(b.divergence.labels(candidate="c", slice="x"), buckets.tolist(), float(values.sum()))
    for le in ["0.01", "0.05", "0.1", "0.3", "1.0", "+Inf"]:
        name, labels = "shadowd_pair_divergence_bucket", {"candidate": "c", "slice": "x", "le": le}
        assert reg_a.get_sample_value(name, labels) == reg_b.get_sample_value(name, labels)
    assert reg_b.get_sample_value("shadowd_pair_divergence_sum", {"candidate": "c", "slice": "x"}) == pytest.approx(
        values.sum()
    )
    assert not observe_counts(object(), [1], 1.0)  # a client without those parts: the caller loops


def test_slice_membership_in_columns_equals_row_by_row():
    cfg = make_config(".")
    matcher = SliceMatcher(cfg.slices)
    rng = np.random.default_rng(17)
    features: list[Any] = [_features(rng) for _ in range(2000)]
    features += [{}, {"country": None}, None, "not a mapping"]
    member = matcher.match_batch(features)
    expected = np.array([[name in matcher.match(f) for f in features] for name in matcher.names])
    assert (member == expected).all()
    assert member.any(axis=1).all() and (~member).any(axis=1).all()  # every slice both matches and not
    # Columns of one type (with or without missing values) take the fast paths: the same answers.
    for field in ("brightness", "hour", "country", "tier", "new_user", "user"):
        for kind in {type(f.get(field)) for f in features[:2000]}:
            for with_none in (False, True):
                same = [
                    f for f in features[:2000] if type(f.get(field)) is kind or (with_none and f.get(field) is None)
                ]
                got = matcher.match_batch(same)
                want = np.array([[n in matcher.match(f) for f in same] for n in matcher.names])
                assert (got == want).all(), (field, kind, with_none)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_divergence_in_columns_equals_pair_divergence(task):
    cfg = make_config(".", task).divergence
    pairs = random_pairs(18, 3000, task, 5)
    prod = OutputColumns.of("production", [p.production for p in pairs])
    cand = OutputColumns.of("candidate", [p.candidate for p in pairs])
    ok = (prod.outcomes == OUTCOMES.index("ok")) & (prod.widths > 0)
    outcomes = np.where(ok, cand.outcomes, -1).astype(np.int8)
    div = compare_columns(task, prod.values, prod.widths, outcomes, cand.values, cand.widths, cfg)
    compared = 0
    for i, p in enumerate(pairs):
        if not ok[i] or p.candidate is None:
            assert div.outcome[i] == -1 and not div.compared[i]
            continue
        c = p.candidate
        try:
            d = pair_divergence(task, p.production.values or [], c.values or [], cfg) if c.ok and c.values else None
        except ValueError:
            d = None
        if d is None or not abs(d.score) < 1e150:
            assert not div.compared[i]
            continue
        compared += 1
        assert div.compared[i] and div.score[i] == d.score and div.divergent[i] == d.divergent
        if task == "classification":
            assert div.flip[i] == d.flip
        else:
            assert div.abs_diff[i] == d.abs_diff
    assert compared > 1500


def test_tvd_is_summed_left_to_right_in_both_paths():
    # 0.1 + 0.2 + 0.3 in another order rounds differently; both paths sum in output order.
    prod = [0.6, 0.0, 0.0, 0.4]
    cand = [0.0, 0.1, 0.2, 0.7]
    cfg = make_config(".").divergence
    d = pair_divergence("classification", prod, cand, cfg)
    total = 0.0
    for p, c in zip(prod, cand, strict=True):
        total += abs(p - c)
    assert d.tvd == 0.5 * total
    cols = [
        OutputColumns.of("production", [ModelOutput(role="production", model="m", values=prod)]),
        OutputColumns.of("candidate", [ModelOutput(role="candidate", model="m", values=cand)]),
    ]
    div = compare_columns(
        "classification", cols[0].values, cols[0].widths, cols[1].outcomes, cols[1].values, cols[1].widths, cfg
    )
    assert div.score[0] == d.tvd


def test_bucket_indices_equal_add_on_every_value():
    rng = np.random.default_rng(19)
    edges = LogHistogram.GAMMA ** rng.integers(-900, 300, 2000).astype(float)
    x = np.concatenate([rng.uniform(1e-8, 100, 5000), edges, np.nextafter(edges, 0), np.nextafter(edges, 2 * edges)])
    x = x[x > LogHistogram.MIN_VALUE]
    got = LogHistogram.bucket_indices(x)
    for v, i in zip(x.tolist(), got.tolist(), strict=True):
        h = LogHistogram()
        h.add(v)
        assert h.counts == {i: 1}, v


def test_bucket_indices_place_values_by_math_log_near_an_edge(monkeypatch):
    """numpy's log may be a bit off from math.log; near a bucket edge that bit decides, so math.log does."""
    edges = LogHistogram.GAMMA ** np.arange(-500, 200).astype(float)
    want = LogHistogram.bucket_indices(edges)
    real_log = np.log
    monkeypatch.setattr(np, "log", lambda x: np.nextafter(real_log(x), np.inf))  # one bit high everywhere
    assert (LogHistogram.bucket_indices(edges) == want).all()


def test_log_histogram_dense_counts_merge_and_round_trip():
    a, b = LogHistogram(), LogHistogram()
    for v in [0.0, 1e-3, 1e-3, 5.0, 1e-8]:
        a.add(v)
    for v in [1e4, 1e-3, 0.0]:
        b.add(v)
    a.merge(b)
    assert a.n == 8 and a.zero == 2 and sum(a.counts.values()) == 6
    back = LogHistogram.from_dict(a.to_dict())
    assert back.to_dict() == a.to_dict() and back.cumulative() == a.cumulative()
    assert a.quantile(0.0001) == 0.0 and a.quantile(1.0) == pytest.approx(1e4, rel=0.01)
    c = LogHistogram()
    c.add_counts(1, np.array([5, -3]), np.array([2, 1]))
    assert c.counts == {-3: 1, 5: 2} and c.n == 4 and c.zero == 1


# --- the report: evidence kept between reads while a slice's tally is unchanged ---


def test_report_with_kept_evidence_equals_a_fresh_report_after_every_change(tmp_path):
    """Each read equals the gate computed from scratch on the same tallies, whatever changed in between."""
    from shadowd.compare.gate import evaluate_gate

    cfg = make_config(tmp_path)
    clock = Clock()
    comp = Comparator(cfg, clock=clock, seed=7)
    pairs = random_pairs(30, 2400)
    rng = np.random.default_rng(31)
    stored: list[Pair] = []

    def read_and_check() -> None:
        kept = comp.report()
        elapsed = clock() - comp.window_started_ts
        checks, gate = evaluate_gate(
            cfg, {n: comp.tally(n) for n in ["overall", *[s.name for s in cfg.slices]]}, elapsed
        )
        assert kept.checks == checks and kept.gate == gate

    steps = ["batch", "read", "read", "labels", "read", "exclude", "read", "batch", "time", "read", "merge", "read"]
    steps += ["review", "batch", "read", "reset", "read", "batch", "read"]
    cursor = 0
    for step in steps:
        if step == "batch":
            batch = PairBatch.of(pairs[cursor : cursor + 400])
            result = comp.add_batch(batch)
            stored += [batch.pair(i, result.selection(i)) for i in range(len(batch))]
            cursor += 400
        elif step == "labels":
            for p in stored[:: max(1, len(stored) // 150)]:
                if p.selection is not None:
                    comp.add_labelled(p, Label(request_id=p.request_id, label=int(rng.integers(4)), ts=0.0), "feedback")
        elif step == "exclude":
            comp.exclude_label(stored[0], "skipped by the annotator")
        elif step == "time":
            clock.t += 3600.0  # only the "when" of the needs changes
        elif step == "merge":
            other = Comparator(cfg, clock=clock, seed=8)
            other.add_many(pairs[cursor : cursor + 300])
            comp.merge(other.state_dict())
        elif step == "review":
            comp.set_review_slices(["dark"])
        elif step == "reset":
            comp.reset()
        else:
            read_and_check()


def test_unchanged_slices_reuse_their_evidence(tmp_path):
    cfg = make_config(tmp_path)
    comp = Comparator(cfg, clock=Clock(), seed=7)
    comp.add_many(random_pairs(32, 1500))
    comp.report()
    memo = comp._memo
    tests = len(memo.tests)
    hits, misses = memo.hits, memo.misses
    comp.report()  # nothing changed: every test from the memo
    assert (memo.hits - hits, memo.misses - misses) == (tests, 0)
    lone = Pair(
        request_id="lone", ts=0.0, features={}, production=ModelOutput(role="production", model="p", values=[1.0])
    )
    assert SliceMatcher(cfg.slices).match(lone.features) == ["anon"]  # a pair in overall and one slice
    comp.exclude_label(lone, "skipped by the annotator")
    hits, misses = memo.hits, memo.misses
    comp.report()
    changed = sum(name in ("overall", "anon") for _, name in memo.tests)
    assert 0 < changed < tests / 3
    assert memo.misses - misses == changed  # overall and anon computed again, the rest kept
    assert memo.hits - hits == tests - changed

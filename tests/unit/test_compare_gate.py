"""Checks and the gate on controlled tallies, plus the stochastic-model test on a real torch model.

Tallies are filled with chosen counts so that every expected status follows
from the numbers by hand (rates far from, at, or near the thresholds).
"""

import copy

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from shadowd.compare import stats
from shadowd.compare.checks import more_needed
from shadowd.compare.comparator import Comparator
from shadowd.compare.gate import check_context, evaluate_checks, evaluate_gate
from shadowd.compare.tally import Moments, SliceTally
from shadowd.config import parse_config
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import ModelOutput, Pair
from shadowd.serving.hub import publish_gate


def config(tmp_path, checks, slices=(), task="classification", candidate=True, **gate):
    out = "probabilities" if task == "classification" else "values"
    m = {"kind": "python", "target": "m:f", "input_shape": [4], "output": out}
    models = {"production": {"name": "prod", **m}}
    if candidate:
        models["candidate"] = {"name": "cand", **m}
    return parse_config(
        {
            "task": task,
            "data_dir": str(tmp_path),
            "models": models,
            "slices": [{"name": s, "where": {"field": "s", "op": "eq", "value": s}} for s in slices],
            "checks": checks,
            "gate": gate,
        }
    )


def flips_tally(n, flips, noise_n=0, noise_flips=0):
    t = SliceTally()
    t.pairs = n
    t.candidate_outcomes["ok"] = n
    t.candidate.compared, t.candidate.flips = n, flips
    t.candidate.classes = {(0, 0): n - flips, (0, 1): flips} if flips else {(0, 0): n}
    t.noise.compared, t.noise.flips = noise_n, noise_flips
    return t


def scores_tally(mean, sd, n, noise_mean=None, noise_n=0):
    t = SliceTally()
    t.candidate.compared = n
    t.candidate.score = Moments(n, mean, sd * sd * (n - 1))
    if noise_mean is not None:
        t.noise.compared = noise_n
        t.noise.score = Moments(noise_n, noise_mean, sd * sd * (noise_n - 1))
    return t


FLIP = {"type": "flip_rate", "name": "flip_rate"}
GATING_FLIP = {**FLIP, "required": True}  # a divergence check made to gate: beyond the floor it FAILs


def quality_tally(flip_pairs, agree_pairs, d_values=(), share=0.2, loss=None):
    """A slice's quality cells: ``flip_pairs`` flipped pairs (drawn with ``share``) whose labels gave the
    accuracy differences ``d_values`` (1: production right, -1: candidate right, 0: neither), and
    ``agree_pairs`` agreeing pairs. ``loss``: {stratum: [loss differences]} for the loss check."""
    t = SliceTally()
    t.candidate.compared = flip_pairs + agree_pairs
    t.candidate.flips = flip_pairs
    flip = t.quality.cell("flip", share)
    flip.pairs = flip_pairs
    for d in d_values:
        flip.accuracy.add(float(d))
    t.quality.cell("agree", 0.0).pairs = agree_pairs
    for stratum, diffs in (loss or {}).items():
        cell = t.quality.cell(stratum, share if stratum != "agree" else 0.0)
        for x in diffs:
            cell.loss.add(float(x))
    t.quality.used["evaluation"] = len(d_values) + sum(len(v) for v in (loss or {}).values())
    return t


def only(results, check=None, slice_="overall"):
    (r,) = [r for r in results if r.slice == slice_ and (check is None or r.check == check)]
    return r


def test_flip_rate_far_above_asks_for_review_far_below_passes(tmp_path):
    cfg = config(tmp_path, [FLIP])
    r = only(evaluate_checks(cfg, {"overall": flips_tally(1000, 200)}))
    assert (r.status, r.value, r.threshold, r.n, r.role) == ("review", 0.2, 0.05, 1000, "divergence")
    assert r.ci[0] > 0.05 and r.p_value < 1e-6 and "different here, label these" in r.reason
    r = only(evaluate_checks(cfg, {"overall": flips_tally(2000, 10)}))
    assert r.status == "pass" and r.ci[1] <= 0.05 and r.p_value == 1.0
    # made to gate (required), the same evidence FAILs
    assert only(evaluate_checks(config(tmp_path, [GATING_FLIP]), {"overall": flips_tally(1000, 200)})).status == "fail"


def test_minimum_sample_holds_the_verdict(tmp_path):
    r = only(evaluate_checks(config(tmp_path, [FLIP]), {"overall": flips_tally(150, 150)}))
    assert r.status == "inconclusive" and r.needed == 50
    assert r.reason.startswith("150 of 200 pairs needed")


def test_needs_more_is_about_what_would_decide(tmp_path):
    cfg = config(tmp_path, [FLIP])
    t = flips_tally(300, 17)  # 0.057 against 0.05: undecided
    r = only(evaluate_checks(cfg, {"overall": t}))
    assert r.status == "inconclusive" and r.needed and r.needed > 300
    assert f"needs ~{r.needed} more pairs" in r.reason
    ev = cfg.checks[0].evidence(t, check_context(cfg))
    enough = (300 + r.needed) / 300
    assert ev.passes(0.05, enough * 1.03) or ev.fails(0.05, enough * 1.03)
    assert not (ev.passes(0.05, enough * 0.9) or ev.fails(0.05, enough * 0.9))
    assert more_needed(ev, 0.05) == r.needed


def test_noise_floor_turns_a_stochastic_production_fail_into_pass(tmp_path):
    t = flips_tally(
        4000, 400, noise_n=4000, noise_flips=400
    )  # candidate flips exactly as often as production with itself
    with_floor = only(evaluate_checks(config(tmp_path, [FLIP]), {"overall": t}))
    assert with_floor.status == "pass"
    assert with_floor.noise_floor == 0.1 and with_floor.threshold == pytest.approx(0.15)  # max(0.1*1.5, 0.1+0.05)
    without = only(evaluate_checks(config(tmp_path, [FLIP], noise_floor=False), {"overall": t}))
    assert without.status == "review" and without.noise_floor is None and without.threshold == 0.05


def test_noise_floor_needs_both_margins(tmp_path):
    # floor 0.02: relative margin gives 0.03, absolute gives 0.07 -> allowed 0.07
    chk = [{**FLIP, "abs_margin": 0.05, "rel_margin": 0.5}]
    r = only(evaluate_checks(config(tmp_path, chk), {"overall": flips_tally(20000, 1000, 20000, 400)}))
    assert r.threshold == pytest.approx(0.07) and r.status == "pass"  # 0.05 beats the relative margin only
    # floor 0.2: absolute gives 0.25, relative gives 0.3 -> allowed 0.3
    r = only(evaluate_checks(config(tmp_path, chk), {"overall": flips_tally(50000, 13500, 50000, 10000)}))
    assert r.threshold == pytest.approx(0.3) and r.status == "pass"  # 0.27 beats the absolute margin only
    r = only(evaluate_checks(config(tmp_path, chk), {"overall": flips_tally(20000, 7000, 20000, 4000)}))
    assert r.status == "review"  # 0.35 beats both


def test_mean_divergence_against_floor(tmp_path):
    chk = [{"type": "mean_divergence", "name": "div"}]
    cfg = config(tmp_path, chk)
    assert only(evaluate_checks(cfg, {"overall": scores_tally(0.3, 0.2, 2000)})).status == "review"
    assert only(evaluate_checks(cfg, {"overall": scores_tally(0.01, 0.02, 2000)})).status == "pass"
    noisy = scores_tally(0.3, 0.2, 2000, noise_mean=0.3, noise_n=2000)
    r = only(evaluate_checks(cfg, {"overall": noisy}))
    assert r.status == "pass" and r.threshold == pytest.approx(0.45)


def test_failure_rate_p_value_is_the_closed_form(tmp_path):
    cfg = config(tmp_path, [{"type": "candidate_failure_rate", "name": "errors", "max_rate": 0.01}])
    t = SliceTally()
    t.candidate_outcomes.update(ok=970, error=25, nan=5, timeout=40)  # timeouts are not counted here
    r = only(evaluate_checks(cfg, {"overall": t}))
    assert r.value == pytest.approx(30 / 1040) and r.n == 1040
    assert r.p_value == pytest.approx(stats.proportion_p_above(30, 1040, 0.01), rel=1e-3)
    assert r.status == "fail"


def test_paired_accuracy_is_the_flip_rate_times_the_drop_on_flipped_pairs(tmp_path):
    cfg = config(tmp_path, [{"type": "paired_accuracy", "name": "acc", "min_samples": 30}])
    # 150 flips in 1000 pairs; on 60 labelled flips production was right 45 times, the candidate 5
    d = [1] * 45 + [-1] * 5 + [0] * 10
    r = only(evaluate_checks(cfg, {"overall": quality_tally(150, 850, d)}))
    assert r.value == pytest.approx(0.15 * np.mean(d)) and r.unit == "labels" and r.n == 60
    assert r.status == "fail" and r.ci[0] > 0.01 and r.role == "quality"
    assert r.extra["flip_rate"] == 0.15 and r.extra["drop_given_flip"] == pytest.approx(np.mean(d))
    # as often right as production on the flips: the drop is ~0, within the margin once enough are labelled
    even = [1] * 300 + [-1] * 300 + [0] * 200
    r = only(evaluate_checks(cfg, {"overall": quality_tally(100, 9900, even)}))
    assert r.status == "pass" and r.ci[1] <= 0.01


def test_accuracy_needs_no_labels_where_flips_are_too_rare_to_move_it(tmp_path):
    cfg = config(tmp_path, [{"type": "paired_accuracy", "name": "acc"}])
    # 5 flips in 20000 pairs: even if the candidate were wrong on every one, accuracy drops < 0.1 %
    r = only(evaluate_checks(cfg, {"overall": quality_tally(5, 19995)}))
    assert r.status == "pass" and r.n == 0 and r.ci[1] <= 0.01
    # 300 flips in 2000 and no labels: the worst case is a 15-point drop, so it cannot decide
    r = only(evaluate_checks(cfg, {"overall": quality_tally(300, 1700)}))
    assert r.status == "inconclusive" and "no usable labels yet on overall" in r.reason


def test_a_cell_below_its_minimum_labels_counts_as_the_worst_case(tmp_path):
    few = [1, -1] * 10  # 20 labels: mean 0, yet below min_samples 30 the cell is taken as [-1, 1]
    cfg = config(tmp_path, [{"type": "paired_accuracy", "name": "acc", "min_samples": 30}])
    r = only(evaluate_checks(cfg, {"overall": quality_tally(200, 800, few)}))
    assert r.ci[0] < -0.15 and r.ci[1] > 0.15 and r.status == "inconclusive"


def test_paired_loss_is_stratified_over_every_stratum(tmp_path):
    cfg = config(tmp_path, [{"type": "paired_loss", "name": "loss", "max_increase": 0.02, "min_samples": 30}])
    rng = np.random.default_rng(0)
    worse = {"flip": rng.normal(0.8, 0.5, 200), "agree": rng.normal(0.05, 0.05, 300)}
    r = only(evaluate_checks(cfg, {"overall": quality_tally(200, 800, loss=worse)}))
    expected = 0.2 * np.mean(worse["flip"]) + 0.8 * np.mean(worse["agree"])
    assert r.status == "fail" and r.value == pytest.approx(expected)
    # no labels on the agreeing pairs: classification losses are bounded, so it is wide, never wrong
    only_flips = {"flip": rng.normal(0.0, 0.1, 200)}
    r = only(evaluate_checks(cfg, {"overall": quality_tally(200, 800, loss=only_flips)}))
    assert r.status == "inconclusive" and r.ci[1] > 1.0


def test_distribution_shift(tmp_path):
    cfg = config(tmp_path, [{"type": "distribution_shift", "name": "shift"}])
    t = SliceTally()
    # candidate moves 15 % of class-0 predictions to class 1, nothing back
    t.candidate.classes = {(0, 0): 850, (0, 1): 150, (1, 1): 1000}
    r = only(evaluate_checks(cfg, {"overall": t}))
    assert r.value == pytest.approx(0.075) and r.status == "review" and r.extra["worst_class"] in (0, 1)
    # as many swaps each way: shares unchanged although 20 % of pairs flip
    t.candidate.classes = {(0, 0): 4000, (0, 1): 1000, (1, 0): 1000, (1, 1): 4000}
    r = only(evaluate_checks(cfg, {"overall": t}))
    assert r.value == 0 and r.status == "pass"


def test_latency_ratio(tmp_path):
    cfg = config(tmp_path, [{"type": "latency_ratio", "name": "p50", "quantile": 0.5, "max_ratio": 1.5}])
    rng = np.random.default_rng(1)

    def tally(factor):
        t = SliceTally()
        for x in rng.lognormal(-5, 0.3, 3000):
            t.add_latency("production", float(x))
            t.add_latency("candidate", float(x * factor))
        return t

    slow = only(evaluate_checks(cfg, {"overall": tally(3.0)}))
    assert slow.status == "fail" and slow.value == pytest.approx(3.0, rel=0.05)
    same = only(evaluate_checks(cfg, {"overall": tally(1.0)}))
    assert same.status == "pass" and same.ci[0] <= 1.0 <= same.ci[1] * 1.02


def test_holm_runs_over_every_slice_and_check(tmp_path):
    cfg = config(tmp_path, [FLIP, {"type": "mean_divergence", "name": "div"}], slices=["a", "b"])
    tallies = {"overall": flips_tally(1000, 80), "a": flips_tally(500, 45), "b": flips_tally(300, 3)}
    results = evaluate_checks(cfg, tallies)
    assert len(results) == 6  # 2 checks x (overall, a, b), including ones short of data
    assert [r.p_adjusted for r in results] == pytest.approx(stats.adjust_p_values([r.p_value for r in results], "holm"))
    bonf = evaluate_checks(config(tmp_path, [FLIP], slices=["a", "b"], correction="bonferroni"), tallies)
    assert [r.p_adjusted for r in bonf] == pytest.approx([min(1, 3 * r.p_value) for r in bonf])


def test_gate_verdicts_and_reasons(tmp_path):
    acc = {"type": "paired_accuracy", "name": "acc", "max_drop": 0.05}
    errors = {"type": "candidate_failure_rate", "name": "errors", "max_rate": 0.01}
    cfg = config(tmp_path, [FLIP, acc, errors], slices=["dark"])

    def tallies(dark: SliceTally, overall: SliceTally | None = None, errors_on_dark: int = 0):
        overall = overall or quality_tally(3, 2997)
        for t in (overall, dark):
            t.candidate_outcomes["ok"] = t.candidate.compared
        dark.candidate_outcomes["error"] = errors_on_dark
        return {"overall": overall, "dark": dark}

    hour = 3600.0
    # dark flips far beyond the (absent) floor and nothing is labelled there yet: REVIEW, with what it needs
    _, gate = evaluate_gate(cfg, tallies(quality_tally(200, 600, [1, 0] * 10)), elapsed_s=hour)
    assert gate.verdict == "REVIEW" and gate.review_slices == ["dark"]
    assert gate.reasons[0].startswith("flip_rate on dark: flip rate 0.25") and "label these" in gate.reasons[0]
    (need,) = gate.needs
    assert (need.check, need.slice, need.unit) == ("acc", "dark", "labels")
    assert need.more and need.eta_h and need.rate_per_h == pytest.approx(20.0)  # 20 labels in the hour
    assert f"needs ~{need.more} more labels" in gate.reasons[-1] and "at 20 labels/h" in gate.reasons[-1]
    # labels show the difference is not worse: the review is resolved and the gate passes
    even = [1] * 100 + [-1] * 100 + [0] * 200
    results, gate = evaluate_gate(cfg, tallies(quality_tally(400, 1200, even)), elapsed_s=hour)
    assert gate.verdict == "PASS", gate.reasons
    flip_dark = only(results, "flip_rate", "dark")
    assert flip_dark.status == "review" and flip_dark.resolved and "not worse" in flip_dark.reason
    # labels show it is worse: FAIL, decided by the quality check
    worse = [1] * 300 + [-1] * 20 + [0] * 80
    _, gate = evaluate_gate(cfg, tallies(quality_tally(400, 1200, worse)), elapsed_s=hour)
    assert gate.verdict == "FAIL" and gate.reasons[0].startswith("acc on dark: accuracy drop")
    # a broken candidate FAILs whatever the labels say
    _, gate = evaluate_gate(cfg, tallies(quality_tally(2, 798), errors_on_dark=100), elapsed_s=hour)
    assert gate.verdict == "FAIL" and gate.reasons[0].startswith("errors on dark")
    # too few pairs for the divergence check's minimum, no labels: INCONCLUSIVE, saying so
    _, gate = evaluate_gate(cfg, tallies(quality_tally(30, 90)), elapsed_s=hour)
    assert gate.verdict == "INCONCLUSIVE" and any("no usable labels yet on dark" in r for r in gate.reasons)
    assert "holm" in gate.method and gate.correction == "holm"
    _, gate = evaluate_gate(config(tmp_path, [FLIP], candidate=False), {"overall": SliceTally()})
    assert gate.verdict == "INCONCLUSIVE" and "no candidate" in gate.reasons[0]


def test_a_gate_with_no_required_check_never_passes(tmp_path):
    """Only optional checks, all passing: nothing the gate requires decided, so no PASS (a promotion gate
    reading it would let a candidate through before any check counted)."""
    evidence = {"overall": flips_tally(2000, 10)}
    _, gate = evaluate_gate(config(tmp_path, [FLIP]), evidence)
    assert gate.verdict == "INCONCLUSIVE" and "no required check has passed" in gate.reasons[0]
    _, gate = evaluate_gate(config(tmp_path, [GATING_FLIP]), evidence)  # the same evidence, the check required
    assert gate.verdict == "PASS", gate.reasons


def test_a_margin_no_amount_of_data_decides_in_time_says_so(tmp_path):
    cfg = config(tmp_path, [{"type": "paired_accuracy", "name": "acc", "max_drop": 0.01}])
    # a drop of exactly the margin (5 % flips, production right 20 points more often on them) after a week
    at_margin = [1] * 700 + [-1] * 300 + [0] * 1000
    r = only(evaluate_checks(cfg, {"overall": quality_tally(5000, 95000, at_margin)}, elapsed_s=7 * 86400))
    assert r.status == "inconclusive"
    assert "cannot be decided within" in r.reason or "more data at these rates will hardly decide" in r.reason
    assert "530091" not in r.reason


def test_review_only_checks_are_their_own_family(tmp_path):
    """Divergence checks that cannot FAIL do not dilute the alpha of the ones that can."""
    cfg = config(tmp_path, [FLIP, {"type": "candidate_failure_rate", "name": "errors"}], slices=["a", "b"])
    t = flips_tally(1000, 80)
    t.candidate_outcomes["error"] = 30
    results = evaluate_checks(cfg, {"overall": t, "a": flips_tally(500, 45), "b": flips_tally(300, 3)})
    for family in ("divergence", "operational"):
        fam = [r for r in results if r.role == family]
        assert len(fam) == 3
        assert [r.p_adjusted for r in fam] == pytest.approx(stats.adjust_p_values([r.p_value for r in fam], "holm"))


def test_regression_skips_classification_checks(tmp_path):
    cfg = config(tmp_path, [], task="regression")
    cfg = cfg.model_copy(
        update={
            "checks": parse_config(
                {
                    "task": "regression",
                    "models": {
                        "production": {
                            "name": "p",
                            "kind": "python",
                            "target": "m:f",
                            "input_shape": [1],
                            "output": "values",
                        }
                    },
                }
            ).checks
        }
    )
    results = evaluate_checks(cfg, {"overall": scores_tally(0.01, 0.01, 500)})
    assert {r.type for r in results} == {"mean_divergence", "candidate_failure_rate", "latency_ratio", "paired_loss"}


def test_gate_metrics(tmp_path):
    reg = CollectorRegistry()
    cfg = config(tmp_path, [FLIP], slices=["dark"])
    tallies = {"overall": flips_tally(3000, 30, 1000, 5), "dark": flips_tally(800, 200)}
    comp = Comparator(cfg)
    comp.load_state({**comp.state_dict(), "slices": {n: t.to_dict() for n, t in tallies.items()}})
    publish_gate(ShadowdMetrics(reg), comp.report())
    cand = {"candidate": comp.candidate_name}
    assert reg.get_sample_value("shadowd_check_status", {**cand, "check": "flip_rate", "slice": "overall"}) == 0
    assert reg.get_sample_value("shadowd_check_status", {**cand, "check": "flip_rate", "slice": "dark"}) == 3  # review
    assert reg.get_sample_value("shadowd_gate_verdict", cand) == 3  # REVIEW
    assert reg.get_sample_value("shadowd_noise_floor", {**cand, "slice": "overall"}) == pytest.approx(0.005)


def test_report_is_json_with_checks_and_survives_a_restart(tmp_path):
    import json

    cfg = config(tmp_path, [FLIP])
    comp = Comparator(cfg)
    rng = np.random.default_rng(3)
    for i in range(400):
        p = rng.dirichlet(np.ones(3))
        q = p if rng.random() < 0.7 else rng.dirichlet(np.ones(3))
        comp.add(
            Pair(
                request_id=str(i),
                ts=0,
                production=ModelOutput(role="production", model="p", values=p.tolist()),
                candidate=ModelOutput(role="candidate", model="c", values=q.tolist()),
            )
        )
    rep = comp.report().to_json()
    json.dumps(rep, allow_nan=False)
    assert rep["checks"][0]["check"] == "flip_rate" and rep["checks"][0]["status"] == "review"
    comp.save()
    again = Comparator(cfg)
    assert again.load()
    assert again.report().to_json()["checks"] == rep["checks"]


# --- the stochastic-model test: dropout left on at inference ---


def _dropout_pairs(n_repeats=2, seed=0):
    """Production = a small torch MLP trained on scikit-learn's digits, dropout active at inference;
    candidate = an identical copy; noise = production run again. Every pair gets a noise run."""
    import torch
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    candidate = copy.deepcopy(model)
    model.train(), candidate.train()  # dropout stays on: a stochastic model
    inputs = x.repeat(n_repeats, 1)
    with torch.no_grad():
        prod, cand, noise = (torch.softmax(m(inputs), dim=1).tolist() for m in (model, candidate, model))
    return [
        Pair(
            request_id=str(i),
            ts=0.0,
            production=ModelOutput(role="production", model="prod", values=prod[i], latency_s=0.001),
            candidate=ModelOutput(role="candidate", model="cand", values=cand[i], latency_s=0.001),
            noise=ModelOutput(role="noise", model="prod", values=noise[i], latency_s=0.001),
        )
        for i in range(len(prod))
    ]


def test_stochastic_model_passes_with_noise_floor_and_is_flagged_without(tmp_path):
    pairs = _dropout_pairs()
    checks = [
        FLIP,
        {"type": "mean_divergence", "name": "mean_divergence"},
        {"type": "distribution_shift", "name": "distribution_shift"},
        {"type": "candidate_failure_rate", "name": "error_rate"},
    ]
    verdicts = {}
    for floor in (True, False):
        comp = Comparator(config(tmp_path, checks, noise_floor=floor))
        comp.add_many(pairs)
        rep = comp.report().to_json()
        verdicts[floor] = rep["gate"]["verdict"]
        flip = next(c for c in rep["checks"] if c["check"] == "flip_rate")
        assert flip["value"] > 0.05  # dropout makes production disagree with itself well past the margin
    assert verdicts == {True: "PASS", False: "REVIEW"}  # without the floor it differs: review, not FAIL


def test_reported_interval_agrees_with_the_status(tmp_path):
    """A PASS has its whole interval within the allowed value, a FAIL or REVIEW has it wholly above."""
    cfg = config(
        tmp_path,
        [
            FLIP,
            {"type": "mean_divergence", "name": "div"},
            {"type": "distribution_shift", "name": "shift"},
            {"type": "candidate_failure_rate", "name": "errors"},
        ],
    )
    rng = np.random.default_rng(4)
    seen = set()
    for _ in range(40):
        n = int(rng.integers(200, 5000))
        t = flips_tally(
            n,
            int(rng.binomial(n, rng.uniform(0, 0.2))),
            noise_n=n // 4,
            noise_flips=int(rng.binomial(n // 4, rng.uniform(0, 0.1))),
        )
        t.candidate.score = Moments(n, float(rng.uniform(0, 0.2)), 0.01 * (n - 1))
        t.noise.score = Moments(n // 4, float(rng.uniform(0, 0.1)), 0.01 * (n // 4 - 1))
        t.candidate_outcomes["error"] = int(rng.binomial(n, rng.uniform(0, 0.03)))
        for r in evaluate_checks(cfg, {"overall": t}):
            seen.add(r.status)
            if r.status == "pass":
                assert r.ci[1] <= r.threshold, r
            elif r.status in ("fail", "review"):
                assert r.ci[0] > r.threshold, r
    assert seen == {"pass", "fail", "review", "inconclusive"}

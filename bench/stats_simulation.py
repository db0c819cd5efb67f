"""Simulated shadow runs: does the gate keep false alarms at or below alpha, and how soon does it catch
a real regression, with how many labels?

Many shadow tests, each fed batch by batch and judged after every batch (as a
dashboard or CI job polling ``/shadow/report`` would), through the real
comparator code: per-batch tallies merged exactly as comparator replicas
merge, then ``evaluate_checks`` with the config's checks and Holm correction.

Traffic model (per request): three slices (a 50 %, b 30 %, dark 20 %), ten
classes. A model's answer is a draw that is right with probability 0.9 and
otherwise a uniformly wrong class. Production answers the request's draw;
a retrain answers the same draw, except on a share ``churn`` of requests
where it answers a fresh, independent draw of the same accuracy, so it
disagrees with production on about 7 % of requests without being worse
anywhere (the benign retrain). The noise replica is production with a 1 %
fresh share; the reference model is another retrain (the churn floor). A
regression adds wrong answers for the candidate on dark only.

Labels: random feedback on a share of all requests; the evaluation sample
(flipped or divergent pairs drawn with a known share, all labelled by the
annotators); and, in the "queue only" scenarios, annotators' labels of the
priority-ordered review lane (divergent pairs), which v2 counts as excluded
and the v1 rule (a plain paired mean over every label, reproduced below for
comparison) counts in.

Usage (a few minutes on 2 cores):

    .venv/bin/python bench/stats_simulation.py            # print the tables
    .venv/bin/python bench/stats_simulation.py --write    # and update bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
import time
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shadowd.compare import stats  # noqa: E402
from shadowd.compare.gate import evaluate_checks  # noqa: E402
from shadowd.compare.tally import LogHistogram, Moments, SliceTally  # noqa: E402
from shadowd.config import ShadowdConfig, parse_config  # noqa: E402

SLICES = {"a": 0.5, "b": 0.3, "dark": 0.2}
NAMES = list(SLICES)
ALL = ["overall", *NAMES]
K = 10
ACCURACY = 0.9
CHURN = 0.37  # fresh-draw share of a retrain: ~7 % flips against production
NOISE_CHURN = 0.01
NOISE_SHARE = REFERENCE_SHARE = 0.2
ERROR_RATE = TIMEOUT_RATE = 0.002
BATCH = 1000
LOOKS = 20
ALPHA = 0.05


@dataclass(frozen=True)
class Scenario:
    name: str
    churn: float = CHURN  # the candidate's fresh-draw share: CHURN for a retrain, NOISE_CHURN for a twin
    regression: float = 0.0  # extra wrong-answer share of the candidate on dark
    within_margin: float = 0.0  # extra wrong-answer share on every slice (a candidate still within the margin)
    reference: bool = False
    feedback_share: float = 0.0  # random feedback on this share of requests
    evaluation_share: float = 0.0  # share of disagreements drawn into the evaluation lane (all labelled)
    queue_share: float = 0.0  # share of the review lane's divergent items annotators label (not random)
    checks: list[dict[str, Any]] = field(default_factory=list)
    batch: int = BATCH
    looks: int = LOOKS


def make_config(s: Scenario) -> ShadowdConfig:
    raw: dict[str, Any] = {
        "task": "classification",
        "models": {
            "production": {"name": "prod", "kind": "python", "target": "m:p", "input_shape": [1]},
            "candidate": {"name": "cand", "kind": "python", "target": "m:c", "input_shape": [1]},
        },
        "slices": [{"name": n, "where": {"field": "segment", "op": "eq", "value": n}} for n in NAMES],
        "annotations": {"evaluation": {"share": s.evaluation_share, "review_share": s.evaluation_share}},
        "gate": {"alpha": ALPHA},
    }
    if s.checks:
        raw["checks"] = s.checks
    return parse_config(raw, "simulation")


def _moments(x: np.ndarray) -> Moments:
    if x.size == 0:
        return Moments()
    mean = float(x.mean())
    return Moments(int(x.size), mean, float(((x - mean) ** 2).sum()))


def _histogram(x: np.ndarray) -> LogHistogram:
    h = LogHistogram()
    h.n = int(x.size)
    idx = np.ceil(np.log(x) / math.log(LogHistogram.GAMMA)).astype(int)
    keys, counts = np.unique(idx, return_counts=True)
    h.counts = dict(zip(keys.tolist(), counts.tolist(), strict=True))
    return h


def _floor(t: Any, mask: np.ndarray, flip: np.ndarray, tvd: np.ndarray) -> None:
    t.compared = int(mask.sum())
    t.flips = int(flip[mask].sum())
    t.divergent = int((flip[mask] | (tvd[mask] > 0.3)).sum())
    t.score = _moments(tvd[mask])
    if hasattr(t, "outcomes"):  # noise and reference count their outcomes too
        t.outcomes["ok"] = t.compared


def _tally(m: np.ndarray, d: dict[str, np.ndarray], share: float) -> SliceTally:
    """One batch's tally for the requests in mask ``m`` (the fields the comparator fills)."""
    t = SliceTally()
    t.pairs = int(m.sum())
    out = d["outcome"][m]
    t.candidate_outcomes.update(ok=int((out == 0).sum()), error=int((out == 1).sum()), timeout=int((out == 2).sum()))
    ok = m & (d["outcome"] == 0)
    _floor(t.candidate, ok, d["flip"], d["tvd"])
    keys, counts = np.unique(d["prod"][ok] * K + d["cand"][ok], return_counts=True)
    t.candidate.classes = {(int(k) // K, int(k) % K): int(c) for k, c in zip(keys, counts, strict=True)}
    _floor(t.noise, m & d["has_noise"], d["noise_flip"], d["noise_tvd"])
    if d["has_reference"].any():
        _floor(t.reference, m & d["has_reference"], d["ref_flip"], d["ref_tvd"])
    t.latency_s = {"production": _histogram(d["lat_prod"][m]), "candidate": _histogram(d["lat_cand"][ok])}
    for stratum in ("flip", "divergent", "agree"):
        sm = ok & (d["stratum"] == stratum)
        cell = t.quality.cell(stratum, share if stratum != "agree" else 0.0)
        cell.pairs = int(sm.sum())
        lm = sm & d["usable"]
        cell.accuracy = _moments(d["acc_diff"][lm])
        cell.loss = _moments(d["loss_diff"][lm])
    t.quality.used["labels"] = int((ok & d["usable"]).sum())
    # The v1 rule's evidence: every label, however chosen, into one plain paired mean.
    lm = ok & d["any_label"]
    t.labels.labels = int(lm.sum())
    pc, cc = d["prod_right"][lm], d["cand_right"][lm]
    t.labels.both_correct, t.labels.prod_only_correct = int((pc & cc).sum()), int((pc & ~cc).sum())
    t.labels.cand_only_correct, t.labels.neither_correct = int((~pc & cc).sum()), int((~pc & ~cc).sum())
    return t


def _batch(rng: np.random.Generator, s: Scenario) -> dict[str, SliceTally]:
    n = s.batch
    seg = rng.choice(len(NAMES), n, p=list(SLICES.values()))
    y = rng.integers(0, K, n)

    def draw() -> np.ndarray:
        return np.where(rng.random(n) < ACCURACY, y, (y + rng.integers(1, K, n)) % K)

    def retrain(of: np.ndarray, churn: float) -> np.ndarray:
        return np.where(rng.random(n) < churn, draw(), of)

    base = draw()
    prod, cand = base, retrain(base, s.churn)
    worse = s.within_margin + np.where(seg == NAMES.index("dark"), s.regression, 0.0)
    cand = np.where(rng.random(n) < worse, (y + rng.integers(1, K, n)) % K, cand)
    noise, ref = retrain(base, NOISE_CHURN), retrain(base, CHURN)

    def tvd(flip: np.ndarray) -> np.ndarray:
        return np.where(flip, rng.uniform(0.3, 0.8, n), rng.beta(1, 30, n))

    def loss(pred: np.ndarray) -> np.ndarray:
        return np.where(pred == y, rng.exponential(0.1, n), 2 + rng.exponential(1.0, n))

    u = rng.random(n)
    flip = cand != prod
    cand_tvd = tvd(flip)
    divergent = flip | (cand_tvd > 0.3)
    stratum = np.where(flip, "flip", np.where(divergent, "divergent", "agree"))
    feedback = rng.random(n) < s.feedback_share
    evaluation = divergent & (rng.random(n) < s.evaluation_share)
    queue = divergent & ~evaluation & (rng.random(n) < s.queue_share)
    d = {
        "prod": prod,
        "cand": cand,
        "flip": flip,
        "tvd": cand_tvd,
        "stratum": stratum,
        "noise_flip": noise != prod,
        "ref_flip": ref != prod,
        "has_noise": rng.random(n) < NOISE_SHARE,
        "has_reference": (rng.random(n) < REFERENCE_SHARE) if s.reference else np.zeros(n, bool),
        "outcome": np.where(u < ERROR_RATE, 1, np.where(u < ERROR_RATE + TIMEOUT_RATE, 2, 0)),
        "lat_prod": rng.lognormal(math.log(0.005), 0.3, n),
        "lat_cand": rng.lognormal(math.log(0.005), 0.3, n),
        "prod_right": prod == y,
        "cand_right": cand == y,
        "usable": feedback | evaluation,  # v2: labels whose selection is random within their cell
        "any_label": feedback | evaluation | queue,  # v1: every label
    }
    d["noise_tvd"], d["ref_tvd"] = tvd(d["noise_flip"]), tvd(d["ref_flip"])
    d["acc_diff"] = d["prod_right"].astype(float) - d["cand_right"].astype(float)
    d["loss_diff"] = loss(cand) - loss(prod)
    tallies = {"overall": _tally(np.ones(n, bool), d, s.evaluation_share)}
    for i, name in enumerate(NAMES):
        tallies[name] = _tally(seg == i, d, s.evaluation_share)
    return tallies


def v1_fails(t: SliceTally, max_drop: float, min_labels: int, alpha: float) -> bool:
    """The v1 paired-accuracy rule: the plain mean of 1[prod right] - 1[cand right] over every label."""
    lab = t.labels
    n = lab.labels
    if n < min_labels:
        return False
    b, c = lab.prod_only_correct, lab.cand_only_correct
    drop = (b - c) / n
    var = ((b + c) / n - drop * drop) * n / (n - 1)
    sd = max(math.sqrt(max(var, 0.0)), 1 / math.sqrt(n))
    rho = stats.gaussian_mixture_rho(ALPHA, 2000)
    return drop - stats.mean_cs_halfwidth(n, sd, alpha, rho) > max_drop


def run_one(args: tuple[Scenario, int]) -> dict[str, Any]:
    """One shadow test read after every batch: per slice, the first look (1-based) that FAILed, that
    asked for REVIEW, that the v1 rule would have failed, and the labels dark had at each look."""
    s, seed = args
    cfg = make_config(s)
    rng = np.random.default_rng(seed)
    merge_rng = random.Random(seed)
    running = {name: SliceTally() for name in ALL}
    first: dict[str, dict[str, int]] = {kind: dict.fromkeys(ALL, 0) for kind in ("fail", "review", "v1_fail")}
    labels_dark: list[int] = []
    final = ""
    for look in range(1, s.looks + 1):
        for name, t in _batch(rng, s).items():
            running[name].merge(t, merge_rng)
        results = evaluate_checks(cfg, running, explain=False)
        for r in results:
            for kind, status in (("fail", "fail"), ("review", "review")):
                if r.status == status and not first[kind][r.slice]:
                    first[kind][r.slice] = look
        for name in ALL:  # the v1 rule, Bonferroni over the four slices
            if not first["v1_fail"][name] and v1_fails(running[name], 0.01, 100, ALPHA / len(ALL)):
                first["v1_fail"][name] = look
        labels_dark.append(running["dark"].quality.labels)
        if look == s.looks:
            statuses = {r.status for r in results if r.required}
            final = "FAIL" if "fail" in statuses else "PASS" if statuses <= {"pass"} else "open"
    return {"first": first, "labels_dark": labels_dark, "final": final}


def _runs(pool: Any, s: Scenario, runs: int, seed0: int) -> list[dict[str, Any]]:
    return list(pool.map(run_one, [(s, seed0 + i) for i in range(runs)], chunksize=2))


def _share(results: list[dict[str, Any]], kind: str, slices: list[str], by_look: int | None = None) -> float:
    return float(np.mean([any(0 < r["first"][kind][n] <= (by_look or 10**9) for n in slices) for r in results]))


def _wilson_upper(k: int, n: int, z: float = 1.96) -> float:
    p = k / n
    return (p + z * z / (2 * n) + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def _labels_to_decide(results: list[dict[str, Any]], kind: str = "fail") -> list[int]:
    """Labels on dark at the look where dark first FAILed (runs that never did: left out)."""
    return [r["labels_dark"][r["first"][kind]["dark"] - 1] for r in results if r["first"][kind]["dark"]]


def false_alarms(pool: Any, runs: int) -> list[str]:
    long: dict[str, Any] = {"batch": 2 * BATCH}  # 40k pairs: long enough for the v1 rule's bias to show
    scenarios = [
        (
            "A/A: the candidate is production's twin",
            Scenario("aa", churn=NOISE_CHURN, feedback_share=0.2, evaluation_share=0.2, **long),
        ),
        (
            "benign retrain (another seed), no reference model",
            Scenario("retrain", feedback_share=0.2, evaluation_share=0.2, **long),
        ),
        (
            "benign retrain, with a reference model (churn floor)",
            Scenario("retrain-ref", feedback_share=0.2, evaluation_share=0.2, reference=True, **long),
        ),
        (
            "benign retrain, annotators label only queue items (no feedback)",
            Scenario("queue", evaluation_share=0.2, queue_share=1.0, **long),
        ),
        (
            "within the margin (0.7 points worse), annotators label only queue items",
            Scenario("queue-margin", within_margin=0.008, evaluation_share=0.2, queue_share=1.0, **long),
        ),
    ]
    lines = [
        f"{LOOKS} batches of {2 * BATCH} pairs per run.",
        "",
        "| scenario | runs | FAIL at any look (v2) | 95% upper bound | REVIEW at any look | final PASS "
        "| v1 rule: FAIL at any look |",
        "|---|---|---|---|---|---|---|",
    ]
    for j, (label, s) in enumerate(scenarios):
        res = _runs(pool, s, runs, 10_000 + 1000 * j)
        k = sum(any(r["first"]["fail"][n] for n in ALL) for r in res)
        lines.append(
            f"| {label} | {len(res)} | {k / len(res):.3f} | {_wilson_upper(k, len(res)):.3f} "
            f"| {_share(res, 'review', ALL):.2f} | {np.mean([r['final'] == 'PASS' for r in res]):.0%} "
            f"| {_share(res, 'v1_fail', ALL):.3f} |"
        )
    return lines


def power(pool: Any, runs: int, effects: list[float]) -> list[str]:
    fine: dict[str, Any] = {"batch": BATCH // 4, "looks": 4 * LOOKS}  # read every 250 pairs: labels at the FAIL, finely
    lines = [
        f"{4 * LOOKS} batches of {BATCH // 4} pairs per run.",
        "",
        "| accuracy drop on dark | labelling | runs | dark FAILs by 20k pairs | a or b FAIL | labels on dark "
        "at the FAIL (median) | same, uniform / evaluation |",
        "|---|---|---|---|---|---|---|",
    ]
    for j, effect in enumerate(effects):
        medians = {}
        for i, (how, s) in enumerate(
            (
                (
                    "uniform feedback (20 % of requests)",
                    Scenario("pw-uniform", regression=effect, feedback_share=0.2, **fine),
                ),
                (
                    "evaluation sample (20 % of disagreements)",
                    Scenario("pw-eval", regression=effect, evaluation_share=0.2, **fine),
                ),
            )
        ):
            res = _runs(pool, s, runs, 50_000 + 1000 * (2 * j + i))
            at = _labels_to_decide(res)
            medians[i] = float(np.median(at)) if at else math.nan
            drop = effect * ACCURACY  # wrong answers replace right ones 90 % of the time
            ratio = f"{medians[0] / medians[1]:.1f}x" if i == 1 and medians[1] else ""
            lines.append(
                f"| {drop:.2f} (+{effect:.0%} wrong) | {how} | {len(res)} | {_share(res, 'fail', ['dark']):.2f} "
                f"| {_share(res, 'fail', ['a', 'b']):.2f} | {medians[i]:.0f} | {ratio} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="runs per scenario")
    parser.add_argument("--effects", type=float, nargs="+", default=[0.11], help="extra wrong-answer share on dark")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="update the stats section of bench/RESULTS.md")
    args = parser.parse_args()
    started = time.time()
    with Pool(args.processes) as pool:
        lines = [
            "Each run: the gate read after every batch; slices "
            f"{', '.join(f'{k} {v:.0%}' for k, v in SLICES.items())}; every model right "
            f"{ACCURACY:.0%} of the time; a retrain flips ~7 % of production's answers; noise run on "
            f"{NOISE_SHARE:.0%} of pairs; alpha = {ALPHA}, Holm over the checks that can FAIL; the default checks.",
            "",
            "**False alarms: candidates that are not worse (beyond the 1-point accuracy margin)**",
            "",
            *false_alarms(pool, args.runs),
            "",
            "FAIL = any check FAILs on any slice at any look. The v1 rule is the plain paired accuracy mean over "
            "every label, however chosen (what shadowd did before provenance), at the same alpha. REVIEW is not "
            "a false alarm: it asks for labels where the candidate differs. Final PASS is rare for the retrains: "
            "PASS needs the accuracy interval inside the 1-point margin on every slice; at 7 % flips that takes "
            "several hundred to a thousand flip labels per slice, more than these runs collect on some slice: "
            "they end REVIEW or INCONCLUSIVE saying how many labels are still needed and how long that takes "
            "at the run's rate, never FAIL.",
            "",
            "**Power: a candidate worse on dark only, labels needed to FAIL it**",
            "",
            *power(pool, args.runs, args.effects),
        ]
    elapsed = time.time() - started
    lines += [
        "",
        "Dark has ~14 % flips under the regression. The labels column counts the usable labels on dark when "
        "the accuracy check first FAILed there; the ratio is how many more labels uniform random feedback "
        "needs than the evaluation sample for the same decision.",
        "",
        f"Command: `.venv/bin/python bench/stats_simulation.py --runs {args.runs} --write` "
        f"({elapsed:.0f} s on this machine, {args.processes} processes).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        _write(text)


def _write(section: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    begin, end = "<!-- stats_simulation:begin -->", "<!-- stats_simulation:end -->"
    block = f"{begin}\n{section}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in old:
        new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, old, flags=re.S)
    elif "## Comparator statistics" in old:
        new = old.replace("## Comparator statistics", f"## Comparator statistics\n\n{block}", 1)
    else:
        new = old.rstrip("\n") + f"\n\n## Comparator statistics\n\n{block}\n"
    path.write_text(new)
    print(f"updated {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

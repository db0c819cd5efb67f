"""Pairs per second through the comparator and through the hub's add path, side by side in one run.

No Ray: everything runs in this process, on one core, the way the hub runs it.
The arms, each fed the same stream, in rounds with the arm order rotated:

  comparator, per pair   ``Comparator.add`` on each ``Pair`` (the path before issue 14)
  comparator, batched    ``Comparator.add_batch`` on the worker's columnar batches (``PairBatch``)
  comparator, add_many   from ``Pair`` objects: ``PairBatch.of`` then ``add_batch``
  hub, per pair          the hub's add path before issue 14, per pair: ``Comparator.add``, the
                         slices again, the violation tally, ``Flywheel.record`` (pair store, items)
  hub, batched           ``ShadowHub.add_batch``: one comparator step, then per row a ``Pair``, all
                         stored in one pair-store transaction, then the items through the policy to the spool

Both hub arms hold a comparator with metrics and a flywheel with the default
spool sink (no broker), under a fresh data dir per round; a round ends when
every item is spooled. The stream: classification with 10 classes and 5
slices (brightness, hour, new users, country, device), a candidate that flips
about 5 % of production's top classes (a retrain), production latencies that
vary per request and one candidate latency per batch (as the worker measures
it); ``--floors`` adds noise runs on 20 % and reference runs on 25 % of pairs.

Also the cost of reading the report (``Comparator.report``) on the window the
stream leaves, with labels in the quality cells: cold, again with nothing
changed (cached evidence), and after one more batch.

``--baseline DIR`` adds the same per-pair arm and report reads run on the
shadowd source in DIR (e.g. a checkout of main: the code before issue 14), in
a subprocess fed the same pairs and the same saved window.

    .venv/bin/python bench/hub.py [--pairs 20000] [--batch 256] [--rounds 5] [--floors] [--baseline DIR] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from shadowd.app import build_flywheel
from shadowd.compare.comparator import Comparator
from shadowd.compare.slices import SliceMatcher
from shadowd.config import ShadowdConfig, parse_config
from shadowd.expect import Violation, ViolationTally
from shadowd.flywheel.pairs import PairStore
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import Label, LabelChannel, ModelOutput, OutputColumns, Pair, PairBatch
from shadowd.sampling import Shard
from shadowd.serving.hub import HubParts, ShadowHub

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10
SLICES: list[dict[str, Any]] = [
    {"name": "dark", "where": {"field": "brightness", "op": "lt", "value": 0.3}},
    {
        "name": "night",
        "where": {"any": [{"field": "hour", "op": "ge", "value": 21}, {"field": "hour", "op": "lt", "value": 6}]},
    },
    {"name": "new_users", "where": {"field": "new_user", "op": "eq", "value": True}},
    {"name": "de", "where": {"field": "country", "op": "eq", "value": "de"}},
    {"name": "mobile", "where": {"field": "device", "op": "in", "value": ["ios", "android"]}},
]


def bench_config(data_dir: Path, floors: bool) -> ShadowdConfig:
    def model(name: str) -> dict[str, Any]:
        return {"name": name, "kind": "python", "target": "shadowd.testing:ToyClassifier", "input_shape": [8]}

    models = {"production": model("prod"), "candidate": model("cand")}
    shadow: dict[str, Any] = {}
    if floors:
        models["reference"] = model("ref")
        shadow = {"noise_share": 0.2, "reference_share": 0.25}
    return parse_config(
        {
            "task": "classification",
            "data_dir": str(data_dir),
            "models": models,
            "slices": SLICES,
            "shadow": shadow,
            "annotations": {"evaluation": {"share": 0.2, "slice_shares": {"new_users": 0.5}}},
            "labels": {"pair_retention_s": 10**9, "max_pairs": 10**7},
        }
    )


# --- the stream ---


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def stream(n: int, batch: int, floors: bool, seed: int = 0) -> tuple[list[Pair], list[PairBatch]]:
    """The same n pairs as Pair objects and as the worker's columnar batches."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, CLASSES))
    prod = _softmax(z)
    cand = _softmax(z + rng.normal(scale=0.12, size=z.shape))  # ~5 % flips: a retrain
    noise = _softmax(z + rng.normal(scale=0.02, size=z.shape))
    ref = _softmax(z + rng.normal(scale=0.1, size=z.shape))
    prod_latency = rng.lognormal(np.log(0.005), 0.4, n)
    has_noise = rng.random(n) < (0.2 if floors else 0.0)
    has_ref = rng.random(n) < (0.25 if floors else 0.0)
    features = [
        {
            "brightness": float(rng.random()),
            "hour": int(rng.integers(0, 24)),
            "new_user": bool(rng.random() < 0.1),
            "country": str(rng.choice(["de", "fr", "us", "gb"])),
            "device": str(rng.choice(["ios", "android", "web"])),
        }
        for _ in range(n)
    ]
    t0 = 1_800_000_000.0
    pairs, batches = [], []
    for start in range(0, n, batch):
        rows = range(start, min(start + batch, n))
        cand_latency = float(rng.uniform(0.002, 0.004))  # per example: one batch call / its size

        def out(role: Any, values: np.ndarray, i: int, latency: float) -> ModelOutput:
            return ModelOutput(role=role, model=role[:4], values=values[i].tolist(), latency_s=latency)

        chunk = [
            Pair(
                request_id=f"r{i}",
                ts=t0 + i * 1e-3,
                features=features[i],
                production=out("production", prod, i, float(prod_latency[i])),
                candidate=out("candidate", cand, i, cand_latency),
                noise=out("noise", noise, i, cand_latency) if has_noise[i] else None,
                reference=out("reference", ref, i, cand_latency) if has_ref[i] else None,
            )
            for i in rows
        ]
        pairs += chunk
        batches.append(
            PairBatch(
                request_ids=[p.request_id for p in chunk],
                ts=[p.ts for p in chunk],
                features=[p.features for p in chunk],
                inputs=None,
                violations=[[] for _ in chunk],
                production=OutputColumns.of("production", [p.production for p in chunk]),
                candidate=OutputColumns.of("candidate", [p.candidate for p in chunk]),
                noise=OutputColumns.of("noise", [p.noise for p in chunk]) if floors else None,
                reference=OutputColumns.of("reference", [p.reference for p in chunk]) if floors else None,
            )
        )
    return pairs, batches


# --- the arms ---


def _parts(cfg: ShadowdConfig, shard: Shard | None = None) -> HubParts:
    metrics = ShadowdMetrics(CollectorRegistry())
    return HubParts(metrics=metrics, flywheel=build_flywheel(cfg, metrics))


def hub_per_pair(cfg: ShadowdConfig, pairs: list[Pair]) -> float:
    """The hub's add path before issue 14, verbatim but for the event loop: seconds for the stream."""
    parts = _parts(cfg)
    comparator = Comparator(cfg, parts.metrics)
    slices, violations = SliceMatcher(cfg.slices), ViolationTally()
    try:
        t0 = time.perf_counter()
        for pair in pairs:
            items = comparator.add(pair)
            names = slices.match(pair.features)
            violations.add([Violation(**v) for v in pair.violations], names)
            parts.flywheel.record(pair, items)
        assert parts.flywheel.flush(120), "items not spooled in 120 s"
        return time.perf_counter() - t0
    finally:
        parts.flywheel.close(timeout_s=10)


def hub_batched(cfg: ShadowdConfig, batches: list[PairBatch]) -> float:
    hub = ShadowHub(cfg, _parts)
    try:

        async def feed() -> float:
            t0 = time.perf_counter()
            for b in batches:
                await hub.add_batch(b)
            assert hub._flywheel.flush(120), "items not spooled in 120 s"
            return time.perf_counter() - t0

        return asyncio.run(feed())
    finally:
        hub._flywheel.close(timeout_s=10)
        del hub.__dict__["_flywheel"]  # closed: nothing for __del__ to flush


def comparator_arms(cfg: ShadowdConfig, pairs: list[Pair], batches: list[PairBatch]) -> dict[str, Callable[[], float]]:
    def per_pair() -> float:
        c = Comparator(cfg, ShadowdMetrics(CollectorRegistry()))
        t0 = time.perf_counter()
        for p in pairs:
            c.add(p)
        return time.perf_counter() - t0

    def batched() -> float:
        c = Comparator(cfg, ShadowdMetrics(CollectorRegistry()))
        t0 = time.perf_counter()
        for b in batches:
            c.add_batch(b)
        return time.perf_counter() - t0

    def add_many() -> float:
        c = Comparator(cfg, ShadowdMetrics(CollectorRegistry()))
        size = len(batches[0]) if batches else 1
        t0 = time.perf_counter()
        for start in range(0, len(pairs), size):
            c.add_many(pairs[start : start + size])
        return time.perf_counter() - t0

    return {"comparator, per pair": per_pair, "comparator, batched": batched, "comparator, add_many": add_many}


def run_rounds(arms: dict[str, Callable[[], float]], sizes: dict[str, int], rounds: int) -> dict[str, list[float]]:
    """Pairs per second of every arm in every round; the arm order rotates each round."""
    names = list(arms)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rates[name].append(sizes[name] / arms[name]())
    return rates


# --- the code before: the same arm and report on another source tree, in a subprocess ---

_BASELINE = """
import gc, json, statistics, sys, time
from shadowd.compare.comparator import Comparator
from shadowd.config import parse_config
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import Pair
from prometheus_client import CollectorRegistry
what, pairs_path, state_path = sys.argv[1:4]
import shadowd
source = shadowd.__file__
state = json.load(open(state_path))
cfg = parse_config(state["config"])
if what == "add":
    pairs = [Pair.model_validate_json(line) for line in open(pairs_path)]
    gc.freeze()
    comp = Comparator(cfg, ShadowdMetrics(CollectorRegistry()))  # with metrics, as in the hub and the other arms
    t0 = time.perf_counter()
    for p in pairs:
        comp.add(p)
    print(json.dumps({"seconds": time.perf_counter() - t0, "source": source}))
else:
    comp = Comparator(cfg)
    comp.load_state(state)
    reads = []
    for _ in range(6):
        t0 = time.perf_counter()
        comp.report()
        reads.append((time.perf_counter() - t0) * 1000)
    print(json.dumps({"cold": reads[0], "again": statistics.median(reads[1:]), "source": source}))
"""


def baseline(source: Path, what: str, pairs_path: Path, state_path: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(source)}
    out = subprocess.run(
        [sys.executable, "-c", _BASELINE, what, str(pairs_path), str(state_path)],
        env=env,
        cwd=pairs_path.parent,  # not this checkout: `python -c` puts the working directory first on sys.path
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    where = Path(result.pop("source")).resolve()
    assert where.is_relative_to(source.resolve()), f"the baseline ran {where}, not {source}"
    return {k: float(v) for k, v in result.items()}


# --- the report ---


def report_times(cfg: ShadowdConfig, batches: list[PairBatch], state_path: Path | None = None) -> dict[str, float]:
    """Milliseconds to read the report: cold, unchanged since the last read, after one more batch.
    Saves the window (before the last batch) to ``state_path`` for a baseline to read."""
    comp = Comparator(cfg, ShadowdMetrics(CollectorRegistry()))
    stored = []
    for b in batches[:-1]:
        result = comp.add_batch(b)
        stored += [b.pair(i, result.selection(i)) for i in range(len(b))]
    rng = np.random.default_rng(1)
    for p in stored:  # labels in the quality cells: random feedback on 10 %, every drawn flip labelled
        if p.selection is None or not (p.selection.in_sample or rng.random() < 0.1):
            continue
        channel: LabelChannel = "evaluation" if p.selection.in_sample else "feedback"
        comp.add_labelled(p, Label(request_id=p.request_id, label=int(rng.integers(CLASSES)), ts=0.0), channel)
    if state_path is not None:
        comp.save(state_path)

    def timed() -> float:
        t0 = time.perf_counter()
        comp.report()
        return (time.perf_counter() - t0) * 1000

    out = {"cold": timed()}
    out["unchanged"] = statistics.median(timed() for _ in range(5))
    comp.add_batch(batches[-1])
    out["after one batch"] = timed()
    out["labels"] = float(comp.tally().quality.labels)
    out["flips"] = comp.tally().candidate.flips / max(comp.tally().candidate.compared, 1)
    return out


def hub_rows(cfg: ShadowdConfig, batches: list[PairBatch], directory: Path) -> dict[str, float]:
    """Microseconds per row of the hub's per-row work, each alone: build the Pair, put it in the pair store."""
    comp = Comparator(cfg)
    results = [comp.add_batch(b) for b in batches]
    t0 = time.perf_counter()
    built = [b.pair(i, r.selection(i)) for b, r in zip(batches, results, strict=True) for i in range(len(b))]
    pair_s = time.perf_counter() - t0
    store = PairStore(directory / "one", 10**9, 10**7, time.time)
    try:
        t0 = time.perf_counter()
        for p in built:
            store.put(p)
        store_s = time.perf_counter() - t0
    finally:
        store.close()
    size = len(batches[0]) if batches else 1
    store = PairStore(directory / "many", 10**9, 10**7, time.time)
    try:
        t0 = time.perf_counter()
        for start in range(0, len(built), size):
            store.put_many([(p, ()) for p in built[start : start + size]])
        many_s = time.perf_counter() - t0
    finally:
        store.close()
    n = len(built)
    return {"pair": pair_s / n * 1e6, "store": store_s / n * 1e6, "store_many": many_s / n * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=20000, help="pairs per round (batched arms)")
    ap.add_argument("--per-pair", type=int, default=4000, help="pairs per round for the per-pair arms (slow)")
    ap.add_argument("--batch", type=int, default=256, help="rows per batch (shadow.max_flush_size)")
    ap.add_argument("--also", type=int, nargs="*", default=[1024, 4096], help="more batch sizes for the batched arm")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--floors", action="store_true", help="noise runs on 20 %% and reference runs on 25 %% of pairs")
    ap.add_argument("--baseline", type=Path, default=None, help="shadowd source tree to run the per-pair arm on too")
    ap.add_argument("--write", action="store_true", help="update the hub section of bench/RESULTS.md")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = bench_config(Path(tmp) / "c", args.floors)
        pairs, batches = stream(args.pairs, args.batch, args.floors)
        gc.freeze()  # the stream's objects stay out of the collector's scans: measure the code, not this heap
        few = args.per_pair // args.batch * args.batch or args.batch
        arms = comparator_arms(cfg, pairs, batches)
        arms["comparator, per pair"] = comparator_arms(cfg, pairs[:few], [])["comparator, per pair"]
        runs = iter(range(10**6))
        arms["hub, per pair"] = lambda: hub_per_pair(
            bench_config(Path(tmp) / f"h{next(runs)}", args.floors), pairs[:few]
        )
        arms["hub, batched"] = lambda: hub_batched(bench_config(Path(tmp) / f"h{next(runs)}", args.floors), batches)
        for size in args.also:
            bigger = stream(args.pairs, size, args.floors)[1]
            arms[f"comparator, batched, {size} rows"] = comparator_arms(cfg, [], bigger)["comparator, batched"]
        gc.freeze()
        state_path = Path(tmp) / "state.json"
        report = report_times(cfg, batches, state_path)
        per_row = hub_rows(cfg, batches, Path(tmp) / "rows")
        pairs_path = Path(tmp) / "pairs.jsonl"
        if args.baseline is not None:
            pairs_path.write_text("".join(p.model_dump_json() + "\n" for p in pairs[:few]))
            arms["comparator, per pair (baseline)"] = lambda: baseline(args.baseline, "add", pairs_path, state_path)[
                "seconds"
            ]
        sizes = {name: (few if "per pair" in name else args.pairs) for name in arms}
        t0 = time.perf_counter()
        rates = run_rounds(arms, sizes, args.rounds)
        elapsed = time.perf_counter() - t0
        base_report = baseline(args.baseline, "report", pairs_path, state_path) if args.baseline else None

    flips = report["flips"]
    median = {name: statistics.median(r) for name, r in rates.items()}
    lines = [
        f"Stream: classification, {CLASSES} classes, {len(SLICES)} slices, {flips:.1%} flips"
        f"{', noise on 20 % and reference on 25 % of pairs' if args.floors else ', no noise or reference runs'}; "
        f"batches of {args.batch} rows; {args.rounds} rounds, arm order rotated; per-pair arms on "
        f"{few} pairs a round, the others on {args.pairs}.",
        "",
        "| arm | pairs/s (median) | best round | vs per pair |",
        "|---|---|---|---|",
    ]
    for name, r in rates.items():
        base = median["hub, per pair" if name.startswith("hub") else "comparator, per pair"]
        lines.append(f"| {name} | {median[name]:,.0f} | {max(r):,.0f} | {median[name] / base:.2g}x |")
    hub_us = 1e6 / median["hub, batched"]
    comp_us = 1e6 / median["comparator, batched"]
    lines += [
        "",
        f"Hub, batched: {hub_us:.1f} us per pair, of which the comparator {comp_us:.1f} us "
        f"({comp_us / hub_us:.0%}); the rest is per row: building the row's Pair "
        f"({per_row['pair']:.1f} us, measured alone), storing it in the pair store ({per_row['store_many']:.1f} us "
        f"in one transaction per batch, as the hub does; {per_row['store']:.1f} us with a commit per pair), "
        "the violation tally and the items through the policy to the spool.",
        "",
        f"Report (`Comparator.report`, {report['labels']:.0f} labels in the quality cells): "
        f"{report['cold']:.0f} ms cold, {report['unchanged']:.1f} ms again with nothing changed, "
        f"{report['after one batch']:.0f} ms after one more batch.",
    ]
    if base_report is not None:
        b = base_report
        lines[-1] += f" The baseline reads the same window in {b['cold']:.0f} ms cold, {b['again']:.0f} ms again."
    text = "\n".join(lines)
    print(text)
    print(f"({elapsed:.0f} s)")
    if args.write:
        command = "`.venv/bin/python bench/hub.py " + " ".join(sys.argv[1:]) + "`"
        write_section("hub_floors" if args.floors else "hub", text, command, elapsed)


def write_section(tag: str, text: str, command: str, elapsed: float) -> None:
    """Replace the ``tag`` section of bench/RESULTS.md (or append it) with ``text`` and the command that made it."""
    path = ROOT / "bench" / "RESULTS.md"
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    body = f"{begin}\n{text}\n\nCommand: {command} ({elapsed:.0f} s on this machine).\n{end}"
    old = path.read_text()
    if begin in old:
        head, rest = old.split(begin, 1)
        new = head + body + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(new)


if __name__ == "__main__":
    main()

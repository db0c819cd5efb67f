"""How the hub's throughput scales with hub shards: 1, 2 and 4 shards as processes, side by side in one run.

Each shard is a process holding a real ``ShadowHub`` (comparator, flywheel with
its pair store and the default spool sink) fed the rows of the request ids it
owns (``sampling.shard_of``; ``PairBatch.take``, as the shadow worker splits a
batch), all shards started together. Throughput is every shard's pairs over
the time from the common start until the last shard has spooled its items;
rounds rotate the order of the shard counts. No Ray: the worker-to-hub calls
(one per batch and shard) are not in it. The stream is ``bench/hub.py``'s
(classification, 10 classes, 5 slices, batches of 256 rows).

Also each shard's peak memory (RSS), and a paper projection of the shards,
cores and memory a 100,000 requests/s service needs at several sample shares.

    .venv/bin/python bench/shards.py [--pairs 24000] [--rounds 3] [--shards 1 2 4] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.hub import _parts, bench_config, stream, write_section  # noqa: E402
from shadowd.records import PairBatch  # noqa: E402
from shadowd.sampling import shard_of  # noqa: E402
from shadowd.serving.hub import ShadowHub  # noqa: E402

BATCHES: list[PairBatch] = []  # the stream, built before the shards fork (they inherit it)


def run_shard(index: int, count: int, data_dir: Path, start: Any, results: Any) -> None:
    """One shard: its rows of every batch, then (at the common start) the hub's add path over them."""
    mine = []
    for b in BATCHES:
        rows = np.flatnonzero([shard_of(r, count) == index for r in b.request_ids])
        if rows.size:
            mine.append(b.take(rows))
    hub = ShadowHub(bench_config(data_dir, False), _parts)

    async def feed() -> None:
        for b in mine:
            await hub.add_batch(b)

    start.wait()
    t0 = time.monotonic()
    asyncio.run(feed())
    assert hub._flywheel.flush(120), "items not spooled in 120 s"
    t1 = time.monotonic()
    hub._flywheel.close(timeout_s=10)
    del hub.__dict__["_flywheel"]  # closed: nothing for __del__ to flush
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.put((t0, t1, sum(len(b) for b in mine), rss_mib))


def one_round(count: int, tmp: Path) -> tuple[float, float]:
    """(pairs/s over all shards, largest shard RSS in MiB) for ``count`` shards started together."""
    ctx = mp.get_context("fork")
    start, results = ctx.Barrier(count + 1), ctx.Queue()
    procs = [
        ctx.Process(target=run_shard, args=(i, count, tmp / f"{count}-{i}-{time.monotonic_ns()}", start, results))
        for i in range(count)
    ]
    for p in procs:
        p.start()
    start.wait()  # every shard has split its rows and built its hub
    got = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, f"a shard exited with {p.exitcode}"
    pairs = sum(g[2] for g in got)
    assert pairs == sum(len(b) for b in BATCHES), "every pair on exactly one shard"
    return pairs / (max(g[1] for g in got) - min(g[0] for g in got)), max(g[3] for g in got)


def projection(per_shard: float, rss_mib: float, target: int = 100_000) -> list[str]:
    lines = [
        f"Paper projection for a {target:,} requests/s service, from this run's single-shard rate "
        f"({per_shard:,.0f} pairs/s on one core) and peak memory ({rss_mib:,.0f} MiB per shard), each shard "
        "on a core of its own and run at 70 % of its measured rate:",
        "",
        "| sample share | pairs/s | hub shards | hub cores | hub memory |",
        "|---|---|---|---|---|",
    ]
    for share in (0.01, 0.05, 0.2, 1.0):
        pairs = target * share
        shards = max(1, math.ceil(pairs / (0.7 * per_shard)))
        lines.append(f"| {share:.0%} | {pairs:,.0f} | {shards} | {shards} | {shards * rss_mib / 1024:.1f} GiB |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=24000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--write", action="store_true", help="update the shards section of bench/RESULTS.md")
    args = ap.parse_args()
    BATCHES.extend(stream(args.pairs, args.batch, False)[1])
    rates: dict[int, list[float]] = {n: [] for n in args.shards}
    rss: dict[int, list[float]] = {n: [] for n in args.shards}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = args.shards[r % len(args.shards) :] + args.shards[: r % len(args.shards)]
            for n in order:
                rate, mib = one_round(n, Path(tmp))
                rates[n].append(rate)
                rss[n].append(mib)
                print(f"round {r + 1}: {n} shard(s): {rate:,.0f} pairs/s", flush=True)
    elapsed = time.perf_counter() - t0
    median = {n: statistics.median(v) for n, v in rates.items()}
    one = median[args.shards[0]]
    lines = [
        f"{args.pairs} pairs a round in batches of {args.batch} rows (bench/hub.py's stream), {args.rounds} rounds, "
        f"order rotated; {os.cpu_count()} cores.",
        "",
        "| hub shards | pairs/s (median) | spread (min-max) | vs 1 shard | per shard | peak RSS per shard |",
        "|---|---|---|---|---|---|",
    ]
    for n in args.shards:
        lines.append(
            f"| {n} | {median[n]:,.0f} | {min(rates[n]):,.0f}-{max(rates[n]):,.0f} | {median[n] / one:.2f}x "
            f"| {median[n] / n:,.0f} | {max(rss[n]):,.0f} MiB |"
        )
    lines += ["", *projection(one, max(rss[args.shards[0]]))]
    text = "\n".join(lines)
    print(text)
    if args.write:
        command = "`.venv/bin/python bench/shards.py " + " ".join(sys.argv[1:]) + "`"
        write_section("shards", text, command, elapsed)


if __name__ == "__main__":
    main()

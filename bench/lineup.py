"""Changing the lineup under load: what a candidate swap, a promotion, a rollback and a finish cost the
clients of a running shadowd.

A real shadowd on a local Ray (one ingress, one worker, one hub) serves closed-loop /predict from a few
client threads while ``POST /shadow/candidates`` walks through cycles of set -> promote -> rollback ->
promote -> finish (each cycle ends with the candidate as the new production). Every answer is checked
against the model it names (the toy models are deterministic). Reported: requests and failures (any
non-200 or connection error), answers not equal to the named model's own, the time from a change's 200
until the ingress answers with the new model, latency percentiles of requests within a second of a
change over those in steady state (ratios in the same run), and the pairs dropped as in flight across a
change (``shadowd_pairs_dropped_total{reason="lineup"}``).

    .venv/bin/python bench/lineup.py [--cycles 3] [--clients 4] [--dwell 4] [--write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.hub import write_section  # noqa: E402
from shadowd.config import parse_config  # noqa: E402
from shadowd.launcher import start_daemon  # noqa: E402
from shadowd.testing import ToyClassifier  # noqa: E402
from tests.fixtures.services import free_port  # noqa: E402


def toy(name: str, retrain: int) -> dict[str, Any]:
    kwargs = {"seed": 0, "retrain": retrain}
    return {
        "name": name,
        "kind": "python",
        "target": "shadowd.testing:ToyClassifier",
        "kwargs": kwargs,
        "input_shape": [8],
    }


class Clients:
    """Closed-loop clients; every answer kept as (start, end, status, model, outputs ok)."""

    def __init__(self, url: str, n: int):
        self.url = url
        self.answers: list[tuple[float, float, int, str, bool]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        self.models: dict[str, ToyClassifier] = {}

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with requests.Session() as http:
            while not self._stop.is_set():
                x = rng.normal(size=8)
                t0 = time.monotonic()
                try:
                    r = http.post(
                        f"{self.url}/predict",
                        json={"inputs": x.tolist(), "features": {}},
                        headers={"X-Request-ID": uuid.uuid4().hex},
                        timeout=30,
                    )
                    status, body = r.status_code, (r.json() if r.status_code == 200 else {})
                except requests.RequestException:
                    status, body = 0, {}
                t1 = time.monotonic()
                name = body.get("model", "")
                model = self.models.get(name)
                same = model is not None and np.allclose(body["outputs"], model.predict(x[None])[0])
                with self._lock:
                    self.answers.append((t0, t1, status, name, same))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def dropped_in_flight(metrics_port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("shadowd_pairs_dropped_total{") and 'reason="lineup"' in line
    )


def run(cycles: int, clients_n: int, dwell_s: float, workdir: Path) -> str:
    metrics_port = free_port()
    raw = {
        "task": "classification",
        "data_dir": str(workdir / "data"),
        "models": {"production": toy("v0", 0), "candidate": toy("v1", 1)},
        "shadow": {"sample_share": 1.0, "noise_share": 0.0},
        "lineup": {"python_targets": ["shadowd.testing:ToyClassifier"]},
        "serving": {"host": "127.0.0.1", "port": free_port()},
        "metrics": {"port": metrics_port, "host": "127.0.0.1"},
    }
    daemon = start_daemon(parse_config(raw, "bench-lineup"), num_cpus=2)
    clients = Clients(daemon.url, clients_n)
    clients.models = {f"v{k}": ToyClassifier(seed=0, retrain=k) for k in range(cycles + 2)}
    changes: list[tuple[float, float, str, str]] = []  # (when sent, when answered, action, model served after it)

    def change(body: dict[str, Any], serves: str) -> None:
        sent = time.monotonic()
        r = requests.post(f"{daemon.url}/shadow/candidates", json=body, headers=daemon.headers, timeout=180)
        r.raise_for_status()
        changes.append((sent, time.monotonic(), body["action"], serves))
        time.sleep(dwell_s)

    try:
        clients.start()
        time.sleep(2 * dwell_s)  # steady state first
        production = "v0"
        for k in range(1, cycles + 1):
            cand = f"v{k}"
            if k > 1:
                change({"action": "set", "candidate": toy(cand, k)}, production)
            change({"action": "promote", "candidate": cand}, cand)
            change({"action": "rollback"}, production)
            change({"action": "promote", "candidate": cand}, cand)
            change({"action": "finish"}, cand)
            production = cand
        time.sleep(dwell_s)
        clients.stop()
        time.sleep(2)  # the last batches reach the hub
        dropped = dropped_in_flight(metrics_port)
    finally:
        clients.stop()
        daemon.stop()
    return summarize(clients.answers, changes, dropped, cycles, clients_n)


def summarize(
    answers: list[tuple[float, float, int, str, bool]],
    changes: list[tuple[float, float, str, str]],
    dropped: float,
    cycles: int,
    clients_n: int,
) -> str:
    failed = sum(1 for a in answers if a[2] != 200)
    wrong = sum(1 for a in answers if a[2] == 200 and not a[4])
    near = [a for a in answers if any(abs(a[0] - t) <= 1.0 for _, t, _, _ in changes)]
    steady = [a for a in answers if all(abs(a[0] - t) > 1.0 for _, t, _, _ in changes)]
    switch = []
    for i, (_, t, action, serves) in enumerate(changes):
        until = changes[i + 1][0] if i + 1 < len(changes) else float("inf")  # the next change's request
        later = [a for a in answers if t <= a[0] < until and a[2] == 200]
        first = next((a[1] - t for a in later if a[3] == serves), None)
        old = sum(1 for a in later if a[3] != serves)  # sent after the change's 200, answered by another model
        if action != "set":
            switch.append((first, old))

    def pct(rows: list[tuple[float, float, int, str, bool]], q: float) -> float:
        return float(np.percentile([(a[1] - a[0]) * 1000 for a in rows], q))

    firsts = [f for f, _ in switch if f is not None]
    stale = sum(old for _, old in switch)
    lines = [
        f"{len(changes)} lineup changes in {cycles} cycles (set, promote, rollback, promote, finish) under "
        f"{clients_n} closed-loop clients: {len(answers)} requests, **{failed} failed**, **{wrong} answers not "
        f"the named model's own**.",
        "",
        "| | requests | p50 ms | p99 ms |",
        "|---|---|---|---|",
        f"| steady (more than 1 s from a change) | {len(steady)} | {pct(steady, 50):.1f} | {pct(steady, 99):.1f} |",
        f"| within 1 s of a change | {len(near)} | {pct(near, 50):.1f} | {pct(near, 99):.1f} |",
        f"| ratio near / steady | | {pct(near, 50) / pct(steady, 50):.2f} | {pct(near, 99) / pct(steady, 99):.2f} |",
        "",
        f"After a change that moves the served model ({len(switch)}): the first answer from the new model "
        f"{1000 * min(firsts):.0f}-{1000 * max(firsts):.0f} ms after the change's 200 (the ingress that "
        f"answered the change follows at once); requests sent after a change's 200 and answered by the model it "
        f"replaced: {stale}. Pairs dropped as in flight across a change: {dropped:.0f} "
        f"({dropped / max(1, len(changes)):.1f} per change).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--dwell", type=float, default=4.0, help="seconds between changes")
    parser.add_argument("--write", action="store_true", help="write the result into bench/RESULTS.md")
    args = parser.parse_args()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        text = run(args.cycles, args.clients, args.dwell, Path(tmp))
    elapsed = time.monotonic() - t0
    print(text)
    if args.write:
        command = "`.venv/bin/python bench/lineup.py " + " ".join(sys.argv[1:]) + "`"
        write_section("lineup", text, command, elapsed)


if __name__ == "__main__":
    main()

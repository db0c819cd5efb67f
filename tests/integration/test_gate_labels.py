"""The gate on real Ray Serve with real torch models, decided by labels whose selection is known.

Two MLPs trained on scikit-learn's digits with the same recipe and data,
differing only in the training seed, disagree on a few percent of requests
without either being worse: the gate must not FAIL them, with labels from
``POST /feedback`` (random) and from the on-call annotator working the
evaluation lane (driven through ``Annotator``, the code under ``shadowd
annotate``). The same candidate broken on dark images only (``WrongWhenDark``)
must FAIL on dark and on no other slice, decided by the label-based accuracy
check from evaluation-sample labels alone.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from shadowd.demo.models import darken, load_demo_data, save_torchscript, train_mlp
from shadowd.demo.traffic import DEMO_SLICES, DemoRequest, demo_requests
from shadowd.flywheel.annotate import Annotator
from shadowd.launcher import wait_for_pairs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

N_REQUESTS = 2500
SLICES = [s for s in DEMO_SLICES if s["name"] in ("dark", "daylight")]  # disjoint, covering all traffic


@pytest.fixture(scope="module")
def seed_models(tmp_path_factory) -> dict[str, Path]:
    """Production (seed 0) and its retrain (seed 1): same recipe, same dim-light augmented data."""
    import torch

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("seed-models")
    data = load_demo_data()
    x = np.concatenate([data.x_train, darken(data.x_train, np.random.default_rng(0))])
    y = np.concatenate([data.y_train, data.y_train])
    return {f"seed{s}": save_torchscript(train_mlp(64, x, y, seed=s), folder / f"seed{s}.pt") for s in (0, 1)}


def _torchscript(name: str, path: Path) -> dict[str, Any]:
    return {"name": name, "kind": "torchscript", "path": str(path), "input_shape": [64], "output": "logits"}


def _config(production: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": "classification",
        "models": {"production": production, "candidate": candidate},
        "shadow": {"sample_share": 1.0, "candidate_timeout_s": 5.0},
        "slices": SLICES,
        "annotations": {"evaluation": {"share": 0.5}},
    }


def _traffic(url: str, reqs: list[DemoRequest]) -> None:
    with requests.Session() as s, ThreadPoolExecutor(4) as pool:
        codes = list(
            pool.map(
                lambda r: s.post(f"{url}/predict", json=r.body, headers={"X-Request-ID": r.request_id}, timeout=30),
                reqs,
            )
        )
    assert {r.status_code for r in codes} == {200}


def _feedback(url: str, reqs: list[DemoRequest], auth: dict[str, str]) -> None:
    with requests.Session() as s:
        s.headers.update(auth)
        for r in reqs:
            got = s.post(f"{url}/feedback", json={"request_id": r.request_id, "label": r.label}, timeout=30)
            assert got.status_code == 200, got.text


def _label_evaluation_lane(daemon: Any, truth: dict[str, int]) -> int:
    """The on-call annotator: every evaluation item, labelled with the truth; then wait for the joins."""

    def handled() -> int:
        report = requests.get(f"{daemon.url}/shadow/report", headers=daemon.headers, timeout=30).json()
        labels = report["annotations"]["labels"]
        return int(sum(labels.values()))

    before = handled()
    annotator = Annotator(daemon.config, annotator="on-call")
    done = 0
    try:
        while (item := annotator.next_item(timeout_s=3.0)) is not None and item.lane == "evaluation":
            assert item.reason == "evaluation" and item.inclusion == 0.5
            annotator.submit(truth[item.request_id])
            done += 1
    finally:
        annotator.close()
    deadline = time.monotonic() + 60
    while handled() < before + done:
        assert time.monotonic() < deadline, "annotator labels did not join"
        time.sleep(0.5)
    return done


def _run(shadowd_app: Any, candidate: dict[str, Any], seed_models: dict[str, Path], feedback_share: float) -> dict:
    daemon = shadowd_app(_config(_torchscript("seed0", seed_models["seed0"]), candidate))
    reqs = list(demo_requests(N_REQUESTS, run_id=uuid.uuid4().hex[:8]))
    _traffic(daemon.url, reqs)
    assert wait_for_pairs(daemon.url, N_REQUESTS, 120, daemon.token)["overall"]["pairs"] == N_REQUESTS
    _feedback(daemon.url, reqs[: int(feedback_share * N_REQUESTS)], daemon.headers)
    labelled = _label_evaluation_lane(daemon, {r.request_id: r.label for r in reqs})
    assert labelled > 0
    report: dict = requests.get(f"{daemon.url}/shadow/report", headers=daemon.headers, timeout=30).json()
    return report


def test_a_retrain_with_another_seed_does_not_fail(shadowd_app, seed_models):
    report = _run(shadowd_app, _torchscript("seed1", seed_models["seed1"]), seed_models, feedback_share=0.2)
    overall = report["overall"]
    assert 0 < overall["flip_rate"] < 0.1  # it answers differently, a little ...
    assert overall["labels"]["by_channel"]["feedback"] > 0 and overall["labels"]["by_channel"]["evaluation"] > 0
    failed = [f"{c['check']} on {c['slice']}: {c['reason']}" for c in report["checks"] if c["status"] == "fail"]
    assert failed == [] and report["gate"]["verdict"] != "FAIL", failed  # ... and is not worse


def test_a_candidate_broken_on_dark_fails_there_and_nowhere_else(shadowd_app, seed_models):
    broken = {
        "name": "seed1-wrong-when-dark",
        "kind": "python",
        "target": "shadowd.testing:WrongWhenDark",
        "kwargs": {"path": str(seed_models["seed1"]), "share": 0.3},
        "input_shape": [64],
        "output": "logits",
    }
    report = _run(shadowd_app, broken, seed_models, feedback_share=0.0)  # only the annotator's labels
    assert report["gate"]["verdict"] == "FAIL"
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert {c["slice"] for c in failed} <= {"dark", "overall"}  # daylight is untouched
    (accuracy,) = [c for c in failed if c["slice"] == "dark" and c["check"] == "accuracy"]
    assert accuracy["role"] == "quality" and accuracy["value"] > 0.15
    # decided by the evaluation sample: the only labels there are
    assert report["slices"]["dark"]["labels"]["by_channel"] == {"evaluation": accuracy["n"]}
    assert not [c for c in failed if c["check"] == "gross_flip_rate"]  # a quality regression, not breakage

"""The shadow worker's model calls without Ray: a remote candidate (``kind: http``, against the small real
HTTP server in tests/fixtures/model_server.py) that fails, hangs or answers garbage becomes an outcome on
its pairs, never an exception, and a call cancelled at the timeout frees its slot at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from shadowd.models import HttpModel
from shadowd.models.runtime import load_model
from shadowd.serving.worker import MODEL_THREADS, _Runner, run_role
from tests.fixtures.model_server import ModelServer

X = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)


def _runner(url: str, runner_timeout_s: float = 1.0, **fields: Any) -> tuple[_Runner, list[str]]:
    """A remote candidate's runner (``runner_timeout_s``: shadow.candidate_timeout_s) and the failure reasons
    it counted."""
    cfg = HttpModel.model_validate({"name": "cand", "kind": "http", "url": url, "input_shape": [8], **fields})
    failures: list[str] = []
    return _Runner(load_model(cfg), runner_timeout_s, failures.append), failures


@pytest.fixture
def server():
    with ModelServer() as s:
        yield s


def test_a_remote_candidates_answers_are_its_servers(server):
    server.add("cand", seed=1)
    runner, failures = _runner(server.url)
    outputs, _ = asyncio.run(run_role(runner, "candidate", X, 4))
    assert [o.values for o in outputs] == server.direct("cand", X)
    assert {o.outcome for o in outputs} == {"ok"} and failures == []


@pytest.mark.parametrize(
    "mode, outcome, reason",
    [
        ("error500", "error", "status"),
        ("not_json", "error", "bad_answer"),
        ("wrong_rows", "bad_shape", "bad_answer"),
        ("hang", "timeout", "timeout"),
    ],
)
def test_a_remote_candidates_failure_is_an_outcome(server, mode, outcome, reason):
    server.add("cand", mode=mode)
    runner, failures = _runner(server.url, timeout_s=0.5)
    outputs, _ = asyncio.run(run_role(runner, "candidate", X, 4))
    assert len(outputs) == 3 and {o.outcome for o in outputs} == {outcome}
    assert all(o.values is None and o.detail for o in outputs)
    assert failures == [reason]


def test_a_hung_remote_call_is_cancelled_at_the_timeout_and_frees_its_slot(server):
    server.add("hung", mode="hang")
    # the model's own timeout_s is longer: the worker's bound (candidate_timeout_s) cancels the call
    hung, failures = _runner(server.url, 0.3, timeout_s=5.0, payload={"protocol": "oip_v2", "model_name": "hung"})

    async def calls() -> tuple[list[Any], float]:
        t0 = time.perf_counter()
        results = [await hung(X) for _ in range(MODEL_THREADS + 1)]  # more calls than slots, one after another
        return results, time.perf_counter() - t0

    results, took_s = asyncio.run(calls())
    assert [r[0] for r in results] == ["timeout"] * (MODEL_THREADS + 1)
    assert all("no answer within 0.3 s" in r[2] for r in results)  # each waited its timeout: a slot was free
    assert took_s < 3.0 and failures == ["timeout"] * (MODEL_THREADS + 1)

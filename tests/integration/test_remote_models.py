"""Remote models (``kind: http``) on real Ray Serve: a real MLServer (Open Inference Protocol v2;
tests/fixtures/mlserver.py) as production and as candidate, and a plain-JSON server
(tests/fixtures/model_server.py) as production.

Production answers through shadowd are the server's own answers, exactly; a remote candidate that answers
500 or hangs only changes the outcome on its pairs, never a production answer or its latency; a remote
production that answers 500 gets the client a 502, one that hangs a 504, each with a one-line reason in a
JSON body (no exception text), counted in ``shadowd_remote_model_failures_total``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shadowd.launcher import wait_for_pairs
from tests.fixtures.mlserver import MODELS, MLServer
from tests.fixtures.model_server import ModelServer
from tests.fixtures.services import free_port

pytestmark = pytest.mark.integration

N = 20
TIMEOUT_S = 1.0  # production's timeout_s
CANDIDATE_TIMEOUT_S = 4.0  # the candidate's: a production answer that waited for it would take as long


def _oip(name: str, url: str, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    return {"name": name, "kind": "http", "url": url, "input_shape": [8], "timeout_s": timeout_s}


def _requests(n: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    return [(f"remote-{seed}-{i}", {"inputs": rng.normal(size=8).round(4).tolist()}) for i in range(n)]


def _post(session: requests.Session, url: str, rid: str, body: dict[str, Any]) -> tuple[requests.Response, float]:
    t0 = time.perf_counter()
    resp = session.post(f"{url}/predict", json=body, headers={"X-Request-ID": rid}, timeout=30)
    return resp, time.perf_counter() - t0


def _send_all(url: str, reqs: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, dict[str, Any]], float]:
    """Answers by request id (each must be a 200), and the slowest request's seconds."""
    answers, worst_s = {}, 0.0
    with requests.Session() as s:
        for rid, body in reqs:
            resp, took_s = _post(s, url, rid, body)
            assert resp.status_code == 200, resp.text
            answers[rid] = resp.json()
            worst_s = max(worst_s, took_s)
    return answers, worst_s


def _server_rows(mlserver: MLServer, model: str, reqs: list[tuple[str, dict[str, Any]]]) -> dict[str, list[float]]:
    """What MLServer itself answers for each request's input, asked directly, one example per call (as the
    ingress asks it)."""
    out = {}
    for rid, body in reqs:
        (tensor,) = mlserver.infer(model, [body["inputs"]])["outputs"]
        assert tensor["shape"] == [1, 4]
        out[rid] = tensor["data"]
    return out


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def _metric(port: int, name: str, labels: dict[str, str]) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@pytest.fixture
def mls(mlserver: MLServer) -> Iterator[MLServer]:
    for name in MODELS:
        mlserver.set_mode(name, "ok")
    yield mlserver
    for name in MODELS:
        mlserver.set_mode(name, "ok")


def test_mlserver_as_production_and_candidate(shadowd_app, mls):
    metrics_port = free_port()
    daemon = shadowd_app(
        {
            "task": "classification",
            "models": {"production": _oip("prod", mls.url), "candidate": _oip("cand", mls.url, CANDIDATE_TIMEOUT_S)},
            "shadow": {"sample_share": 1.0, "candidate_timeout_s": CANDIDATE_TIMEOUT_S + 1.0},
            "metrics": {"port": metrics_port, "host": "127.0.0.1"},
        }
    )

    # Both answer: production's answers are MLServer's own; every pair is compared, flips counted exactly.
    reqs = _requests(N, seed=1)
    answers, _ = _send_all(daemon.url, reqs)
    prod = _server_rows(mls, "prod", reqs)
    cand = _server_rows(mls, "cand", reqs)
    for rid, _ in reqs:
        assert answers[rid]["model"] == "prod" and answers[rid]["outputs"] == prod[rid], rid
        assert answers[rid]["prediction"] == int(np.argmax(prod[rid]))
    report = wait_for_pairs(daemon.url, N, 60, daemon.token)
    overall = report["overall"]
    assert overall["pairs"] == N and _nonzero(overall["candidate_outcomes"]) == {"ok": N}, overall
    assert overall["flips"] == sum(int(np.argmax(prod[r]) != np.argmax(cand[r])) for r, _ in reqs), overall

    # The candidate answers HTTP 500, then hangs: production's answers and latency do not change.
    expected = {"ok": N}
    for mode, outcome, seed in (("error", "error", 2), ("hang", "timeout", 3)):
        mls.set_mode("cand", mode)
        reqs = _requests(N, seed=seed)
        answers, worst_s = _send_all(daemon.url, reqs)
        prod = _server_rows(mls, "prod", reqs)
        for rid, _ in reqs:
            assert answers[rid]["outputs"] == prod[rid], (mode, rid)
        assert worst_s < CANDIDATE_TIMEOUT_S / 2, (mode, worst_s)  # no request waited for the candidate
        done = N * seed
        overall = wait_for_pairs(daemon.url, done, 60, daemon.token)["overall"]
        expected[outcome] = N
        assert overall["pairs"] == done and _nonzero(overall["candidate_outcomes"]) == expected, (mode, overall)
        reason = {"error": "status", "hang": "timeout"}[mode]
        assert _metric(metrics_port, "shadowd_remote_model_failures_total", {"role": "candidate", "reason": reason})
    mls.set_mode("cand", "ok")

    # Production answers HTTP 500: the client gets a 502; production hangs: a 504 after timeout_s.
    with requests.Session() as s:
        for mode, status, words in (
            ("error", 502, "its server answered HTTP 500"),
            ("hang", 504, f"no answer within {TIMEOUT_S} s (timeout_s)"),
        ):
            mls.set_mode("prod", mode)
            for i in range(3):
                rid = f"remote-prod-{mode}-{i}"
                resp, took_s = _post(s, daemon.url, rid, {"inputs": [0.5] * 8})
                assert resp.status_code == status, resp.text
                assert resp.json() == {"error": f"production model 'prod': {words}", "request_id": rid}
                assert "Traceback" not in resp.text and mls.url not in resp.text
                assert took_s < TIMEOUT_S + 2.0, took_s
        mls.set_mode("prod", "ok")
        resp, _ = _post(s, daemon.url, "remote-prod-back", {"inputs": [0.5] * 8})
        assert resp.status_code == 200, resp.text
        assert resp.json()["outputs"] == mls.infer("prod", [[0.5] * 8])["outputs"][0]["data"]
    for reason in ("status", "timeout"):
        labels = {"role": "production", "reason": reason}
        assert _metric(metrics_port, "shadowd_remote_model_failures_total", labels) == 3, reason
    # A request production could not answer has no pair: nothing to compare the candidate with.
    assert wait_for_pairs(daemon.url, 3 * N + 1, 60, daemon.token)["overall"]["pairs"] == 3 * N + 1


def test_a_plain_json_production_answers_as_its_server(shadowd_app, mls):
    with ModelServer() as server:
        server.add("digits", seed=7)
        production = {
            "name": "digits",
            "kind": "http",
            "url": f"{server.url}/json/digits",
            "input_shape": [8],
            "payload": {"protocol": "json", "body": {"instances": "$inputs"}, "output_path": "$.predictions"},
        }
        daemon = shadowd_app(
            {
                "task": "classification",
                "models": {"production": production, "candidate": _oip("cand", mls.url)},
                "shadow": {"sample_share": 1.0, "candidate_timeout_s": 1.5},
            }
        )
        reqs = _requests(N, seed=4)
        answers, _ = _send_all(daemon.url, reqs)
        for rid, body in reqs:
            assert answers[rid]["outputs"] == server.direct("digits", np.array([body["inputs"]]))[0], rid
        overall = wait_for_pairs(daemon.url, N, 60, daemon.token)["overall"]
        assert overall["pairs"] == N and _nonzero(overall["candidate_outcomes"]) == {"ok": N}, overall
        # one call per request, the batch of one example as the template says (inputs as float32 values)
        sent = [{"instances": [np.float32(b["inputs"]).tolist()]} for _, b in reqs]
        assert [r.body for r in server.received] == sent

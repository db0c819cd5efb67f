"""shadowd on real Ray Serve over HTTP: production answers are exactly what
production alone returns whatever the candidate does, counts are exact, and
bad requests get a 4xx while the daemon keeps serving."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml

from shadowd.launcher import wait_for_pairs
from shadowd.sampling import is_sampled
from shadowd.testing import ToyClassifier
from tests.fixtures.ray_serve import toy_model

pytestmark = pytest.mark.integration

N = 40
SLICES = [{"name": "high_x0", "where": {"field": "x0", "op": "gt", "value": 0.0}}]


def _requests(n: int = N, seed: int = 1) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = rng.normal(size=8).round(4)
        out.append((f"req-{seed}-{i}", {"inputs": x.tolist(), "features": {"x0": float(x[0])}}))
    return out


def _config(candidate: dict | None, **shadow) -> dict:
    return {
        "task": "classification",
        "models": {"production": toy_model("prod", seed=0), "candidate": candidate},
        "shadow": {"sample_share": 1.0, "candidate_timeout_s": 1.5, **shadow},
        "slices": SLICES,
    }


def _send_all(url: str, reqs: list[tuple[str, dict]]) -> tuple[dict[str, dict], float]:
    """Answers by request id, and the slowest request's latency."""
    answers, worst_s = {}, 0.0
    with requests.Session() as s:
        for rid, body in reqs:
            t0 = time.perf_counter()
            r = s.post(f"{url}/predict", json=body, headers={"X-Request-ID": rid}, timeout=30)
            worst_s = max(worst_s, time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            assert r.headers["X-Request-ID"] == rid
            answers[rid] = r.json()
    return answers, worst_s


def _production_alone(reqs) -> dict[str, list[float]]:
    model = ToyClassifier(seed=0)
    return {rid: model.predict(np.asarray([body["inputs"]], dtype=np.float32))[0].tolist() for rid, body in reqs}


@pytest.mark.parametrize(
    "mode, outcome",
    [("none", "ok"), ("raise", "error"), ("hang", "timeout"), ("nan", "nan"), ("wrong_shape", "bad_shape")],
)
def test_production_answers_unchanged_whatever_the_candidate_does(shadowd_app, mode, outcome):
    reqs = _requests()
    candidate = toy_model("cand", "shadowd.testing:FaultyModel", mode=mode, hang_s=6.0, seed=1)
    daemon = shadowd_app(_config(candidate))
    answers, worst_s = _send_all(daemon.url, reqs)

    expected = _production_alone(reqs)
    for rid, _ in reqs:
        assert answers[rid]["model"] == "prod"
        assert np.allclose(answers[rid]["outputs"], expected[rid], rtol=1e-6, atol=1e-9)
        assert answers[rid]["prediction"] == int(np.argmax(expected[rid]))
    if mode == "hang":
        # The candidate hangs 6 s per call; no request waited for it.
        assert worst_s < 3.0, worst_s

    report = wait_for_pairs(daemon.url, N, 60, daemon.token)
    overall = report["overall"]
    assert overall["pairs"] == N
    assert overall["candidate_outcomes"][outcome] == N, overall
    assert sum(overall["candidate_outcomes"].values()) == N
    n_high = sum(1 for _, b in reqs if b["features"]["x0"] > 0)
    assert report["slices"]["high_x0"]["pairs"] == n_high


def test_report_counts_flips_exactly(shadowd_app):
    reqs = _requests(60, seed=2)
    daemon = shadowd_app(_config(toy_model("cand", seed=5)))
    _send_all(daemon.url, reqs)
    report = wait_for_pairs(daemon.url, 60, 60, daemon.token)
    prod, cand = ToyClassifier(seed=0), ToyClassifier(seed=5)
    x = np.asarray([b["inputs"] for _, b in reqs], dtype=np.float32)
    flips = int((prod.predict(x).argmax(1) != cand.predict(x).argmax(1)).sum())
    assert 0 < flips < 60
    assert report["overall"]["compared"] == 60
    assert report["overall"]["flips"] == flips
    high = x[:, 0] > 0
    assert report["slices"]["high_x0"]["flips"] == int(
        (prod.predict(x[high]).argmax(1) != cand.predict(x[high]).argmax(1)).sum()
    )


def _cpu_priority_by_deployment() -> dict[str, set[tuple[int, int]]]:
    """(nice, scheduling policy) of every thread of each shadowd replica's process."""
    import os

    from ray._private import state

    found = {}
    for actor in state.actors().values():
        name = actor.get("Name") or ""
        if actor["State"] == "ALIVE" and "#Shadow" in name:
            tids = map(int, os.listdir(f"/proc/{actor['Pid']}/task"))
            priorities = {(os.getpriority(os.PRIO_PROCESS, t), os.sched_getscheduler(t)) for t in tids}
            found[name.split("#")[1]] = priorities
    return found


@pytest.mark.parametrize("cpu, expected", [("low", (19, 0)), ("idle", None)])
def test_shadow_work_runs_behind_production_on_the_cpu(shadowd_app, cpu, expected):
    """Every thread of the worker and hub processes is niced to 19 (or SCHED_IDLE); the ingress (production)
    keeps the priority Ray starts it with."""
    import os

    shadowd_app({**_config(toy_model("cand", seed=5)), "serving": {"shadow_cpu": cpu}})
    found = _cpu_priority_by_deployment()
    assert all(nice < 19 and policy == os.SCHED_OTHER for nice, policy in found["ShadowIngress"]), found
    for name in ("ShadowWorker", "ShadowHub"):
        if expected is None:
            assert {policy for _, policy in found[name]} == {os.SCHED_IDLE}, found
        else:
            assert found[name] == {(19, os.SCHED_OTHER)}, found


def test_the_gate_gauge_has_a_value_without_any_traffic(shadowd_app):
    """The hub's health check starts its loop: the verdict gauge (what Argo Rollouts' and Flagger's Prometheus
    analyses query) exists within seconds of a start, before any request or report read."""
    from tests.fixtures.services import free_port

    port = free_port()
    shadowd_app({**_config(toy_model("cand", seed=5)), "metrics": {"port": port, "host": "127.0.0.1"}})
    deadline, samples = time.monotonic() + 45, []
    while not samples and time.monotonic() < deadline:
        time.sleep(0.5)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        samples = re.findall(r'^shadowd_gate_verdict\{candidate="cand"\} (\S+)$', text, re.M)
    assert samples == ["2.0"]  # INCONCLUSIVE: no pairs yet


def test_sampling_is_by_request_id_hash(shadowd_app):
    reqs = _requests(80, seed=3)
    daemon = shadowd_app(_config(toy_model("cand", seed=1), sample_share=0.5))
    _send_all(daemon.url, reqs)
    expected = sum(is_sampled(rid, 0.5) for rid, _ in reqs)
    assert 20 < expected < 60
    wait_for_pairs(daemon.url, expected, 60, daemon.token)
    time.sleep(0.5)  # nothing more should arrive
    report = requests.get(f"{daemon.url}/shadow/report", headers=daemon.headers, timeout=10).json()
    assert report["overall"]["pairs"] == expected


def test_bad_requests_get_4xx_and_daemon_keeps_serving(shadowd_app):
    daemon = shadowd_app({**_config(toy_model("cand", seed=1)), "serving": {"max_body_bytes": 2048}})
    url, auth = daemon.url, daemon.headers
    good = {"inputs": [0.1] * 8}
    deep = b'{"inputs": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], "features": {"a": ' + b"[" * 300 + b"]" * 300 + b"}}"
    cases: list[tuple[dict[str, Any], int, str]] = [
        (dict(data=b"{not json", headers={"Content-Type": "application/json"}), 400, "not valid JSON"),
        (dict(json=[1, 2, 3]), 422, "JSON object"),
        (dict(json={"features": {}}), 422, "missing 'inputs'"),
        (dict(json={"inputs": [0.1] * 3}), 422, "shape [3]"),
        (dict(json={"inputs": [[0.1] * 8]}), 422, "shape [1, 8]"),
        (dict(json={"inputs": ["a"] * 8}), 422, "must be numbers"),
        (dict(json={"inputs": [0.1] * 8, "features": [1]}), 422, "'features' must be an object"),
        (dict(json={"inputs": [0.1] * 8, "extra": 1}), 422, "unknown field"),
        (dict(data=json.dumps({"inputs": [0.1] * 8, "pad": "x" * 4000})), 413, "limit is 2048"),
        (dict(json=good, headers={"X-Request-ID": "bad id with spaces"}), 400, "X-Request-ID"),
        # input limits: nothing a client sends may reach the shadow path in a shape that breaks it
        (dict(data=deep, headers={"X-Request-ID": "deep"}), 422, "serving.max_feature_depth is 4"),
        (dict(data=b'{"inputs": [NaN, 1, 1, 1, 1, 1, 1, 1]}'), 422, "serving.allow_nonfinite_inputs"),
        (dict(data=b'{"inputs": [1e999, 1, 1, 1, 1, 1, 1, 1]}'), 422, "serving.allow_nonfinite_inputs"),
        (dict(json={"inputs": [0.1] * 8, "features": {f"k{i}": i for i in range(65)}}), 413, "max_feature_keys"),
    ]
    for kwargs, status, reason in cases:
        r = requests.post(f"{url}/predict", timeout=10, **kwargs)
        assert r.status_code == status, (kwargs, r.status_code, r.text)
        assert reason in r.json()["error"], r.text
    chunked = requests.post(f"{url}/predict", data=(b" " * 1024 for _ in range(8)), timeout=10)  # no Content-Length
    assert chunked.status_code == 413 and "limit of 2048" in chunked.json()["error"]
    inf_label = requests.post(
        f"{url}/feedback", data=b'{"request_id": "x", "label": Infinity}', headers=auth, timeout=10
    )
    assert inf_label.status_code == 422 and "finite" in inf_label.json()["error"]
    assert requests.get(f"{url}/predict", timeout=10).status_code == 405
    assert requests.get(f"{url}/nope", timeout=10).status_code == 404
    fb = requests.post(f"{url}/feedback", json={"request_id": "x"}, headers=auth, timeout=10)
    assert fb.status_code == 422 and "label" in fb.json()["error"]
    newline_id = requests.post(f"{url}/feedback", json={"request_id": "x\n", "label": 1}, headers=auth, timeout=10)
    assert newline_id.status_code == 422 and "request_id" in newline_id.json()["error"]

    r = requests.post(f"{url}/predict", json=good, timeout=10)
    assert r.status_code == 200
    generated = r.headers["X-Request-ID"]  # generated when not sent, and the same id the pair gets
    assert len(generated) >= 16 and r.json()["request_id"] == generated
    # The shadow path lives on: a good request after all that is still compared.
    assert wait_for_pairs(url, 1, 60, daemon.token)["overall"]["pairs"] == 1


def _ray_logs() -> list:
    import ray

    logs = ray._private.worker.global_worker.node.get_logs_dir_path()  # no public accessor
    return [p for p in Path(logs).rglob("*") if p.is_file()]


def test_tokens_guard_feedback_report_and_reset_over_http(shadowd_app, tmp_path):
    tokens = {
        "labels": "labels-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "read": "read-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "admin": "admin-" + uuid.uuid4().hex + uuid.uuid4().hex,
    }
    (tmp_path / "tokens.yaml").write_text(
        yaml.safe_dump([{"name": f"{scope}-client", "token": t, "scopes": [scope]} for scope, t in tokens.items()])
    )
    daemon = shadowd_app({**_config(toy_model("cand", seed=1)), "auth": {"tokens_file": str(tmp_path / "tokens.yaml")}})
    assert daemon.token is None  # configured tokens: nothing generated
    url = daemon.url

    def bearer(scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[scope]}"}

    reqs = _requests(5, seed=9)
    _send_all(url, reqs)  # /predict stays open
    feedback = {"request_id": reqs[0][0], "label": 1}
    r = requests.post(f"{url}/feedback", json=feedback, timeout=10)
    assert r.status_code == 401 and "scope labels" in r.json()["error"] and r.headers["WWW-Authenticate"]
    r = requests.post(f"{url}/feedback", json=feedback, headers=bearer("read"), timeout=10)
    assert r.status_code == 403 and "token 'read-client' lacks scope labels" in r.json()["error"]
    assert requests.post(f"{url}/shadow/reset", headers=bearer("labels"), timeout=10).status_code == 403
    assert requests.get(f"{url}/shadow/report", timeout=10).status_code == 401
    report = wait_for_pairs(url, 5, 60, tokens["read"])
    assert report["overall"]["pairs"] == 5
    r = requests.post(f"{url}/feedback", json=feedback, headers=bearer("labels"), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "joined"
    r = requests.post(f"{url}/shadow/reset", headers=bearer("admin"), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "reset"
    report = requests.get(f"{url}/shadow/report", headers=bearer("read"), timeout=10).json()
    assert report["overall"]["pairs"] == 0

    # No token in any log Ray keeps: replica logs, access logs, the proxy's.
    logs = _ray_logs()
    assert any(b"POST / 403" in p.read_bytes() for p in logs)  # the refused requests above are in there
    for path in logs:
        data = path.read_bytes()
        assert not any(t.encode() in data for t in tokens.values()), path


def test_a_failing_production_model_answers_500_with_the_request_id_only(shadowd_app):
    raw = _config(None)
    raw["models"]["production"] = toy_model("prod", "shadowd.testing:FaultyModel", mode="raise", seed=0)
    daemon = shadowd_app(raw)
    r = requests.post(
        f"{daemon.url}/predict", json={"inputs": [0.1] * 8}, headers={"X-Request-ID": "boom-1"}, timeout=10
    )
    assert r.status_code == 500
    assert r.json() == {
        "error": "the production model failed; the shadowd log has the details under request id boom-1",
        "request_id": "boom-1",
    }


def test_serve_batching_of_production_keeps_answers_exact(shadowd_app):
    """With models.production.max_batch_size > 1 the ingress batches concurrent requests (Ray Serve
    @serve.batch); every client still gets exactly its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    raw = _config(toy_model("cand", seed=1))
    raw["models"]["production"] = {**toy_model("prod", seed=0), "max_batch_size": 8, "batch_wait_timeout_s": 0.01}
    daemon = shadowd_app(raw)
    reqs = _requests(48, seed=4)

    def one(item):
        rid, body = item
        r = requests.post(f"{daemon.url}/predict", json=body, headers={"X-Request-ID": rid}, timeout=30)
        return rid, r.status_code, r.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, reqs))
    expected = _production_alone(reqs)
    for rid, status, body in answers:
        assert status == 200 and body["request_id"] == rid
        assert np.allclose(body["outputs"], expected[rid], rtol=1e-6, atol=1e-9)
    assert wait_for_pairs(daemon.url, 48, 60, daemon.token)["overall"]["pairs"] == 48


def test_serves_own_health_answers_while_the_model_path_is_overloaded(shadowd_app):
    """The chart's liveness and readiness probes ask Serve's proxy (/-/healthz), not the app:
    with the ingress saturated by a slow model, the app's /healthz is refused (503), so a probe
    on it would restart the pod; the proxy's own health still answers 200."""
    import threading

    raw = _config(None)
    raw["models"]["production"] = toy_model("prod", "shadowd.testing:SleepyModel", latency_ms=1000, seed=0)
    raw["serving"] = {"max_ongoing_requests": 1, "max_queued_requests": 1}
    daemon = shadowd_app(raw)
    stop = threading.Event()
    answered: list[int] = []

    def load() -> None:  # keep one request running and one waiting, whatever the timing
        with requests.Session() as s:
            while not stop.is_set():
                answered.append(s.post(f"{daemon.url}/predict", json={"inputs": [0.1] * 8}, timeout=60).status_code)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        seen = []
        deadline = time.monotonic() + 60
        while 503 not in seen and time.monotonic() < deadline:
            seen.append(requests.get(f"{daemon.url}/healthz", timeout=60).status_code)
            proxy_health = requests.get(f"{daemon.url}/-/healthz", timeout=60).status_code
            assert proxy_health == 200, seen
        assert 503 in seen  # the app's own health is refused while its queue is full
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert 200 in answered  # production kept answering the requests it took

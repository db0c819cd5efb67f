"""The ingress's HTTP behaviour without Ray: tokens per route, 500 bodies, logs.

``ShadowIngress`` is the real class, called with real Starlette requests; the
hub handle is a stand-in with the handle's shape (``method.remote(...)``
returns an awaitable) answering like the hub. No Ray is started (Ray Serve
runs the same class in tests/integration/test_serving.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import numpy as np
import pytest
import yaml
from starlette.requests import Request

from shadowd.config import parse_config
from shadowd.serving.ingress import ShadowIngress
from tests.fixtures.model_server import ModelServer

LABELS_TOKEN = "labels-" + "1" * 40
ADMIN_TOKEN = "admin-" + "2" * 40
TOKENS = [
    {"name": "feedback-svc", "token": LABELS_TOKEN, "scopes": ["labels"]},
    {"name": "ci", "token": ADMIN_TOKEN, "scopes": ["read", "admin"]},
]


class _Method:
    def __init__(self, hub: StandInHub, name: str):
        self._hub, self._name = hub, name

    def remote(self, *args: Any) -> Any:
        async def call() -> Any:
            self._hub.calls.append(self._name)
            if self._hub.broken:
                raise RuntimeError("hub replica died: ActorDiedError(secret internals)")
            return {
                "feedback": (200, {"status": "joined"}),
                "report_response": (200, {"overall": {"pairs": 0}}),
                "reset": {"status": "reset"},
            }.get(self._name)

        return call()


class StandInHub:
    def __init__(self, broken: bool = False):
        self.calls: list[str] = []
        self.broken = broken
        for name in ("feedback", "report_response", "reset", "add_items"):
            setattr(self, name, _Method(self, name))


class Ingress(ShadowIngress):
    """ShadowIngress as is, but for its async ``__del__`` (the drain Ray Serve awaits at shutdown,
    which garbage collection outside Serve cannot await)."""

    def __del__(self) -> None:  # type: ignore[override]
        pass


def ingress(tmp_path, hub: StandInHub, production: dict | None = None, **auth: Any) -> ShadowIngress:
    (tmp_path / "tokens.yaml").write_text(yaml.safe_dump(TOKENS))
    cfg = parse_config(
        {
            "task": "classification",
            "data_dir": str(tmp_path / "data"),
            "models": {
                "production": production
                or {"name": "p", "kind": "python", "target": "shadowd.testing:ToyClassifier", "input_shape": [8]}
            },
            "serving": {"host": "0.0.0.0"},
            "auth": {"tokens_file": str(tmp_path / "tokens.yaml"), **auth},
        }
    )
    return Ingress(cfg, None, [hub])


class Body:
    """An ASGI receive() that remembers whether anyone read the body."""

    def __init__(self, body: bytes):
        self.body, self.read = body, False

    async def __call__(self) -> dict[str, Any]:
        if self.read:
            return {"type": "http.disconnect"}
        self.read = True
        return {"type": "http.request", "body": self.body, "more_body": False}


def request(method: str, path: str, body: Any = None, token: str | None = None) -> tuple[Request, Body]:
    raw = json.dumps(body).encode() if body is not None else b""
    headers = [(b"content-length", str(len(raw)).encode()), (b"content-type", b"application/json")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    receive = Body(raw)
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": headers,
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("test", 80),
    }
    return Request(scope, receive), receive


def call(app: ShadowIngress, method: str, path: str, body: Any = None, token: str | None = None):
    req, receive = request(method, path, body, token)
    resp = asyncio.run(app(req))
    return resp.status_code, json.loads(bytes(resp.body)), dict(resp.headers), receive.read


FEEDBACK = {"request_id": "r1", "label": 1}


def test_feedback_reset_and_report_need_their_scope(tmp_path):
    hub = StandInHub()
    app = ingress(tmp_path, hub)
    status, body, headers, read = call(app, "POST", "/feedback", FEEDBACK)
    assert status == 401 and "missing token" in body["error"] and "scope labels" in body["error"]
    assert headers["www-authenticate"] == 'Bearer realm="shadowd"'
    assert not read and hub.calls == []  # refused before the body was read or the hub asked
    status, body, headers, _ = call(app, "POST", "/shadow/reset", token=LABELS_TOKEN)
    assert status == 403 and "token 'feedback-svc' lacks scope admin" in body["error"]
    assert "www-authenticate" not in headers
    assert call(app, "GET", "/shadow/report", token=LABELS_TOKEN)[0] == 403
    assert call(app, "POST", "/feedback", FEEDBACK, token="n" * 40)[0] == 401
    assert hub.calls == []

    assert call(app, "POST", "/feedback", FEEDBACK, token=LABELS_TOKEN)[:2] == (200, {"status": "joined"})
    assert call(app, "POST", "/shadow/reset", token=ADMIN_TOKEN)[:2] == (200, {"status": "reset"})
    assert call(app, "GET", "/shadow/report", token=ADMIN_TOKEN)[0] == 200
    assert hub.calls == ["feedback", "reset", "report_response"]

    registry = app._metrics.registry
    for scope, status_, n in (("labels", "401", 2), ("admin", "403", 1), ("read", "403", 1)):
        labels = {"scope": scope, "status": status_}
        assert registry.get_sample_value("shadowd_auth_failures_total", labels) >= n


def test_predict_and_healthz_are_open_unless_predict_requires_a_token(tmp_path):
    x = {"inputs": [0.1] * 8}
    open_app = ingress(tmp_path, StandInHub())
    assert call(open_app, "POST", "/predict", x)[0] == 200
    assert call(open_app, "GET", "/healthz")[0] == 200
    locked = ingress(tmp_path, StandInHub(), predict_requires_token=True)
    status, body, _, read = call(locked, "POST", "/predict", x)
    assert status == 401 and "scope predict" in body["error"] and not read
    assert call(locked, "POST", "/predict", x, token=ADMIN_TOKEN)[0] == 403
    assert call(locked, "GET", "/healthz")[0] == 200  # probes need no token


def test_a_failing_model_answers_500_with_the_request_id_not_the_exception(tmp_path, caplog):
    faulty = {
        "name": "p",
        "kind": "python",
        "target": "shadowd.testing:FaultyModel",
        "kwargs": {"mode": "raise"},
        "input_shape": [8],
    }
    app = ingress(tmp_path, StandInHub(), production=faulty)
    with caplog.at_level(logging.ERROR, logger="shadowd"):
        status, body, _, _ = call(app, "POST", "/predict", {"inputs": [0.1] * 8})
    assert status == 500
    rid = body["request_id"]
    assert (
        rid and rid in body["error"] and "exploded" not in json.dumps(body) and "RuntimeError" not in json.dumps(body)
    )
    assert "candidate exploded" in caplog.text and rid in caplog.text  # the details are in the log, under the id


def test_an_internal_failure_answers_500_with_the_request_id(tmp_path, caplog):
    app = ingress(tmp_path, StandInHub(broken=True))
    with caplog.at_level(logging.ERROR, logger="shadowd"):
        status, body, _, _ = call(app, "GET", "/shadow/report", token=ADMIN_TOKEN)
    assert status == 500 and body["request_id"] and "secret internals" not in json.dumps(body)
    assert "secret internals" in caplog.text


@pytest.mark.parametrize("level", [logging.DEBUG])
def test_tokens_never_reach_logs_or_error_bodies(tmp_path, caplog, level):
    app = ingress(tmp_path, StandInHub(broken=True))
    near_miss = ADMIN_TOKEN[:-1] + "3"
    bodies = []
    with caplog.at_level(level):
        for token, method, path in (
            (LABELS_TOKEN, "POST", "/shadow/reset"),
            (near_miss, "POST", "/shadow/reset"),
            (ADMIN_TOKEN, "GET", "/shadow/report"),  # the hub fails: a 500 logged with a traceback
            (LABELS_TOKEN, "POST", "/feedback"),
        ):
            bodies.append(json.dumps(call(app, method, path, FEEDBACK, token=token)[1]))
    for secret in (LABELS_TOKEN, ADMIN_TOKEN, near_miss, "1" * 40, "2" * 39):
        assert secret not in caplog.text
        assert not any(secret in b for b in bodies)


# ---- a production model served elsewhere (kind: http), against a small real HTTP server ----

X = [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8]


def remote(url: str, **fields: Any) -> dict[str, Any]:
    return {"name": "remote-prod", "kind": "http", "url": url, "input_shape": [8], **fields}


@pytest.fixture
def model_server():
    with ModelServer() as server:
        yield server


def test_a_remote_production_answer_is_the_servers_own(tmp_path, model_server):
    model_server.add("remote-prod", seed=2)
    app = ingress(tmp_path, StandInHub(), production=remote(model_server.url))
    status, body, _, _ = call(app, "POST", "/predict", {"inputs": X})
    expected = model_server.direct("remote-prod", np.array([X]))[0]
    assert status == 200 and body["outputs"] == expected and body["model"] == "remote-prod"
    assert body["prediction"] == int(np.argmax(expected))
    assert model_server.received[-1].path == "/v2/models/remote-prod/infer"


@pytest.mark.parametrize(
    "mode, status, reason, outcome, words",
    [
        ("error500", 502, "status", "error", "its server answered HTTP 500"),
        ("not_json", 502, "bad_answer", "error", "the answer is not JSON"),
        ("wrong_rows", 502, "bad_answer", "error", "output 'probabilities' has shape [2, 4] for 1 example(s)"),
        ("hang", 504, "timeout", "timeout", "no answer within 0.5 s (timeout_s)"),
        ("refused", 502, "refused", "error", "cannot connect to its server"),
    ],
)
def test_a_remote_production_failure_answers_502_or_504_with_a_reason(
    tmp_path, caplog, model_server, mode, status, reason, outcome, words
):
    model_server.add("remote-prod", mode=mode)
    url = model_server.url
    if mode == "refused":
        model_server.stop()
    app = ingress(tmp_path, StandInHub(), production=remote(url, timeout_s=0.5))
    registry = app._metrics.registry  # one per process: count what this call adds
    failures = ("shadowd_remote_model_failures_total", {"role": "production", "reason": reason})
    requests = ("shadowd_requests_total", {"role": "production", "outcome": outcome, "model": "remote-prod"})
    before = [registry.get_sample_value(*sample) or 0.0 for sample in (failures, requests)]
    with caplog.at_level(logging.WARNING, logger="shadowd"):
        got, body, _, _ = call(app, "POST", "/predict", {"inputs": X})
    assert got == status, body
    assert set(body) == {"error", "request_id"} and body["request_id"]
    assert body["error"] == f"production model 'remote-prod': {words}", body
    text = json.dumps(body)
    assert "Traceback" not in text and "model exploded" not in text and url not in text
    after = [registry.get_sample_value(*sample) for sample in (failures, requests)]
    assert after == [before[0] + 1, before[1] + 1]
    assert body["request_id"] in caplog.text
    if mode == "error500":
        assert "model exploded" in caplog.text  # the server's answer goes to the log, not to the client


async def _healthz_while_predicting(app: ShadowIngress) -> tuple[float, bool, int]:
    """Seconds /healthz took while a /predict was in flight, whether that predict was still running then, and
    the predict's status."""
    predict = asyncio.create_task(app(request("POST", "/predict", {"inputs": X})[0]))
    await asyncio.sleep(0.2)  # the predict is now waiting on its model
    t0 = time.perf_counter()
    health = await app(request("GET", "/healthz")[0])
    took_s = time.perf_counter() - t0
    running = not predict.done()
    assert health.status_code == 200
    return took_s, running, (await predict).status_code


def test_the_event_loop_keeps_answering_while_a_remote_production_hangs(tmp_path, model_server):
    model_server.add("remote-prod", mode="hang")
    app = ingress(tmp_path, StandInHub(), production=remote(model_server.url, timeout_s=1.5))
    took_s, running, status = asyncio.run(_healthz_while_predicting(app))
    assert running and took_s < 0.5 and status == 504


@pytest.mark.parametrize("in_thread", [True, False])
def test_a_slow_local_production_runs_in_a_thread_when_configured(tmp_path, in_thread):
    sleepy: dict[str, Any] = {
        "name": "p",
        "kind": "python",
        "target": "shadowd.testing:SleepyModel",
        "input_shape": [8],
    }
    sleepy |= {"kwargs": {"latency_ms": 1500}, "run_in_thread": in_thread}
    app = ingress(tmp_path, StandInHub(), production=sleepy)
    took_s, running, status = asyncio.run(_healthz_while_predicting(app))
    assert status == 200
    if in_thread:  # the loop answered /healthz while the model slept in its thread
        assert running and took_s < 0.5
    else:  # inline: the model held the loop, so /healthz waited for it
        assert not running

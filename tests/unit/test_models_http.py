"""Model kind ``http``: payloads built and read, config mistakes named by key (never showing a credential),
credentials from the environment and files, and real calls to a small local HTTP server (tests/fixtures/
model_server.py): answers identical to the server's own, failures typed as 502 (refused, error status, bad
answer) or 504 (timeout), retries only where they are safe."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from shadowd.config import load_config, parse_config
from shadowd.errors import ConfigError, ModelError, RemoteModelError, RemoteModelTimeout
from shadowd.models import HttpModel
from shadowd.models.http import JsonPayload, OipV2Payload, output_rows, parse_json_path
from shadowd.models.runtime import load_model
from tests.fixtures.model_server import ModelServer

SECRET = "s3cr3t-" + "q" * 30


def _http(url: str, **fields: Any) -> HttpModel:
    return HttpModel.model_validate({"name": "m", "kind": "http", "url": url, "input_shape": [8], **fields})


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


@pytest.fixture
def server():
    with ModelServer() as s:
        yield s


def _oip(**kwargs: Any) -> OipV2Payload:
    return OipV2Payload.model_validate({"protocol": "oip_v2", **kwargs})


def _json(**kwargs: Any) -> JsonPayload:
    return JsonPayload.model_validate({"protocol": "json", **kwargs})


# ---- payloads, built and read (no network) ----


def test_oip_request_is_one_tensor_of_the_batch():
    x = _x(3)
    body = _oip(input_name="pixels", datatype="FP64").request(x)
    (tensor,) = body["inputs"]
    assert tensor["name"] == "pixels" and tensor["shape"] == [3, 8] and tensor["datatype"] == "FP64"
    assert tensor["data"] == x.reshape(-1).tolist()  # row-major, exactly the float32 values


def test_oip_endpoint_keeps_the_base_path_and_quotes_the_name():
    plain = _http("http://kserve.models.svc:8080/")
    assert plain.endpoint() == "http://kserve.models.svc:8080/v2/models/m/infer"
    named = _http(
        "https://gw.example/serving/team?region=eu",
        payload={"protocol": "oip_v2", "model_name": "digits v3", "model_version": "7"},
    )
    assert named.endpoint() == "https://gw.example/serving/team/v2/models/digits%20v3/versions/7/infer?region=eu"
    assert _http(
        "http://h/predict", payload={"protocol": "json", "body": "$inputs", "output_path": "$"}
    ).endpoint() == ("http://h/predict")


def _answer(*outputs: dict[str, Any]) -> dict[str, Any]:
    return {"model_name": "m", "outputs": list(outputs)}


def _tensor(name: str, values: np.ndarray, datatype: str = "FP32", nested: bool = False) -> dict[str, Any]:
    data = values.tolist() if nested else values.reshape(-1).tolist()
    return {"name": name, "shape": list(values.shape), "datatype": datatype, "data": data}


def test_oip_answer_is_read_by_output_name_or_the_only_output():
    probs = np.array([[0.25, 0.75], [0.5, 0.5], [1.0, 0.0]])
    ids = np.array([1, 0, 0])
    assert _oip().parse(_answer(_tensor("p", probs)), 3).tolist() == probs.tolist()
    assert _oip().parse(_answer(_tensor("p", probs, nested=True)), 3).tolist() == probs.tolist()
    two = _answer(_tensor("label", ids, "INT64"), _tensor("p", probs))
    assert _oip(output_name="p").parse(two, 3).tolist() == probs.tolist()
    assert _oip(output_name="label").parse(two, 3).tolist() == [[1.0], [0.0], [0.0]]  # one value per example
    with pytest.raises(RemoteModelError, match=r"2 outputs \['label', 'p'\]; set payload.output_name"):
        _oip().parse(two, 3)
    with pytest.raises(RemoteModelError, match="no output 'scores'"):
        _oip(output_name="scores").parse(two, 3)


@pytest.mark.parametrize(
    "answer, words, outcome",
    [
        ({"error": "model not ready"}, "no 'outputs'", "error"),
        ([1, 2], "no 'outputs'", "error"),
        (_answer({"name": "t", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}), "datatype 'BYTES'", "error"),
        (_answer({"name": "t", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}), "3 values for shape", "error"),
        (_answer({"name": "t", "shape": "2x2", "datatype": "FP32", "data": [1, 2, 3, 4]}), "no valid 'shape'", "error"),
        (_answer({"name": "t", "shape": [2], "datatype": "FP32", "data": ["x", 1]}), "not numbers", "error"),
        (_answer(_tensor("t", np.zeros((3, 4)))), "shape [3, 4] for 2 example(s)", "bad_shape"),
    ],
)
def test_oip_answers_that_do_not_fit_say_why(answer, words, outcome):
    with pytest.raises(RemoteModelError) as err:
        _oip().parse(answer, 2)
    assert words in str(err.value) and err.value.outcome == outcome
    assert err.value.http_status == 502 and err.value.reason == "bad_answer"


def test_json_template_puts_the_inputs_where_the_placeholder_is():
    x = _x(2)
    template = {"signature": "serving_default", "batch": [{"instances": "$inputs", "tag": "$input"}]}
    payload = _json(body=template, output_path="$.predictions")
    assert payload.request(x) == {"signature": "serving_default", "batch": [{"instances": x.tolist(), "tag": "$input"}]}
    assert payload.body == template  # the template itself is untouched
    one = _json(body={"data": {"features": "$inputs"}}, output_path="$.result.scores", batched=False)
    assert one.request(x[:1]) == {"data": {"features": x[0].tolist()}}


def test_json_paths_are_keys_and_indexes_only():
    assert parse_json_path("$") == ()
    assert parse_json_path("$.outputs[0].data") == ("outputs", 0, "data")
    assert parse_json_path('$["odd key"][12]') == ("odd key", 12)
    for bad in ("predictions", "$.a..b", "$.a[-1]", "$[__import__('os')]", "$.a + 1"):
        with pytest.raises(ValueError):
            parse_json_path(bad)
    answer = {"outputs": [{"data": [[0.1, 0.9], [0.8, 0.2]]}]}
    assert _json(body="$inputs", output_path="$.outputs[0].data").parse(answer, 2).shape == (2, 2)
    with pytest.raises(RemoteModelError, match=r"nothing at \$\.outputs\[1\]"):
        _json(body="$inputs", output_path="$.outputs[1].data").parse(answer, 2)
    with pytest.raises(RemoteModelError, match=r"nothing at \$\.result"):
        _json(body="$inputs", output_path="$.result.scores").parse([1, 2], 2)


def test_output_rows_reads_rows_values_and_one_example():
    assert output_rows([[0.1, 0.9], [0.3, 0.7]], 2, "x").shape == (2, 2)
    assert output_rows([1.5, 2.5, 3.5], 3, "x").tolist() == [[1.5], [2.5], [3.5]]  # regression: a value each
    assert output_rows([0.2, 0.8], 1, "x").tolist() == [[0.2, 0.8]]  # one example's row without a batch axis
    assert np.isnan(output_rows([[None, 1.0]], 1, "x")[0, 0])  # JSON null: a NaN the outcome check counts
    with pytest.raises(RemoteModelError) as err:
        output_rows([[0.1, 0.9]], 2, "the answer's $.predictions")
    assert err.value.outcome == "bad_shape" and "$.predictions has shape [1, 2] for 2 example(s)" in str(err.value)


# ---- config: mistakes name the file and key; a credential is never echoed ----

BASE: dict[str, Any] = {"task": "classification"}


def _config_error(tmp_path: Path, model: dict[str, Any], role: str = "production") -> str:
    local = {"name": "p", "kind": "python", "target": "shadowd.testing:ToyClassifier", "input_shape": [8]}
    models: dict[str, Any] = {"production": local, role: {"name": role[0], "kind": "http", "input_shape": [8], **model}}
    path = tmp_path / "shadowd.yaml"
    path.write_text(yaml.safe_dump({**BASE, "models": models}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    return message


@pytest.mark.parametrize(
    "url, words",
    [
        ("ftp://models.svc/x", "must be an http:// or https:// URL"),
        ("http://", "must be an http:// or https:// URL"),
        ("models.svc:8080", "must be an http:// or https:// URL"),
        ("http://models.svc:99999", "port that is not a number"),
        ("http://models .svc", "whitespace"),
        ("http://models.svc/#frag", "#fragment"),
    ],
)
def test_bad_urls_are_refused_naming_the_key(tmp_path, url, words):
    message = _config_error(tmp_path, {"url": url}, "candidate")
    assert ": models.candidate.url: " in message and words in message, message


def test_a_json_payload_needs_an_output_path_and_one_placeholder(tmp_path):
    no_path = _config_error(tmp_path, {"url": "http://h/p", "payload": {"protocol": "json", "body": "$inputs"}})
    assert ": models.production.payload.output_path: Field required" in no_path, no_path
    no_inputs = {"protocol": "json", "body": {"instances": []}, "output_path": "$.predictions"}
    message = _config_error(tmp_path, {"url": "http://h/p", "payload": no_inputs})
    assert ": models.production.payload.body: " in message and '"$inputs" exactly once (found 0)' in message
    bad_path = {"protocol": "json", "body": "$inputs", "output_path": "predictions[0]"}
    message = _config_error(tmp_path, {"url": "http://h/p", "payload": bad_path})
    assert ": models.production.payload.output_path: " in message and "starts with $" in message
    unknown = _config_error(tmp_path, {"url": "http://h/p", "payload": {"protocol": "grpc"}})
    assert ": models.production.payload: " in unknown and "'oip_v2', 'json'" in unknown, unknown


@pytest.mark.parametrize(
    "model, key",
    [
        ({"url": "http://h", "headers": {"Authorization": f"Bearer {SECRET}"}}, "headers"),
        ({"url": "http://h", "headers": {"X-Api-Key": SECRET}}, "headers"),
        ({"url": "http://h", "headers": {"X-Session-Token": SECRET}}, "headers"),
        ({"url": f"https://svc:{SECRET}@h/v1"}, "url"),
        ({"url": f"https://h/predict?api_key={SECRET}"}, "url"),
        ({"url": f"https://h/predict?sig={SECRET}&x=1"}, "url"),
    ],
)
def test_a_credential_in_the_config_is_refused_without_echoing_it(tmp_path, model, key):
    message = _config_error(tmp_path, model)
    assert f": models.production.{key}: " in message, message
    assert "headers_env or" in message or "(headers_env)" in message, message
    assert SECRET not in message and "(got" not in message, message


def test_a_mistyped_kind_does_not_echo_a_credential_either(tmp_path):
    local = {"name": "p", "kind": "python", "target": "shadowd.testing:ToyClassifier", "input_shape": [8]}
    cand = {"name": "c", "kind": "htttp", "url": "http://h", "input_shape": [8], "headers": {"Authorization": SECRET}}
    path = tmp_path / "shadowd.yaml"
    path.write_text(yaml.safe_dump({**BASE, "models": {"production": local, "candidate": cand}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: models.candidate: ") and "'htttp'" in message and "'http'" in message, message
    assert SECRET not in message, message


def test_harmless_headers_stay_inline_and_each_header_has_one_source(tmp_path):
    ok = _http("http://h", headers={"X-Team": "ranking"}, headers_env={"Authorization": "MODEL_AUTH"})
    assert ok.headers == {"X-Team": "ranking"}
    both = _config_error(
        tmp_path, {"url": "http://h", "headers_env": {"authorization": "A"}, "headers_file": {"Authorization": "t"}}
    )
    assert "header 'Authorization' is set in both headers_env and headers_file" in both, both
    bad_var = _config_error(tmp_path, {"url": "http://h", "headers_env": {"Authorization": "$(cat /x)"}})
    assert ": models.production.headers_env: " in bad_var and "not an environment variable name" in bad_var
    bad_name = _config_error(tmp_path, {"url": "http://h", "headers": {"X Team": "a"}})
    assert "not a valid HTTP header name" in bad_name


def test_local_options_do_not_apply_to_a_remote_model(tmp_path):
    message = _config_error(tmp_path, {"url": "http://h", "run_in_thread": True})
    assert ": models.production.run_in_thread: Extra inputs are not permitted" in message, message


def test_header_files_and_ca_file_resolve_against_the_config_file(tmp_path):
    model: dict[str, Any] = {"name": "p", "kind": "http", "url": "https://h", "input_shape": [8]}
    model |= {"headers_file": {"Authorization": "secrets/token"}, "ca_file": "ca.pem"}
    cfg = parse_config({**BASE, "models": {"production": model}}, "x.yaml", tmp_path)
    assert isinstance(cfg.models.production, HttpModel)
    assert cfg.models.production.headers_file == {"Authorization": tmp_path / "secrets" / "token"}
    assert cfg.models.production.ca_file == tmp_path / "ca.pem"


# ---- credentials: read when a replica connects, never shown ----


def test_headers_come_from_the_environment_and_files(server, tmp_path, monkeypatch):
    server.add("m")
    (tmp_path / "tenant").write_text(f"  {SECRET}-tenant\n")
    monkeypatch.setenv("SHADOWD_TEST_MODEL_AUTH", f"Bearer {SECRET}")
    model = load_model(
        _http(
            server.url,
            headers={"X-Team": "ranking"},
            headers_env={"Authorization": "SHADOWD_TEST_MODEL_AUTH"},
            headers_file={"X-Tenant-Token": tmp_path / "tenant"},
        )
    )
    model.predict(_x(1))
    model.close()
    headers = server.received[-1].headers
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert headers["X-Tenant-Token"] == f"{SECRET}-tenant" and headers["X-Team"] == "ranking"


def test_missing_or_unusable_credentials_fail_at_connect_naming_the_source(tmp_path, monkeypatch):
    monkeypatch.delenv("SHADOWD_TEST_ABSENT", raising=False)
    with pytest.raises(ModelError, match="environment variable SHADOWD_TEST_ABSENT, which is not set"):
        load_model(_http("http://h", headers_env={"Authorization": "SHADOWD_TEST_ABSENT"}))
    with pytest.raises(ModelError, match=r"cannot read header Authorization from .*absent-file"):
        load_model(_http("http://h", headers_file={"Authorization": tmp_path / "absent-file"}))
    monkeypatch.setenv("SHADOWD_TEST_INJECT", f"Bearer {SECRET}\r\nX-Admin: yes")
    with pytest.raises(ModelError) as err:
        load_model(_http("http://h", headers_env={"Authorization": "SHADOWD_TEST_INJECT"}))
    assert "SHADOWD_TEST_INJECT" in str(err.value) and "line breaks" in str(err.value)
    assert SECRET not in str(err.value)


# ---- real calls to a local server ----


def test_oip_answers_are_the_servers_own(server):
    server.add("toy", seed=3)
    model = load_model(_http(server.url, payload={"protocol": "oip_v2", "model_name": "toy"}))
    x = _x(5)
    assert asyncio.run(model.apredict(x)).tolist() == server.direct("toy", x)
    assert model.predict(x[:1]).tolist() == server.direct("toy", x[:1])  # the synchronous path (replay)
    model.close()
    assert server.received[0].path == "/v2/models/toy/infer"
    assert server.received[0].body["inputs"][0]["shape"] == [5, 8]


def test_json_answers_batched_and_one_call_per_example(server):
    server.add("toy", seed=4)
    batched = _http(
        f"{server.url}/json/toy",
        payload={"protocol": "json", "body": {"instances": "$inputs"}, "output_path": "$.predictions"},
    )
    x = _x(4)
    assert asyncio.run(load_model(batched).apredict(x)).tolist() == server.direct("toy", x)
    assert len(server.received) == 1
    one = {"protocol": "json", "body": {"data": {"features": "$inputs"}}, "output_path": "$.result.scores"}
    per_example = _http(f"{server.url}/json/toy", payload={**one, "batched": False}, max_connections=2)
    assert asyncio.run(load_model(per_example).apredict(x)).tolist() == server.direct("toy", x)
    assert len(server.received) == 1 + 4


def test_one_failed_example_fails_a_batch_sent_one_call_per_example(server):
    server.add("toy", mode="error500")
    one = {"protocol": "json", "body": {"data": {"features": "$inputs"}}, "output_path": "$.result.scores"}
    model = load_model(_http(f"{server.url}/json/toy", payload={**one, "batched": False}))
    with pytest.raises(RemoteModelError) as err:  # the error itself, not an exception group around it
        asyncio.run(model.apredict(_x(3)))
    assert err.value.reason == "status" and "HTTP 500" in str(err.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "mode, reason, outcome, status, words",
    [
        ("error500", "status", "error", 502, "its server answered HTTP 500"),
        ("not_json", "bad_answer", "error", 502, "the answer is not JSON"),
        ("wrong_rows", "bad_answer", "bad_shape", 502, "shape [3, 4] for 2 example(s)"),
        ("hang", "timeout", "timeout", 504, "no answer within 0.3 s (timeout_s)"),
    ],
)
def test_failures_are_typed_for_502_and_504(server, mode, reason, outcome, status, words):
    server.add("m", mode=mode)
    model = load_model(_http(server.url, timeout_s=0.3))
    with pytest.raises(RemoteModelError) as err:
        asyncio.run(model.apredict(_x(2)))
    e = err.value
    assert (e.reason, e.outcome, e.http_status) == (reason, outcome, status)
    assert words in str(e), str(e)
    assert isinstance(e, RemoteModelTimeout) == (mode == "hang")
    assert "Traceback" not in str(e) and server.url not in str(e)  # the body and the URL stay out of the message
    if mode == "error500":
        assert "model exploded" in e.detail  # ... and go to the log as the detail


def test_a_refused_connection_is_a_502():
    model = load_model(_http(f"http://127.0.0.1:{_closed_port()}"))
    with pytest.raises(RemoteModelError) as err:
        asyncio.run(model.apredict(_x(1)))
    assert err.value.reason == "refused" and err.value.http_status == 502
    assert "cannot connect to its server" in str(err.value)


def test_retries_only_when_configured_and_never_after_a_timeout(server):
    server.add("flaky", mode="flaky", fail_first=2).add("hung", mode="hang")
    oip = {"protocol": "oip_v2", "model_name": "flaky"}
    with pytest.raises(RemoteModelError, match="HTTP 503"):
        asyncio.run(load_model(_http(server.url, payload=oip)).apredict(_x(1)))  # default: no retry
    assert server.models["flaky"].calls == 1
    server.models["flaky"].calls = 0
    x = _x(1)
    assert asyncio.run(load_model(_http(server.url, payload=oip, retries=2)).apredict(x)).tolist() == server.direct(
        "flaky", x
    )
    assert server.models["flaky"].calls == 3
    hung = _http(server.url, payload={"protocol": "oip_v2", "model_name": "hung"}, retries=3, timeout_s=0.2)
    with pytest.raises(RemoteModelTimeout):
        asyncio.run(load_model(hung).apredict(x))
    assert server.models["hung"].calls == 1


def test_an_answer_over_max_response_bytes_is_a_bad_answer(server):
    server.add("m")
    model = load_model(_http(server.url, max_response_bytes=1024))
    with pytest.raises(RemoteModelError, match="over 1024 bytes") as err:
        asyncio.run(model.apredict(_x(40)))  # 40 rows of 4 probabilities: several KB
    assert err.value.reason == "bad_answer"

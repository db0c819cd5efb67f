"""Request parsing, sampling, model adapters and the shadow buffer, without Ray."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from shadowd.config import ServingConfig
from shadowd.errors import BadRequest, ModelError
from shadowd.models import PythonModel, TorchScriptModel
from shadowd.models.runtime import check_rows, load_model
from shadowd.sampling import hash_unit, is_sampled
from shadowd.serving.protocol import parse_feedback, parse_predict, read_json, request_id_from
from shadowd.serving.shadow_buffer import ShadowBuffer
from shadowd.testing import ToyClassifier


def test_parse_predict_accepts_the_contract():
    req = parse_predict({"inputs": [[1, 2], [3, 4]], "features": {"hour": 3}}, "r1", (2, 2))
    assert req.inputs.dtype == np.float32 and req.inputs.shape == (2, 2)
    assert req.features == {"hour": 3} and req.request_id == "r1"


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b"[1]", 422, "JSON object"),
        (b"x" * 100, 413, "limit is 64"),
    ],
)
def test_read_json_rejects(body, status, words):
    with pytest.raises(BadRequest) as err:
        read_json(body, 64)
    assert err.value.http_status == status and words in err.value.reason


@pytest.mark.parametrize(
    "data, words",
    [
        ({}, "missing 'inputs'"),
        ({"inputs": [1, 2, 3]}, "shape [3]; the model takes [2]"),
        ({"inputs": [[1, 2], [3]]}, "must be numbers"),
        ({"inputs": {"a": 1}}, "must be numbers"),
        ({"inputs": [1, 2], "features": "x"}, "'features' must be an object"),
        ({"inputs": [1, 2], "extra": 1}, "unknown field(s) extra"),
    ],
)
def test_parse_predict_rejects_with_422(data, words):
    with pytest.raises(BadRequest) as err:
        parse_predict(data, "r", (2,))
    assert err.value.http_status == 422 and words in err.value.reason


def test_request_ids():
    assert request_id_from({"x-request-id": "abc-1"}) == "abc-1"
    assert request_id_from({}, "from-proxy") == "from-proxy"
    assert len(request_id_from({})) == 32
    with pytest.raises(BadRequest):
        request_id_from({"x-request-id": "a b"})
    with pytest.raises(BadRequest):
        request_id_from({"x-request-id": "a" * 129})


def test_parse_feedback():
    label = parse_feedback({"request_id": "r1", "label": 3}, 10.0)
    assert (label.request_id, label.label, label.source, label.ts) == ("r1", 3, "feedback", 10.0)
    for bad in (
        {"label": 1},
        {"request_id": "r1"},
        {"request_id": "r1", "label": "cat"},
        {"request_id": "r1", "label": True},
    ):
        with pytest.raises(BadRequest):
            parse_feedback(bad, 0.0)


def test_sampling_is_deterministic_and_near_share():
    ids = [f"id-{i}" for i in range(20_000)]
    picked = [is_sampled(i, 0.3) for i in ids]
    assert picked == [is_sampled(i, 0.3) for i in ids]
    # Binomial(20000, 0.3): sd ~ 65, so +-400 is > 6 sd.
    assert abs(sum(picked) - 6000) < 400
    assert not any(is_sampled(i, 0.0) for i in ids[:100]) and all(is_sampled(i, 1.0) for i in ids[:100])
    # Independent salts: the noise sample is not the shadow sample.
    both = sum(hash_unit(i, "shadow") < 0.5 and hash_unit(i, "noise") < 0.5 for i in ids)
    assert abs(both - 5000) < 400


def test_python_model_adapter_and_logits():
    cfg = PythonModel(
        name="t", kind="python", target="shadowd.testing:ToyClassifier", kwargs={"seed": 3}, input_shape=[8]
    )
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    out = load_model(cfg).predict(x)
    assert np.allclose(out, ToyClassifier(seed=3).predict(x))
    logit_cfg = cfg.model_copy(update={"target": "shadowd.testing:ToyRegressor", "kwargs": {}, "output": "logits"})
    probs = load_model(logit_cfg).predict(x)
    assert probs.shape == (5, 1) and np.allclose(probs, 1.0)  # softmax over one logit


def test_torchscript_adapter(tmp_path):
    import torch

    net = torch.nn.Linear(8, 3)
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    cfg = TorchScriptModel(name="ts", kind="torchscript", path=path, input_shape=[8], output="logits")
    x = np.ones((2, 8), dtype=np.float32)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
    assert np.allclose(load_model(cfg).predict(x), expected, atol=1e-6)


def test_model_errors_name_the_cause(tmp_path):
    with pytest.raises(ModelError, match="cannot import module 'nope'"):
        load_model(PythonModel(name="x", kind="python", target="nope:thing", input_shape=[1]))
    with pytest.raises(ModelError, match="has no attribute 'Missing'"):
        load_model(PythonModel(name="x", kind="python", target="shadowd.testing:Missing", input_shape=[1]))
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load TorchScript model 'x'"):
        load_model(TorchScriptModel(name="x", kind="torchscript", path=tmp_path / "bad.pt", input_shape=[1]))


def test_check_rows():
    ok = np.ones((3, 4))
    assert check_rows(ok, 3, 4) == (["ok"] * 3, None)
    assert check_rows(ok, 3, 5)[0] == ["bad_shape"] * 3
    assert check_rows(ok[:2], 3, 4)[0] == ["bad_shape"] * 3
    bad = ok.copy()
    bad[1, 2] = np.inf
    assert check_rows(bad, 3, 4)[0] == ["ok", "nan", "ok"]


def test_shadow_buffer_batches_bounds_and_counts_drops():
    sent: list[list[int]] = []
    drops: dict[str, int] = {}
    release = asyncio.Event()

    async def send(batch):
        sent.append(batch)
        await release.wait()

    async def scenario():
        buf = ShadowBuffer(
            send,
            max_in_flight=5,
            flush_interval_s=0.01,
            max_flush_size=2,
            on_drop=lambda r, n: drops.update({r: drops.get(r, 0) + n}),
        )
        accepted = [buf.offer(i) for i in range(8)]
        assert accepted == [True] * 5 + [False] * 3
        for _ in range(200):  # until the flush loop has run (a loaded machine may stall it)
            if len(sent) == 3:
                break
            await asyncio.sleep(0.01)
        assert [len(b) for b in sent] == [2, 2, 1] and buf.outstanding == 5
        assert not buf.offer(99)  # still in flight: the budget holds
        release.set()
        for _ in range(200):
            if buf.outstanding == 0:
                break
            await asyncio.sleep(0.01)
        assert buf.outstanding == 0 and buf.offer(100)
        await buf.drain(1.0)

    asyncio.run(scenario())
    assert drops == {"budget": 4}
    assert sorted(x for b in sent for x in b) == [0, 1, 2, 3, 4, 100]


def test_shadow_buffer_bounds_bytes_as_well_as_pairs():
    """Counting pairs alone let large requests (features up to serving.max_feature_bytes each) hold
    max_in_flight times that in memory while the worker was slow."""
    sent: list[list[int]] = []
    drops: dict[str, int] = {}
    release = asyncio.Event()

    async def send(batch):
        sent.append(batch)
        await release.wait()

    async def scenario():
        buf = ShadowBuffer(
            send, 100, 0.01, 10, lambda r, n: drops.update({r: drops.get(r, 0) + n}), max_in_flight_bytes=10_000
        )
        accepted = [buf.offer(i, nbytes=3_000) for i in range(5)]
        assert accepted == [True, True, True, False, False] and buf.outstanding_bytes == 9_000
        assert buf.offer(5, nbytes=1_000)  # a small one still fits
        release.set()
        await buf.drain(1.0)
        for _ in range(200):
            if buf.outstanding == 0:
                break
            await asyncio.sleep(0.01)
        assert buf.outstanding_bytes == 0 and buf.offer(6, nbytes=9_000)  # the budget is given back
        await buf.drain(1.0)

    asyncio.run(scenario())
    assert drops == {"bytes": 2}
    assert sorted(x for b in sent for x in b) == [0, 1, 2, 5, 6]


def test_predict_request_size_counts_inputs_and_features():
    limits = ServingConfig()
    small = parse_predict({"inputs": [0.0] * 8, "features": {}}, "r", (8,), limits)
    big = parse_predict({"inputs": [0.0] * 8, "features": {"note": "x" * 4000}}, "r", (8,), limits)
    assert big.nbytes - small.nbytes == len('{"note":""}') + 4000 - 2


def test_shadow_buffer_counts_failed_sends():
    drops: dict[str, int] = {}

    async def send(batch):
        raise RuntimeError("worker died")

    async def scenario():
        buf = ShadowBuffer(send, 10, 0.001, 10, lambda r, n: drops.update({r: drops.get(r, 0) + n}))
        for i in range(3):
            buf.offer(i)
        await buf.drain(1.0)
        await asyncio.sleep(0.01)
        assert buf.outstanding == 0

    asyncio.run(scenario())
    assert drops == {"worker": 3}


@pytest.mark.parametrize(
    "body, status",
    [
        (b"[" * 5000 + b"]" * 5000, 400),  # nested past Python's recursion limit
        (b'{"inputs": ' + b"9" * 5000 + b"}", 400),  # an int literal past Python's digit limit
    ],
)
def test_pathological_json_is_a_client_error(body, status):
    with pytest.raises(BadRequest) as err:
        read_json(body, 1_000_000)
    assert err.value.http_status == status


def test_inputs_too_large_for_float32_are_a_client_error():
    with pytest.raises(BadRequest) as err:
        parse_predict({"inputs": [10**400, 1]}, "r", (2,))
    assert err.value.http_status == 422


@pytest.mark.parametrize("label", [float("inf"), float("nan"), 10**400, [1.0, float("inf")], [], "3", None])
def test_feedback_labels_must_be_finite_numbers(label):
    with pytest.raises(BadRequest) as err:
        parse_feedback({"request_id": "r1", "label": label}, 0.0)
    assert err.value.http_status == 422


# --- input limits (issue 12): what passes the ingress cannot break the shadow path or the hub ---


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def test_request_ids_are_matched_whole():
    """A trailing newline passed ``^...$`` (``$`` matches before a final newline)."""
    with pytest.raises(BadRequest) as err:
        request_id_from({"x-request-id": "abc\n"})
    assert err.value.http_status == 400
    with pytest.raises(BadRequest) as err:
        parse_feedback({"request_id": "r1\n", "label": 1}, 0.0)
    assert err.value.http_status == 422


def test_deeply_nested_features_are_refused_naming_the_limit():
    """300 levels in 600 bytes used to pass the ingress and kill the hub's spooler thread."""
    body = b'{"inputs": [1, 2], "features": {"a": ' + b"[" * 300 + b"1" + b"]" * 300 + b"}}"
    assert len(body) < 700
    with pytest.raises(BadRequest) as err:
        parse_predict(read_json(body, 1_000_000), "r", (2,))
    assert err.value.http_status == 422 and "serving.max_feature_depth is 4" in err.value.reason
    assert "features.a" in err.value.reason
    # At the limit it passes: the features object and three levels inside it.
    parse_predict({"inputs": [1, 2], "features": {"a": _nested(3)}}, "r", (2,))
    with pytest.raises(BadRequest):
        parse_predict({"inputs": [1, 2], "features": {"a": _nested(4)}}, "r", (2,))


def test_feature_keys_and_bytes_are_bounded_with_413():
    serving = ServingConfig(max_feature_keys=5, max_feature_bytes=100)
    parse_predict({"inputs": [1, 2], "features": {f"k{i}": i for i in range(5)}}, "r", (2,), serving)
    with pytest.raises(BadRequest) as err:
        parse_predict({"inputs": [1, 2], "features": {"a": {f"k{i}": i for i in range(5)}}}, "r", (2,), serving)
    assert err.value.http_status == 413 and "serving.max_feature_keys" in err.value.reason
    with pytest.raises(BadRequest) as err:
        parse_predict({"inputs": [1, 2], "features": {"note": "x" * 200}}, "r", (2,), serving)
    assert err.value.http_status == 413 and "serving.max_feature_bytes is 100" in err.value.reason
    # the defaults bound an unconfigured daemon too
    with pytest.raises(BadRequest) as err:
        parse_predict({"inputs": [1, 2], "features": {f"k{i}": i for i in range(65)}}, "r", (2,))
    assert err.value.http_status == 413
    with pytest.raises(BadRequest) as err:
        parse_predict({"inputs": [1, 2], "features": {"note": "x" * 9000}}, "r", (2,))
    assert err.value.http_status == 413


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [NaN, 1]}',
        b'{"inputs": [Infinity, 1]}',
        b'{"inputs": [-Infinity, 1]}',
        b'{"inputs": [1e999, 1]}',
        b'{"inputs": [1e39, 1]}',  # finite as a double, inf as the model's float32
        b'{"inputs": [1, 2], "features": {"x": NaN}}',
        b'{"inputs": [1, 2], "features": {"x": [1, 1e999]}}',
    ],
)
def test_non_finite_inputs_are_refused_unless_allowed(body):
    with pytest.raises(BadRequest) as err:
        parse_predict(read_json(body, 1000), "r", (2,))
    assert err.value.http_status == 422 and "serving.allow_nonfinite_inputs" in err.value.reason
    req = parse_predict(read_json(body, 1000), "r", (2,), ServingConfig(allow_nonfinite_inputs=True))
    assert req.inputs.shape == (2,)


def test_lone_surrogates_in_features_are_refused():
    """JSON can escape a lone surrogate, which no UTF-8 writer (spool, Kafka) can encode."""
    for body in (
        b'{"inputs": [1, 2], "features": {"x": "\\ud800"}}',
        b'{"inputs": [1, 2], "features": {"\\udfff": 1}}',
    ):
        with pytest.raises(BadRequest) as err:
            parse_predict(read_json(body, 1000), "r", (2,))
        assert err.value.http_status == 422 and "surrogate" in err.value.reason
    ok = parse_predict(read_json(b'{"inputs": [1, 2], "features": {"x": "\\ud83d\\ude00"}}', 1000), "r", (2,))
    assert ok.features == {"x": "\U0001f600"}  # a proper surrogate pair is text


@pytest.mark.parametrize(
    "features",
    [
        {"a": _nested(3)},
        {f"k{i}": "v" * 100 for i in range(64)},
        {"user": {"id": 10**300, "tags": ["x", "y"], "score": -1.5e308}, "night": True, "note": None},
        {"text": "[/x] [bold]not markup[/bold] \u00e9\U0001f600"},
    ],
)
def test_features_that_pass_serialize_for_the_spool_kafka_and_ray(features):
    """What the ingress accepts must travel: pickled to the worker (Ray), JSON to the spool and Kafka."""
    import pickle

    from shadowd.records import AnnotationItem

    req = parse_predict({"inputs": [1, 2], "features": features}, "r", (2,))
    pickle.loads(pickle.dumps(req.features))
    item = AnnotationItem(request_id="r", reason="divergent", priority=1.0, features=req.features, created_ts=0.0)
    assert AnnotationItem.model_validate_json(item.model_dump_json()).features == features

"""The HTTP contract, parsed without Ray: bodies in, typed requests out.

Everything a client can get wrong raises ``BadRequest`` with the status and
a one-line reason, so the ingress never answers a bad request with a 500.
What passes is bounded (``serving.max_feature_*``), finite (unless
``serving.allow_nonfinite_inputs``) and carries a well-formed request id:
nothing a client sends reaches the shadow path or the hub's threads in a
shape that can break them (a 600-byte body nested 300 deep once did).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shadowd.config import ServingConfig
from shadowd.errors import BadRequest, PayloadTooLarge
from shadowd.records import Label

__all__ = [
    "FlaggerPayload",
    "PredictRequest",
    "check_features",
    "parse_candidate_query",
    "parse_feedback",
    "parse_flagger",
    "parse_predict",
    "read_json",
    "request_id_from",
]

# Matched whole (fullmatch): "$" would let a trailing newline through.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_FLOAT_MAX = 1.7976931348623157e308
_DEFAULT_SERVING = ServingConfig()


@dataclass(frozen=True)
class PredictRequest:
    request_id: str
    inputs: np.ndarray  # one example, shaped like the model's input_shape
    features: dict[str, Any] = field(default_factory=dict)
    feature_bytes: int = 2  # the features' size as compact JSON ("{}")

    @property
    def nbytes(self) -> int:
        """Roughly what this request holds in memory on the shadow path (inputs, features, bookkeeping)."""
        return int(self.inputs.nbytes) + self.feature_bytes + 512


@dataclass(frozen=True)
class FlaggerPayload:
    """What Flagger POSTs to a webhook (its ``CanaryWebhookPayload``); ``candidate`` from ``metadata.candidate``."""

    name: str
    namespace: str
    phase: str
    candidate: str | None = None


def parse_flagger(data: dict[str, Any]) -> FlaggerPayload:
    """Flagger's webhook payload: ``name``, ``namespace``, ``phase`` strings and optional ``metadata`` of strings.

    Fields Flagger may add later (``checksum`` came in a later release) are ignored, so an upgrade of Flagger
    cannot stall every promotion on a 422; a field of the wrong type is refused (422 with the field's name).
    """
    for key in ("name", "namespace", "phase"):
        if key not in data:
            raise BadRequest(f"missing '{key}': not a Flagger webhook payload (name, namespace, phase, metadata)", 422)
        if not isinstance(data[key], str) or not data[key]:
            raise BadRequest(f"'{key}' must be a non-empty string, got {json.dumps(data[key])[:60]}", 422)
    metadata = data.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadRequest("'metadata' must be an object of strings (the Canary webhook's metadata)", 422)
    candidate = metadata.get("candidate")
    if candidate == "":
        raise BadRequest("'metadata.candidate' is empty: name a candidate or leave the key out", 422)
    return FlaggerPayload(data["name"], data["namespace"], data["phase"], candidate)


def parse_candidate_query(params: Mapping[str, str], multi: list[tuple[str, str]], route: str) -> str | None:
    """The ``candidate`` of ``GET <route>?candidate=NAME`` (None: all, or the first); 400 for anything else."""
    unknown = sorted({k for k, _ in multi} - {"candidate"})
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {', '.join(unknown)}; {route} takes only 'candidate'")
    if sum(1 for k, _ in multi if k == "candidate") > 1:
        raise BadRequest("'candidate' given more than once; ask for one candidate, or none")
    candidate = params.get("candidate")
    if candidate == "":
        raise BadRequest("'candidate' is empty: name a candidate, or leave it out")
    return candidate


def request_id_from(headers: Mapping[str, str], proxy_id: str | None = None) -> str:
    """The client's X-Request-ID if it is well-formed, else the id the proxy made, else a new one."""
    rid = headers.get("x-request-id")
    if rid is None:
        return proxy_id or uuid.uuid4().hex
    if not _REQUEST_ID.fullmatch(rid):
        raise BadRequest("X-Request-ID must be 1-128 characters of letters, digits and . _ : -", 400)
    return rid


def read_json(body: bytes, max_body_bytes: int) -> dict[str, Any]:
    if len(body) > max_body_bytes:
        raise PayloadTooLarge(len(body), max_body_bytes)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError, or an int literal over Python's digit limit
        raise BadRequest(f"body is not valid JSON: {err}"[:300], 400) from None
    except RecursionError:
        raise BadRequest("body is nested too deeply", 400) from None
    if not isinstance(data, dict):
        raise BadRequest(f"body must be a JSON object, got {type(data).__name__}", 422)
    return data


def parse_predict(
    data: dict[str, Any], request_id: str, input_shape: tuple[int, ...], serving: ServingConfig | None = None
) -> PredictRequest:
    """A typed predict request; ``serving`` gives the input limits (the defaults when None)."""
    limits = serving or _DEFAULT_SERVING
    unknown = sorted(set(data) - {"inputs", "features"})
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}; expected 'inputs' and optional 'features'", 422)
    if "inputs" not in data:
        raise BadRequest("missing 'inputs'", 422)
    features = data.get("features") or {}
    if not isinstance(features, dict):
        raise BadRequest(f"'features' must be an object, got {type(features).__name__}", 422)
    feature_bytes = check_features(features, limits)
    raw = data["inputs"]
    try:
        with np.errstate(over="ignore"):  # a number beyond float32 becomes inf: refused below, not warned
            x = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise BadRequest(f"'inputs' must be numbers nested as {list(input_shape)}", 422) from None
    if x.shape != input_shape:
        raise BadRequest(f"'inputs' has shape {list(x.shape)}; the model takes {list(input_shape)}", 422)
    if not limits.allow_nonfinite_inputs and not np.isfinite(x).all():
        raise BadRequest(
            "'inputs' holds NaN, Infinity or a number beyond float32 range; serving.allow_nonfinite_inputs is off",
            422,
        )
    return PredictRequest(request_id, x, features, feature_bytes)


def _where(path: str) -> str:
    return path if len(path) <= 80 else path[:77] + "..."


def check_features(features: dict[str, Any], limits: ServingConfig) -> int:
    """Raise ``BadRequest`` naming the limit when ``features`` is too deep, has too many keys,
    holds a non-finite number (unless allowed) or is too large; else return its size as compact JSON.
    Iterative: any depth is safe."""
    keys = 0
    stack: list[tuple[str, Any, int]] = [("features", features, 1)]
    while stack:
        path, node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limits.max_feature_depth:
                raise BadRequest(
                    f"'{_where(path)}' nests {depth} deep; serving.max_feature_depth is {limits.max_feature_depth}",
                    422,
                )
            if isinstance(node, dict):
                keys += len(node)
                if keys > limits.max_feature_keys:
                    raise BadRequest(
                        f"'features' has more than {limits.max_feature_keys} keys (serving.max_feature_keys)", 413
                    )
                for k, v in node.items():
                    _check_text(k, path)
                    stack.append((f"{path}.{k}", v, depth + 1))
            else:
                stack.extend((f"{path}[{i}]", v, depth + 1) for i, v in enumerate(node))
        elif isinstance(node, str):
            _check_text(node, path)
        elif not limits.allow_nonfinite_inputs and not _finite_or_not_number(node):
            raise BadRequest(
                f"'{_where(path)}' is NaN, Infinity or beyond float range; serving.allow_nonfinite_inputs is off", 422
            )
    size = len(json.dumps(features, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limits.max_feature_bytes:
        raise BadRequest(
            f"'features' is {size} bytes as JSON; serving.max_feature_bytes is {limits.max_feature_bytes}", 413
        )
    return size


def _check_text(text: str, path: str) -> None:
    # JSON may escape a lone surrogate (\ud800), which no UTF-8 writer (spool, Kafka) can encode.
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise BadRequest(f"'{_where(path)}' holds a lone surrogate (\\ud800-\\udfff), not text", 422) from None


def _finite_or_not_number(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return -_FLOAT_MAX <= v <= _FLOAT_MAX
    return True


def _finite_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def parse_feedback(data: dict[str, Any], now_s: float) -> Label:
    rid = data.get("request_id")
    if not isinstance(rid, str) or not _REQUEST_ID.fullmatch(rid):
        raise BadRequest("'request_id' must be a request id string", 422)
    if "label" not in data:
        raise BadRequest("missing 'label'", 422)
    label = data["label"]
    values = label if isinstance(label, list) and label else [label]
    if not all(_finite_number(v) for v in values):
        raise BadRequest("'label' must be a class index, a finite number or a list of finite numbers", 422)
    return Label(request_id=rid, label=label, source="feedback", ts=now_s)

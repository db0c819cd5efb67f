"""The HTTP contract, parsed without Ray: bodies in, typed requests out.

Everything a client can get wrong raises ``BadRequest`` with the status and
a one-line reason, so the ingress never answers a bad request with a 500.
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

from shadowd.errors import BadRequest, PayloadTooLarge
from shadowd.records import Label

__all__ = ["PredictRequest", "parse_feedback", "parse_predict", "read_json", "request_id_from"]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


@dataclass(frozen=True)
class PredictRequest:
    request_id: str
    inputs: np.ndarray  # one example, shaped like the model's input_shape
    features: dict[str, Any] = field(default_factory=dict)


def request_id_from(headers: Mapping[str, str], proxy_id: str | None = None) -> str:
    """The client's X-Request-ID if it is well-formed, else the id the proxy made, else a new one."""
    rid = headers.get("x-request-id")
    if rid is None:
        return proxy_id or uuid.uuid4().hex
    if not _REQUEST_ID.match(rid):
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


def parse_predict(data: dict[str, Any], request_id: str, input_shape: tuple[int, ...]) -> PredictRequest:
    unknown = sorted(set(data) - {"inputs", "features"})
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}; expected 'inputs' and optional 'features'", 422)
    if "inputs" not in data:
        raise BadRequest("missing 'inputs'", 422)
    features = data.get("features") or {}
    if not isinstance(features, dict):
        raise BadRequest(f"'features' must be an object, got {type(features).__name__}", 422)
    raw = data["inputs"]
    try:
        x = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise BadRequest(f"'inputs' must be numbers nested as {list(input_shape)}", 422) from None
    if x.shape != input_shape:
        raise BadRequest(f"'inputs' has shape {list(x.shape)}; the model takes {list(input_shape)}", 422)
    return PredictRequest(request_id, x, features)


def _finite_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def parse_feedback(data: dict[str, Any], now_s: float) -> Label:
    rid = data.get("request_id")
    if not isinstance(rid, str) or not _REQUEST_ID.match(rid):
        raise BadRequest("'request_id' must be a request id string", 422)
    if "label" not in data:
        raise BadRequest("missing 'label'", 422)
    label = data["label"]
    values = label if isinstance(label, list) and label else [label]
    if not all(_finite_number(v) for v in values):
        raise BadRequest("'label' must be a class index, a finite number or a list of finite numbers", 422)
    return Label(request_id=rid, label=label, source="feedback", ts=now_s)

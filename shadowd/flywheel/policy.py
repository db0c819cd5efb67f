"""Item policy: what of the comparator's annotation items reaches the queue.

Data flow: ``Flywheel.record`` -> ``ItemPolicy.admit`` -> ``AnnotationSink``.
In order: dedup of near-identical items (numbers rounded before
fingerprinting), per-slice quotas per window, a global token-bucket rate
limit; every item held back is counted by reason. Evaluation-sample items
pass untouched by those three (their draw probability must stay known). Admitted items are
assigned to the on-call annotator and redacted (configured fields dropped or
hashed) here, so nothing unredacted leaves the process.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from collections import Counter as _Tally
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from shadowd.config import AnnotationPolicyConfig, RedactionConfig
from shadowd.errors import ConfigError
from shadowd.flywheel.rotation import Rotation
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import OVERALL, AnnotationItem, Pair

__all__ = ["ItemPolicy", "Redactor", "TokenBucket", "fingerprint"]


class TokenBucket:
    """``rate_per_s`` tokens per second, at most ``burst`` saved up; time from an injected clock."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float]):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._last) * self.rate_per_s)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def _rounded(value: Any, decimals: int) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return repr(value)
        r = round(float(value), decimals)
        return 0.0 if r == 0 else r  # -0.0 and 0.0 are the same input
    if isinstance(value, dict):
        return {str(k): _rounded(v, decimals) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, decimals) for v in value]
    return repr(value)


def fingerprint(item: AnnotationItem, decimals: int) -> str:
    """Same for items a person would label the same way: reason, inputs and features, rounded."""
    basis: dict[str, Any] = {"reason": item.reason, "features": _rounded(item.features, decimals)}
    if item.inputs is not None:
        basis["inputs"] = _rounded(item.inputs, decimals)
    else:  # inputs not stored: the outputs are what is left to tell items apart
        basis["outputs"] = [
            _rounded(o.values, decimals) if o is not None else None for o in (item.production, item.candidate)
        ]
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


_HASHED = re.compile(r"sha256:[0-9a-f]{32}")


class Redactor:
    """Drops or hashes configured dotted paths ('features.user_id', 'inputs', ...) of an item."""

    def __init__(self, cfg: RedactionConfig):
        self.cfg = cfg
        salt = ""
        if cfg.salt_env:
            salt = os.environ.get(cfg.salt_env, "")
            if not salt:
                raise ConfigError(
                    f"annotations.redaction.salt_env: environment variable {cfg.salt_env} is not set or empty"
                )
        self._salt = salt.encode()

    @property
    def active(self) -> bool:
        return bool(self.cfg.drop or self.cfg.hash)

    def hash_value(self, value: Any) -> str:
        if isinstance(value, str) and _HASHED.fullmatch(value):
            return value  # already hashed (e.g. an item built from a stored, redacted pair)
        digest = hashlib.sha256(self._salt + json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
        return f"sha256:{digest[:32]}"

    def apply_pair(self, pair: Pair) -> Pair:
        """The pair as it may rest on disk (the pair store): features and inputs redacted; a pair whose
        inputs are dropped or hashed keeps none (it cannot be replayed, so it makes no suite example)."""
        if not self.active:
            return pair
        inputs = pair.inputs
        if self.cfg.covers("inputs"):
            inputs = None
        return pair.model_copy(update={"features": self.apply_features(pair.features), "inputs": inputs})

    def apply(self, item: AnnotationItem) -> AnnotationItem:
        if not self.active:
            return item
        data = item.model_dump()
        for path in self.cfg.drop:
            _edit(data, path.split("."), None)
        for path in self.cfg.hash:
            _edit(data, path.split("."), self.hash_value)
        return AnnotationItem.model_validate(data)

    def apply_features(self, features: dict[str, Any]) -> dict[str, Any]:
        """The same redaction on a bare feature mapping (e.g. for suite files)."""
        data = {"features": copy.deepcopy(features)}
        for path in self.cfg.drop:
            if path.startswith("features."):
                _edit(data, path.split("."), None)
        for path in self.cfg.hash:
            if path.startswith("features."):
                _edit(data, path.split("."), self.hash_value)
        return data["features"]


def _edit(data: dict[str, Any], parts: list[str], hasher: Callable[[Any], str] | None) -> None:
    """Drop (hasher None) or hash ``data[parts...]``; a path that is not there is left alone."""
    node: Any = data
    for key in parts[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]
    last = parts[-1]
    if not isinstance(node, dict) or last not in node:
        return
    if hasher is not None:
        node[last] = hasher(node[last])
    elif len(parts) == 1:
        node[last] = None  # a top-level field of the record: keep the key, lose the value
    else:
        del node[last]


class ItemPolicy:
    """Dedup, quotas, rate limit, assignment and redaction, with an injected clock."""

    def __init__(
        self,
        cfg: AnnotationPolicyConfig,
        redaction: RedactionConfig,
        clock: Callable[[], float],
        rotation: Rotation | None = None,
        metrics: ShadowdMetrics | None = None,
    ):
        self.cfg = cfg
        self._clock = clock
        self._rotation = rotation
        self._metrics = metrics
        self.redactor = Redactor(redaction)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._bucket = TokenBucket(cfg.rate_per_s, cfg.burst_items, clock)
        self._window: int | None = None
        self._slice_counts: _Tally[str] = _Tally()
        self.held_back: _Tally[str] = _Tally()
        self.admitted = 0

    def _quota(self, slice_name: str) -> int | None:
        return self.cfg.slice_quotas.get(slice_name, self.cfg.default_slice_quota)

    def _hold(self, why: str) -> None:
        self.held_back[why] += 1
        if self._metrics is not None:
            self._metrics.annotation_items.labels(outcome="held_back").inc()

    def admit(self, item: AnnotationItem) -> AnnotationItem | None:
        """The item as it may leave the process (assigned, redacted), or None if held back.

        Evaluation items skip dedup, quotas and the rate limit: they were drawn
        with a known probability, and holding some back would change it (the
        evaluation share is their budget). They are still assigned and redacted.
        """
        if item.reason == "evaluation":
            return self._release(item, self._clock())
        fp = None
        if self.cfg.dedup_window_items:
            fp = fingerprint(item, self.cfg.dedup_decimals)
            if fp in self._seen:
                self._seen.move_to_end(fp)
                self._hold("duplicate")
                return None
        now = self._clock()
        window = math.floor(now / self.cfg.quota_window_s)
        if window != self._window:
            self._window = window
            self._slice_counts.clear()
        keys = item.slices or [OVERALL]
        # Admit when one of its slices still has room: a rare slice is not
        # starved by sharing an item with a flooding one.
        open_keys = [k for k in keys if (q := self._quota(k)) is None or self._slice_counts[k] < q]
        if not open_keys:
            self._hold("slice_quota")
            return None
        if not self._bucket.take():
            self._hold("rate_limit")
            return None
        for k in keys:
            self._slice_counts[k] += 1
        if fp is not None:
            self._seen[fp] = None
            if len(self._seen) > self.cfg.dedup_window_items:
                self._seen.popitem(last=False)
        return self._release(item, now)

    def _release(self, item: AnnotationItem, now: float) -> AnnotationItem:
        self.admitted += 1
        if self._rotation is not None and item.assignee is None:
            item = item.model_copy(update={"assignee": self._rotation.on_call(now)})
        return self.redactor.apply(item)

    def stats(self) -> dict[str, Any]:
        return {"admitted": self.admitted, "held_back": dict(self.held_back)}

"""Which configured slices a request belongs to.

Sits in the comparator between divergence and the running aggregates: each
pair's ``features`` are matched against the slice predicates from the config
(``Condition``, ``AllOf``, ``AnyOf``, ``NotOf``) and the pair is counted in
"overall" plus every matching slice.

Features come from clients, so evaluation never raises: a missing feature
makes every operator false except ``missing``; a value of another type than
the condition's (a string compared with a number, a list where a scalar is
expected) makes the condition false. ``None`` (JSON null) counts as missing.
Booleans are their own type here: ``True`` does not equal ``1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shadowd.config import AllOf, AnyOf, Condition, NotOf, SliceConfig

__all__ = ["SliceMatcher", "evaluate"]


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "str"
    return None  # lists, dicts, None: never equal to a scalar


def _equal(a: Any, b: Any) -> bool | None:
    """a == b for two scalars of one kind; None when the kinds differ."""
    ka, kb = _kind(a), _kind(b)
    if ka is None or ka != kb:
        return None
    return bool(a == b)


def _condition(cond: Condition, features: Mapping[str, Any]) -> bool:
    value = features.get(cond.field)
    if cond.op == "missing":
        return value is None
    if value is None:
        return False
    op = cond.op
    if op == "exists":
        return True
    if op in ("eq", "ne"):
        same = _equal(value, cond.value)
        return False if same is None else same == (op == "eq")
    if op in ("in", "not_in"):
        results = [_equal(value, v) for v in cond.value]  # type: ignore[union-attr]
        comparable = [r for r in results if r is not None]
        if not comparable:
            return False
        return any(comparable) == (op == "in")
    # lt / le / gt / ge: numbers only (config validation guarantees cond.value is one).
    if _kind(value) != "number" or (isinstance(value, float) and math.isnan(value)):
        return False
    bound = float(cond.value)  # type: ignore[arg-type]  # a number for lt/le/gt/ge (config validation)
    if op == "lt":
        return bool(value < bound)
    if op == "le":
        return bool(value <= bound)
    if op == "gt":
        return bool(value > bound)
    return bool(value >= bound)


def evaluate(predicate: Condition | AllOf | AnyOf | NotOf, features: Mapping[str, Any]) -> bool:
    """Truth of one predicate tree for one request's features; never raises."""
    if isinstance(predicate, Condition):
        return _condition(predicate, features)
    if isinstance(predicate, AllOf):
        return all(evaluate(p, features) for p in predicate.all)
    if isinstance(predicate, AnyOf):
        return any(evaluate(p, features) for p in predicate.any)
    if isinstance(predicate, NotOf):
        return not evaluate(predicate.not_, features)
    raise TypeError(f"not a slice predicate: {type(predicate).__name__}")


class SliceMatcher:
    """Matches request features against the configured slices, in config order."""

    def __init__(self, slices: list[SliceConfig]):
        self._slices = list(slices)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self._slices]

    def match(self, features: Mapping[str, Any] | None) -> list[str]:
        """Names of the slices the features belong to ("overall" is implied, not listed)."""
        if not isinstance(features, Mapping):
            features = {}
        return [s.name for s in self._slices if evaluate(s.where, features)]

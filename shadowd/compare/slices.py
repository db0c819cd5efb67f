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

``SliceMatcher.match_batch`` answers the same question for a whole batch of
requests at once (one column per feature, numpy over the rows), with exactly
the answers ``match`` gives row by row: values of a type the columns do not
cover, and integers too large for a float, are judged by the row-wise rules.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

from shadowd.config import AllOf, AnyOf, Condition, NotOf, SliceConfig

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SliceMatcher", "evaluate", "evaluate_batch"]


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


# --- a batch of requests at once ---

# Type codes of a feature column. Only these exact types are judged in columns; anything else
# (a subclass, a list, a dict, an integer too large for a float) goes through ``_condition`` alone.
_OTHER, _NONE, _BOOL, _INT, _FLOAT, _STR = range(6)
_TYPE_CODE: dict[type, int] = {type(None): _NONE, bool: _BOOL, int: _INT, float: _FLOAT, str: _STR}
_KIND_CODE = {"bool": _BOOL, "str": _STR}
# Integers a float64 holds exactly; beyond them Python compares exactly and a float would not.
_EXACT_INT = 2**53


class _Column:
    """One feature over the rows of a batch: its values and their types; type codes and the numbers as
    floats are worked out when a condition first needs them."""

    def __init__(self, values: list[Any]):
        self.values = values
        self.types = set(map(type, values))
        self._ready = False

    @property
    def codes(self) -> np.ndarray:
        self._prepare()
        return self._codes

    @property
    def numbers(self) -> np.ndarray:
        """Numbers as floats, NaN elsewhere (every comparison with them is false)."""
        self._prepare()
        return self._numbers

    @property
    def is_number(self) -> np.ndarray:
        self._prepare()
        return self._is_number

    @property
    def other(self) -> Sequence[int] | np.ndarray:
        """Rows judged one by one: types the columns do not cover, integers too large for a float."""
        self._prepare()
        return self._other

    def _prepare(self) -> None:
        if self._ready:
            return
        import numpy as np

        self._ready = True
        values, types = self.values, self.types
        n = len(values)
        if len(types) == 1:  # the usual case: one type throughout
            self._codes = np.full(n, _TYPE_CODE.get(next(iter(types)), _OTHER), dtype=np.int8)
        else:
            self._codes = np.fromiter(map(_TYPE_CODE.get, map(type, values), repeat(_OTHER)), np.int8, n)
        self._other: Sequence[int] | np.ndarray = ()
        if types and types <= {float, int}:  # the usual numeric feature
            try:
                numbers = np.asarray(values, dtype=np.float64)
            except OverflowError:  # an integer past any float: the general case below
                numbers = None
            if numbers is not None and (int not in types or not (np.abs(numbers) >= _EXACT_INT).any()):
                self._is_number = np.ones(n, dtype=bool)
                self._numbers = numbers
                return
        self._numbers = np.full(n, math.nan)
        if int in types or float in types:
            self._is_number = (self._codes == _INT) | (self._codes == _FLOAT)
            idx = np.flatnonzero(self._is_number)
            picked = values if idx.size == n else [values[i] for i in idx.tolist()]
            try:
                self._numbers[idx] = np.asarray(picked, dtype=np.float64)
            except OverflowError:  # an integer past any float
                self._numbers[idx] = [v if type(v) is float or abs(v) < _EXACT_INT else math.inf for v in picked]
            if int in types:
                ints = idx[self._codes[idx] == _INT]
                big = ints[np.abs(self._numbers[ints]) >= _EXACT_INT]
                if big.size:  # compared exactly, row by row
                    self._codes[big] = _OTHER
                    self._is_number[big] = False
                    self._numbers[big] = math.nan
        else:
            self._is_number = np.zeros(n, dtype=bool)
        if types - _TYPE_CODE.keys() or int in types:
            self._other = np.flatnonzero(self._codes == _OTHER)

    def simple_kind(self) -> str | None:
        """'str' or 'bool' when every value is exactly of that type or None; else None."""
        rest = self.types - {type(None)}
        return "str" if rest == {str} else "bool" if rest == {bool} else None

    def kind(self, kind: str) -> np.ndarray:
        """Rows whose value is of this kind: bool, number or str."""
        rows: np.ndarray = self.is_number if kind == "number" else self.codes == _KIND_CODE[kind]
        return rows

    def equal(self, kind: str, target: Any) -> np.ndarray:
        """Rows of the target's kind whose value equals it, as Python compares them."""
        import numpy as np

        rows = self.kind(kind)
        out: np.ndarray
        if kind == "number" and abs(target) < _EXACT_INT:
            out = rows & (self.numbers == float(target))
            return out
        if rows.all():
            return np.fromiter(map(operator.eq, self.values, repeat(target)), bool, len(self.values))
        out = np.zeros(len(self.values), dtype=bool)
        idx = np.flatnonzero(rows)
        if idx.size:  # Python's == per element, on values of the target's kind only
            picked = [self.values[i] for i in idx.tolist()]
            out[idx] = np.fromiter(map(operator.eq, picked, repeat(target)), bool, idx.size)
        return out


def _condition_batch(cond: Condition, columns: dict[str, _Column], features: Sequence[dict[str, Any]]) -> np.ndarray:
    import numpy as np

    col = columns.get(cond.field)
    if col is None:
        col = columns[cond.field] = _Column(list(map(dict.get, features, repeat(cond.field))))
    n = len(col.values)
    op = cond.op
    out: np.ndarray
    if op in ("missing", "exists"):
        if type(None) not in col.types:
            return np.full(n, op == "exists")
        out = np.fromiter(map(operator.is_, col.values, repeat(None)), bool, n)
        return out if op == "missing" else ~out
    if op in ("lt", "le", "gt", "ge"):
        bound = float(cond.value)  # type: ignore[arg-type]  # a number for lt/le/gt/ge (config validation)
        x = col.numbers  # comparisons with NaN are false (and quiet)
        out = x < bound if op == "lt" else x <= bound if op == "le" else x > bound if op == "gt" else x >= bound
    else:
        # eq, ne, in, not_in: comparable where the value has the kind of some target (else false).
        targets = list(cond.value) if op in ("in", "not_in") else [cond.value]  # type: ignore[arg-type]
        kinds = {_kind(t) for t in targets} - {None}  # a None target is never equal to anything
        simple = col.simple_kind()
        if simple is not None and kinds == {simple}:
            # Every value a str (or every value a bool), or None: set membership is Python's ==.
            wanted = frozenset(t for t in targets if t is not None)
            equal_rows = np.fromiter(map(wanted.__contains__, col.values), bool, n)
            if op in ("eq", "in"):
                return equal_rows
            out = ~equal_rows
            if type(None) in col.types:
                out &= np.fromiter(map(operator.is_not, col.values, repeat(None)), bool, n)
            return out
        comparable: np.ndarray | None = None
        equal: np.ndarray | None = None
        for target in targets:
            kind = _kind(target)
            if kind is None:
                continue
            rows, hit = col.kind(kind), col.equal(kind, target)
            comparable = rows if comparable is None else comparable | rows
            equal = hit if equal is None else equal | hit
        if comparable is None or equal is None:
            out = np.zeros(n, dtype=bool)
        else:
            out = equal if op in ("eq", "in") else comparable & ~equal  # equal implies comparable
    for i in col.other:  # unusual values: the row-wise rules
        out[i] = _condition(cond, {cond.field: col.values[i]})
    return out


def evaluate_batch(
    predicate: Condition | AllOf | AnyOf | NotOf,
    features: Sequence[dict[str, Any]],
    columns: dict[str, _Column] | None = None,
) -> np.ndarray:
    """``evaluate`` on every row of a batch at once: a bool array, exactly as row by row.

    ``columns`` caches the feature columns between predicates of one batch.
    """
    import numpy as np

    columns = {} if columns is None else columns
    if isinstance(predicate, Condition):
        return _condition_batch(predicate, columns, features)
    if isinstance(predicate, AllOf):
        out = np.ones(len(features), dtype=bool)
        for p in predicate.all:
            out &= evaluate_batch(p, features, columns)
        return out
    if isinstance(predicate, AnyOf):
        out = np.zeros(len(features), dtype=bool)
        for p in predicate.any:
            out |= evaluate_batch(p, features, columns)
        return out
    if isinstance(predicate, NotOf):
        return ~evaluate_batch(predicate.not_, features, columns)
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

    def match_batch(self, features: Sequence[Mapping[str, Any] | None]) -> np.ndarray:
        """Membership of every row in every slice: bool array (slices in config order, rows)."""
        import numpy as np

        if set(map(type, features)) == {dict}:
            rows: Sequence[dict[str, Any]] = features  # type: ignore[assignment]  # all plain dicts
        else:
            rows = [f if type(f) is dict else dict(f) if isinstance(f, Mapping) else {} for f in features]
        columns: dict[str, _Column] = {}
        out = np.zeros((len(self._slices), len(rows)), dtype=bool)
        for j, s in enumerate(self._slices):
            out[j] = evaluate_batch(s.where, rows, columns)
        return out

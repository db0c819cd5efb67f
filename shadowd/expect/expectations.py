"""Data expectations checked on live traffic (issue 7).

Where it sits: the ingress calls ``ExpectationSet.check_request`` on every
request before the production model runs (so ``on_violation: reject`` can
answer 422 instead), and ``check_output`` on production's output; the shadow
worker calls ``check_output`` on the candidate's and noise's outputs. The
violations go to metrics (``record_violations``), to the pair (so the
comparator's report and ``ViolationTally`` show them per slice) and, sampled,
to the annotation queue with reason ``expectation_violation``.

This runs on the production request path, so everything that can be decided
once is decided at construction: each feature's rules become one closure,
and the inputs array is checked with two numpy reductions. No pydantic and
no allocation on the happy path.
"""

from __future__ import annotations

import math
from collections import Counter as _Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shadowd.config import (
    ExpectationsConfig,
    FeatureExpectation,
    InputsExpectation,
    OutputsExpectation,
    RedactionConfig,
)
from shadowd.errors import ExpectationFailed
from shadowd.records import OVERALL, AnnotationItem, ModelOutput

__all__ = [
    "ExpectationSet",
    "Violation",
    "ViolationTally",
    "record_violations",
    "violation_item",
]

_MISSING = object()
_REPR_CHARS = 40


@dataclass(frozen=True, slots=True)
class Violation:
    """One failed expectation on one request (or on a batch of outputs).

    ``expectation`` is ``<field>.<rule>``, built only from config names and
    roles, so it is safe as a metrics label; the value goes in ``message``.
    """

    expectation: str
    field: str  # "features.<name>", "inputs", "outputs.<role>"
    rule: str  # required, not_null, type, finite, range, allowed, shape, sum_to_one
    message: str  # one line naming the value and the rule
    role: str | None = None  # model role, for output violations
    count: int = 1  # examples affected (a batched output check may find several)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_CHARS else text[: _REPR_CHARS - 3] + "..."


def _bounds(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"in [{lo:g}, {hi:g}]"
    return f">= {lo:g}" if lo is not None else f"<= {hi:g}"


def _finite(v: float | int) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float: not finite for any model
        return False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "number": _is_number,
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
}


_HIDDEN = "<redacted>"


def _feature_check(name: str, exp: FeatureExpectation, hide: bool = False) -> Callable[[Any], list[Violation] | None]:
    """Compile one feature's rules into a closure; it returns None when all hold (the common case).
    ``hide``: the feature is redacted, so messages never show its value."""
    field = f"features.{name}"
    show: Callable[[Any], str] = (lambda _v: _HIDDEN) if hide else _show
    rep: Callable[[Any], str] = (lambda _v: _HIDDEN) if hide else repr

    def viol(rule: str, message: str) -> Violation:
        return Violation(f"{field}.{rule}", field, rule, f"{field}: {message}")

    type_test = _TYPE_TESTS.get(exp.type)
    lo, hi = exp.min, exp.max
    has_range = lo is not None or hi is not None
    allowed = None
    if exp.allowed is not None:
        # bool is an int in Python (True == 1); keep them apart so 'allowed: [1]' does not admit true
        allowed = frozenset((type(v) is bool, v) for v in exp.allowed)
    shape = tuple(exp.shape) if exp.shape is not None else None

    def check(value: Any) -> list[Violation] | None:
        if value is _MISSING:
            return [viol("required", "missing; the feature is required")] if exp.required else None
        if value is None or (isinstance(value, float) and value != value):
            if exp.not_null:
                return [viol("not_null", f"got {show(value)}; must not be null")]
            if value is None:
                return None  # null is allowed; no other rule applies to it
        if type_test is not None and not type_test(value):
            return [viol("type", f"got {show(value)} ({type(value).__name__}); must be {exp.type}")]
        out: list[Violation] = []
        if _is_number(value):
            if exp.finite and not _finite(value):
                out.append(viol("finite", f"got {rep(value)}; must be finite"))
            elif has_range and ((lo is not None and value < lo) or (hi is not None and value > hi)):
                out.append(viol("range", f"got {rep(value)}; must be {_bounds(lo, hi)}"))
        if allowed is not None:
            try:
                ok = (type(value) is bool, value) in allowed
            except TypeError:  # unhashable, e.g. a list
                ok = False
            if not ok:
                out.append(viol("allowed", f"got {show(value)}; must be one of {_show(exp.allowed)}"))
        if shape is not None:
            try:
                got = np.shape(value)
            except ValueError:  # ragged nested lists
                got = None
            if got != shape:
                out.append(viol("shape", f"shape {list(got) if got is not None else 'ragged'}; must be {list(shape)}"))
        return out or None

    return check


class _ArrayRules:
    """Vectorised rules for one numeric array: shape, finite, range."""

    def __init__(
        self, field: str, shape: list[int] | None, finite: bool, lo: float | None, hi: float | None, hide: bool = False
    ):
        self.field = field
        self._num: Callable[[Any], str] = (lambda _v: _HIDDEN) if hide else (lambda v: repr(float(v)))
        self.shape = tuple(shape) if shape is not None else None
        self.finite = finite
        self.lo = lo
        self.hi = hi

    def _viol(self, rule: str, message: str, role: str | None = None, count: int = 1) -> Violation:
        return Violation(f"{self.field}.{rule}", self.field, rule, f"{self.field}: {message}", role, count)

    def check(self, x: np.ndarray, out: list[Violation], role: str | None = None) -> None:
        if self.shape is not None and x.shape != self.shape:
            out.append(self._viol("shape", f"shape {list(x.shape)}; must be {list(self.shape)}", role))
        if x.dtype.kind not in "fiub":
            out.append(self._viol("type", f"dtype {x.dtype}; must be numeric", role))
            return
        if x.size == 0:
            return
        # NaN propagates through min/max and inf shows up in one of them, so these two
        # reductions decide finiteness and range at once; the slow path runs only on failure.
        lo, hi = x.min(), x.max()
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite_mask = np.isfinite(x)
            if self.finite:
                bad = x.size - int(np.count_nonzero(finite_mask))
                first = x.flat[int(np.argmin(finite_mask.ravel()))]
                out.append(
                    self._viol("finite", f"{bad} of {x.size} values are NaN/inf (first {self._num(first)})", role)
                )
            kept = x[finite_mask]
            if kept.size == 0:
                return
            lo, hi = kept.min(), kept.max()
        if self.lo is not None and lo < self.lo:
            out.append(self._viol("range", f"smallest value {self._num(lo)} < min {self.lo:g}", role))
        if self.hi is not None and hi > self.hi:
            out.append(self._viol("range", f"largest value {self._num(hi)} > max {self.hi:g}", role))


class _OutputRules:
    """Numerical stability of one role's outputs, per example, vectorised over a batch."""

    def __init__(self, role: str, exp: OutputsExpectation):
        self.role = role
        self.field = f"outputs.{role}"
        self.exp = exp
        self.shape = tuple(exp.shape) if exp.shape is not None else None

    def _viol(self, rule: str, message: str, count: int) -> Violation:
        return Violation(f"{self.field}.{rule}", self.field, rule, f"{self.field}: {message}", self.role, count)

    def _fine(self, v: np.ndarray) -> bool:
        """Fast path for one example that passes: three reductions, no temporaries (the common case)."""
        exp = self.exp
        if v.dtype.kind not in "fiu" or v.size == 0 or (self.shape is not None and v.shape != self.shape):
            return False
        lo, hi = v.min(), v.max()
        return (
            math.isfinite(lo)
            and math.isfinite(hi)
            and (exp.min is None or lo >= exp.min)
            and (exp.max is None or hi <= exp.max)
            and (not exp.sum_to_one or abs(float(v.sum()) - 1.0) <= exp.sum_tolerance)
        )

    def check(self, values: np.ndarray, batched: bool) -> list[Violation]:
        if not batched and self._fine(values):
            return []
        exp = self.exp
        out: list[Violation] = []
        v = values if batched else values[np.newaxis, ...]
        n = v.shape[0]
        if self.shape is not None and v.shape[1:] != self.shape:
            out.append(self._viol("shape", f"example shape {list(v.shape[1:])}; must be {list(self.shape)}", n))
        if v.dtype.kind not in "fiub":
            out.append(self._viol("type", f"dtype {v.dtype}; must be numeric", n))
            return out
        if v.size == 0:
            return out
        rows = v.reshape(n, -1)
        lo, hi = rows.min(), rows.max()  # NaN/inf show up here; see _ArrayRules.check
        bad_rows = None
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = np.isfinite(rows)
            bad_rows = ~finite.all(axis=1)
            if exp.finite:
                k = int(np.count_nonzero(bad_rows))
                out.append(self._viol("finite", f"{k} of {n} examples hold NaN/inf", k))
            kept = rows[finite]
            lo, hi = (kept.min(), kept.max()) if kept.size else (np.nan, np.nan)
        # comparisons with NaN are False, so an all-NaN output is not also "out of range"
        if (exp.min is not None and lo < exp.min) or (exp.max is not None and hi > exp.max):
            with np.errstate(invalid="ignore"):
                outside = np.zeros(rows.shape, dtype=bool)
                if exp.min is not None:
                    outside |= rows < exp.min
                if exp.max is not None:
                    outside |= rows > exp.max
                if bad_rows is not None:
                    outside &= np.isfinite(rows)  # inf is counted as non-finite, not twice
            k = int(np.count_nonzero(outside.any(axis=1)))
            out.append(
                self._viol(
                    "range",
                    f"{k} of {n} examples not {_bounds(exp.min, exp.max)} (values {float(lo)!r} to {float(hi)!r})",
                    k,
                )
            )
        if exp.sum_to_one:
            dev = np.abs(rows.sum(axis=1) - 1.0)
            if bad_rows is not None:
                dev[bad_rows] = 0.0  # already counted as non-finite
            k = int(np.count_nonzero(dev > exp.sum_tolerance))
            if k:
                worst = float(rows.sum(axis=1)[int(np.argmax(dev))])
                out.append(
                    self._viol(
                        "sum_to_one", f"{k} of {n} examples sum outside 1 +- {exp.sum_tolerance} (worst {worst!r})", k
                    )
                )
        return out


class ExpectationSet:
    """The configured expectations, compiled once; ``check_*`` are cheap enough for every request."""

    def __init__(
        self,
        cfg: ExpectationsConfig,
        roles: Iterable[str] = ("production", "candidate", "noise"),
        redaction: RedactionConfig | None = None,
    ):
        """``redaction``: fields it covers never show their values in violation messages (which reach
        the report, the logs, annotation items and the pair store)."""
        self.cfg = cfg
        self.rejects = cfg.on_violation == "reject"

        def hide(field: str) -> bool:
            return redaction is not None and redaction.covers(field)

        self._features = [
            (name, _feature_check(name, exp, hide(f"features.{name}"))) for name, exp in cfg.features.items()
        ]
        inp: InputsExpectation | None = cfg.inputs
        self._inputs = (
            None if inp is None else _ArrayRules("inputs", inp.shape, inp.finite, inp.min, inp.max, hide("inputs"))
        )
        self._outputs = {role: _OutputRules(role, cfg.outputs) for role in roles}

    @property
    def expectation_names(self) -> list[str]:
        """Every expectation label this set can produce, to pre-create metric series at zero."""
        names = []
        for name, exp in self.cfg.features.items():
            f = f"features.{name}"
            rules = ["type"] if exp.type != "any" else []
            rules += [
                r
                for r, on in (
                    ("required", exp.required),
                    ("not_null", exp.not_null),
                    ("finite", exp.finite),
                    ("range", exp.min is not None or exp.max is not None),
                    ("allowed", exp.allowed is not None),
                    ("shape", exp.shape is not None),
                )
                if on
            ]
            names += [f"{f}.{r}" for r in rules]
        if self.cfg.inputs is not None:
            names += [f"inputs.{r}" for r in ("shape", "type", "finite", "range")]
        for role in self._outputs:
            names += [f"outputs.{role}.{r}" for r in ("shape", "type", "finite", "range", "sum_to_one")]
        return names

    def check_request(self, features: Mapping[str, Any] | None, inputs: np.ndarray | None) -> list[Violation]:
        """Violations of the feature and inputs expectations by one request; [] when it is fine."""
        out: list[Violation] = []
        feats: Mapping[str, Any] = features if features is not None else {}
        for name, check in self._features:
            found = check(feats.get(name, _MISSING))
            if found:
                out.extend(found)
        if self._inputs is not None and inputs is not None:
            self._inputs.check(inputs, out)
        return out

    def check_output(self, role: str, values: np.ndarray, batched: bool = False) -> list[Violation]:
        """Violations of the output expectations by one model's output.

        ``values`` is one example's output, or a batch with examples on axis 0
        when ``batched``; a violation's ``count`` is the examples affected.
        """
        rules = self._outputs.get(role)
        if rules is None:
            rules = self._outputs[role] = _OutputRules(role, self.cfg.outputs)
        return rules.check(np.asarray(values), batched)

    def check_output_rows(self, role: str, batch: np.ndarray) -> list[list[Violation]]:
        """Per example of a batch (axis 0), its output violations; one vectorised pass when all pass.

        For the shadow worker, which runs the candidate in batches but builds one pair per request.
        """
        batch = np.asarray(batch)
        if not self.check_output(role, batch, batched=True):
            return [[] for _ in range(len(batch))]
        return [self.check_output(role, row) for row in batch]  # rare: something is wrong somewhere

    def raise_if_rejected(self, violations: list[Violation]) -> None:
        """Raise ``ExpectationFailed`` (422, naming the first failed expectation) when the config says reject."""
        if violations and self.rejects:
            first = violations[0]
            more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
            raise ExpectationFailed(f"failed expectation {first.expectation}: {first.message}{more}", violations)

    def should_annotate(self, request_id: str, violations: list[Violation]) -> bool:
        """Whether this violating request goes to the annotation queue (``annotate_share``, by request id hash)."""
        if not violations:
            return False
        from shadowd.sampling import is_sampled

        return is_sampled(request_id, self.cfg.annotate_share, salt="expectations")


def record_violations(metrics: Any, violations: Iterable[Violation]) -> None:
    """Count violations in ``shadowd_expectation_violations_total`` and non-finite outputs per role.

    ``metrics`` is a ``ShadowdMetrics``.
    """
    for v in violations:
        metrics.expectation_violations.labels(expectation=v.expectation).inc(v.count)
        if v.rule == "finite" and v.role is not None:
            metrics.nonfinite_outputs.labels(role=v.role).inc(v.count)


def violation_item(
    request_id: str,
    violations: list[Violation],
    *,
    created_ts: float,
    slices: Iterable[str] = (),
    features: Mapping[str, Any] | None = None,
    inputs: Any = None,
    production: ModelOutput | None = None,
    candidate: ModelOutput | None = None,
) -> AnnotationItem:
    """The annotation item for a violating request: reason ``expectation_violation``, one violation
    per failed expectation in ``detail``, priority = examples affected (more broken, more urgent)."""
    detail = "; ".join(v.message for v in violations[:3])
    if len(violations) > 3:
        detail += f"; and {len(violations) - 3} more"
    return AnnotationItem(
        request_id=request_id,
        reason="expectation_violation",
        priority=float(sum(v.count for v in violations)),
        slices=[s for s in slices if s != OVERALL],
        features=dict(features or {}),
        inputs=inputs,
        production=production,
        candidate=candidate,
        detail=detail,
        created_ts=created_ts,
    )


class ViolationTally:
    """Violation counts per slice and expectation, for the report; mergeable across replicas.

    The comparator adds each pair's violations with the pair's slices; requests
    are counted too, so the report can show a violation rate.
    """

    def __init__(self, examples_per_expectation: int = 3):
        self.requests: _Counter[str] = _Counter()
        self.counts: dict[str, _Counter[str]] = {}
        self._examples_per = examples_per_expectation
        self.examples: dict[str, list[str]] = {}

    def add(self, violations: Iterable[Violation], slices: Iterable[str] = ()) -> None:
        names = [OVERALL, *[s for s in slices if s != OVERALL]]
        vs = list(violations)
        for s in names:
            self.requests[s] += 1
            if vs:
                c = self.counts.setdefault(s, _Counter())
                for v in vs:
                    c[v.expectation] += v.count
        for v in vs:
            ex = self.examples.setdefault(v.expectation, [])
            if len(ex) < self._examples_per:
                ex.append(v.message)

    def merge(self, other: ViolationTally) -> None:
        self.requests.update(other.requests)
        for s, c in other.counts.items():
            self.counts.setdefault(s, _Counter()).update(c)
        for name, msgs in other.examples.items():
            ex = self.examples.setdefault(name, [])
            ex.extend(msgs[: max(0, self._examples_per - len(ex))])

    def report(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "violations": {s: dict(sorted(c.items())) for s, c in sorted(self.counts.items())},
            "examples": {k: list(v) for k, v in sorted(self.examples.items())},
        }

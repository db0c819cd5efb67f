"""Windowed drift checks of live inputs and both models' outputs against the training profile.

Where it sits: beside the comparator (the single hub deployment). For each
finished pair the hub calls ``DriftMonitor.add(pair.features, outputs,
slices, inputs=...)``; values are only appended there. When a tumbling
window closes (``window_size`` requests or ``window_s`` seconds, whichever
first) every monitored feature x slice with at least ``min_samples`` values
is tested against the profile:

- effect size: population stability index (PSI) over the profile's bins
  (numeric: quantile bins; categorical: categories);
- significance: two-sample Kolmogorov-Smirnov against the profile's sample
  (numeric) or a chi-square test of the 2 x K table training vs window counts
  (categorical), from scipy; the window's p-values are adjusted together
  (Benjamini-Hochberg by default, ``scipy.stats.false_discovery_control``),
  because a window runs features x slices tests at once.

A check fails (drift) only when both hold: the adjusted p-value is below
``alpha`` and PSI reaches ``psi_threshold``, so big windows do not alarm on
trivial shifts and small windows do not alarm on noise. Fewer than
``min_samples`` values, or too few categories to test, is inconclusive.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

from shadowd.compare.report import CheckStatus
from shadowd.compare.stats import adjust_p_values
from shadowd.config import DriftConfig
from shadowd.errors import ConfigError
from shadowd.expect.profile import OTHER, CategoricalProfile, NumericProfile, Profile, bin_index, category_key
from shadowd.records import OVERALL

__all__ = ["DriftMonitor", "DriftResult", "DriftWindow", "psi"]

Status = Literal["pass", "fail", "inconclusive"]
# shadowd_drift_status gauge values

_PSI_FLOOR = 1e-4  # share used for an empty bin, so PSI stays finite
_MIN_EXPECTED = 5.0  # chi-square needs about this many expected per cell


@dataclass(frozen=True)
class DriftResult:
    """One feature x slice in one window.

    Field names follow the comparator's ``CheckResult`` (check, slice, status,
    value, ci, threshold, n, reason, p_value, p_adjusted) so the report and
    the gate can show both alike; ``feature``, ``test`` and ``statistic`` are
    drift's own.
    """

    check: str  # "drift"
    feature: str  # profile feature name, or "outputs.<role>"
    slice: str
    status: Status
    value: float | None  # PSI
    threshold: float  # psi_threshold
    n: int  # live values in the window
    reason: str  # one line
    test: str | None = None  # "ks" or "chi2"
    statistic: float | None = None  # KS D, or chi-square
    p_value: float | None = None
    p_adjusted: float | None = None  # across the window's tests (expectations.drift.correction)
    ci: tuple[float, float] | None = None  # drift checks give none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DriftWindow:
    index: int
    opened_s: float
    closed_s: float
    requests: int
    tests: int  # conclusive tests the correction ran over
    results: tuple[DriftResult, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "opened_s": self.opened_s,
            "closed_s": self.closed_s,
            "requests": self.requests,
            "tests": self.tests,
            "results": [r.to_dict() for r in self.results],
        }


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two count vectors over the same bins."""
    e = np.maximum(expected / max(expected.sum(), 1), _PSI_FLOOR)
    a = np.maximum(actual / max(actual.sum(), 1), _PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


class _NumericRef:
    def __init__(self, prof: NumericProfile):
        self.inner = prof.inner_edges
        self.counts = np.asarray(prof.bin_counts, dtype=float)
        self.sample = np.asarray(prof.sample, dtype=float)
        self.usable = prof.count > 0 and self.sample.size > 0

    def test(self, values: list[Any]) -> tuple[str, float, float, float] | str:
        x = np.asarray(values, dtype=float)
        live = np.bincount(bin_index(self.inner, x), minlength=self.counts.size).astype(float)
        # asymptotic p-value: scipy's exact one costs ~10x more and min_samples keeps n large enough
        # for the approximation (the false-alarm test over 200 windows checks the calibration)
        res = stats.ks_2samp(x, self.sample, method="asymp")
        return "ks", psi(self.counts, live), float(res.statistic), float(res.pvalue)


class _CategoricalRef:
    def __init__(self, prof: CategoricalProfile):
        self.freq = prof.frequencies
        self.usable = prof.count > 0
        self.has_other = OTHER in prof.frequencies

    def test(self, values: list[Any]) -> tuple[str, float, float, float] | str:
        live = Counter(values)
        if self.has_other:  # the profile pooled its rare categories; pool live ones it does not list the same way
            unlisted = sum(c for k, c in live.items() if k not in self.freq)
            live = Counter({k: c for k, c in live.items() if k in self.freq})
            if unlisted:
                live[OTHER] += unlisted
        keys = sorted(set(self.freq) | set(live))
        ref = np.array([self.freq.get(k, 0) for k in keys], dtype=float)
        obs = np.array([live.get(k, 0) for k in keys], dtype=float)
        value = psi(ref, obs)
        # pool the categories too rare for the chi-square approximation into one cell
        n = obs.sum()
        expected = n * (ref + obs) / (ref.sum() + n)
        order = np.argsort(expected)
        pooled = np.zeros(3)  # ref, obs, expected of the pooled cell
        cols = []
        for i in order:
            if expected[i] < _MIN_EXPECTED or 0 < pooled[2] < _MIN_EXPECTED:
                pooled += (ref[i], obs[i], expected[i])
            else:
                cols.append((ref[i], obs[i]))
        if pooled[2] > 0:
            if pooled[2] < _MIN_EXPECTED and cols:
                r, o = cols.pop(0)  # still too small: join the smallest regular cell
                pooled += (r, o, 0.0)
            cols.append((pooled[0], pooled[1]))
        if len(cols) < 2:
            return f"fewer than 2 categories with >= {_MIN_EXPECTED:g} expected values"
        table = np.array(cols, dtype=float).T
        res = stats.chi2_contingency(table, correction=False)
        return "chi2", value, float(res.statistic), float(res.pvalue)


def _reference(prof: NumericProfile | CategoricalProfile) -> _NumericRef | _CategoricalRef:
    return _NumericRef(prof) if isinstance(prof, NumericProfile) else _CategoricalRef(prof)


def _output_class(values: Any) -> str | None:
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0 or not np.isfinite(v).all():
        return None
    return category_key(int(np.argmax(v)))


def _output_value(values: Any) -> float | None:
    v = np.asarray(values, dtype=float).ravel()
    # several regression outputs: the first is profiled (the training target column)
    return float(v[0]) if v.size and math.isfinite(v[0]) else None


class DriftMonitor:
    """Tumbling windows of live values per feature x slice, tested against ``profile`` when a window closes.

    ``clock`` returns seconds (monotonic); ``metrics`` (a ``ShadowdMetrics``)
    gets ``shadowd_drift_status{feature,slice}`` set for every result.
    """

    def __init__(
        self,
        cfg: DriftConfig,
        profile: Profile,
        clock: Callable[[], float] = time.monotonic,
        metrics: Any = None,
    ):
        self.cfg = cfg
        self.profile = profile
        self._clock = clock
        self._metrics = metrics
        names = list(cfg.features) or list(profile.features)
        unknown = [n for n in names if n not in profile.features]
        if unknown:
            raise ConfigError(
                f"expectations.drift.features: {', '.join(unknown)} not in profile {cfg.profile} "
                f"(it has {', '.join(list(profile.features)[:10])}{' ...' if len(profile.features) > 10 else ''})"
            )
        self._refs: dict[str, _NumericRef | _CategoricalRef] = {}
        # (name, source, key, numeric): how add() reads each monitored value, decided once
        self._readers: list[tuple[str, str, Any, bool]] = []
        for name in names:
            prof = profile.features[name]
            numeric = isinstance(prof, NumericProfile)
            self._refs[name] = _reference(prof)
            base, _, rest = name.partition("[")
            if base == "inputs" and rest.endswith("]") and rest[:-1].isdigit():
                self._readers.append((name, "inputs", int(rest[:-1]), numeric))
            else:
                self._readers.append((name, "features", name, numeric))
        self._outputs_numeric: bool | None = None
        if cfg.outputs and profile.outputs is not None:
            self._outputs_numeric = isinstance(profile.outputs, NumericProfile)
            self._out_ref = _reference(profile.outputs)
        self.windows: deque[DriftWindow] = deque(maxlen=cfg.history_windows)
        self.windows_closed = 0
        self.alarms: Counter[tuple[str, str]] = Counter()  # (feature, slice) -> windows with drift
        self._reset(None)

    @property
    def features(self) -> list[str]:
        return [r[0] for r in self._readers]

    def _reset(self, now_s: float | None) -> None:
        self._opened_s = now_s
        self._requests = 0
        self._values: dict[tuple[str, str], list[Any]] = {}
        self._missing: Counter[tuple[str, str]] = Counter()

    def _put(self, key: tuple[str, str], value: Any) -> None:
        vals = self._values.get(key)
        if vals is None:
            vals = self._values[key] = []
        vals.append(value)

    def add(
        self,
        features: Mapping[str, Any] | None,
        outputs: Mapping[str, Any] | None = None,
        slices: Iterable[str] = (),
        inputs: Any = None,
    ) -> DriftWindow | None:
        """Add one request (its features, optional flattened-able inputs, and outputs by role).

        Returns the window this request closed, if it closed one. ``slices``
        are the configured slice names the request belongs to; every request
        also counts in ``overall``.
        """
        now = self._clock()
        closed = self.tick(now)
        if self._opened_s is None:
            self._opened_s = now
        names = [OVERALL, *(s for s in slices if s != OVERALL)]
        feats = features or {}
        flat = None if inputs is None else np.asarray(inputs).ravel()
        for name, source, key, numeric in self._readers:
            v = (flat[key] if flat is not None and key < flat.size else None) if source == "inputs" else feats.get(key)
            if numeric:
                ok = isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
                try:
                    v = float(v) if ok and math.isfinite(v) else None  # type: ignore[arg-type]  # ok: a number
                except OverflowError:  # an int too large for a float
                    v = None
            elif v is not None:
                v = category_key(v)
            for s in names:
                if v is None:
                    self._missing[(name, s)] += 1
                else:
                    self._put((name, s), v)
        if outputs and self._outputs_numeric is not None:
            read = _output_value if self._outputs_numeric else _output_class
            for role, values in outputs.items():
                if values is None:
                    continue
                v = read(values)
                if v is None:
                    continue  # non-finite outputs are counted by the expectations, not drift
                for s in names:
                    self._put((f"outputs.{role}", s), v)
        self._requests += 1
        if self._requests >= self.cfg.window_size:
            return self._close(now)
        return closed

    def tick(self, now_s: float | None = None) -> DriftWindow | None:
        """Close the open window if ``window_s`` has passed; call it from a timer when traffic can stop."""
        now = self._clock() if now_s is None else now_s
        if (
            self._requests
            and self.cfg.window_s is not None
            and self._opened_s is not None
            and now - self._opened_s >= self.cfg.window_s
        ):
            return self._close(now)
        return None

    def _ref(self, feature: str) -> _NumericRef | _CategoricalRef:
        return self._out_ref if feature.startswith("outputs.") else self._refs[feature]

    def _close(self, now_s: float) -> DriftWindow:
        cfg = self.cfg
        keys = sorted(set(self._values) | set(self._missing))
        pending: list[tuple[str, str, int, str, float, float, float]] = []
        results: list[DriftResult] = []
        for feature, s in keys:
            vals = self._values.get((feature, s), [])
            n = len(vals)
            ref = self._ref(feature)
            why = None
            if not ref.usable:
                why = "the profile has no values for this feature"
            elif n < cfg.min_samples:
                why = f"{n} values in the window < min_samples {cfg.min_samples}"
            else:
                out = ref.test(vals)
                if isinstance(out, str):
                    why = out
                else:
                    pending.append((feature, s, n, *out))
            if why is not None:
                results.append(DriftResult("drift", feature, s, "inconclusive", None, cfg.psi_threshold, n, why))
        adjusted = adjust_p_values([p[-1] for p in pending], cfg.correction)
        m = len(pending)
        for (feature, s, n, test, value, statistic, p_raw), p_adj in zip(pending, adjusted, strict=True):
            significant = p_adj < cfg.alpha
            large = value >= cfg.psi_threshold
            status: Status = "fail" if significant and large else "pass"
            tested = f"{test} p {p_adj:.3g} ({cfg.correction}-adjusted over {m} tests)"
            if status == "fail":
                reason = f"drift: PSI {value:.3f} >= {cfg.psi_threshold:g} and {tested} < alpha {cfg.alpha:g}"
            elif not significant:
                reason = f"no significant drift: {tested} >= alpha {cfg.alpha:g} (PSI {value:.3f})"
            else:
                reason = f"shift too small: PSI {value:.3f} < {cfg.psi_threshold:g} ({tested})"
            results.append(
                DriftResult(
                    "drift",
                    feature,
                    s,
                    status,
                    value,
                    cfg.psi_threshold,
                    n,
                    reason,
                    test,
                    statistic,
                    p_raw,
                    float(p_adj),
                )
            )
        results.sort(key=lambda r: (r.slice != OVERALL, r.slice, r.feature))
        window = DriftWindow(self.windows_closed, self._opened_s or now_s, now_s, self._requests, m, tuple(results))
        self.windows.append(window)
        self.windows_closed += 1
        for r in results:
            if r.status == "fail":
                self.alarms[(r.feature, r.slice)] += 1
            if self._metrics is not None:
                self._metrics.drift_status.labels(feature=r.feature, slice=r.slice).set(
                    CheckStatus(r.status).gauge_value
                )
        self._reset(None)
        return window

    def report(self) -> dict[str, Any]:
        """Drift state for ``/shadow/report``: the last closed window, alarms so far, the open window."""
        self.tick()
        last = self.windows[-1] if self.windows else None
        alarms: dict[str, dict[str, int]] = {}
        for (feature, s), k in sorted(self.alarms.items()):
            alarms.setdefault(s, {})[feature] = k
        return {
            "profile": str(self.cfg.profile),
            "windows_closed": self.windows_closed,
            "open_window": {
                "requests": self._requests,
                "age_s": 0.0 if self._opened_s is None else max(self._clock() - self._opened_s, 0.0),
            },
            "drifting": []
            if last is None
            else [
                {"feature": r.feature, "slice": r.slice, "reason": r.reason} for r in last.results if r.status == "fail"
            ],
            "alarms": alarms,
            "last_window": None if last is None else last.to_dict(),
        }

"""Drift checks: textbook formulas, false-alarm rate across many no-drift windows (binomial bound),
and real shifts injected into one slice of real data (scikit-learn's bundled datasets)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from scipy import stats
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import LogisticRegression

from shadowd.config import DriftConfig
from shadowd.errors import ConfigError
from shadowd.expect.drift import DriftMonitor, psi
from shadowd.expect.profile import build_profile
from shadowd.observe.metrics import ShadowdMetrics


class FakeClock:
    """Monotonic seconds under test control (windows close on time without sleeping)."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def _cfg(**kw) -> DriftConfig:
    base = {"profile": "profile.json", "window_s": None}
    return DriftConfig.model_validate({**base, **kw})


def test_psi_matches_the_textbook_formula():
    expected = np.array([25.0, 25.0, 25.0, 25.0])
    actual = np.array([10.0, 20.0, 30.0, 40.0])
    by_hand = sum((a - 0.25) * math.log(a / 0.25) for a in (0.1, 0.2, 0.3, 0.4))
    assert psi(expected, actual) == pytest.approx(by_hand)
    assert psi(expected, expected * 3) == 0.0
    # an empty bin is floored at 1e-4, so PSI stays finite
    assert math.isfinite(psi(np.array([50.0, 50.0, 0.0]), np.array([40.0, 40.0, 20.0])))


# --- calibration: known distributions, so "no drift" is exactly true ---


def _synthetic(rng, n, shift=0.0):
    return {
        "latency_ms": rng.lognormal(3.0 + shift, 0.5, n),
        "score": rng.normal(shift, 1.0, n),
        "plan": rng.choice(["free", "pro", "team", "enterprise"], n, p=[0.6, 0.25, 0.1, 0.05]),
    }


def _synthetic_monitor(alpha, psi_threshold, window):
    rng = np.random.default_rng(7)
    prof = build_profile(_synthetic(rng, 20_000), sample_size=5_000)
    cfg = _cfg(window_size=window, min_samples=50, alpha=alpha, psi_threshold=psi_threshold)
    return DriftMonitor(cfg, prof, clock=FakeClock())


def _stream(monitor, rng, windows, window, shift_slice_b=0.0):
    closed = []
    for _ in range(windows):
        in_b = rng.random(window) < 0.5
        a = _synthetic(rng, window)
        b = _synthetic(rng, window, shift=shift_slice_b)
        for i in range(window):
            src = b if in_b[i] else a
            feats = {k: (v[i].item()) for k, v in src.items()}
            w = monitor.add(feats, None, ["b"] if in_b[i] else ["a"])
        closed.append(w)
    assert all(w is not None for w in closed)
    return closed


def test_no_drift_false_alarms_stay_within_the_binomial_bound():
    """200 windows x 9 tests (3 features x 3 slices) from the training distribution itself.

    No PSI floor, so the rate is the tests' own: with BH at alpha per window, P(any alarm in a
    window) <= alpha under the global null, so alarm windows ~ at most Binomial(200, alpha).
    """
    alpha, windows = 0.05, 200
    mon = _synthetic_monitor(alpha, psi_threshold=0.0, window=300)
    closed = _stream(mon, np.random.default_rng(11), windows, 300)
    alarm_windows = sum(any(r.status == "fail" for r in w.results) for w in closed)
    bound = stats.binom.ppf(0.999, windows, alpha)
    assert alarm_windows <= bound, (alarm_windows, bound)
    assert all(w.tests == 9 for w in closed)
    # the raw p-values are calibrated, not merely conservative: about alpha of them fall below alpha
    raw = np.array([r.p_value for w in closed for r in w.results])
    assert alpha / 2 <= (raw < alpha).mean() <= stats.binom.ppf(0.999, raw.size, alpha) / raw.size
    assert mon.windows_closed == windows


def test_a_small_shift_in_one_slice_is_found_there_and_not_elsewhere():
    """Power: a 0.35 sd shift of two numeric features and a category mix change in slice b only."""
    mon = _synthetic_monitor(alpha=0.01, psi_threshold=0.0, window=400)
    rng = np.random.default_rng(12)
    closed = []
    for _ in range(20):
        w = 400
        in_b = rng.random(w) < 0.5
        a = _synthetic(rng, w)
        b = _synthetic(rng, w, shift=0.35)
        b["plan"] = rng.choice(["free", "pro", "team", "enterprise"], w, p=[0.4, 0.35, 0.15, 0.1])
        for i in range(w):
            src = b if in_b[i] else a
            win = mon.add({k: v[i].item() for k, v in src.items()}, None, ["b"] if in_b[i] else ["a"])
        closed.append(win)
    found = {
        (f, s): sum(r.status == "fail" for w in closed for r in w.results if (r.feature, r.slice) == (f, s))
        for f in ("latency_ms", "score", "plan")
        for s in ("a", "b")
    }
    for f in ("latency_ms", "score", "plan"):
        assert found[(f, "b")] >= 18, found  # found in at least 18 of 20 windows
        assert found[(f, "a")] <= 2, found
    tests = {r.test for w in closed for r in w.results}
    assert tests == {"ks", "chi2"}


# --- real data: diabetes (numeric features), digits (inputs and model outputs) ---


@pytest.fixture(scope="module")
def diabetes_split():
    """Profile of all 442 real records; the live stream draws records from the same 442.

    A held-out split would not do for a many-window test: windows drawn again and again
    from a small held-out pool all share that pool's own deviation from the population,
    which the per-window tests cannot know about. Drawing from the profiled records makes
    "no drift" exactly true (conservative for the two-sample tests, never anti-conservative).
    """
    d = load_diabetes(scaled=False)
    names = list(d.feature_names)
    prof = build_profile({n: d.data[:, i] for i, n in enumerate(names)}, source="diabetes")
    return prof, d.data, names


def _diabetes_stream(monitor, live, names, rng, windows, window, anomaly=None):
    closed = []
    for _ in range(windows):
        for _ in range(window):
            row = live[rng.integers(len(live))]
            feats = dict(zip(names, row.tolist(), strict=True))
            site = "site_b" if rng.random() < 0.5 else "site_a"
            if anomaly is not None and site == "site_b":
                anomaly(feats, rng)
            w = monitor.add(feats, None, [site])
        closed.append(w)
    return closed


def test_real_data_no_drift_stream_raises_no_alarm_across_many_windows(diabetes_split):
    """Real diabetes records streamed in 200 windows of 200 requests, split across two sites."""
    prof, live, names = diabetes_split
    cfg = _cfg(window_size=200, min_samples=50, alpha=0.01)
    mon = DriftMonitor(cfg, prof, clock=FakeClock())
    closed = _diabetes_stream(mon, live, names, np.random.default_rng(5), 200, 200)
    alarm_windows = sum(any(r.status == "fail" for r in w.results) for w in closed)
    assert alarm_windows <= stats.binom.ppf(0.999, 200, cfg.alpha), mon.report()["alarms"]
    assert all(w.tests == 30 for w in closed)  # 10 features x (overall, site_a, site_b)


def test_real_data_shift_in_one_slice_is_flagged_there_not_elsewhere(diabetes_split):
    """site_b starts sending blood pressure in kPa and BMI from a miscalibrated scale (+4)."""
    prof, live, names = diabetes_split
    reg = CollectorRegistry()
    cfg = _cfg(window_size=300, min_samples=50, alpha=0.01)
    mon = DriftMonitor(cfg, prof, clock=FakeClock(), metrics=ShadowdMetrics(reg))

    def anomaly(feats, rng):
        feats["bp"] = feats["bp"] * 0.1333
        feats["bmi"] = feats["bmi"] + 4.0

    closed = _diabetes_stream(mon, live, names, np.random.default_rng(6), 10, 300, anomaly)
    for w in closed:
        failed = {(r.feature, r.slice) for r in w.results if r.status == "fail"}
        assert {("bp", "site_b"), ("bmi", "site_b"), ("bp", "overall")} <= failed, failed
        assert not any(s == "site_a" for _, s in failed), failed
        assert {f for f, _ in failed} <= {"bp", "bmi"}, failed
    get = reg.get_sample_value
    assert get("shadowd_drift_status", {"feature": "bp", "slice": "site_b"}) == 1
    assert get("shadowd_drift_status", {"feature": "bp", "slice": "site_a"}) == 0
    rep = mon.report()
    assert rep["alarms"]["site_b"]["bp"] == 10 and "site_a" not in rep["alarms"]
    bp_b = next(r for r in rep["last_window"]["results"] if (r["feature"], r["slice"]) == ("bp", "site_b"))
    assert bp_b["status"] == "fail" and bp_b["value"] >= 0.1 and bp_b["p_adjusted"] < 0.01
    assert bp_b["p_value"] <= bp_b["p_adjusted"]
    assert bp_b["reason"].startswith("drift: PSI") and bp_b["test"] == "ks"


@pytest.fixture(scope="module")
def digits_models():
    """Profile of all real digits (pixels and labels); models trained on 1200 of them; live draws from all."""
    d = load_digits()
    x, y = d.data, d.target
    rng = np.random.default_rng(0)
    tr = rng.permutation(len(x))[:1200]
    production = LogisticRegression(max_iter=200).fit(x[tr] / 16, y[tr])
    # a candidate trained on data where classes 3 and 8 were dropped by a broken pipeline
    keep = tr[~np.isin(y[tr], [3, 8])]
    candidate = LogisticRegression(max_iter=200).fit(x[keep] / 16, y[keep])
    cols = {f"inputs[{i}]": x[:, i] for i in range(64)}
    cols["label"] = y
    prof = build_profile(cols, output_column="label", source="digits")
    return prof, x, production, candidate


def test_output_drift_of_a_broken_candidate_and_input_pixels(digits_models):
    prof, x_live, production, candidate = digits_models
    pixels = ["inputs[20]", "inputs[36]", "inputs[43]"]
    cfg = _cfg(window_size=300, min_samples=50, alpha=0.01, features=pixels)
    mon = DriftMonitor(cfg, prof, clock=FakeClock())
    rng = np.random.default_rng(3)
    idx = rng.integers(len(x_live), size=900)
    p_prod = production.predict_proba(x_live[idx] / 16)
    p_cand = candidate.predict_proba(x_live[idx] / 16)
    # candidate.classes_ lacks 3 and 8: put its probabilities in the 10-class layout the ingress uses
    full = np.zeros((len(idx), 10))
    full[:, candidate.classes_] = p_cand
    windows = []
    for k, i in enumerate(idx):
        w = mon.add({}, {"production": p_prod[k], "candidate": full[k]}, [], inputs=x_live[i])
        if w is not None:
            windows.append(w)
    assert len(windows) == 3
    for w in windows:
        status = {r.feature: r.status for r in w.results}
        assert status["outputs.candidate"] == "fail"
        assert status["outputs.production"] == "pass"
        assert all(status[p] == "pass" for p in pixels)
        cand = next(r for r in w.results if r.feature == "outputs.candidate")
        assert cand.test == "chi2"


def test_time_windows_min_samples_and_idle_close():
    prof = build_profile({"a": np.arange(1000.0)})
    clock = FakeClock()
    mon = DriftMonitor(_cfg(window_size=500, window_s=60, min_samples=20), prof, clock=clock)
    for i in range(10):
        assert mon.add({"a": float(i * 97 % 1000)}) is None
    clock.now_s += 59.0
    assert mon.tick() is None  # not yet
    clock.now_s += 1.0
    w = mon.tick()  # no traffic needed to close it
    assert w is not None and w.requests == 10
    (r,) = w.results
    assert r.status == "inconclusive" and r.n == 10 and "min_samples 20" in r.reason
    assert mon.report()["open_window"]["requests"] == 0
    # a request arriving after a long pause opens a fresh window rather than joining a stale one
    clock.now_s += 1000.0
    assert mon.add({"a": 1.0}) is None and mon.report()["open_window"]["requests"] == 1
    # missing and non-numeric values are not values
    for v in (None, math.nan, "x"):
        mon.add({"a": v})
    assert mon.report()["open_window"]["requests"] == 4


def test_unknown_monitored_features_are_a_config_error():
    prof = build_profile({"a": np.arange(10.0)})
    with pytest.raises(ConfigError, match=r"expectations\.drift\.features: b not in profile profile\.json"):
        DriftMonitor(_cfg(features=["a", "b"]), prof)

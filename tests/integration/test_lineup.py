"""The lineup changed at runtime on real Ray Serve, under steady load: a candidate replaced, promoted and
rolled back (``shadowd candidates``) while clients keep sending requests. No request fails, every answer
is the named model's own, each change starts a new window and keeps the closed one's report."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import numpy as np
import requests
import yaml
from typer.testing import CliRunner

from shadowd.cli import app
from shadowd.sampling import is_sampled
from shadowd.testing import ToyClassifier
from tests.fixtures.ray_serve import toy_model

MODELS = {
    "prod": ToyClassifier(seed=0),
    "cand": ToyClassifier(seed=0, retrain=1),
    "cand2": ToyClassifier(seed=0, retrain=2),
}


class _Load:
    """Clients sending /predict one after another until stopped; every answer kept."""

    def __init__(self, url: str):
        self.url = url
        self.answers: list[tuple[int, dict[str, Any], np.ndarray]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._rng = np.random.default_rng(3)

    def _run(self) -> None:
        with requests.Session() as http:
            while not self._stop.is_set():
                x = self._rng.normal(size=8)
                r = http.post(
                    f"{self.url}/predict",
                    json={"inputs": x.tolist(), "features": {}},
                    headers={"X-Request-ID": uuid.uuid4().hex},
                    timeout=30,
                )
                self.answers.append((r.status_code, r.json(), x))

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def served_since(self, start: int) -> set[str]:
        return {body.get("model", "?") for _, body, _ in self.answers[start:]}


def _until(what: str, check, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_swap_promote_and_rollback_under_load_never_fail_a_request(shadowd_app, tmp_path):
    daemon = shadowd_app(
        {
            "task": "classification",
            "models": {"production": toy_model("prod", seed=0), "candidate": toy_model("cand", seed=0, retrain=1)},
            "shadow": {"sample_share": 1.0, "noise_share": 0.0, "candidate_timeout_s": 2.0},
            "lineup": {"python_targets": ["shadowd.testing:ToyClassifier"]},  # trusted with other kwargs
        }
    )
    url, headers = daemon.url, daemon.headers

    def report() -> dict[str, Any]:
        return requests.get(f"{url}/shadow/report", headers=headers, timeout=30).json()

    def cli(*args: str) -> str:
        result = CliRunner().invoke(app, ["candidates", *args, "--url", url, "--token", daemon.token])
        assert result.exit_code == 0, result.output
        return result.output

    with _Load(url) as load:
        _until("pairs of the first candidate", lambda: report()["overall"]["pairs"] >= 50)

        # Refused without the admin token, or malformed: nothing changes.
        assert requests.post(f"{url}/shadow/candidates", json={"action": "remove"}, timeout=30).status_code == 401
        bad = requests.post(f"{url}/shadow/candidates", json={"action": "promote"}, headers=headers, timeout=30)
        assert bad.status_code == 422 and "promote.candidate" in bad.json()["error"]

        # Replace the candidate: a new window for it, the old one's report kept.
        model_file = tmp_path / "cand2.yaml"
        model_file.write_text(yaml.safe_dump(toy_model("cand2", seed=0, retrain=2)))
        out = cli("set", str(model_file), "--replace", "cand")
        assert "shadowing candidate cand2" in out and "cand: closed window's report kept" in out
        new = report()
        assert new["models"]["candidate"] == "cand2" and new["overall"]["pairs"] < 50
        _until("pairs of the new candidate", lambda: report()["overall"]["pairs"] >= 50)

        # Promote: the candidate answers; production runs in the shadow as the baseline.
        promoting = len(load.answers)
        out = cli("promote", "cand2")
        assert "promoted: candidate cand2; production prod runs in the shadow" in out
        _until("answers from cand2", lambda: "cand2" in load.served_since(promoting))
        after_promotion = len(load.answers)
        _until("pairs after the promotion", lambda: report()["overall"]["pairs"] >= 50)
        promoted = report()
        assert promoted["models"] == {"production": "prod", "candidate": "cand2", "live": "cand2"}

        # Roll back: production answers again.
        rolling_back = len(load.answers)
        out = cli("rollback")
        assert "prod answers clients" in out and "shadowing candidate cand2" in out
        _until("answers from prod", lambda: "prod" in load.served_since(rolling_back))
        time.sleep(1.5)  # every replica has followed (they ask every second)
        settled = len(load.answers)
        time.sleep(1.0)

    statuses = [status for status, _, _ in load.answers]
    assert len(statuses) > 200 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    # Every answer is the named model's own answer to that request.
    for _, body, x in load.answers:
        assert np.allclose(body["outputs"], MODELS[body["model"]].predict(x[None])[0]), body["model"]
    assert {body["model"] for _, body, _ in load.answers[after_promotion:rolling_back]} == {"cand2"}
    assert load.served_since(settled) == {"prod"}

    # The audit log has every change, by whom, with the verdict and evidence at that moment.
    listing = requests.get(f"{url}/shadow/candidates", headers=headers, timeout=30).json()
    actions = [c["action"] for c in listing["changes"]]
    assert actions == ["set", "promote", "rollback"]
    closed = [list(c["evidence"]) for c in listing["changes"]]  # each change closed one test's window
    assert closed == [["cand"], ["cand2"], ["cand2"]]
    assert all(
        c["who"] == "generated" and c["evidence"][n]["pairs"] >= 50
        for c, [n] in zip(listing["changes"], closed, strict=True)
    )
    assert listing["changes"][0]["before"]["candidate"]["name"] == "cand"
    assert len(listing["kept_reports"]) == 3
    assert listing["lineup"]["served"] == "prod" and listing["lineup"]["shadowed"] == ["cand2"]
    listed = cli("list")
    assert "promote  by generated" in listed and "rollback by generated" in listed


def test_two_candidates_at_once_each_counted_labelled_and_gated_on_its_own(shadowd_app):
    """Two candidates shadowed at once on real Ray Serve, production called once per request: one a retrain that
    labels show worse (FAIL), one production's own recipe on half the requests (PASS), in the same window; the
    counts per candidate exact, each reported and gated on its own."""
    daemon = shadowd_app(
        {
            "task": "classification",
            "models": {
                "production": toy_model("prod", seed=0),
                "candidates": [
                    toy_model("retrain", seed=0, retrain=1),
                    {**toy_model("twin", seed=0), "sample_share": 0.5},
                ],
            },
            "shadow": {"sample_share": 1.0, "noise_share": 0.0, "candidate_timeout_s": 2.0},
            # Labels decide here: the toy models' microsecond latencies would be scheduling noise.
            "checks": [{"type": "flip_rate", "name": "flip_rate"}, {"type": "paired_accuracy", "name": "accuracy"}],
        }
    )
    url, headers = daemon.url, daemon.headers
    n = 300
    x = np.random.default_rng(5).normal(size=(n, 8))
    with requests.Session() as http:
        for i in range(n):
            r = http.post(
                f"{url}/predict", json={"inputs": x[i].tolist()}, headers={"X-Request-ID": f"q{i}"}, timeout=30
            )
            assert r.status_code == 200 and r.json()["model"] == "prod"
    in_half = sum(is_sampled(f"q{i}", 0.5) for i in range(n))

    def report(name: str) -> dict[str, Any]:
        return requests.get(f"{url}/shadow/report", params={"candidate": name}, headers=headers, timeout=30).json()

    _until(
        "every pair",
        lambda: report("retrain")["overall"]["pairs"] == n and report("twin")["overall"]["pairs"] == in_half,
    )
    truth = MODELS["prod"].predict(x).argmax(axis=1)  # production is right: the retrain's disagreements are errors
    with requests.Session() as http:
        for i, y in enumerate(truth):
            r = http.post(f"{url}/feedback", json={"request_id": f"q{i}", "label": int(y)}, headers=headers, timeout=30)
            assert r.status_code == 200 and r.json()["used_for_quality"], r.text
    assert report("retrain")["overall"]["labels"]["used"] == n
    assert report("twin")["overall"]["labels"]["used"] == in_half  # a label reaches every candidate's pair

    verdict = requests.get(f"{url}/shadow/verdict", headers=headers, timeout=30).json()
    assert {name: c["verdict"] for name, c in verdict["candidates"].items()} == {"retrain": "FAIL", "twin": "PASS"}
    assert verdict["candidates"]["twin"]["evidence"]["pairs"] == in_half and verdict["verdict"] == "FAIL"
    assert report("twin")["candidates"] == {"retrain": "FAIL", "twin": "PASS"}

    def gate(*args: str) -> int:
        cmd = ["report", "--url", url, "--token", daemon.token, "--gate", "-f", "json", *args]
        return CliRunner().invoke(app, cmd).exit_code

    assert gate("--candidate", "retrain") == 1 and gate("--candidate", "twin") == 0
    assert gate() == 2  # several candidates: a pipeline must name the one it promotes
    assert gate("--candidate", "nobody") == 2

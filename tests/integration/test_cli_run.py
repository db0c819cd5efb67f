"""``shadowd run`` as an operator starts it: a real process with its own Ray,
serving until SIGTERM, then stopping cleanly with the evidence and the queue
saved to the data dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import requests
import yaml

from shadowd.compare.comparator import state_path
from shadowd.flywheel.spool import read_spool
from shadowd.launcher import wait_for_pairs, wait_healthy
from tests.fixtures.ray_serve import toy_model
from tests.fixtures.services import free_port

pytestmark = pytest.mark.integration


def test_run_serves_until_sigterm_then_saves_state_and_queue(tmp_path):
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "shadowd.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "classification",
                "data_dir": "data",  # relative: resolved against the config file's folder
                "models": {"production": toy_model("prod", seed=0), "candidate": toy_model("cand", seed=5)},
                "serving": {"port": port, "ingress_cpus": 0.1, "worker_cpus": 0.1, "comparator_cpus": 0.1},
                "metrics": {"port": metrics_port, "host": "127.0.0.1"},
            }
        )
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowd", "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, 180)
        rng = np.random.default_rng(3)
        with requests.Session() as s:
            for i in range(40):
                body = {"inputs": rng.normal(size=8).round(3).tolist(), "features": {}}
                assert s.post(f"{url}/predict", json=body, headers={"X-Request-ID": f"run-{i}"}, timeout=30).ok
        # No tokens configured, loopback: the run generated one, readable only by its owner.
        token_file = tmp_path / "data" / "auth" / "token"
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        report = wait_for_pairs(url, 40, 60, token_file.read_text().strip())
        assert requests.get(f"{url}/shadow/report", timeout=10).status_code == 401
        assert report["overall"]["pairs"] == 40
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'shadowd_requests_total{model="prod",outcome="ok",role="production"} 40.0' in metrics
        assert 'shadowd_pairs_compared_total{candidate="cand",slice="overall"} 40.0' in metrics

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert "shadowd: stopped" in out
    data = tmp_path / "data"
    saved = state_path(data, "cand")  # the candidate's test's own window
    assert saved.exists()
    # every divergent pair's item, flushed at stop: the drawn ones in the evaluation lane's spool
    spooled = {r.key for lane in ("spool", "spool-evaluation") for r in read_spool(data / lane)}
    assert spooled <= {f"run-{i}" for i in range(40)}
    assert len(spooled) == report["overall"]["divergent"] > 0

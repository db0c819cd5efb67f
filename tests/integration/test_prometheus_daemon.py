"""Every dashboard panel query against a real Prometheus scraping a real shadowd run.

A real daemon on Ray Serve (``shadowd_app``: toy production, a disagreeing
candidate, noise replica, two slices, annotation items to a real
Kafka-protocol broker) gets live traffic and feedback from a background
thread while a real Prometheus (Debian ``prometheus``, own config on a free
port, 1 s scrapes, the shipped alert rules) scrapes the daemon's aggregated
/metrics endpoint and, when Ray exposes it, Ray's metrics export port
(``ray_serve_*``). Each panel query must parse and return at least one finite
value: every panel, none excused.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests

from shadowd.observe.dashboards import build_dashboards, panel_queries, resolve_variables
from tests.fixtures.kafka import unique_topic
from tests.fixtures.ray_serve import toy_model
from tests.fixtures.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

VARIABLES = {"__rate_interval": "10s", "__range": "5m", "slice": ".*", "candidate": ".*", "datasource": "prometheus"}
QUERIES = [q for d in build_dashboards().values() for q in panel_queries(d)]

_DATA_WITHIN_S = 60.0


def _id(q) -> str:
    return f"{q.dashboard_uid}/{q.panel_title}/{q.ref_id}"


def _ray_metrics_target() -> str | None:
    import ray

    ports = [n.get("MetricsExportPort") for n in ray.nodes() if n.get("Alive")]
    for port in ports:
        try:
            if requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).ok:
                return f"127.0.0.1:{port}"
        except requests.RequestException:
            pass
    return None


class Traffic:
    """Sequential /predict calls with slice features, feedback for every third, until stopped."""

    def __init__(self, url: str, auth: dict[str, str]):
        self.url = url
        self.auth = auth  # POST /feedback needs a token with scope labels
        self.sent = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(7)
        with requests.Session() as s:
            while not self._stop.is_set():
                x = rng.normal(size=8).round(4)
                rid = f"obs-{self.sent}"
                body = {"inputs": x.tolist(), "features": {"x0": float(x[0]), "new_user": bool(self.sent % 2)}}
                try:
                    r = s.post(f"{self.url}/predict", json=body, headers={"X-Request-ID": rid}, timeout=30)
                    if r.status_code != 200:
                        self.errors.append(f"predict {r.status_code}: {r.text[:200]}")
                    if self.sent % 3 == 0:
                        s.post(
                            f"{self.url}/feedback",
                            json={"request_id": rid, "label": int(self.sent % 4)},
                            headers=self.auth,
                            timeout=30,
                        )
                    if self.sent % 25 == 0:
                        s.post(f"{self.url}/predict", json={"inputs": "not numbers"}, timeout=30)  # a 4xx
                    # No GET /shadow/report: the hub must keep the gate gauges current by itself.
                except requests.RequestException as err:
                    self.errors.append(repr(err))
                self.sent += 1
                time.sleep(0.01)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def scraped_daemon(ray_serve, kafka_broker, tmp_path_factory):
    # shadowd_app is function-scoped (tmp_path); build the same thing once for this module.
    from shadowd.config import parse_config
    from shadowd.launcher import start_daemon

    ray_port = ray_serve
    tmp = tmp_path_factory.mktemp("obs-daemon")
    metrics_port = free_port()
    # A training profile for drift checks: x0 ~ N(0, 1), as the traffic sends.
    from shadowd.expect.profile import build_profile, save_profile

    profile = save_profile(
        build_profile({"x0": np.random.default_rng(3).normal(size=2000)}, seed=0), tmp / "profile.json"
    )
    config = parse_config(
        {
            "task": "classification",
            "data_dir": str(tmp / "data"),
            "models": {
                "production": toy_model("prod", seed=0),
                "candidate": toy_model("cand", seed=5),
                "reference": toy_model("prod-reseeded", seed=1),  # the churn floor's panel needs a reference
            },
            "shadow": {"sample_share": 1.0, "noise_share": 0.5, "reference_share": 0.5, "candidate_timeout_s": 2.0},
            "serving": {"host": "127.0.0.1", "port": ray_port},
            "slices": [
                {"name": "high_x0", "where": {"field": "x0", "op": "gt", "value": 0.0}},
                {"name": "new_users", "where": {"field": "new_user", "op": "eq", "value": True}},
            ],
            "annotations": {
                "sink": {
                    "type": "kafka",
                    "bootstrap_servers": [kafka_broker.bootstrap],
                    "delivery_timeout_ms": 5000,
                    "annotations_topic": unique_topic("obs-review"),
                    "evaluation_topic": unique_topic("obs-evaluation"),
                }
            },
            "metrics": {"port": metrics_port, "host": "127.0.0.1"},
            # |x0| > 2 breaks an expectation on ~5% of requests.
            "expectations": {
                "features": {"x0": {"type": "number", "min": -2.0, "max": 2.0}},
                "drift": {"profile": str(profile), "window_size": 50, "window_s": 5.0, "min_samples": 20},
            },
        },
        "observability-test-config",
    )
    daemon = start_daemon(config, timeout_s=120)
    traffic = Traffic(daemon.url, daemon.headers).start()
    try:
        yield daemon, traffic, metrics_port
    finally:
        traffic.stop()
        daemon.stop()


@pytest.fixture(scope="module")
def prom(scraped_daemon, prometheus_factory):
    _daemon, traffic, metrics_port = scraped_daemon
    jobs = {"shadowd": [f"127.0.0.1:{metrics_port}"]}
    ray_target = _ray_metrics_target()
    if ray_target:
        jobs["ray"] = [ray_target]
    server = prometheus_factory(jobs)
    server.ray_target = ray_target
    server.wait_until('up{job="shadowd"} == 1', timeout_s=60)
    # Pairs compared and a gate verdict computed, with enough scrapes for the 10 s rate windows.
    server.wait_until('sum(rate(shadowd_pairs_compared_total{slice="overall"}[10s])) > 0', timeout_s=90)
    server.wait_until("shadowd_gate_verdict", timeout_s=60)
    server.wait_until('count_over_time(up{job="shadowd"}[20s]) >= 10', timeout_s=30)
    assert not traffic.errors[:1], traffic.errors[:5]
    # One shared deadline for series that appear only after a background loop's first pass
    # (backlog monitor, suites, drift windows): slow here on 2 busy cores, bounded overall.
    server.data_deadline = time.monotonic() + _DATA_WITHIN_S
    return server


@pytest.mark.parametrize("query", QUERIES, ids=_id)
def test_panel_query_returns_data_from_a_real_run(prom, query):
    if "ray_serve_" in query.expr and prom.ray_target is None:
        pytest.fail("Ray's metrics export port answers nothing: Ray Serve panels cannot be checked")
    timeout_s = max(10.0, prom.data_deadline - time.monotonic())
    prom.wait_until(resolve_variables(query.expr, VARIABLES), timeout_s=timeout_s)


def test_real_run_numbers_are_consistent(prom):
    """Cross-checks that hold for any run: slices are the configured ones, shares are shares."""
    slices = prom.api("label/slice/values", **{"match[]": "shadowd_pairs_compared_total"})
    assert set(slices) <= {"overall", "high_x0", "new_users"} and "overall" in slices
    roles = {r["metric"]["role"] for r in prom.query("sum by (role) (shadowd_requests_total)")}
    assert {"production", "candidate", "noise"} <= roles
    # The candidate's series carry its name: as candidate on the comparison and gate, as model on its calls.
    assert prom.api("label/candidate/values", **{"match[]": "shadowd_gate_verdict"}) == ["cand"]
    assert prom.api("label/candidate/values", **{"match[]": "shadowd_pairs_compared_total"}) == ["cand"]
    models = {r["metric"]["model"] for r in prom.query('sum by (model) (shadowd_requests_total{role="candidate"})')}
    assert models == {"cand"}
    # Every sampled pair is compared, dropped or still in flight: compared <= sampled.
    [[_, sampled]] = prom.values("sum(shadowd_pairs_sampled_total)").items()
    [[_, compared]] = prom.values('sum(shadowd_pairs_compared_total{slice="overall"})').items()
    assert 0 < compared <= sampled
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    # ShadowdReplicaUnhealthy's summary names these labels of Ray Serve's own metric.
    healthy = prom.query("ray_serve_deployment_replica_healthy")
    assert healthy and all({"deployment", "replica"} <= set(r["metric"]) for r in healthy), healthy[:2]


def test_live_daemon_scrape_passes_promtool_check_metrics(prom, scraped_daemon):
    """The issue's bar: ``promtool check metrics`` reports nothing on the real, multiprocess-aggregated /metrics."""
    import subprocess

    from tests.fixtures.prometheus import PROMTOOL_BIN

    _, _, metrics_port = scraped_daemon
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert "shadowd_pairs_compared_total" in text
    out = subprocess.run([PROMTOOL_BIN, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr

"""A sharded shadowd on a real two-node Ray cluster (``ray.cluster_utils.Cluster``: two raylets on this
machine, each with its own resources), scraped by a real Prometheus.

Issue 14's proof: ingress and the lead hub shard on node a, the shadow worker
and hub shard 1 on node b (tests/integration/multinode_cluster.py, in its own
process: the session's Ray cannot share this one). Every pair is counted
exactly once, on the shard its request id hashes to; labels join on either
shard over HTTP; and a Prometheus scraping only the lead's ``/metrics`` sees
the metrics of node b's processes, which write in a folder of their own (so
they arrive the way they would from another machine: sent to the lead).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shadowd.sampling import shard_of
from tests.fixtures.services import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_two_nodes_count_each_pair_once_join_labels_and_show_every_nodes_metrics(
    tmp_path, kafka_broker, prometheus_factory
):
    from tests.integration.multinode_cluster import N

    metrics_port = free_port()
    cmd = [sys.executable, "-m", "tests.integration.multinode_cluster"]
    args = [str(tmp_path), kafka_broker.bootstrap, str(free_port()), str(metrics_port)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = open(tmp_path / "cluster.log", "wb")  # noqa: SIM115 - the child writes it until it exits
    proc = subprocess.Popen([*cmd, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 420
        while not (tmp_path / "ready.json").exists():
            assert proc.poll() is None, (tmp_path / "cluster.log").read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "the cluster did not finish its traffic in 420 s"
            time.sleep(0.5)
        result = json.loads((tmp_path / "ready.json").read_text())

        assert result["placement"] == {
            "ShadowIngress": "a",
            "ShadowHub": "a",
            "ShadowHub-1": "b",
            "ShadowWorker": "b",
        }, result["placement"]
        owners = [shard_of(f"mn-{i}", 2) for i in range(N)]
        assert result["pairs_per_shard"] == [owners.count(0), owners.count(1)]  # each once, on its shard
        assert result["report"]["overall"]["pairs"] == N
        assert result["joined"] == N  # every label found its pair, whichever node holds it
        labels = result["report"]["overall"]["labels"]
        assert labels["used"] + sum(labels["excluded"].values()) == N
        assert len(result["node_folders"]) == 2  # each node's processes write apart

        prom = prometheus_factory({"shadowd": [f"127.0.0.1:{metrics_port}"]}, rule_files=())
        # The worker (node b) is the only process counting candidate calls; both shards count compared pairs.
        candidate = 'sum(shadowd_requests_total{role="candidate",outcome="ok"})'
        compared = 'sum(shadowd_pairs_compared_total{slice="overall"})'
        for expr in (candidate, compared):
            deadline = time.monotonic() + 60
            while (value := _value(prom, expr)) != N and time.monotonic() < deadline:
                time.sleep(0.5)
            assert value == N, f"{expr} = {value}, expected {N}"
    finally:
        (tmp_path / "done").touch()
        try:
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()


def _value(prom, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None

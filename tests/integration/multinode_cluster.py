"""A two-node Ray cluster on this machine running a sharded shadowd, for tests/integration/test_multinode.py.

Run in its own process (the test session's Ray cannot share a process with
another cluster): ``python -m tests.integration.multinode_cluster WORKDIR
BOOTSTRAP SERVE_PORT METRICS_PORT``. Node "a" (the head) runs the Serve proxy,
the ingress and hub shard 0 (the lead); node "b" runs the shadow worker and
hub shard 1. Each node's processes write their metric files in a folder of
their own, so node b's metrics reach the lead's ``/metrics`` only the way they
would across machines. After the traffic and the labels it writes
``WORKDIR/ready.json`` (what the test checks) and keeps the cluster up until
``WORKDIR/done`` appears (the test scrapes it meanwhile), then shuts down.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from tests.fixtures.kafka import kafka_sink

N = 200


def config(workdir: Path, bootstrap: str, serve_port: int, metrics_port: int) -> dict[str, Any]:
    model = {"kind": "python", "target": "shadowd.testing:ToyClassifier", "input_shape": [8]}
    return {
        "task": "classification",
        "data_dir": str(workdir / "data"),
        "models": {
            "production": {**model, "name": "prod", "kwargs": {"seed": 0}},
            "candidate": {**model, "name": "cand", "kwargs": {"seed": 5}},
        },
        "shadow": {"sample_share": 1.0, "candidate_timeout_s": 10.0},
        "annotations": {"sink": kafka_sink(bootstrap, "multinode")},
        "serving": {
            "host": "127.0.0.1",
            "port": serve_port,
            "hub_shards": 2,
            "hub_shard_resources": [{"node_a": 1}, {"node_b": 1}],
            "ingress_resources": {"node_a": 1},
            "worker_resources": {"node_b": 1},
        },
        "metrics": {"port": metrics_port, "host": "127.0.0.1"},
    }


def traffic(daemon: Any) -> dict[str, Any]:
    """N requests, wait for their pairs, a label for each over HTTP; the report once they all joined."""
    from shadowd.launcher import wait_for_pairs

    rng = np.random.default_rng(7)
    with requests.Session() as s:
        for i in range(N):
            body = {"inputs": rng.normal(size=8).round(4).tolist(), "features": {"hour": i % 24}}
            assert s.post(f"{daemon.url}/predict", json=body, headers={"X-Request-ID": f"mn-{i}"}, timeout=30).ok
        wait_for_pairs(daemon.url, N, 120, daemon.token)
        joined = 0
        for i in range(N):
            label = {"request_id": f"mn-{i}", "label": int(rng.integers(0, 3))}
            resp = s.post(f"{daemon.url}/feedback", json=label, headers=daemon.headers, timeout=30)
            joined += resp.status_code == 200 and resp.json()["status"] == "joined"
    report: dict[str, Any] = requests.get(f"{daemon.url}/shadow/report", headers=daemon.headers, timeout=30).json()
    return {"joined": joined, "report": report}


def placement() -> dict[str, str]:
    """Node ("a" or "b") of each shadowd actor: hub shards, worker, ingress."""
    import ray
    from ray._private import state

    node_names = {n["NodeID"]: ("a" if "node_a" in n["Resources"] else "b") for n in ray.nodes() if n["Alive"]}
    found = {}
    for actor in state.actors().values():
        name = actor.get("Name") or ""
        if actor["State"] == "ALIVE" and "Shadow" in name:
            found[name.split("#")[1] if "#" in name else name] = node_names[actor["Address"]["NodeID"]]
    return found


def main(workdir: Path, bootstrap: str, serve_port: int, metrics_port: int) -> None:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from shadowd.config import parse_config
    from shadowd.launcher import APP_NAME, start_daemon

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"node_a": 8}, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=2, resources={"node_b": 8})
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        # One proxy: both nodes share this machine's loopback.
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port, "location": "HeadOnly"})
        daemon = start_daemon(parse_config(config(workdir, bootstrap, serve_port, metrics_port), "multinode"), 180)
        result = traffic(daemon)
        shards = [serve.get_deployment_handle(n, APP_NAME) for n in ("ShadowHub", "ShadowHub-1")]
        states = [h.shard_state.remote({}).result() for h in shards]
        result["pairs_per_shard"] = [sum(t["slices"]["overall"]["pairs"] for t in s.values()) for s in states]
        result["placement"] = placement()
        result["node_folders"] = sorted(p.name for p in (workdir / "data" / "metrics").iterdir() if p.is_dir())
        (workdir / "ready.json").write_text(json.dumps(result))
        deadline = time.monotonic() + 180
        while not (workdir / "done").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        daemon.stop()
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

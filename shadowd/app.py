"""The one wiring point: config in, parts and the Ray Serve application out.

``build_app`` is used by ``shadowd run``, ``shadowd demo``, the tests, the
benchmark, and (through ``app_builder``) ``serve run``/``serve deploy`` and
KubeRay's RayService, so every way of starting shadowd deploys the same graph:

    ShadowIngress (production, HTTP) --batches--> ShadowWorker (candidate, noise)
          |                                              |
          '---- report / feedback / reset ----> ShadowHub <-- pairs  (one per shard: pairs and labels
                                                                     by a hash of the request id)

The hub's parts (comparator, flywheel with its transport and sink, drift
monitor, Grafana annotations, the /metrics server) hold threads, files and
sockets, so they are built inside the hub's process: ``build_hub_parts``
travels to it as a function reference and runs there. Nothing else builds
parts; each receives what it needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shadowd.config import ShadowdConfig, load_config, shard_config
from shadowd.observe.metrics import MULTIPROC_ENV, ShadowdMetrics
from shadowd.records import Lane
from shadowd.sampling import Shard

if TYPE_CHECKING:
    from ray.serve import Application

    from shadowd.flywheel.flywheel import Flywheel
    from shadowd.serving.hub import HubParts

__all__ = ["app_builder", "build_app", "build_flywheel", "build_hub_parts", "metrics_dir"]

log = logging.getLogger(__name__)


def metrics_dir(config: ShadowdConfig) -> Path:
    """Where this app's processes write prometheus-client multiprocess files."""
    return config.data_dir / "metrics"


def build_flywheel(
    config: ShadowdConfig,
    metrics: ShadowdMetrics | None = None,
    clock: Callable[[], float] = time.time,
    shard: Shard = Shard(),
) -> Flywheel:
    """The annotation side: the configured transport, the sink delivering to it, the flywheel over both
    (``config``: the shard's own, ``shard_config``, for one shard of a sharded hub)."""
    from shadowd.flywheel.flywheel import Flywheel
    from shadowd.flywheel.sink import build_sink
    from shadowd.flywheel.transports import build_transport

    transport = build_transport(config.annotations.sink, config.data_dir, shard)
    lanes: tuple[Lane, ...] = ("evaluation", "review")
    sinks = {lane: build_sink(config, transport.producer(lane), metrics, lane, shard.index) for lane in lanes}
    return Flywheel(config, transport, sinks, metrics, clock, shard)


def build_hub_parts(config: ShadowdConfig, shard: Shard = Shard()) -> HubParts:
    """Everything hub shard ``shard`` holds; runs in its process (see the module docstring). Its files live
    under ``shard_config(config, shard.index)``'s data dir; the lead alone annotates Grafana and serves
    /metrics (the node's aggregate)."""
    from shadowd.errors import GrafanaError
    from shadowd.expect.drift import DriftMonitor
    from shadowd.expect.profile import load_profile
    from shadowd.observe.metrics import in_multiprocess_mode, serve_metrics
    from shadowd.serving.hub import HubParts
    from shadowd.serving.runtime import process_metrics, process_metrics_dir

    metrics = process_metrics()
    own = shard_config(config, shard.index)
    drift_cfg = config.expectations.drift
    parts = HubParts(
        metrics=metrics,
        flywheel=build_flywheel(own, metrics, shard=shard),
        # Drift on the lead's shard alone (a hash-chosen share of the traffic): one gauge writer per window.
        drift=DriftMonitor(drift_cfg, load_profile(drift_cfg.profile), metrics=metrics)
        if drift_cfg and shard.lead
        else None,
    )
    if not shard.lead:
        return parts
    grafana = config.grafana
    if grafana is not None and grafana.annotate_verdicts:
        from shadowd.observe.grafana import VerdictAnnotator

        try:
            parts.verdict_annotator = VerdictAnnotator.from_settings(grafana.url, grafana.token_env, grafana.timeout_s)
        except GrafanaError as err:
            log.error("Grafana verdict annotations off: %s", err)
    if config.metrics.port and in_multiprocess_mode():
        try:
            serve_metrics(config.metrics.port, config.metrics.host, process_metrics_dir() or metrics_dir(config))
        except OSError as err:  # a restarted hub can race its predecessor's socket
            log.error("cannot serve /metrics on port %s: %s", config.metrics.port, err)
    return parts


def build_app(config: ShadowdConfig) -> Application:
    from ray import serve

    from shadowd.serving.hub import ShadowHub
    from shadowd.serving.ingress import ShadowIngress
    from shadowd.serving.worker import MODEL_THREADS, ShadowWorker

    serving = config.serving
    env = {"runtime_env": {"env_vars": {MULTIPROC_ENV: str(metrics_dir(config))}}}
    n = serving.hub_shards

    def hub_shard(i: int, peers: list[Any]) -> Any:
        options = {"num_cpus": serving.comparator_cpus, "resources": serving.hub_resources_of(i), **env}
        name = "ShadowHub" if i == 0 else f"ShadowHub-{i}"
        deployment = serve.deployment(name=name, num_replicas=1, ray_actor_options=options)(ShadowHub)
        return deployment.bind(config, build_hub_parts, Shard(i, n), peers)

    others = [hub_shard(i, []) for i in range(1, n)]
    hubs = [hub_shard(0, others), *others]  # in shard order: hubs[shard_of(request_id, n)] holds its pair
    worker = None  # deployed whenever shadowing is on, so a candidate can be added at runtime
    if config.shadow.enabled(config.models):
        worker = serve.deployment(
            num_replicas=serving.worker_replicas,
            max_ongoing_requests=MODEL_THREADS,
            ray_actor_options={"num_cpus": serving.worker_cpus, "resources": serving.worker_resources, **env},
        )(ShadowWorker).bind(config, hubs)
    return serve.deployment(
        num_replicas=serving.ingress_replicas,
        ray_actor_options={"num_cpus": serving.ingress_cpus, "resources": serving.ingress_resources, **env},
        max_ongoing_requests=serving.max_ongoing_requests,
        max_queued_requests=serving.max_queued_requests,
    )(ShadowIngress).bind(config, worker, hubs)


def app_builder(args: dict[str, Any]) -> Application:
    """Typed-args builder for ``serve run shadowd.app:app_builder config_path=...`` and RayService."""
    if "config_path" not in args:
        raise ValueError("shadowd.app:app_builder needs the argument config_path (a shadowd YAML file)")
    return build_app(load_config(args["config_path"]))

"""The one wiring point: config in, Ray Serve application out.

``build_app`` is used by ``shadowd run``, ``shadowd demo``, the tests, the
benchmark, and (through ``app_builder``) ``serve run``/``serve deploy`` and
KubeRay's RayService, so every way of starting shadowd deploys the same graph:

    ShadowIngress (production, HTTP) --batches--> ShadowWorker (candidate, noise)
          |                                              |
          '---- report / feedback / reset ----> ShadowHub <-- pairs
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.serve import Application

from shadowd.config import ShadowdConfig, load_config
from shadowd.observe.metrics import MULTIPROC_ENV

__all__ = ["app_builder", "build_app", "metrics_dir"]


def metrics_dir(config: ShadowdConfig) -> Path:
    """Where this app's processes write prometheus-client multiprocess files."""
    return config.data_dir / "metrics"


def build_app(config: ShadowdConfig) -> Application:
    from shadowd.serving.hub import ShadowHub
    from shadowd.serving.ingress import ShadowIngress
    from shadowd.serving.worker import MODEL_THREADS, ShadowWorker

    serving = config.serving
    env = {"runtime_env": {"env_vars": {MULTIPROC_ENV: str(metrics_dir(config))}}}
    hub = ShadowHub.options(
        num_replicas=1,
        ray_actor_options={"num_cpus": serving.comparator_cpus, "resources": serving.hub_resources, **env},
    ).bind(config)
    worker = None
    if config.models.candidate is not None and config.shadow.sample_share > 0:
        worker = ShadowWorker.options(
            num_replicas=serving.worker_replicas,
            max_ongoing_requests=MODEL_THREADS,
            ray_actor_options={"num_cpus": serving.worker_cpus, **env},
        ).bind(config, hub)
    return ShadowIngress.options(
        num_replicas=serving.ingress_replicas,
        ray_actor_options={"num_cpus": serving.ingress_cpus, **env},
        max_ongoing_requests=serving.max_ongoing_requests,
        max_queued_requests=serving.max_queued_requests,
    ).bind(config, worker, hub)


def app_builder(args: dict[str, Any]) -> Application:
    """Typed-args builder for ``serve run shadowd.app:app_builder config_path=...`` and RayService."""
    if "config_path" not in args:
        raise ValueError("shadowd.app:app_builder needs the argument config_path (a shadowd YAML file)")
    return build_app(load_config(args["config_path"]))

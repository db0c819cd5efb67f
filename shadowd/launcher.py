"""Start and stop a whole shadowd: local (or given) Ray, Serve's HTTP proxy,
the app from ``build_app``, and the metrics folder. Used by ``shadowd run``,
``shadowd demo``, the integration tests and the benchmark."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from shadowd.config import ShadowdConfig
from shadowd.errors import ShadowdError

__all__ = ["APP_NAME", "Daemon", "bearer", "start_daemon", "wait_for_pairs", "wait_healthy"]

log = logging.getLogger(__name__)

APP_NAME = "shadowd"


@dataclass
class Daemon:
    config: ShadowdConfig
    url: str
    owns_ray: bool
    # This run's generated API token (every scope) when no tokens are configured; None otherwise.
    token: str | None = field(default=None, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header for the generated token (empty when tokens are configured)."""
        return bearer(self.token)

    def stop(self) -> None:
        """Graceful: Serve calls each replica's shutdown hook (the hub saves state and flushes its sink)."""
        import ray
        from ray import serve

        try:
            serve.delete(APP_NAME)
        finally:
            if self.owns_ray:
                serve.shutdown()  # type: ignore[no-untyped-call]
                ray.shutdown()


def ensure_ray(num_cpus: int | None = None) -> bool:
    """Connect to RAY_ADDRESS if set, else start a local Ray; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(
        address=os.environ.get("RAY_ADDRESS"),
        num_cpus=None if os.environ.get("RAY_ADDRESS") else num_cpus,
        include_dashboard=False,
        log_to_driver=bool(os.environ.get("SHADOWD_RAY_LOGS")),
        configure_logging=False,
    )
    return True


def bearer(token: str | None) -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}``, or no header without a token."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def wait_healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/healthz", timeout=2)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as err:
            last = type(err).__name__
        time.sleep(0.2)
    raise ShadowdError(f"shadowd did not become healthy at {url} within {timeout_s} s ({last})")


def wait_for_pairs(url: str, pairs: int, timeout_s: float, token: str | None = None) -> dict[str, Any]:
    """Poll the report (``token``: one with scope read) until it has counted ``pairs`` pairs (or time
    is up); returns the last report."""
    deadline = time.monotonic() + timeout_s
    while True:
        resp = requests.get(f"{url}/shadow/report", headers=bearer(token), timeout=30)
        if resp.status_code in (401, 403):
            raise ShadowdError(f"{url}/shadow/report: {resp.json().get('error')}")
        report: dict[str, Any] = resp.json()
        if report["overall"]["pairs"] >= pairs or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


def start_daemon(
    config: ShadowdConfig,
    num_cpus: int | None = None,
    timeout_s: float = 120.0,
    on_ray_started: Callable[[], None] | None = None,
) -> Daemon:
    """Deploy shadowd and wait until it answers /healthz. ``on_ray_started`` runs right after Ray
    starts (which installs signal handlers of its own), before the slow part, deploying.

    Configured API tokens are read first (a bad tokens file fails here, naming it); without them
    this run gets a fresh generated token (``Daemon.token``, also in ``<data_dir>/auth/token``)."""
    from ray import serve

    from shadowd.app import build_app
    from shadowd.observe.metrics import prepare_multiprocess_dir
    from shadowd.serving.auth import load_tokens, write_generated_token

    config.data_dir.mkdir(parents=True, exist_ok=True)
    token = None
    if config.auth.configured:
        load_tokens(config)
    else:
        token = write_generated_token(config.data_dir, fresh=True)
    prepare_multiprocess_dir(config.data_dir)
    owns_ray = ensure_ray(num_cpus)
    if on_ray_started is not None:
        on_ray_started()
    serve.start(http_options={"host": config.serving.host, "port": config.serving.port})
    serve.run(build_app(config), name=APP_NAME, route_prefix=config.serving.route_prefix, blocking=False)
    host = "127.0.0.1" if config.serving.host in ("0.0.0.0", "::") else config.serving.host
    url = f"http://{host}:{config.serving.port}{config.serving.route_prefix.rstrip('/')}"
    wait_healthy(url, timeout_s)
    return Daemon(config, url, owns_ray, token)

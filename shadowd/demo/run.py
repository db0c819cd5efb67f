"""``shadowd demo``: the main job end to end on embedded defaults.

Trains (or reuses) the demo models, starts shadowd on them, drives live HTTP
traffic with a progress bar, sends delayed ground truth for a random share of
the requests, plays the on-call annotator who labels the evaluation lane,
and prints the per-slice shadow report (how many labels decided each slice,
and how they were chosen), where the annotation items went, and the labelling
page's URL with the one command that serves and opens it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import yaml

from shadowd.config import ShadowdConfig, parse_config
from shadowd.demo.models import train_demo_models
from shadowd.demo.traffic import DEMO_SLICES, DemoRequest, demo_requests

if TYPE_CHECKING:
    from shadowd.compare.report import ShadowReport

__all__ = ["demo_config_dict", "page_hint", "run_demo"]


def demo_config_dict(data_dir: Path, model_paths: dict[str, Path], port: int, metrics_port: int) -> dict[str, Any]:
    def model(role: str, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "torchscript",
            "path": str(model_paths[role]),
            "input_shape": [64],
            "output": "logits",
        }

    return {
        "task": "classification",
        "data_dir": str(data_dir),
        "models": {
            "production": model("production", "digits-mlp-v1"),
            "candidate": model("candidate", "digits-bgsub-v2"),
        },
        "shadow": {"sample_share": 1.0, "candidate_timeout_s": 2.0},
        "serving": {"port": port},
        "slices": DEMO_SLICES,
        "divergence": {"tvd_threshold": 0.3},
        # Every disagreement goes to the evaluation lane, which the demo's on-call annotator labels:
        # a slice with few flips (daylight) needs about 30 labels on them to pass the 1-point margin.
        "annotations": {"evaluation": {"share": 1.0}},
        "metrics": {"port": metrics_port},
    }


def _send(session: requests.Session, url: str, req: DemoRequest) -> tuple[DemoRequest, int]:
    r = session.post(f"{url}/predict", json=req.body, headers={"X-Request-ID": req.request_id}, timeout=30)
    return req, r.status_code


def _feedback(session: requests.Session, url: str, req: DemoRequest) -> int:
    body = {"request_id": req.request_id, "label": req.label}
    return session.post(f"{url}/feedback", json=body, timeout=30).status_code


def _flywheel_summary(ann: dict[str, Any], cfg: ShadowdConfig) -> str:
    sink, labels = ann.get("sink", {}), ann.get("labels", {})
    where = "Kafka" if sink.get("kafka") else f"the local spool {cfg.data_dir / 'spool'}"
    suites = ", ".join(f"{k} {v}" for k, v in sorted((ann.get("suites") or {}).items())) or "none yet"
    return (
        f"annotation queue: {sink.get('queued', 0)} items queued to {where} "
        f"({ann.get('high_loss_queued', 0)} for high loss once labels arrived); "
        f"labels joined: {labels.get('joined', 0)}, unknown: {labels.get('unknown', 0)}\n"
        f"hard-example suites ({cfg.data_dir / 'suites'}): {suites}\n"
        f"next: replay the hard examples: `shadowd replay all-suites -c {cfg.data_dir / 'demo' / 'shadowd.yaml'} "
        "--role candidate --baseline production`"
    )


def page_hint(cfg: ShadowdConfig, config_path: Path) -> str:
    """Where the labelling page is, what waits there, and the one line that serves it and opens it."""
    from shadowd.flywheel.annotate import LANES
    from shadowd.flywheel.transports import build_transport

    web = cfg.annotations.web
    url = f"http://{web.host}:{web.port}/"
    transport = build_transport(cfg.annotations.sink, cfg.data_dir)
    rotation = cfg.annotations.rotation.name if cfg.annotations.rotation is not None else "default"
    waiting = sum(transport.backlog(rotation, lane, time.time).items for lane in LANES)
    what = f"{waiting} items wait there" if waiting else "the queue is empty now; new items appear there as they come"
    return (
        f"labelling page: {url} ({what}; the token is in {cfg.data_dir / 'auth' / 'token'})\n"
        f"open it: shadowd annotate --web -c {config_path} --open"
    )


def _label_evaluation_lane(
    cfg: ShadowdConfig, truth: dict[str, int], url: str, auth: dict[str, str], echo: Callable[[str], None]
) -> None:
    """The on-call annotator labels the evaluation lane (here from the known truth), then the labels join."""
    from tqdm import tqdm

    from shadowd.flywheel.annotate import Annotator

    def handled() -> int:
        labels = requests.get(f"{url}/shadow/report", headers=auth, timeout=30).json()["annotations"]["labels"]
        return int(sum(labels.values()))

    before = handled()
    annotator = Annotator(cfg, annotator="demo-on-call")
    done = 0
    try:
        with tqdm(desc="on-call annotator, evaluation lane", unit="label") as bar:
            while (item := annotator.next_item(timeout_s=2.0)) is not None and item.lane == "evaluation":
                # An item left from an earlier demo run (same data dir) has no truth here: skipped.
                annotator.submit(truth.get(item.request_id, "skip"))
                done += 1
                bar.update()
    finally:
        annotator.close()  # a review-lane item it saw stays in the queue for the next person
    deadline = time.monotonic() + 60  # the hub tails the labels file
    while handled() < before + done and time.monotonic() < deadline:
        time.sleep(0.5)
    echo(f"the on-call annotator labelled {done} evaluation items")


def run_demo(
    data_dir: Path, n_requests: int, port: int, metrics_port: int, feedback_share: float, echo: Callable[[str], None]
) -> ShadowReport:
    from tqdm import tqdm

    from shadowd.compare.render import render_report
    from shadowd.compare.report import ShadowReport
    from shadowd.launcher import start_daemon, wait_for_pairs

    data_dir = data_dir.resolve()
    echo(f"shadowd demo: data dir {data_dir}")
    paths = train_demo_models(data_dir / "demo" / "models")
    echo(f"models: {(data_dir / 'demo' / 'models' / 'models.json').read_text().strip()}")
    raw = demo_config_dict(data_dir, paths, port, metrics_port)
    config_path = data_dir / "demo" / "shadowd.yaml"
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg: ShadowdConfig = parse_config(raw, str(config_path))
    echo(f"config written to {config_path} (run it yourself with: shadowd run -c {config_path})")
    echo("starting Ray Serve ...")
    daemon = start_daemon(cfg, num_cpus=2)
    try:
        # Feedback, report and reset need a token: this loopback run's generated one (<data_dir>/auth/token).
        auth = daemon.headers
        # A rerun on the same data dir starts a new test window, with request ids of its own.
        requests.post(f"{daemon.url}/shadow/reset", headers=auth, timeout=30).raise_for_status()
        reqs = list(demo_requests(n_requests, run_id=uuid.uuid4().hex[:8]))
        statuses: dict[int, int] = {}
        with requests.Session() as session, ThreadPoolExecutor(4) as pool:
            for _req, status in tqdm(
                pool.map(lambda r: _send(session, daemon.url, r), reqs),
                total=len(reqs),
                desc="live traffic",
                unit="req",
            ):
                statuses[status] = statuses.get(status, 0) + 1
        echo(f"responses by HTTP status: {statuses}")
        wait_for_pairs(daemon.url, len(reqs), timeout_s=60, token=daemon.token)  # labels join stored pairs
        labelled = reqs[: int(len(reqs) * feedback_share)]
        with requests.Session() as session, ThreadPoolExecutor(4) as pool:
            session.headers.update(auth)
            for _status in tqdm(
                pool.map(lambda r: _feedback(session, daemon.url, r), labelled),
                total=len(labelled),
                desc="delayed ground truth",
                unit="label",
            ):
                pass
        _label_evaluation_lane(cfg, {r.request_id: r.label for r in reqs}, daemon.url, auth, echo)
        report = ShadowReport.from_json(requests.get(f"{daemon.url}/shadow/report", headers=auth, timeout=30).json())
        echo(render_report(report, "table"))
        echo(_flywheel_summary(report.annotations or {}, cfg))
    finally:
        daemon.stop()
    echo(page_hint(cfg, config_path))  # the last lines: what to do next
    return report

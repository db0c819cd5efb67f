"""Every Prometheus metric shadowd exports, declared once.

Owners (ingress, shadow worker, comparator, sinks) build a ``ShadowdMetrics``
on a registry they are given, so tests build their own. In the daemon the
Ray replicas live in separate processes: they write through prometheus
client's multiprocess mode into ``<data_dir>/metrics`` and the daemon's
``/metrics`` endpoint aggregates them (see ``serve_metrics``).

Labels are bounded: role, outcome, reason, configured slice names, check
names, model names (``model``: production's or a candidate's; ``candidate``:
the candidate model a comparison, check or verdict belongs to). Never request
ids or feature values. ``forget_candidate`` removes a candidate's gauges when
it leaves the lineup.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

__all__ = [
    "DIVERGENCE_BOUNDS",
    "MAX_REMOTE_ORIGINS",
    "MULTIPROC_ENV",
    "PER_CANDIDATE_GAUGES",
    "ShadowdMetrics",
    "forget_candidate",
    "multiprocess_registry",
    "node_metrics_dir",
    "observe_counts",
    "own_metric_files",
    "prepare_multiprocess_dir",
    "serve_metrics",
    "store_remote_files",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DIVERGENCE_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
# The divergence histogram's upper bounds as prometheus-client keeps them (+Inf last), for observe_counts.
DIVERGENCE_BOUNDS = [*_DIVERGENCE_BUCKETS, math.inf]


class ShadowdMetrics:
    """The metric families; one instance per process (or per test registry)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry = reg
        self.requests = Counter(
            "shadowd_requests_total",
            "Model calls by role (production, candidate, noise, reference), outcome "
            "(ok, error, timeout, nan, bad_shape) and model (the model's name).",
            ["role", "outcome", "model"],
            registry=reg,
        )
        self.remote_failures = Counter(
            "shadowd_remote_model_failures_total",
            "Failed calls to a model served elsewhere (kind http), by role and reason (refused: no connection; "
            "status: an HTTP error status; bad_answer: not the payload's shape; timeout). Production's clients "
            "got a 502 (504 for timeout) for each production one.",
            ["role", "reason"],
            registry=reg,
        )
        self.bad_requests = Counter(
            "shadowd_bad_requests_total",
            "Client requests refused with a 4xx, by HTTP status.",
            ["status"],
            registry=reg,
        )
        self.auth_failures = Counter(
            "shadowd_auth_failures_total",
            "Requests refused for their token, by the scope the route needs (predict, labels, read, admin) and "
            "status (401: missing or unknown token; 403: the token lacks the scope).",
            ["scope", "status"],
            registry=reg,
        )
        self.latency = Histogram(
            "shadowd_model_latency_seconds",
            "Model call latency per example, by role and model (the model's name).",
            ["role", "model"],
            buckets=_LATENCY_BUCKETS_S,
            registry=reg,
        )
        self.request_latency = Histogram(
            "shadowd_request_latency_seconds",
            "Time in the ingress from request received to answer ready (parsing, production, shadow hand-off).",
            buckets=_LATENCY_BUCKETS_S,
            registry=reg,
        )
        self.pairs_sampled = Counter(
            "shadowd_pairs_sampled_total", "Requests chosen for shadowing by the sampler.", registry=reg
        )
        self.pairs_dropped = Counter(
            "shadowd_pairs_dropped_total",
            "Pairs dropped before comparison, by reason "
            "(budget: in-flight pair budget full; bytes: in-flight byte budget full; worker: shadow worker call "
            "failed; hub: one hub shard of several failed to take its part of a batch; lineup: in flight across a "
            "change of the model lineup; violation_*: the same for "
            "expectation-violation items).",
            ["reason"],
            registry=reg,
        )
        self.pairs_compared = Counter(
            "shadowd_pairs_compared_total",
            "Pairs compared, by candidate model and slice ('overall' for all).",
            ["candidate", "slice"],
            registry=reg,
        )
        self.pairs_divergent = Counter(
            "shadowd_pairs_divergent_total",
            "Pairs over the divergence threshold, by candidate model and slice.",
            ["candidate", "slice"],
            registry=reg,
        )
        self.label_flips = Counter(
            "shadowd_label_flips_total",
            "Classification pairs whose top label differs, by candidate model and slice.",
            ["candidate", "slice"],
            registry=reg,
        )
        self.divergence = Histogram(
            "shadowd_pair_divergence",
            "Divergence per pair (total variation distance, or relative difference for regression), by candidate "
            "model and slice.",
            ["candidate", "slice"],
            buckets=_DIVERGENCE_BUCKETS,
            registry=reg,
        )
        self.annotation_items = Counter(
            "shadowd_annotation_items_total",
            "Annotation items by outcome (queued, held_back, spooled, delivered, failed).",
            ["outcome"],
            registry=reg,
        )
        self.check_status = Gauge(
            "shadowd_check_status",
            "Statistical check result at the candidate's last report, by candidate model, check and slice: 0 pass, "
            "1 fail, 2 inconclusive, 3 review.",
            ["candidate", "check", "slice"],
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.gate_verdict = Gauge(
            "shadowd_gate_verdict",
            "Promotion gate verdict of each candidate model at its last report: 0 pass, 1 fail, 2 inconclusive, "
            "3 review.",
            ["candidate"],
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.noise_floor = Gauge(
            "shadowd_noise_floor",
            "How often production disagrees with itself (noise replica), by candidate model (whose comparison "
            "measured it) and slice: flip rate for classification, divergent-pair rate for regression.",
            ["candidate", "slice"],
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.churn_floor = Gauge(
            "shadowd_churn_floor",
            "How often the reference model (same recipe, another seed or version) disagrees with production, by "
            "candidate model (whose comparison measured it) and slice: flip rate for classification, divergent-pair "
            "rate for regression.",
            ["candidate", "slice"],
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.spool_items = Gauge(
            "shadowd_spool_items",
            "Annotation items in the local spool not yet delivered to Kafka (all of them without Kafka), by lane "
            "(evaluation, review) and hub shard (0 for one hub).",
            ["lane", "shard"],
            registry=reg,
            multiprocess_mode="mostrecent",  # one writer (the hub); a dead one's value must not linger
        )
        # issue 12: a spool that cannot lose an acknowledged item, and says when it cannot take more
        self.annotation_items_dropped = Counter(
            "shadowd_annotation_items_dropped_total",
            "Annotation items dropped before reaching the spool, by reason (disk_full, spool_full, write_error: "
            "queuing paused; too_large, unserializable, buffer_full, closed) and lane; also counted as outcome failed.",
            ["lane", "reason"],
            registry=reg,
        )
        self.spool_bytes = Gauge(
            "shadowd_spool_bytes",
            "Bytes of the local annotation spool's segment files on disk, by lane (evaluation, review).",
            ["lane", "shard"],
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.spool_max_bytes = Gauge(
            "shadowd_spool_max_bytes",
            "Each lane's spool byte cap (annotations.spool_max_bytes); appends past it pause that lane's queuing.",
            ["lane", "shard"],
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.spool_paused = Gauge(
            "shadowd_spool_paused",
            "1 while annotation queuing is paused because the spool refuses appends, by reason (disk_full, "
            "spool_full, write_error) and lane; it resumes by itself when an append succeeds.",
            ["lane", "reason", "shard"],
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        # issue 7: expectations, numerical stability, drift (shadowd/expect/)
        self.expectation_violations = Counter(
            "shadowd_expectation_violations_total",
            "Failed data expectations, by expectation ('<field>.<rule>', named in the config).",
            ["expectation"],
            registry=reg,
        )
        self.nonfinite_outputs = Counter(
            "shadowd_nonfinite_outputs_total",
            "Model outputs (examples) holding NaN or +-inf, by role (production, candidate, noise, reference).",
            ["role"],
            registry=reg,
        )
        self.drift_status = Gauge(
            "shadowd_drift_status",
            "Drift check of the last closed window per monitored feature and slice: 0 ok, 1 drift, 2 inconclusive.",
            ["feature", "slice"],
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.thread_restarts = Counter(
            "shadowd_thread_restarts_total",
            "Background threads (spooler, sender, labels, backlog) that raised something unexpected and were "
            "restarted after a backoff, by thread; the log has the traceback.",
            ["thread"],
            registry=reg,
        )
        # issue 4: data flywheel (shadowd/flywheel/)
        self.kafka_delivery_errors = Counter(
            "shadowd_kafka_delivery_errors_total",
            "Failed sends of annotation items to Kafka (broker down, timeout, rejected); the spool keeps the items.",
            registry=reg,
        )
        self.labels = Counter(
            "shadowd_labels_total",
            "Labels received, by source (feedback, annotator) and outcome (joined, unknown, expired, rejected).",
            ["source", "outcome"],
            registry=reg,
        )
        self.annotation_backlog = Gauge(
            "shadowd_annotation_backlog_items",
            "Annotation items not yet handled by the on-call annotators, by rotation and lane (evaluation, review).",
            ["rotation", "lane"],
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.annotation_oldest_age = Gauge(
            "shadowd_annotation_oldest_item_age_seconds",
            "Age of the oldest annotation item not yet handled, by rotation and lane (0 when the lane is empty).",
            ["rotation", "lane"],
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.suite_examples = Gauge(
            "shadowd_suite_examples",
            "Labelled hard examples per suite (named by slice and failure tag) and hub shard (0 for one hub).",
            ["suite", "shard"],
            registry=reg,
            multiprocess_mode="mostrecent",
        )


# The gauges that say something about one candidate now (not cumulative counts): what forget_candidate removes.
PER_CANDIDATE_GAUGES = ("shadowd_check_status", "shadowd_gate_verdict", "shadowd_noise_floor", "shadowd_churn_floor")


def forget_candidate(metrics: ShadowdMetrics, name: str) -> int:
    """Remove every series of candidate ``name`` from the per-candidate gauges (check status, gate verdict,
    noise and churn floor), so a candidate that left the lineup leaves no verdict behind; returns how many.

    Its counters and histogram stay: they stop growing, and rates over them fall to nothing. In
    multiprocess mode prometheus-client cannot delete a value from a process's file (``remove`` only drops
    the in-process child and warns), so each series is set to NaN first: ``mostrecent`` takes the newest
    value across processes, and ``multiprocess_registry`` (the daemon's /metrics) leaves NaN samples of
    these gauges out. Only series this process set are removed so (the hub sets them all). A candidate
    added again under the same name gets its series back at its next report.
    """
    removed = 0
    for gauge in (metrics.check_status, metrics.gate_verdict, metrics.noise_floor, metrics.churn_floor):
        # prometheus-client has no public list of a family's children; remove() would warn in multiprocess mode.
        at = gauge._labelnames.index("candidate")
        with gauge._lock:
            for key in [k for k in gauge._metrics if k[at] == name]:
                child = cast(Gauge, gauge._metrics.pop(key))
                child.set(math.nan)  # the tombstone a multiprocess file keeps; nothing reads it otherwise
                removed += 1
    return removed


def observe_counts(histogram: Any, counts: Sequence[int], total: float) -> bool:
    """Add observations already counted by bucket to a labelled child of a ``Histogram``.

    ``counts[i]`` values fell in bucket i (the first bound at or above the
    value, ``DIVERGENCE_BOUNDS`` for ``divergence``); ``total`` is their sum.
    The same as ``observe`` on each value, in one step per bucket.
    prometheus-client has no bulk observe, so this adds to the child's bucket
    and sum values as ``observe`` does; False (nothing added) when the client
    does not have those parts: then observe the values one by one.
    """
    bounds, buckets, sum_value = (getattr(histogram, a, None) for a in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or sum_value is None or len(buckets) != len(counts):
        return False
    histogram._raise_if_not_observable()
    sum_value.inc(total)
    for bucket, c in zip(buckets, counts, strict=True):
        if c:
            bucket.inc(c)
    return True


def prepare_multiprocess_dir(data_dir: Path) -> Path:
    """Empty ``<data_dir>/metrics`` for a new daemon run and return it."""
    path = Path(data_dir) / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


class _WithoutForgotten(Collector):
    """Every process's files aggregated, less the NaN that ``forget_candidate`` leaves in place of a series."""

    def __init__(self, multiproc_dir: Path):
        self._files = multiprocess.MultiProcessCollector(None, path=str(multiproc_dir))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        for family in self._files.collect():  # type: ignore[no-untyped-call]
            if family.name in PER_CANDIDATE_GAUGES:
                family.samples = [s for s in family.samples if not math.isnan(s.value)]
            yield family


def multiprocess_registry(multiproc_dir: Path) -> CollectorRegistry:
    """A registry holding the aggregate of every shadowd process's files in ``multiproc_dir``."""
    registry = CollectorRegistry()
    registry.register(_WithoutForgotten(multiproc_dir))
    return registry


def serve_metrics(port: int, host: str, multiproc_dir: Path) -> CollectorRegistry:
    """Serve the aggregate of every shadowd process's metrics on ``host:port/metrics``."""
    registry = multiprocess_registry(multiproc_dir)
    start_http_server(port, addr=host, registry=registry)
    return registry


def node_metrics_dir(base: Path, node_id: str) -> Path:
    """Where the processes of one Ray node write their multiprocess files (``<base>/node-<id>``)."""
    return Path(base) / f"node-{node_id[:16]}"


# counter_123.db, histogram_123.db, gauge_mostrecent_123.db: the files prometheus-client writes per process
_GAUGE_MODES = "all|liveall|min|livemin|max|livemax|sum|livesum|mostrecent|livemostrecent"
_OWN_FILE = re.compile(rf"(counter|histogram|gauge_(?:{_GAUGE_MODES}))_(\d+)\.db")
_ORIGIN = re.compile(r"[0-9a-f]{1,16}-\d{1,10}")
MAX_REMOTE_FILE_BYTES = 4 << 20
MAX_REMOTE_ORIGINS = 1024  # processes on other nodes whose files the lead keeps


def _readable(data: bytes) -> bool:
    """Whether ``data`` is a whole multiprocess file the collector can read (a bad one would fail every
    scrape): its header's size, every entry inside it, every key a JSON metric key."""
    from prometheus_client.mmap_dict import _read_all_values

    try:
        if len(data) < 8 or struct.unpack_from("i", data, 0)[0] != len(data):
            return False
        for key, _value, _ts, _pos in _read_all_values(data, len(data)):  # type: ignore[no-untyped-call]
            metric_name, name, labels, _help = json.loads(key)
            if not (isinstance(metric_name, str) and isinstance(name, str) and isinstance(labels, dict)):
                return False
    except (RuntimeError, ValueError, TypeError, struct.error, UnicodeDecodeError):
        return False
    return True


def own_metric_files(directory: Path, pid: int) -> dict[str, bytes]:
    """This process's multiprocess files in ``directory``, each cut to the bytes in use (the files are
    preallocated, mostly zeros): what a process on another node sends the lead hub."""
    out: dict[str, bytes] = {}
    for path in Path(directory).glob(f"*_{pid}.db"):
        with open(path, "rb") as f:
            data = f.read(4096)
            used = struct.unpack_from("i", data, 0)[0] if len(data) >= 8 else 0
            if used > len(data):
                data += f.read(used - len(data))
        if used >= 8:
            out[path.name] = data[:used]
    return out


def store_remote_files(directory: Path, origin: str, files: dict[str, bytes]) -> int:
    """Keep another node's process's files (``own_metric_files``) beside this node's, named by ``origin``
    (``<node>-<pid>``), so the multiprocess collector aggregates them with the rest; returns files kept."""
    if not _ORIGIN.fullmatch(origin):
        raise ValueError(f"bad metrics origin {origin!r}")
    directory = Path(directory)
    known = {p.name.rsplit("_", 1)[1] for p in directory.glob("*_*-*.db")}
    if origin + ".db" not in known and len(known) >= MAX_REMOTE_ORIGINS:
        raise ValueError(f"already {len(known)} remote processes' metrics kept; {origin} refused")
    kept = 0
    for name, data in files.items():
        match = _OWN_FILE.fullmatch(name)
        if match is None or len(data) > MAX_REMOTE_FILE_BYTES or not _readable(data):
            log.warning("metrics file %r from %s refused: not a whole prometheus-client file", name[:80], origin)
            continue
        target = directory / f"{match.group(1)}_{origin}.db"
        tmp = target.with_name(target.name + ".tmp")  # not *.db: the collector never reads half a file
        tmp.write_bytes(data)
        os.replace(tmp, target)
        kept += 1
    return kept


def in_multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))

"""ShadowHub: the single stateful deployment beside the request path.

It holds the comparator (statistics, gate), the flywheel (annotation sink,
pair store, labels) and the drift monitor, all built by the app's wiring
function (``shadowd.app.build_hub_parts``) and handed over as ``HubParts``;
it persists the comparator state under ``data_dir`` so a restart keeps the
evidence, and sets the gate gauges from each report. Pairs arrive from shadow
workers in columns (``PairBatch``), counted a batch at a time; labels from
``POST /feedback`` and, through the flywheel's labels thread, from the
annotators.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shadowd.compare.comparator import Comparator, state_path
from shadowd.compare.report import ShadowReport, verdict_document
from shadowd.config import ShadowdConfig
from shadowd.expect import Violation, ViolationTally
from shadowd.expect.drift import DriftMonitor
from shadowd.flywheel.flywheel import Flywheel, JoinResult
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import OVERALL, AnnotationItem, Label, Pair, PairBatch

if TYPE_CHECKING:
    from shadowd.observe.grafana import VerdictAnnotator  # grafana-client loads only when configured

__all__ = ["HubParts", "ShadowHub", "publish_gate"]

log = logging.getLogger(__name__)

_PERSIST_EVERY_S = 5.0


@dataclass
class HubParts:
    """What the hub holds, built in its process by ``shadowd.app.build_hub_parts``."""

    metrics: ShadowdMetrics
    comparator: Comparator
    flywheel: Flywheel
    drift: DriftMonitor | None = None
    verdict_annotator: VerdictAnnotator | None = None


def publish_gate(metrics: ShadowdMetrics, report: ShadowReport) -> None:
    """Set the check-status, gate-verdict, noise- and churn-floor gauges from a report."""
    for r in report.checks:
        metrics.check_status.labels(check=r.check, slice=r.slice).set(r.status.gauge_value)
    metrics.gate_verdict.set(report.gate.verdict.gauge_value)
    for name, s in {OVERALL: report.overall, **report.slices}.items():
        for floor, gauge in ((s.noise, metrics.noise_floor), (s.reference, metrics.churn_floor)):
            if floor.compared:
                share = floor.flips if floor.flips is not None else floor.divergent
                gauge.labels(slice=name).set(share / floor.compared)


class ShadowHub:
    def __init__(self, config: ShadowdConfig, build_parts: Callable[[ShadowdConfig], HubParts]):
        # The parts are built here, in the hub's own process, by the app's wiring function:
        # they hold threads, files and sockets that cannot travel from the driver.
        parts = build_parts(config)
        self._cfg = config
        self._metrics = parts.metrics
        self._comparator = parts.comparator
        self._flywheel = parts.flywheel
        self._drift = parts.drift
        self._annotator = parts.verdict_annotator  # Grafana annotations when the gate verdict changes
        self._lock = threading.Lock()  # the labels thread and the event loop both feed the comparator
        self._state_path = state_path(config.data_dir)
        resumed = self._state_path.exists() and self._comparator.load(self._state_path)
        self._dirty = False
        self._violations = ViolationTally()
        self._persist_task: asyncio.Task[None] | None = None
        # Labels journalled after the saved state was written are replayed into it; a new window
        # (no state, another candidate) takes none of them.
        self._flywheel.start(on_joined=self._on_joined, replay_after=self._comparator.labels_seq if resumed else None)

    def _on_joined(self, result: JoinResult, label: Label) -> None:
        """A label found its pair: into the quality cells if its selection is known, else counted as excluded."""
        if result.pair is None:
            return
        with self._lock:
            if result.channel is not None:
                self._comparator.add_labelled(result.pair, label, result.channel)
            elif result.excluded is not None:
                self._comparator.exclude_label(result.pair, result.excluded)
            if result.seq is not None:
                self._comparator.labels_seq = max(self._comparator.labels_seq, result.seq)
            self._dirty = True

    def _ensure_persisting(self) -> None:
        if self._persist_task is None or self._persist_task.done():
            self._persist_task = asyncio.get_running_loop().create_task(self._persist_loop())

    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(_PERSIST_EVERY_S)
            try:
                await self._persist_tick()
            except Exception:  # a full disk or a bug must not end persistence for good
                log.exception("hub persist tick failed; retrying in %s s", _PERSIST_EVERY_S)

    async def _persist_tick(self) -> None:
        self._save()
        gate = self._comparator_report().gate
        if self._annotator is not None:
            text = "; ".join(gate.reasons[:3])
            await asyncio.to_thread(self._annotator.observe, gate.verdict.value, text)
        if self._drift is not None:
            self._drift.tick()  # close a time window even when traffic stops

    def _save(self) -> None:
        with self._lock:
            if self._dirty:
                self._comparator.save(self._state_path)
                self._dirty = False
                # Every journalled label the state now holds is safe: the journal may forget them.
                self._flywheel.journal.compact(self._comparator.labels_seq)

    async def add_pairs(self, pairs: list[Pair]) -> int:
        """Finished pairs as objects (a caller without columns): counted as one batch."""
        return await self.add_batch(PairBatch.of(pairs))

    async def add_batch(self, batch: PairBatch) -> int:
        """A shadow worker's finished pairs in columns: counted in one step, then each pair stored with its
        selection (a Pair is built per row for the pair store, all stored in one transaction; items only
        where the comparator made one)."""
        self._ensure_persisting()
        with self._lock:
            result = self._comparator.add_batch(batch)
        entries: list[tuple[Pair, list[AnnotationItem]]] = []
        for i in range(len(batch)):
            pair = batch.pair(i, result.selection(i))
            slices = result.slices(i)
            self._violations.add([Violation(**v) for v in pair.violations], slices)
            if self._drift is not None:
                outputs: dict[str, Any] = {
                    o.role: o.values for o in (pair.production, pair.candidate) if o is not None and o.ok
                }
                self._drift.add(pair.features, outputs, slices, inputs=pair.inputs)
            entries.append((pair, result.items_of(i)))
        self._flywheel.record_many(entries)
        self._dirty = True
        return len(batch)

    async def add_items(self, items: list[AnnotationItem]) -> int:
        """Items found on the request path (expectation violations): through the policy to the queue."""
        self._ensure_persisting()
        return sum(self._flywheel.submit(item) for item in items)

    async def feedback(self, label: Label) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for POST /feedback."""
        self._ensure_persisting()
        try:
            result = self._flywheel.feedback(label)  # joins, journals (fsync), then calls _on_joined
        except OSError as err:  # the journal cannot be written (disk full): not acknowledged, so no loss
            log.error("label for %s not accepted: the labels journal cannot be written: %s", label.request_id, err)
            return 503, {"error": "labels cannot be persisted right now (disk); retry later", "status": "unavailable"}
        body = result.as_dict()
        if result.http_status >= 400:
            body["error"] = result.message  # the same key every 4xx of the API has
        return result.http_status, body

    def _comparator_report(self) -> ShadowReport:
        """The comparator's report; refreshes the gate gauges and the slices under review from it."""
        with self._lock:
            report = self._comparator.report()
            self._comparator.set_review_slices(report.gate.review_slices)
        publish_gate(self._metrics, report)
        return report

    async def report(self) -> dict[str, Any]:
        """GET /shadow/report: the comparator's report with the flywheel, expectations and drift sections."""
        self._ensure_persisting()
        report = self._comparator_report().model_copy(
            update={
                "annotations": self._flywheel.stats(),
                "expectations": self._violations.report(),
                "drift": self._drift.report() if self._drift is not None else None,
            }
        )
        return report.to_json()

    async def verdict(self) -> dict[str, Any]:
        """GET /shadow/verdict: the report cut down to the verdict per candidate (no flywheel or drift sections)."""
        self._ensure_persisting()
        return verdict_document(self._comparator_report())

    async def reset(self) -> dict[str, Any]:
        with self._lock:
            self._comparator.reset()
            self._violations = ViolationTally()
            self._dirty = True
            started_ts = self._comparator.window_started_ts
        self._save()
        return {"status": "reset", "window_started_ts": started_ts}

    def __del__(self) -> None:
        # Ray Serve calls this on graceful shutdown: keep the evidence, flush the queue.
        if not hasattr(self, "_flywheel"):
            return  # the constructor failed; nothing to keep
        try:
            self._flywheel.close(timeout_s=10.0)  # first: labels joined while closing still get saved
        finally:
            self._dirty = True
            self._save()

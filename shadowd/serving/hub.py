"""ShadowHub: the stateful deployment beside the request path, in one or more shards.

It holds the comparator (statistics, gate), the flywheel (annotation sink,
pair store, labels) and the drift monitor, all built by the app's wiring
function (``shadowd.app.build_hub_parts``) and handed over as ``HubParts``;
it persists the comparator state under ``data_dir`` so a restart keeps the
evidence, and sets the gate gauges from each report. Pairs arrive from shadow
workers in columns (``PairBatch``), counted a batch at a time; labels from
``POST /feedback`` and, through the flywheel's labels thread, from the
annotators.

Sharded (``serving.hub_shards`` > 1), each shard holds the pairs and labels of
the request ids it owns (``sampling.Shard``); the lead (shard 0) is the one
the ingress asks for reports: it merges every shard's comparator state
(``Comparator.merge``) into the report, sets the gate gauges from it and
hands the slices under review back to the shards.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from shadowd.compare.comparator import Comparator, state_path
from shadowd.compare.report import ShadowReport, Verdict, verdict_document
from shadowd.config import ShadowdConfig, shard_config
from shadowd.errors import BadRequest, ShadowdError
from shadowd.expect import Violation, ViolationTally
from shadowd.expect.drift import DriftMonitor
from shadowd.flywheel.flywheel import Flywheel, JoinResult, merge_flywheel_stats
from shadowd.models import ModelConfig
from shadowd.models.runtime import load_model
from shadowd.observe.metrics import ShadowdMetrics, own_metric_files, store_remote_files
from shadowd.records import OVERALL, AnnotationItem, Label, Pair, PairBatch
from shadowd.sampling import Shard
from shadowd.serving.lineup import (
    Lineup,
    LineupStore,
    RemoveCandidate,
    SetCandidate,
    apply_change,
    check_allowed,
    lineup_config,
    parse_change,
)
from shadowd.serving.runtime import behind_production, node_id, process_metrics_dir

if TYPE_CHECKING:
    from shadowd.observe.grafana import VerdictAnnotator  # grafana-client loads only when configured

__all__ = ["HubParts", "ShadowHub", "ShardUnavailable", "publish_gate"]

log = logging.getLogger(__name__)

_PERSIST_EVERY_S = 5.0
_LOAD_CHECK_S = 120.0  # longest a new candidate may take to load once in the lead before a change is refused


class ShardUnavailable(ShadowdError):
    """A peer hub shard did not answer the lead in time (restarting, stuck, or gone)."""


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
    def __init__(
        self,
        config: ShadowdConfig,
        build_parts: Callable[[ShadowdConfig, Shard], HubParts],
        shard: Shard = Shard(),
        peers: list[Any] | None = None,
    ):
        """``peers``: the lead's handles to shards 1 .. n-1 (none for a single hub or another shard)."""
        # The parts are built here, in the hub's own process, by the app's wiring function:
        # they hold threads, files and sockets that cannot travel from the driver.
        behind_production(config.serving.shadow_cpu)
        parts = build_parts(config, shard)
        self._shard = shard
        self._peers = list(peers or [])
        config = shard_config(config, shard.index)
        # The lineup (which model answers, which is shadowed) as last changed at runtime, unless the config's
        # models section changed since: then the config's (``shadowd.serving.lineup``).
        self._base_models = config.models
        self._store = LineupStore(config.data_dir)
        self._lineup, dropped = self._store.load(config.models)
        refused = self._untrusted(config, self._lineup) if shard.lead and not dropped else None
        if refused is not None:  # the config no longer trusts a model changed in at runtime
            self._lineup = Lineup(
                self._lineup.version + 1, config.models, since=time.time(), epoch=uuid.uuid4().hex[:12]
            )
        if dropped or refused is not None:
            log.warning(
                "following the config's models: %s; runtime changes since are dropped",
                refused
                or "its models section differs from the one the runtime lineup was changed from (or the lineup "
                "file was unreadable)",
            )
            if shard.lead:
                entry = _audit_entry("config", "the config file", None, self._lineup, None, None)
                self._store.audit({**entry, **({"refused": refused} if refused else {})})
        if dropped or refused is not None or not self._store.path.exists():
            self._store.save(self._lineup, self._base_models)  # a first lineup too: its epoch lasts
        if self._lineup.models != config.models:
            config = lineup_config(config, self._lineup.models)
            parts.comparator = Comparator(config, parts.metrics)
        self._lineup_lock = asyncio.Lock()  # one change at a time
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
        """A label found its pair: into the quality cells if its selection is known, else counted as excluded.
        A pair of an earlier lineup (another candidate, before a promotion) belongs to a closed window."""
        pair = result.pair
        if pair is None:
            return
        current = self._of_lineup(pair.ts, pair.production.model, pair.candidate.model if pair.candidate else None)
        with self._lock:
            if current and result.channel is not None:
                self._comparator.add_labelled(pair, label, result.channel)
            elif current and result.excluded is not None:
                self._comparator.exclude_label(pair, result.excluded)
            if result.seq is not None:
                self._comparator.labels_seq = max(self._comparator.labels_seq, result.seq)
            self._dirty = True

    async def check_health(self) -> None:
        """Ray Serve's periodic health check: also starts the persist loop (and with it the gate gauges)
        on a hub that has had no traffic since it started."""
        self._ensure_persisting()

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
        if not self._shard.lead:
            return  # the lead's tick reads this shard's state into the merged report
        if self._peers:  # a shard that restarted or missed a change takes the lineup again
            await self._from_peers("adopt_lineup", self._lineup.to_json(), return_exceptions=True)
        for found in await self._from_peers("metric_files", return_exceptions=True):
            if not isinstance(found, BaseException):
                await self.receive_metrics(*found)
        try:
            gate = (await self._merged_report()).gate
        except ShardUnavailable as err:  # no verdict from part of the evidence: never a stale PASS
            log.error("gate verdict INCONCLUSIVE until every shard answers: %s", err)
            self._metrics.gate_verdict.set(Verdict.INCONCLUSIVE.gauge_value)
            return
        if self._lineup.due(gate.verdict.value, time.time()) is not None:
            await self._stop_by_schedule()
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
        batch = self._current_rows(batch)
        if not len(batch):
            return 0
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

    def _current_rows(self, batch: PairBatch) -> PairBatch:
        """The rows of ``batch`` of the current lineup; the rest (in flight across a change of lineup) are
        dropped and counted (``shadowd_pairs_dropped_total{reason="lineup"}``)."""
        keep = np.fromiter(
            (
                self._of_lineup(ts, p, c)
                for ts, p, c in zip(batch.ts, batch.production.models, batch.candidate.models, strict=True)
            ),
            bool,
            len(batch),
        )
        if keep.all():
            return batch
        self._metrics.pairs_dropped.labels("lineup").inc(int((~keep).sum()))
        return batch.take(np.flatnonzero(keep))

    def _of_lineup(self, ts: float, production: str, candidate: str | None) -> bool:
        """Is a pair (its request's time, its two models) part of the current lineup's window? Requests from
        before a change belong to a closed window; after one, the models must be the lineup's (a replica
        follows within ``POLL_S``). The config's lineup (version 0) takes every pair."""
        lineup = self._lineup
        if lineup.version == 0:
            return True
        cand = lineup.models.candidate
        return (
            ts >= lineup.since
            and production == lineup.models.production.name
            and (not candidate or (cand is not None and candidate == cand.name))
        )

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

    async def _merged_report(self) -> ShadowReport:
        """The lead's report over every shard (its own comparator's when not sharded); refreshes the gate
        gauges and the slices under review (on every shard) from it."""
        if not self._peers:
            with self._lock:
                report = self._comparator.report()
                self._comparator.set_review_slices(report.gate.review_slices)
        else:
            with self._lock:
                review = sorted(self._comparator.sampler.review_slices)
            states = await self._from_peers("shard_state", review)
            merged = Comparator(self._cfg)
            with self._lock:
                merged.load_state(self._comparator.state_dict())
            for state in states:
                merged.merge(state)
            report = merged.report()
            with self._lock:
                self._comparator.set_review_slices(report.gate.review_slices)
        publish_gate(self._metrics, report)
        return report

    async def _from_peers(self, method: str, *args: Any, return_exceptions: bool = False) -> list[Any]:
        """Call ``method`` on every peer shard, each within ``serving.hub_timeout_s``: a shard that is
        restarting or stuck raises ``ShardUnavailable`` (or, with ``return_exceptions``, is its exception)."""

        async def call(i: int, peer: Any) -> Any:
            try:
                return await asyncio.wait_for(getattr(peer, method).remote(*args), self._cfg.serving.hub_timeout_s)
            except Exception as err:
                raise ShardUnavailable(f"hub shard {i + 1}: {method}: {type(err).__name__}") from err

        calls = (call(i, peer) for i, peer in enumerate(self._peers))
        return list(await asyncio.gather(*calls, return_exceptions=return_exceptions))

    async def shard_state(self, review_slices: list[str]) -> dict[str, Any]:
        """A shard's comparator state for the lead's merged report; takes the slices under review from it."""
        self._ensure_persisting()
        with self._lock:
            self._comparator.set_review_slices(review_slices)
            return self._comparator.state_dict()

    async def shard_sections(self) -> tuple[dict[str, Any], ViolationTally]:
        """A shard's flywheel statistics and expectation tallies, for the lead's merged report."""
        with self._lock:
            violations = copy.deepcopy(self._violations)  # not the live tally: add_batch changes it meanwhile
        return self._flywheel.stats(), violations

    async def metric_files(self) -> tuple[str | None, int, dict[str, bytes]]:
        """This shard's node, pid and metric files, for the lead's ``/metrics`` (it keeps those of other nodes)."""
        folder = process_metrics_dir()
        files = await asyncio.to_thread(own_metric_files, folder, os.getpid()) if folder is not None else {}
        return node_id(), os.getpid(), files

    async def receive_metrics(self, node: str | None, pid: int, files: dict[str, bytes]) -> bool:
        """The lead keeps the metric files of a process on another node beside its own node's, where its
        ``/metrics`` aggregates them; False (stop sending) for a process on its own node, or without one."""
        folder = process_metrics_dir()
        if not self._shard.lead or node is None or folder is None or node == node_id():
            return False
        await asyncio.to_thread(store_remote_files, folder, f"{node[:16]}-{pid}", files)
        return True

    async def report(self) -> dict[str, Any]:
        """GET /shadow/report: the comparator's report with the flywheel, expectations and drift sections
        (drift: the lead's shard, itself a hash-chosen share of the traffic)."""
        self._ensure_persisting()
        report = await self._merged_report()
        stats = [self._flywheel.stats()]
        violations = ViolationTally()
        violations.merge(self._violations)
        for peer_stats, peer_violations in await self._from_peers("shard_sections"):
            stats.append(peer_stats)
            violations.merge(peer_violations)
        return report.model_copy(
            update={
                "annotations": merge_flywheel_stats(stats),
                "expectations": violations.report(),
                "drift": self._drift.report() if self._drift is not None else None,
            }
        ).to_json()

    async def verdict(self, candidate: str | None = None) -> dict[str, Any]:
        """GET /shadow/verdict: the report cut down to the verdict per candidate (no flywheel or drift sections).
        A ``candidate`` no longer shadowed (its test stopped, or it was replaced) gets the verdict of its last
        window, from the report kept when it closed, marked ``"window": "closed"``."""
        self._ensure_persisting()
        document = verdict_document(await self._merged_report())
        if candidate is not None and candidate not in document["candidates"]:
            kept = await asyncio.to_thread(self._store.last_report_of, candidate)
            try:
                entry = verdict_document(ShadowReport.from_json(kept))["candidates"][candidate] if kept else None
            except (ValueError, KeyError, TypeError) as err:  # a kept report of an older shape: no verdict from it
                log.warning("kept report for %r unreadable: %s", candidate, err)
                entry = None
            if entry is not None and kept is not None:
                document["candidates"][candidate] = {**entry, "window": "closed", "closed_ts": kept["generated_ts"]}
        return document

    async def reset(self) -> dict[str, Any]:
        """A new window on this shard and (from the lead) on every other one."""
        with self._lock:
            self._comparator.reset()
            self._violations = ViolationTally()
            self._dirty = True
            started_ts = self._comparator.window_started_ts
        self._save()
        await self._from_peers("reset")
        return {"status": "reset", "window_started_ts": started_ts}

    # --- the lineup (shadowd.serving.lineup) ---

    async def lineup(self) -> dict[str, Any]:
        """The lineup every ingress and worker replica follows (asked every ``POLL_S``)."""
        return self._lineup.to_json()

    async def candidates(self) -> dict[str, Any]:
        """GET /shadow/candidates: the lineup, recent changes, and the reports kept from closed windows."""
        return {
            "lineup": self._lineup.summary(),
            "changes": self._store.history(),
            "kept_reports": self._store.kept_reports(),
        }

    async def change_lineup(self, body: Any, who: str) -> tuple[int, dict[str, Any]]:
        """POST /shadow/candidates (the lead): (HTTP status, body). Validated (a new model: only what the config
        trusts, and loaded once), the closing window's report kept, the lineup saved, the change audited, then
        taken here and by every shard. A refused new model is audited too."""
        self._ensure_persisting()
        try:
            change = parse_change(body)
            async with self._lineup_lock:
                before = self._lineup
                models = apply_change(before.models, change)
                lineup_config(self._cfg, models)  # fits the config, or 422
                if isinstance(change, SetCandidate):
                    try:
                        check_allowed(self._cfg, self._base_models, change.candidate)
                        await _loads(change.candidate, self._cfg.serving.torch_threads)
                    except BadRequest as err:
                        self._audit_refusal(change.action, who, change.candidate.name, err.reason)
                        raise
                try:
                    report = await self.report()
                except ShardUnavailable as err:
                    raise BadRequest(f"the lineup cannot change while a hub shard is unreachable: {err}", 503) from None
                now = time.time()
                schedule, set_at = before.schedule, before.set_at  # promote and rollback keep the candidate's
                if isinstance(change, SetCandidate):
                    schedule, set_at = change.schedule, now
                elif models.candidate is None:
                    schedule, set_at = None, 0.0  # remove, finish
                after = Lineup(
                    before.version + 1, models, since=now, schedule=schedule, set_at=set_at, epoch=before.epoch
                )
                entry = self._commit(change.action, who, before, after, report)
        except BadRequest as err:
            return err.http_status, {"error": err.reason}
        await self._from_peers("adopt_lineup", after.to_json(), return_exceptions=True)  # the rest: next tick
        log.info("lineup changed by %s: %s (version %d)", who, change.action, after.version)
        return 200, {"status": "changed", "lineup": after.summary(), "kept_report": entry["evidence"]["report"]}

    def _commit(self, action: str, who: str, before: Lineup, after: Lineup, report: dict[str, Any]) -> dict[str, Any]:
        """Keep the closing window's report, save the new lineup, audit it, then take it. Nothing changes unless
        all three are written (a failed audit puts the old lineup back): 503."""
        try:
            kept = self._store.keep_report(before, report)
            entry = _audit_entry(action, who, before, after, report, kept)
            self._store.save(after, self._base_models)
            try:
                self._store.audit(entry)
            except OSError:
                self._store.save(before, self._base_models)
                raise
        except OSError as err:
            raise BadRequest(f"the lineup cannot be saved right now ({err.strerror}); retry later", 503) from None
        self._adopt(after, saved=True)
        return entry

    def _untrusted(self, config: ShadowdConfig, lineup: Lineup) -> str | None:
        """Why a saved lineup's runtime models are no longer allowed by this config (``lineup.*``), or None."""
        base = config.models
        for model in (lineup.models.production, lineup.models.candidate):
            if model is not None and model not in (base.production, base.candidate, base.reference):
                try:
                    check_allowed(config, base, model)
                except BadRequest as err:
                    return f"{model.name}: {err.reason}"
        return None

    async def _stop_by_schedule(self) -> None:
        """The shadowed candidate's schedule says its test is over: shadowing stops as ``remove`` would. Skipped
        while a change holds the lineup (the next tick looks again); the reason and the evidence come from one
        report."""
        if self._lineup_lock.locked():
            return
        async with self._lineup_lock:
            before = self._lineup
            report = await self.report()
            reason = before.due(report["gate"]["verdict"], time.time())
            if reason is None:
                return
            after = Lineup(
                before.version + 1,
                apply_change(before.models, RemoveCandidate(action="remove")),
                since=time.time(),
                epoch=before.epoch,
            )
            try:
                self._commit("stop", f"schedule: {reason}", before, after, report)
            except BadRequest as err:
                log.error("the schedule's stop is not saved (tried again in %s s): %s", _PERSIST_EVERY_S, err.reason)
                return
        await self._from_peers("adopt_lineup", after.to_json(), return_exceptions=True)
        cand = before.models.candidate
        log.info("candidate %s: test stopped by its schedule: %s", cand.name if cand else None, reason)

    def _audit_refusal(self, action: str, who: str, name: str, reason: str) -> None:
        entry = {
            "ts": time.time(),
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "who": who,
            "action": action,
            "refused": f"{name}: {reason}"[:500],
            "before": self._lineup.summary(),
        }
        try:
            self._store.audit(entry)
        except OSError as err:
            log.error("refused lineup change by %s not audited: %s", who, err)

    async def adopt_lineup(self, data: dict[str, Any]) -> bool:
        """Another shard takes the lead's lineup; a new one starts a new window here too."""
        lineup = Lineup.from_json(data)
        if lineup == self._lineup or not lineup.supersedes(self._lineup):
            return False  # the same, or a late message from before a change this shard already took
        self._adopt(lineup)
        return True

    def _adopt(self, lineup: Lineup, saved: bool = False) -> None:
        """Take ``lineup``: a new window for its models (the comparator's state written now or by the next tick)."""
        if not saved:
            self._store.save(lineup, self._base_models)
        if (lineup.models, lineup.since) == (self._lineup.models, self._lineup.since):
            self._lineup = lineup  # the same models in effect since the same time (a new epoch): the same window
            return
        cfg = self._cfg.model_copy(update={"models": lineup.models})
        with self._lock:
            comparator = Comparator(cfg, self._metrics)
            comparator.labels_seq = self._comparator.labels_seq  # labels already counted stay out of the new window
            self._lineup, self._cfg, self._comparator = lineup, cfg, comparator
            self._violations = ViolationTally()
            self._dirty = True
        try:
            self._save()
        except OSError as err:  # the persist loop tries again
            log.error("comparator state not saved after the lineup change: %s", err)

    def __del__(self) -> None:
        # Ray Serve calls this on graceful shutdown: keep the evidence, flush the queue.
        if not hasattr(self, "_flywheel"):
            return  # the constructor failed; nothing to keep
        try:
            self._flywheel.close(timeout_s=10.0)  # first: labels joined while closing still get saved
        finally:
            self._dirty = True
            self._save()


async def _loads(model: ModelConfig, torch_threads: int) -> None:
    """Load ``model`` once (and let it go) so a change naming a model that cannot load is refused (422), not
    taken by every replica."""

    def load() -> None:
        loaded = load_model(model, torch_threads)
        if loaded.remote:
            asyncio.run(loaded.aclose())

    try:
        await asyncio.wait_for(asyncio.to_thread(load), _LOAD_CHECK_S)
    except TimeoutError:
        raise BadRequest(f"model {model.name!r} did not load within {_LOAD_CHECK_S:.0f} s", 422) from None
    except Exception as err:  # whatever loading it raised is the reason
        raise BadRequest(f"model {model.name!r} does not load: {err}"[:500], 422) from None


def _audit_entry(
    action: str,
    who: str,
    before: Lineup | None,
    after: Lineup,
    report: dict[str, Any] | None,
    kept: str | None,
) -> dict[str, Any]:
    """One audit line: who changed the lineup when, from what to what, and the verdict and evidence then."""
    evidence = None
    if report is not None:
        overall = report["overall"]
        evidence = {
            "verdict": report["gate"]["verdict"],
            "reasons": report["gate"]["reasons"][:5],
            "pairs": overall["pairs"],
            "labels": overall.get("labels"),
            "window_started_ts": report["window_started_ts"],
            "report": kept,
        }
    return {
        "ts": time.time(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "who": who,
        "action": action,
        "before": before.summary() if before is not None else None,
        "after": after.summary(),
        "evidence": evidence,
    }

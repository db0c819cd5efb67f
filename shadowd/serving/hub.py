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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shadowd.compare.comparator import Comparator, candidate_states_dir, state_path
from shadowd.compare.report import ShadowReport, Verdict, verdict_document
from shadowd.config import ShadowdConfig, shard_config
from shadowd.errors import BadRequest, ShadowdError
from shadowd.expect import Violation, ViolationTally
from shadowd.expect.drift import DriftMonitor
from shadowd.flywheel.flywheel import Flywheel, JoinResult, merge_flywheel_stats
from shadowd.models import ModelConfig
from shadowd.models.runtime import load_model
from shadowd.observe.metrics import ShadowdMetrics, forget_candidate, own_metric_files, store_remote_files
from shadowd.records import OVERALL, AnnotationItem, Label, Pair, PairBatch
from shadowd.sampling import Shard
from shadowd.serving.lineup import (
    Lineup,
    LineupStore,
    SetCandidate,
    Trial,
    apply_change,
    check_allowed,
    epoch,
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
    flywheel: Flywheel
    clock: Callable[[], float] = time.time  # the comparators' (a test's fake clock)
    drift: DriftMonitor | None = None
    verdict_annotator: VerdictAnnotator | None = None


def publish_gate(metrics: ShadowdMetrics, report: ShadowReport) -> None:
    """Set the check-status, gate-verdict, noise- and churn-floor gauges of the report's candidate."""
    cand = report.models.get("candidate") or ""
    for r in report.checks:
        metrics.check_status.labels(candidate=cand, check=r.check, slice=r.slice).set(r.status.gauge_value)
    metrics.gate_verdict.labels(candidate=cand).set(report.gate.verdict.gauge_value)
    for name, s in {OVERALL: report.overall, **report.slices}.items():
        for floor, gauge in ((s.noise, metrics.noise_floor), (s.reference, metrics.churn_floor)):
            if floor.compared:
                share = floor.flips if floor.flips is not None else floor.divergent
                gauge.labels(candidate=cand, slice=name).set(share / floor.compared)


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
        # The lineup (which model answers, which are shadowed) as last changed at runtime, unless the config's
        # models section changed since: then the config's (``shadowd.serving.lineup``).
        self._base_models = config.models
        self._store = LineupStore(config.data_dir)
        self._lineup, dropped = self._store.load(config.models)
        refused = self._untrusted(config, self._lineup) if shard.lead and not dropped else None
        if refused is not None:  # the config no longer trusts a model changed in at runtime
            self._lineup = Lineup(self._lineup.version + 1, config.models, since=time.time(), epoch=epoch())
        if dropped or refused is not None:
            log.warning(
                "following the config's models: %s; runtime changes since are dropped",
                refused
                or "its models section differs from the one the runtime lineup was changed from (or the lineup "
                "file was unreadable)",
            )
            if shard.lead:
                entry = _audit_entry("config", "the config file", None, self._lineup, {}, {})
                self._store.audit({**entry, **({"refused": refused} if refused else {})})
        if dropped or refused is not None or not self._store.path.exists():
            self._store.save(self._lineup, self._base_models)  # a first lineup too: its epoch lasts
        self._lineup_lock = asyncio.Lock()  # one change at a time
        self._cfg = lineup_config(config, self._lineup.models)
        self._metrics = parts.metrics
        self._clock = parts.clock
        self._flywheel = parts.flywheel
        self._drift = parts.drift
        self._annotator = parts.verdict_annotator  # Grafana annotations when the gate verdict changes
        self._lock = threading.Lock()  # the labels thread and the event loop both feed the comparators
        # A comparator per test (candidate), each its own window and state file; "" when nothing is shadowed.
        self._tests: dict[str, Comparator] = {}
        resumed = []
        for name in self._test_names(self._lineup):
            comparator = self._comparator_for(name)
            if self._load_state(name, comparator):
                resumed.append(comparator.labels_seq)
            else:  # a new window (no state, another candidate) takes none of the labels journalled so far
                comparator = self._comparator_for(name)
                comparator.labels_seq = self._flywheel.journal.last_seq
            self._tests[name] = comparator
        self._set_aside_other_states()
        # Labels journalled after a saved state was written are replayed into it (each test takes those past its
        # own saved seq).
        self._dirty = False
        self._violations = ViolationTally()
        self._persist_task: asyncio.Task[None] | None = None
        self._flywheel.start(on_joined=self._on_joined, replay_after=min(resumed) if resumed else None)

    @staticmethod
    def _test_names(lineup: Lineup) -> list[str]:
        return [c.name for c in lineup.models.candidates] or [""]

    def _comparator_for(self, name: str) -> Comparator:
        """A new window for the test of candidate ``name`` ("": shadowing off)."""
        models = self._lineup.models.only(name) if name else self._lineup.models
        cfg = self._cfg.model_copy(update={"models": models})
        comparator = Comparator(cfg, self._metrics, clock=self._clock)
        if name and self._lineup.started(name) > comparator.window_started_ts:
            comparator.reset(self._lineup.started(name))  # a scheduled start: its window begins then
        return comparator

    def _state_path(self, name: str) -> Path:
        return state_path(self._cfg.data_dir, name or None)

    def _load_state(self, name: str, comparator: Comparator) -> bool:
        """Resume the saved window of test ``name``; a single candidate saved before several candidates is
        found at the old path (a state for other models is never resumed: ``Comparator.load`` checks)."""
        own = self._state_path(name)
        if own.exists() and comparator.load(own):
            return self._current_window(name, comparator)
        old = state_path(self._cfg.data_dir)
        if not name or not old.exists() or not comparator.load(old) or not self._current_window(name, comparator):
            return False
        comparator.save(own)  # moved to the test's own file: never resumed twice
        old.unlink()
        return True

    def _current_window(self, name: str, comparator: Comparator) -> bool:
        """Is a resumed window the test's current one, not one from before the candidate was last set (a
        candidate removed and added again starts afresh)? A second of slack for the clocks of one host."""
        if not name or comparator.window_started_ts >= self._lineup.started(name) - 1.0:
            return True
        log.info("comparator state of %r is from before its test started: a new window", name)
        return False

    def _set_aside_other_states(self) -> None:
        """Move the state files of candidates no longer tested (dropped by a config change while the daemon was
        down) to ``comparator/closed/``: kept for a person, never resumed, never reported as current."""
        folder = candidate_states_dir(self._cfg.data_dir)
        current = {self._state_path(name) for name in self._tests}
        for path in folder.glob("*.json") if folder.is_dir() else []:
            if path not in current:
                closed = folder.parent / "closed"
                closed.mkdir(exist_ok=True)
                os.replace(path, closed / f"{int(time.time())}-{path.name}")
                log.info("comparator state %s is of a candidate no longer tested: moved to %s", path.name, closed)

    def comparator(self, name: str | None = None) -> Comparator:
        """The comparator of candidate ``name``'s test (the first candidate's when none is named)."""
        return self._tests[name if name is not None else next(iter(self._tests))]

    def _on_joined(self, result: JoinResult, label: Label) -> None:
        """A label found its pairs: into each test's quality cells if its selection there is known, else counted
        as excluded. A pair of an earlier lineup (another candidate, before a promotion) belongs to a closed
        window. Every test has seen the label afterwards (its seq), counted or not."""
        with self._lock:
            for joined in result.joined:
                pair = joined.pair
                cand = pair.candidate.model if pair.candidate is not None else ""
                comparator = self._tests.get(cand) if cand and len(self._tests) > 1 else self.comparator()
                if comparator is None or not self._of_lineup(pair.ts, pair.production.model, cand or None):
                    continue
                if result.seq is not None and result.seq <= comparator.labels_seq:
                    continue  # a replayed label this test's saved state already holds
                if joined.channel is not None:
                    comparator.add_labelled(pair, label, joined.channel)
                elif joined.excluded is not None:
                    comparator.exclude_label(pair, joined.excluded)
            if result.seq is not None:
                for comparator in self._tests.values():
                    comparator.labels_seq = max(comparator.labels_seq, result.seq)
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
            reports = await self._merged_reports()
        except ShardUnavailable as err:  # no verdict from part of the evidence: never a stale PASS
            log.error("gate verdict INCONCLUSIVE until every shard answers: %s", err)
            for name in self._tests:
                self._metrics.gate_verdict.labels(candidate=name).set(Verdict.INCONCLUSIVE.gauge_value)
            return
        verdicts = {name: r.gate.verdict.value for name, r in reports.items()}
        if self._lineup.due(verdicts, time.time()):
            await self._stop_by_schedule()
        if self._annotator is not None:
            annotator = self._annotator
            annotator.forget({name or None for name in reports})

            def annotate() -> None:
                for name, report in reports.items():
                    annotator.observe(report.gate.verdict.value, "; ".join(report.gate.reasons[:3]), name or None)

            await asyncio.to_thread(annotate)
        if self._drift is not None:
            self._drift.tick()  # close a time window even when traffic stops

    def _save(self) -> None:
        with self._lock:
            if self._dirty:
                for name, comparator in self._tests.items():
                    comparator.save(self._state_path(name))
                self._dirty = False
                # Every journalled label the states now hold is safe: the journal may forget them.
                self._flywheel.journal.compact(min(c.labels_seq for c in self._tests.values()))

    async def add_pairs(self, pairs: list[Pair]) -> int:
        """Finished pairs as objects (a caller without columns): counted as a batch per test."""
        return await self.add_batch(PairBatch.of(pairs))

    async def add_batch(self, batch: PairBatch) -> int:
        """A shadow worker's finished pairs of one test in columns: counted in one step by that test's
        comparator, then each pair stored with its selection (a Pair is built per row for the pair store, all
        stored in one transaction; items only where the comparator made one)."""
        self._ensure_persisting()
        names = sorted({n for n in batch.candidate.models if n})
        if len(names) > 1 and len(self._tests) > 1:  # several tests' rows (a caller without a worker): each apart
            tests = np.asarray([n or names[0] for n in batch.candidate.models])
            return sum([await self.add_batch(batch.take(np.flatnonzero(tests == n))) for n in names])
        batch = self._current_rows(batch)
        if not len(batch):
            return 0
        # A row without a candidate output (none ran) belongs to the batch's test; one test takes every row.
        name = names[0] if names and len(self._tests) > 1 else next(iter(self._tests))
        with self._lock:
            result = self._tests[name].add_batch(batch)
        entries: list[tuple[Pair, list[AnnotationItem]]] = []
        # Expectations and drift once per request: on the rows of the test with the largest share (every request
        # mirrored is in it: the hash makes each smaller share a subset).
        shares = self._cfg.shadow.shares(self._lineup.models)
        first = not shares or name == max(shares, key=shares.__getitem__)
        for i in range(len(batch)):
            pair = batch.pair(i, result.selection(i))
            slices = result.slices(i)
            # Inputs and production's outputs are the same in every test's rows: counted in the widest test's;
            # each candidate's own output violations in its own rows.
            found = [Violation(**v) for v in pair.violations]
            self._violations.add(found if first else [v for v in found if v.role == "candidate"], slices)
            if self._drift is not None and first:
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
        """Is a pair (its request's time, its two models) part of a current test's window? Requests from before
        a change of that test belong to a closed window; after one, the models must be the lineup's (a replica
        follows within ``POLL_S``). The config's lineup (version 0) takes every pair of its candidates (of its one
        test: every pair)."""
        lineup = self._lineup
        if lineup.version == 0 and len(lineup.models.candidates) <= 1:
            return True
        if candidate and lineup.models.candidate_named(candidate) is None:
            return False
        if lineup.version == 0:
            return True
        started = lineup.started(candidate) if candidate else lineup.since
        return ts >= started and production == lineup.models.production.name

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

    async def _merged_reports(self) -> dict[str, ShadowReport]:
        """The lead's report of each test over every shard (its own comparators' when not sharded), by candidate;
        refreshes the gate gauges and the slices under review (on every shard) from them."""
        with self._lock:
            tests = dict(self._tests)
            review = {name: sorted(c.sampler.review_slices) for name, c in tests.items()}
        states = await self._from_peers("shard_state", review) if self._peers else []
        reports = {}
        for name, comparator in tests.items():
            if not states:
                with self._lock:
                    report = comparator.report()
            else:
                merged = Comparator(comparator.config)
                with self._lock:
                    merged.load_state(comparator.state_dict())
                for state in states:
                    if name in state:  # a shard that has not taken this lineup yet has no such test
                        merged.merge(state[name])
                report = merged.report()
            with self._lock:
                if self._tests.get(name) is not comparator:
                    continue  # the lineup changed meanwhile: this test is gone (its gauges with it) or renewed
                comparator.set_review_slices(report.gate.review_slices)
                publish_gate(self._metrics, report)
            reports[name] = report
        return reports

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

    async def shard_state(self, review_slices: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
        """A shard's comparator state per test for the lead's merged reports; takes each test's slices under
        review from it."""
        self._ensure_persisting()
        with self._lock:
            for name, comparator in self._tests.items():
                comparator.set_review_slices(review_slices.get(name, []))
            return {name: comparator.state_dict() for name, comparator in self._tests.items()}

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

    async def report(self, candidate: str | None = None) -> dict[str, Any]:
        """GET /shadow/report: a test's report (candidate ``name``'s, else the first's) with the flywheel,
        expectations and drift sections (drift: the lead's shard, itself a hash-chosen share of the traffic),
        and every test's verdict when there are several. A candidate no longer shadowed: the report kept when
        its window closed, or ``BadRequest`` 404."""
        self._ensure_persisting()
        reports = await self._merged_reports()
        if candidate is not None and candidate not in reports:
            kept = await asyncio.to_thread(self._store.last_report_of, candidate)
            if kept is None:
                known = ", ".join(n for n in reports if n) or "none (shadowing is off)"
                raise BadRequest(f"no candidate {candidate!r}; this daemon shadows: {known}", 404)
            return {**kept, "window": "closed"}
        report = reports[candidate if candidate is not None else next(iter(reports))]
        stats = [self._flywheel.stats()]
        violations = ViolationTally()
        violations.merge(self._violations)
        for peer_stats, peer_violations in await self._from_peers("shard_sections"):
            stats.append(peer_stats)
            violations.merge(peer_violations)
        others = {name: r.gate.verdict.value for name, r in reports.items()} if len(reports) > 1 else None
        return report.model_copy(
            update={
                "candidates": others,
                "annotations": merge_flywheel_stats(stats),
                "expectations": violations.report(),
                "drift": self._drift.report() if self._drift is not None else None,
            }
        ).to_json()

    async def report_response(self, candidate: str | None = None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for GET /shadow/report[?candidate=NAME]."""
        try:
            return 200, await self.report(candidate)
        except BadRequest as err:
            return err.http_status, {"error": err.reason}

    async def _names(self) -> list[str]:
        with self._lock:
            return list(self._tests)

    async def verdict(self, candidate: str | None = None) -> dict[str, Any]:
        """GET /shadow/verdict: the reports cut down to the verdict per candidate (no flywheel or drift sections).
        A ``candidate`` no longer shadowed (its test stopped, or it was replaced) gets the verdict of its last
        window, from the report kept when it closed, marked ``"window": "closed"``."""
        self._ensure_persisting()
        document = verdict_document(*(await self._merged_reports()).values())
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
        """A new window for every test on this shard and (from the lead) on every other one."""
        with self._lock:
            for comparator in self._tests.values():
                comparator.reset()
            self._violations = ViolationTally()
            self._dirty = True
            started_ts = min(c.window_started_ts for c in self._tests.values())
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
        trusts, and loaded once), the closing windows' reports kept, the lineup saved, the change audited, then
        taken here and by every shard. A refused new model is audited too."""
        self._ensure_persisting()
        try:
            change = parse_change(body)
            async with self._lineup_lock:
                before = self._lineup
                models = apply_change(before.models, change, self._cfg.shadow.max_candidates)
                lineup_config(self._cfg, models)  # fits the config, or 422
                if isinstance(change, SetCandidate):
                    try:
                        check_allowed(self._cfg, self._base_models, change.candidate)
                        await _loads(change.candidate, self._cfg.serving.torch_threads)
                    except BadRequest as err:
                        self._audit_refusal(change.action, who, change.candidate.name, err.reason)
                        raise
                now = time.time()
                since = (
                    before.since
                    if (models.production, models.live) == (before.models.production, before.models.live)
                    else now
                )
                trials = {c.name: before.trial(c.name) for c in models.candidates if c.name in before.trials}
                if isinstance(change, SetCandidate):
                    trials[change.candidate.name] = Trial(now, change.schedule)
                after = Lineup(before.version + 1, models, since=since, trials=trials, epoch=before.epoch)
                try:
                    reports = await self._closing_reports(before, after)
                except ShardUnavailable as err:
                    raise BadRequest(f"the lineup cannot change while a hub shard is unreachable: {err}", 503) from None
                entry = self._commit(change.action, who, before, after, reports)
        except BadRequest as err:
            return err.http_status, {"error": err.reason}
        await self._from_peers("adopt_lineup", after.to_json(), return_exceptions=True)  # the rest: next tick
        log.info("lineup changed by %s: %s (version %d)", who, change.action, after.version)
        kept = {name: e["report"] for name, e in entry["evidence"].items()}
        return 200, {"status": "changed", "lineup": after.summary(), "kept_reports": kept}

    async def _closing_reports(self, before: Lineup, after: Lineup) -> dict[str, dict[str, Any]]:
        """The reports of the windows ``after`` closes, by candidate (the evidence a change is made on)."""
        return {name: await self.report(name) for name in before.closed_by(after)}

    def _commit(
        self, action: str, who: str, before: Lineup, after: Lineup, reports: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        """Keep the closing windows' reports, save the new lineup, audit it, then take it. Nothing changes unless
        all three are written (a failed audit puts the old lineup back): 503."""
        try:
            kept = {name: self._store.keep_report(before.version, report) for name, report in reports.items()}
            entry = _audit_entry(action, who, before, after, reports, kept)
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
        own = [base.production, *base.candidates, base.reference]
        for model in (lineup.models.production, *lineup.models.candidates):
            if model not in own:
                try:
                    check_allowed(config, base, model)
                except BadRequest as err:
                    return f"{model.name}: {err.reason}"
        return None

    async def _stop_by_schedule(self) -> None:
        """Shadowed candidates whose schedule says their test is over stop as ``remove`` would. Skipped while a
        change holds the lineup (the next tick looks again); the reasons and the evidence come from one set of
        reports."""
        if self._lineup_lock.locked():
            return
        async with self._lineup_lock:
            before = self._lineup
            reports = {name: await self.report(name) for name in await self._names() if name}
            verdicts = {name: r["gate"]["verdict"] for name, r in reports.items()}
            stops = before.due(verdicts, time.time())
            if not stops:
                return
            models = before.models.with_candidates([c for c in before.models.candidates if c.name not in stops])
            trials = {n: t for n, t in before.trials.items() if n not in stops}
            after = Lineup(before.version + 1, models, since=before.since, trials=trials, epoch=before.epoch)
            why = "; ".join(f"{name}: {reason}" for name, reason in stops.items())
            try:
                self._commit("stop", f"schedule: {why}", before, after, {n: reports[n] for n in stops})
            except BadRequest as err:
                log.error("the schedule's stop is not saved (tried again in %s s): %s", _PERSIST_EVERY_S, err.reason)
                return
        await self._from_peers("adopt_lineup", after.to_json(), return_exceptions=True)
        log.info("test stopped by its schedule: %s", why)

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
        """Another shard takes the lead's lineup; a changed test starts a new window here too."""
        lineup = Lineup.from_json(data)
        if lineup == self._lineup or not lineup.supersedes(self._lineup):
            return False  # the same, or a late message from before a change this shard already took
        self._adopt(lineup)
        return True

    def _adopt(self, lineup: Lineup, saved: bool = False) -> None:
        """Take ``lineup``: a new window for each test it changed (written now or by the next tick); the
        tests it did not change go on, and those it ended are let go (their gauges too)."""
        if not saved:
            self._store.save(lineup, self._base_models)
        before = self._lineup
        with self._lock:
            self._lineup = lineup
            self._cfg = self._cfg.model_copy(update={"models": lineup.models})
            tests = {}
            seq = max((c.labels_seq for c in self._tests.values()), default=0)
            for name in self._test_names(lineup):
                kept = self._tests.get(name)
                if kept is not None and name and before.window(name) == lineup.window(name):
                    tests[name] = kept
                else:
                    tests[name] = self._comparator_for(name)
                    tests[name].labels_seq = seq  # labels already counted stay out of the new window
            for name in self._tests.keys() - tests.keys():
                forget_candidate(self._metrics, name)
                self._state_path(name).unlink(missing_ok=True)  # its closing report is kept by the lead
            if before.models.candidates != lineup.models.candidates:
                self._violations = ViolationTally()  # counted on the widest test's rows
            self._tests = tests
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
    reports: dict[str, dict[str, Any]],
    kept: dict[str, str],
) -> dict[str, Any]:
    """One audit line: who changed the lineup when, from what to what, and the verdict and evidence then of
    each test the change closed."""
    evidence = {}
    for name, report in reports.items():
        overall = report["overall"]
        evidence[name] = {
            "verdict": report["gate"]["verdict"],
            "reasons": report["gate"]["reasons"][:5],
            "pairs": overall["pairs"],
            "labels": overall.get("labels"),
            "window_started_ts": report["window_started_ts"],
            "report": kept.get(name),
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

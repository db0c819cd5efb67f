"""The comparator: finished pairs in; aggregates, metrics, report and annotation items out.

Sits after the shadow worker (which sends every finished ``Pair``) and before
the annotation sink (which takes the ``AnnotationItem``s that ``add`` returns)
and the report (``GET /shadow/report``, ``shadowd report``). The Comparator
deployment ("hub") holds one ``Comparator``; the flywheel joins labels to
pairs and calls ``add_labelled``.

Per pair: divergence (candidate vs production, and noise vs production when
present), the slices it belongs to, then running tallies for "overall" and
every matching slice. The tallies are mergeable (``merge``) and persisted as
JSON under the data dir (``save`` / ``load``); ``reset`` starts a new window.
The statistical checks and the gate verdict are computed from the tallies
whenever a report is asked for; a check on a slice whose tally has not
changed since the last report is taken from the last one (an
``EvidenceMemo``, keyed by a version per slice that every change bumps).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from shadowd.compare.batch import BatchCounter, BatchResult
from shadowd.compare.divergence import SCORE_LIMIT, Divergence, pair_divergence, top_class
from shadowd.compare.evaluation import EvaluationSampler
from shadowd.compare.gate import EvidenceMemo, evaluate_gate
from shadowd.compare.loss import example_loss
from shadowd.compare.report import LabelSummary, LatencySummary, NoiseSummary, ShadowReport, SliceReport
from shadowd.compare.slices import SliceMatcher
from shadowd.compare.tally import FloorTally, LogHistogram, SliceTally
from shadowd.config import ShadowdConfig
from shadowd.errors import BadRequest, ShadowdError
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.records import (
    OVERALL,
    AnnotationItem,
    AnnotationReason,
    Label,
    LabelChannel,
    ModelOutput,
    Pair,
    PairBatch,
    Stratum,
)

__all__ = [
    "STATE_SCHEMA_VERSION",
    "Comparator",
    "candidate_states_dir",
    "report_from_data_dir",
    "state_path",
]

log = logging.getLogger(__name__)

STATE_SCHEMA_VERSION = 2
# Version 1 (before the reference model and the stratified label cells) reads with those empty.
_READABLE_STATE_VERSIONS = (1, 2)
_STATE_KIND = "shadowd.comparator.state"


def state_path(data_dir: Path, candidate: str | None = None) -> Path:
    """Where a comparator persists its window under the data dir: candidate ``candidate``'s test's, or (none)
    the one window of a hub before several candidates, or with shadowing off."""
    if candidate is None:
        return Path(data_dir) / "comparator" / "state.json"
    tag = hashlib.sha256(candidate.encode()).hexdigest()[:8]  # names that read alike stay apart
    return candidate_states_dir(data_dir) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', candidate)[:80]}-{tag}.json"


def candidate_states_dir(data_dir: Path) -> Path:
    """The folder of the candidates' tests' state files (one file each)."""
    return Path(data_dir) / "comparator" / "candidates"


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _quantiles(hist: LogHistogram) -> LatencySummary:
    return LatencySummary(n=hist.n, p50=hist.quantile(0.5), p99=hist.quantile(0.99))


class Comparator:
    """Running comparison of candidate (and noise) against production, overall and per slice."""

    def __init__(
        self,
        config: ShadowdConfig,
        metrics: ShadowdMetrics | None = None,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
    ):
        self._cfg = config
        self._task = config.task
        self._matcher = SliceMatcher(config.slices)
        self._metrics = metrics
        # The candidate label of this comparator's metrics ("" without a candidate).
        self.candidate_name = config.models.candidate.name if config.models.candidate is not None else ""
        self._clock = clock
        # Only the loss-difference reservoir draws from it; seeded so runs repeat.
        self._rng = random.Random(seed)
        self.sampler = EvaluationSampler(config.annotations.evaluation)
        self._batch = BatchCounter(config, self._matcher, self.sampler, candidate=self.candidate_name)
        # A version per slice, new whenever its tally changes: the memo reuses a check's evidence
        # on an unchanged slice from one report to the next.
        self._memo = EvidenceMemo()
        self._version_counter = itertools.count()
        self._versions: dict[str, int] = {}
        # The labels journal's seq up to which labels are in these tallies (flywheel/journal.py): saved with
        # the state, so a restart replays exactly the labels the saved state lacks. A reset keeps it.
        self.labels_seq = 0
        self.reset()

    # --- window ---

    def reset(self, started_ts: float | None = None) -> None:
        """Start a new test window (e.g. a new candidate): every tally back to zero; it starts now, or at
        ``started_ts`` (a scheduled start)."""
        self._window_started_ts = self._clock() if started_ts is None else started_ts
        self._tallies: dict[str, SliceTally] = {name: SliceTally() for name in [OVERALL, *self._matcher.names]}
        self._changed_all()

    def _changed(self, names: Iterable[str]) -> None:
        """These slices' tallies changed (every method that changes a tally says so)."""
        for name in names:
            self._versions[name] = next(self._version_counter)

    def _changed_all(self) -> None:
        self._memo.clear()
        self._versions = {}
        self._changed(self._tallies)

    @property
    def config(self) -> ShadowdConfig:
        return self._cfg

    @property
    def window_started_ts(self) -> float:
        return self._window_started_ts

    def tally(self, slice_name: str = OVERALL) -> SliceTally:
        """The live tally of one slice (read it, do not change it)."""
        return self._tallies[slice_name]

    # --- pairs in ---

    def _compare(self, production: ModelOutput, other: ModelOutput) -> tuple[str, Divergence | None]:
        """(outcome, divergence); outcome is the other model's, or why its values could not be compared."""
        if not other.ok:
            return other.outcome, None
        if other.values is None:
            return "bad_shape", None
        try:
            div = pair_divergence(self._task, production.values or [], other.values, self._cfg.divergence)
        except ValueError:
            finite = all(math.isfinite(v) for v in other.values)
            return ("bad_shape" if finite else "nan"), None
        if not abs(div.score) < SCORE_LIMIT:  # inf, or so large its square (in the variance) overflows
            return "nan", None  # numerically broken output: counted, never allowed to poison the tallies
        return "ok", div

    def add(self, pair: Pair) -> list[AnnotationItem]:
        """Count one pair overall and in its slices; return annotation items for a disagreement.

        Sets ``pair.selection`` (stratum, evaluation share, drawn or not): the
        caller stores the pair with it, so a later label finds its cell.
        """
        names = [OVERALL, *self._matcher.match(pair.features)]
        tallies = [self._tallies.setdefault(n, SliceTally()) for n in names]
        self._changed(names)
        prod = pair.production
        for t in tallies:
            t.pairs += 1
        if not prod.ok or not prod.values:
            # Nothing to compare against; the ingress already counted production's failure.
            for t in tallies:
                t.production_failed += 1
            return []
        for t in tallies:
            t.add_latency("production", prod.latency_s)
        for second in (pair.noise, pair.reference):
            if second is not None:
                self._add_floor(tallies, prod, second)

        cand = pair.candidate
        if cand is None:
            for t in tallies:
                t.production_only += 1
            return []
        outcome, div = self._compare(prod, cand)
        for t in tallies:
            t.candidate_outcomes[outcome] = t.candidate_outcomes.get(outcome, 0) + 1
        if div is None:
            return []
        classes = None
        if self._task == "classification":
            classes = (top_class(prod.values), top_class(cand.values or []))
        stratum: Stratum = "flip" if div.flip else "divergent" if div.divergent else "agree"
        pair.selection = self.sampler.select(pair.request_id, stratum, names)
        for t in tallies:
            t.add_latency("candidate", cand.latency_s)
            t.candidate.add(div.score, div.divergent, div.flip)
            if classes is not None:
                t.candidate.add_classes(*classes)
            t.quality.add_pair(stratum, pair.selection.evaluation_share)
        if self._metrics is not None:
            cand_name = self.candidate_name
            for n in names:
                self._metrics.pairs_compared.labels(candidate=cand_name, slice=n).inc()
                self._metrics.divergence.labels(candidate=cand_name, slice=n).observe(div.score)
                if div.divergent:
                    self._metrics.pairs_divergent.labels(candidate=cand_name, slice=n).inc()
                if div.flip:
                    self._metrics.label_flips.labels(candidate=cand_name, slice=n).inc()
        if stratum == "agree":
            return []
        if div.flip and classes is not None:
            detail = f"top class {classes[0]} -> {classes[1]}, tvd {div.tvd:.3f}"
        elif div.tvd is not None:
            detail = f"tvd {div.tvd:.3f} over {self._cfg.divergence.tvd_threshold}"
        else:
            detail = f"abs diff {div.abs_diff:.4g}, rel diff {div.rel_diff:.4g}"
        selection = pair.selection
        if selection.in_sample:
            reason: AnnotationReason = "evaluation"
            detail = f"evaluation sample (drawn with p={selection.evaluation_share:g}): {detail}"
        elif div.divergent:
            reason = "divergent"
        else:
            return []  # a flip below the divergence thresholds (flip_is_divergent off): counted, not queued
        item = AnnotationItem(
            request_id=pair.request_id,
            reason=reason,
            priority=div.score,
            slices=names[1:],
            features=pair.features,
            inputs=pair.inputs,
            production=prod,
            candidate=cand,
            detail=detail,
            created_ts=self._clock(),
            inclusion=selection.evaluation_share if selection.in_sample else None,
        )
        return [item]

    def _add_floor(self, tallies: list[SliceTally], prod: ModelOutput, second: ModelOutput) -> None:
        """Noise (production again) or reference (same recipe) against production: the floors."""
        outcome, div = self._compare(prod, second)
        for t in tallies:
            floor = t.noise if second.role == "noise" else t.reference
            floor.outcomes[outcome] = floor.outcomes.get(outcome, 0) + 1
            if div is not None:
                floor.add(div.score, div.divergent, div.flip)
                t.add_latency(second.role, second.latency_s)

    def add_batch(self, batch: PairBatch) -> BatchResult:
        """Count a whole batch (numpy over its rows): exactly what ``add`` on each of its pairs counts.

        The result holds each row's slices, selection and annotation items;
        the caller stores each pair with its selection (``batch.pair(i, result.selection(i))``).
        """
        result = self._batch.count(batch, self._tallies, self._metrics, self._clock)
        self._changed(result.touched())
        return result

    def add_many(self, pairs: Sequence[Pair]) -> list[AnnotationItem]:
        """``add`` for each pair, counted as one batch; sets each compared pair's ``selection``."""
        try:
            batch = PairBatch.of(pairs)
        except ValueError:  # an output under another role's name: the per-pair path takes it as it is
            return [item for pair in pairs for item in self.add(pair)]
        result = self.add_batch(batch)
        for i, pair in enumerate(pairs):
            selection = result.selection(i)
            if selection is not None:
                pair.selection = selection
        return result.all_items()

    def add_labelled(self, pair: Pair, label: Label, channel: LabelChannel | None) -> dict[str, float]:
        """Count a label whose pair is known; return the loss per role.

        ``channel`` says how the label was chosen (random feedback, or the
        evaluation sample): only those labels enter the quality cells, in the
        cell the pair was counted in; ``None`` means it was chosen some other
        way (see ``exclude_label``). Random feedback also feeds the plain
        accuracies shown to people. Returns ``{}`` for skipped / bad-data
        labels and when production has no output; ``{"production": x}`` alone
        when the candidate had none. Raises BadRequest when the label does
        not fit the task (e.g. class 12 of 10).
        """
        if label.verdict != "label" or label.label is None:
            return {}
        if not pair.production.ok or not pair.production.values:
            if channel is not None:
                self.exclude_label(pair, "production had no usable answer")
            return {}
        prod_values, cand = pair.production.values, pair.candidate
        try:
            losses = {"production": example_loss(self._task, prod_values, label.label)}
            if cand is not None and cand.ok and cand.values and len(cand.values) == len(prod_values):
                losses["candidate"] = example_loss(self._task, cand.values, label.label)
        except (ValueError, TypeError) as err:
            raise BadRequest(f"label for request {pair.request_id}: {err}") from None
        if channel is None:
            return losses
        # A usable label that cannot enter a cell is still accounted for: the report says why.
        if cand is None or cand.values is None or "candidate" not in losses or pair.selection is None:
            self.exclude_label(pair, "no candidate answer to compare (failed, timed out or not sampled)")
            return losses
        if not all(math.isfinite(v) for v in losses.values()):
            self.exclude_label(pair, "non-finite loss")
            return losses
        correct = None
        accuracy_diff = None
        if self._task == "classification":
            k = int(label.label)  # type: ignore[arg-type]  # example_loss checked it is a class index
            correct = (top_class(prod_values) == k, top_class(cand.values) == k)
            accuracy_diff = float(correct[0]) - float(correct[1])
        loss_diff = losses["candidate"] - losses["production"]
        sel = pair.selection
        names = self._slices_of(pair)
        self._changed(names)
        for n in names:
            t = self._tallies.setdefault(n, SliceTally())
            t.quality.add_label(sel.stratum, sel.evaluation_share, channel, accuracy_diff, loss_diff)
            if channel == "feedback":
                t.labels.add(losses["production"], losses["candidate"], correct, self._rng)
        return losses

    def exclude_label(self, pair: Pair, reason: str) -> None:
        """Count a label left out of the quality estimates, with why, in every slice of its pair."""
        names = self._slices_of(pair)
        self._changed(names)
        for n in names:
            self._tallies.setdefault(n, SliceTally()).quality.exclude(reason)

    def _slices_of(self, pair: Pair) -> list[str]:
        """Where a labelled pair counts: the slices recorded when it was compared (its features may be
        redacted by now), else matched again."""
        if pair.selection is not None and pair.selection.slices is not None:
            return [OVERALL, *(n for n in pair.selection.slices if n in self._tallies)]
        return [OVERALL, *self._matcher.match(pair.features)]

    def set_review_slices(self, names: Iterable[str]) -> None:
        """Slices the gate has under review: their disagreements are drawn with the review share."""
        self.sampler.review_slices = frozenset(names)

    # --- report ---

    def _slice_report(self, t: SliceTally, elapsed_h: float) -> SliceReport:
        cand, lab, quality = t.candidate, t.labels, t.quality
        classification = self._task == "classification"

        def floor(f: FloorTally) -> NoiseSummary:
            return NoiseSummary(
                pairs=sum(f.outcomes.values()),
                compared=f.compared,
                flips=f.flips if classification else None,
                flip_rate=_rate(f.flips, f.compared) if classification else None,
                divergent=f.divergent,
                mean_divergence=f.score.mean if f.compared else None,
            )

        acc = None
        if classification and lab.labels:
            acc = {
                "production": (lab.both_correct + lab.prod_only_correct) / lab.labels,
                "candidate": (lab.both_correct + lab.cand_only_correct) / lab.labels,
            }
        return SliceReport(
            pairs=t.pairs,
            production_only=t.production_only,
            production_failed=t.production_failed,
            compared=cand.compared,
            candidate_outcomes=dict(t.candidate_outcomes),
            flips=cand.flips if classification else None,
            flip_rate=_rate(cand.flips, cand.compared) if classification else None,
            divergent=cand.divergent,
            divergent_rate=_rate(cand.divergent, cand.compared),
            mean_divergence=cand.score.mean if cand.compared else None,
            noise=floor(t.noise),
            reference=floor(t.reference),
            latency_s={role: _quantiles(h) for role, h in sorted(t.latency_s.items())},
            labels=LabelSummary(
                used=quality.labels,
                by_channel=dict(quality.used),
                excluded=dict(quality.excluded),
                per_h=quality.labels / elapsed_h if elapsed_h > 0 else 0.0,
                strata=quality.strata(),
                feedback=lab.labels,
                accuracy=acc,
                mean_loss={role: m.mean for role, m in lab.loss.items()} if lab.labels else None,
            ),
        )

    def report(self) -> ShadowReport:
        """The whole window: counts per slice, checks, gate verdict."""
        elapsed_s = max(0.0, self._clock() - self._window_started_ts)
        checks, gate = evaluate_gate(self._cfg, self._tallies, elapsed_s, self._memo, self._versions)
        return ShadowReport(
            generated_ts=self._clock(),
            window_started_ts=self._window_started_ts,
            task=self._task,
            models={
                "production": self._cfg.models.production.name,
                "candidate": self._cfg.models.candidate.name if self._cfg.models.candidate else None,
                "live": self._cfg.models.served.name,
            },
            overall=self._slice_report(self._tallies[OVERALL], elapsed_s / 3600),
            slices={n: self._slice_report(t, elapsed_s / 3600) for n, t in self._tallies.items() if n != OVERALL},
            checks=checks,
            gate=gate,
        )

    # --- state: merge, persist ---

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild or merge this comparator's window, as plain JSON data."""
        return {
            "kind": _STATE_KIND,
            "schema_version": STATE_SCHEMA_VERSION,
            "task": self._task,
            "models": {
                "production": self._cfg.models.production.name,
                "candidate": self._cfg.models.candidate.name if self._cfg.models.candidate else None,
                "live": self._cfg.models.served.name,
            },
            "window_started_ts": self._window_started_ts,
            "labels_seq": self.labels_seq,
            "slices": {n: t.to_dict() for n, t in self._tallies.items()},
            # The config the evidence was gathered under, so `shadowd report --data-dir`
            # can run the same checks without the YAML; merge and load ignore it.
            "config": self._cfg.model_dump(mode="json", by_alias=True),
        }

    def _check_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("kind") != _STATE_KIND:
            raise ShadowdError("not a shadowd comparator state")
        if state.get("schema_version") not in _READABLE_STATE_VERSIONS:
            raise ShadowdError(
                f"comparator state schema_version {state.get('schema_version')!r}; "
                f"this shadowd reads {STATE_SCHEMA_VERSION}"
            )
        if state.get("task") != self._task:
            raise ShadowdError(
                f"comparator state is for task {state.get('task')!r}; this comparator's is {self._task!r}"
            )

    def merge(self, state: dict[str, Any]) -> None:
        """Add another comparator's window (e.g. another replica's) into this one."""
        self._check_state(state)
        for name, d in state["slices"].items():
            self._tallies.setdefault(name, SliceTally()).merge(SliceTally.from_dict(d), self._rng)
        self._window_started_ts = min(self._window_started_ts, float(state["window_started_ts"]))
        self._changed_all()

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace this comparator's window with a saved one."""
        self._check_state(state)
        tallies = {name: SliceTally() for name in [OVERALL, *self._matcher.names]}
        tallies.update({name: SliceTally.from_dict(d) for name, d in state["slices"].items()})
        self._tallies = tallies
        self._window_started_ts = float(state["window_started_ts"])
        self.labels_seq = int(state.get("labels_seq", 0))
        self._changed_all()

    def save(self, path: Path | None = None) -> Path:
        """Write the state atomically (temp file, fsync, rename): a crash leaves the old file or the new one."""
        path = Path(path) if path is not None else state_path(self._cfg.data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.state_dict(), f, separators=(",", ":"), allow_nan=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def load(self, path: Path | None = None) -> bool:
        """Resume a saved window; False (and a fresh window) when there is none to resume.

        A state for other models (another candidate or production, or from before
        a promotion) is not resumed: its evidence is about different models. An
        unreadable state is moved aside (kept for a human, never deleted) and a
        fresh window starts.
        """
        path = Path(path) if path is not None else state_path(self._cfg.data_dir)
        if not path.exists():
            return False
        try:
            state = json.loads(path.read_text())
            self._check_state(state)
        except (OSError, ValueError, ShadowdError) as err:
            aside = path.with_name(f"{path.name}.unreadable-{int(self._clock())}")
            os.replace(path, aside)
            log.warning("comparator state %s unreadable (%s); moved to %s, starting a new window", path, err, aside)
            return False
        models = self._cfg.models
        now = {
            "production": models.production.name,
            "candidate": models.candidate.name if models.candidate else None,
            "live": models.served.name,
        }
        saved = state.get("models", {})
        changed = {k: (saved[k], v) for k, v in now.items() if k in saved and saved[k] != v}
        if "candidate" not in saved and now["candidate"] is not None:
            changed["candidate"] = (None, now["candidate"])
        if changed:
            log.info("comparator state %s is for other models %s: starting a new window", path, changed)
            return False
        self.load_state(state)
        return True


def report_from_data_dir(
    data_dir: Path, config: ShadowdConfig | None = None, candidate: str | None = None
) -> ShadowReport:
    """The report of a test's window persisted under ``data_dir``, without a running daemon: candidate
    ``candidate``'s (may be left out when one test is there), a sharded hub's shards (``<data_dir>/shards/<i>``)
    merged, as the lead merges them.

    Checks run as configured in ``config``, or else as in the config saved with
    the state. Raises ShadowdError when there is no readable state.
    """
    from shadowd.config import parse_config

    data_dir = Path(data_dir)
    shards = sorted((p for p in data_dir.glob("shards/*") if p.name.isdigit()), key=lambda p: int(p.name))
    by_test: dict[str | None, list[Any]] = {}
    paths: dict[str | None, Path] = {}
    for folder in shards or [data_dir]:
        found: set[str | None] = set()
        # A test's own file first; the one-window file (shadowing off, or saved before several candidates)
        # only for a test that has none.
        for path in [*sorted(candidate_states_dir(folder).glob("*.json")), state_path(folder)]:
            if not path.exists():
                continue
            state = _read_state(path)
            name = state.get("models", {}).get("candidate") if isinstance(state, dict) else None
            if name in found:
                continue
            found.add(name)
            by_test.setdefault(name, []).append(state)
            paths.setdefault(name, path)
    if not by_test:
        raise ShadowdError(f"{state_path(data_dir)}: no comparator state to report on")
    tests: list[str | None] = [n for n in by_test if n is not None] or [None]
    if candidate is None and len(tests) > 1:
        raise ShadowdError(f"{data_dir} holds the tests of {', '.join(map(str, tests))}: name one (--candidate)")
    name = candidate if candidate is not None else tests[0]
    if name not in by_test:
        raise ShadowdError(f"{data_dir} holds no test of candidate {name!r}; it holds {', '.join(map(str, tests))}")
    states = by_test[name]
    if config is None:
        saved = states[0].get("config") if isinstance(states[0], dict) else None
        if not isinstance(saved, dict):
            raise ShadowdError(f"{paths[name]}: no config saved with the state; pass the daemon's config file")
        config = parse_config(saved, f"{paths[name]} (saved config)")
    elif name is not None:  # this config's checks on that candidate's models (from the state if set at runtime)
        models = config.models
        if models.candidate_named(name) is None:
            saved = states[0].get("config") if isinstance(states[0], dict) else None
            if not isinstance(saved, dict):
                raise ShadowdError(f"{paths[name]}: candidate {name!r} is not in the config and no config was saved")
            models = parse_config(saved, f"{paths[name]} (saved config)").models
        config = config.model_copy(update={"models": models.only(name)})
    comp = Comparator(config)
    comp.load_state(states[0])
    for state in states[1:]:
        comp.merge(state)
    return comp.report()


def _read_state(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise ShadowdError(f"{path}: no comparator state to report on ({err.strerror})") from None
    except ValueError as err:
        raise ShadowdError(f"{path}: comparator state is not valid JSON ({err})") from None

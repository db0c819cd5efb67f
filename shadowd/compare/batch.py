"""The comparator's batched path: a ``PairBatch`` in, the same tallies as pair by pair.

Sits inside the comparator (``Comparator.add_batch``; ``add_many`` goes
through it too): the shadow worker sends the hub its finished pairs in
columns, and this module counts a whole batch with numpy over the rows
instead of Python per pair:

    PairBatch -> slice membership (slices.SliceMatcher.match_batch: one bool row per slice)
              -> divergence columns (divergence.compare_columns), for the candidate and each floor
              -> stratum and evaluation draw per row (evaluation.EvaluationSampler.shares / drawn)
              -> per slice: counts by key (bincount over (slice, key)), moments merged with Chan's formula,
                 latency buckets -> the same SliceTally fields ``Comparator.add`` updates
              -> annotation items, built only for the rows that become one

Exactly the counts of the per-pair path (``Comparator.add``): every flag,
class, bucket and cell is computed with the same float operations; only the
moments differ, by float rounding (a batch's mean and squared deviations are
merged in one step instead of one value at a time). Tested in
tests/unit/test_compare_batch.py on seeded random streams.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np

from shadowd.compare.divergence import ColumnDivergence, compare_columns
from shadowd.compare.evaluation import EvaluationSampler
from shadowd.compare.slices import SliceMatcher
from shadowd.compare.tally import CandidateTally, FloorTally, LogHistogram, Moments, SliceTally
from shadowd.config import ShadowdConfig
from shadowd.observe.metrics import DIVERGENCE_BOUNDS, ShadowdMetrics, observe_counts
from shadowd.records import (
    OUTCOMES,
    OVERALL,
    AnnotationItem,
    AnnotationReason,
    OutputColumns,
    PairBatch,
    Selection,
    Stratum,
)

__all__ = ["STRATA", "BatchCounter", "BatchResult"]

# A stratum's index in this tuple is its code in ``BatchResult.stratum`` (-1: not compared).
STRATA: tuple[Stratum, ...] = get_args(Stratum)
_FLIP, _DIVERGENT, _AGREE = (STRATA.index(s) for s in ("flip", "divergent", "agree"))
_OK = OUTCOMES.index("ok")
# Variables with more codes than this (many classes, latencies spread over many buckets) are counted
# with np.unique instead of columns of their own.
_MAX_DENSE_CODES = 1024


@dataclass(frozen=True)
class BatchResult:
    """What the comparator made of each row of a batch.

    ``names`` are overall and the configured slices; ``member[j, i]``: row i
    is in ``names[j]``. ``stratum`` holds an index into ``STRATA`` for compared
    rows (-1 elsewhere), ``share`` and ``in_sample`` their evaluation draw;
    ``items`` the annotation items by row.
    """

    names: list[str]
    member: np.ndarray
    stratum: np.ndarray
    share: np.ndarray
    in_sample: np.ndarray
    items: dict[int, AnnotationItem] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.stratum)

    def slices(self, i: int) -> list[str]:
        """The configured slices row i belongs to (overall is implied), in config order."""
        return [self.names[j + 1] for j in np.flatnonzero(self.member[1:, i]).tolist()]

    def touched(self) -> list[str]:
        """Overall and the slices that have a row of this batch (their tallies changed)."""
        if not len(self):
            return []
        idx: list[int] = np.flatnonzero(self.member.sum(axis=1)).tolist()
        return [self.names[j] for j in idx]

    def selection(self, i: int) -> Selection | None:
        """Row i's stratum, evaluation draw and slices (as ``EvaluationSampler.select`` records them);
        None when it was not compared."""
        code = int(self.stratum[i])
        if code < 0:
            return None
        return Selection(
            stratum=STRATA[code],
            evaluation_share=float(self.share[i]),
            in_sample=bool(self.in_sample[i]),
            slices=self.slices(i),
        )

    def items_of(self, i: int) -> list[AnnotationItem]:
        item = self.items.get(i)
        return [] if item is None else [item]

    def all_items(self) -> list[AnnotationItem]:
        """Every item, in row order (as ``add_many`` returns them)."""
        return [self.items[i] for i in sorted(self.items)]


class _Table:
    """Per-slice counts of several per-row codes at once.

    Each ``add`` declares a variable: a code in [0, n_codes) on some rows.
    ``finish`` gives every variable its own columns and counts every
    (slice, column) of every declared row in one bincount over the rows'
    slice memberships (not a matrix product: BLAS would wake its threads).
    A variable with more codes than ``_MAX_DENSE_CODES`` (many classes,
    latencies spread over many buckets) is counted with np.unique over
    (slice, code) instead.
    """

    def __init__(self, member: np.ndarray):
        self._member = member
        self._rows: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        self._base: list[int] = []  # a dense variable's first column, -1 for a sparse one
        self._n_codes: list[int] = []
        self._sparse: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}  # variable -> rows, codes, n_codes
        self._width = 0
        self.counts = np.zeros((member.shape[0], 0), dtype=np.int64)
        self._found: dict[int, tuple[list[int], np.ndarray, np.ndarray]] = {}

    def add(self, rows: np.ndarray, codes: np.ndarray, n_codes: int) -> int:
        """Count ``codes[i]`` for the rows ``i`` (an index array); returns the variable."""
        self._n_codes.append(n_codes)
        if n_codes > _MAX_DENSE_CODES:
            self._sparse[len(self._base)] = (rows, codes[rows], n_codes)
            self._base.append(-1)
        else:
            self._rows.append(rows)
            self._cols.append(codes[rows] + self._width)
            self._base.append(self._width)
            self._width += n_codes
        return len(self._base) - 1

    def finish(self) -> None:
        n_slices = self._member.shape[0]
        if self._rows:
            rows, cols = np.concatenate(self._rows), np.concatenate(self._cols)
            # Every (slice, row) membership of every declared (row, column): one bincount.
            hits = np.flatnonzero(self._member[:, rows])  # (slice, position) as slice * len(rows) + position
            s, at = np.divmod(hits, rows.size)
            flat = np.bincount(s * self._width + cols[at], minlength=n_slices * self._width)
            self.counts = flat.reshape(n_slices, self._width)
        else:
            self.counts = np.zeros((n_slices, self._width), dtype=np.int64)
        if self._sparse:
            s_all, r_all = np.nonzero(self._member)
            n = self._member.shape[1]
            at = np.full(n, -1, dtype=np.int64)
            for v, (rows, codes, n_codes) in self._sparse.items():
                at[:] = -1
                at[rows] = np.arange(rows.size)
                keep = at[r_all] >= 0
                combined = s_all[keep] * n_codes + codes[at[r_all[keep]]]
                uniq, c = np.unique(combined, return_counts=True)
                bounds = np.searchsorted(uniq // n_codes, np.arange(n_slices + 1)).tolist()
                self._found[v] = (bounds, uniq % n_codes, c)

    def dense(self, v: int, row: list[int]) -> list[int]:
        """A dense variable's counts in one slice (``row``: that slice's row of ``counts``, as a list)."""
        base = self._base[v]
        return row[base : base + self._n_codes[v]]

    def found(self, v: int, j: int, row: list[int]) -> tuple[list[int], list[int]]:
        """(codes, counts) of a variable's non-zero codes in slice j (``row``: its counts), ascending."""
        base = self._base[v]
        if base >= 0:
            seg = row[base : base + self._n_codes[v]]
            codes = [k for k, c in enumerate(seg) if c]
            return codes, [seg[k] for k in codes]
        bounds, codes_all, counts_all = self._found[v]
        return codes_all[bounds[j] : bounds[j + 1]].tolist(), counts_all[bounds[j] : bounds[j + 1]].tolist()

    def segment(self, v: int, j: int) -> np.ndarray | None:
        """A dense variable's counts in slice j as an array; None for a sparse variable."""
        base = self._base[v]
        return self.counts[j, base : base + self._n_codes[v]] if base >= 0 else None


def _moments(member: np.ndarray, rows: np.ndarray, x: np.ndarray) -> list[Moments | None]:
    """Per slice, the moments of x over its rows among ``rows`` (an index array); None where it has none."""
    w = member[:, rows].astype(np.float64)
    v = x[rows]
    n = w.sum(axis=1)
    mean = (w @ v) / np.maximum(n, 1.0)
    dev = v[None, :] - mean[:, None]
    m2 = (w * dev * dev).sum(axis=1)
    return [
        Moments(int(k), mu, sq) if k else None for k, mu, sq in zip(n.tolist(), mean.tolist(), m2.tolist(), strict=True)
    ]


@dataclass
class _Compared:
    """One second model (candidate, noise, reference) against production in a batch, and its variables."""

    role: str
    div: ColumnDivergence
    ran: np.ndarray  # rows it ran on (production has values)
    compared: np.ndarray  # rows compared
    v_outcome: int
    v_divergence: int
    v_latency: int | None
    latency_low: int
    moments: list[Moments | None] | None = None


class BatchCounter:
    """Counts batches into a comparator's tallies; see the module docstring."""

    def __init__(self, config: ShadowdConfig, matcher: SliceMatcher, sampler: EvaluationSampler, candidate: str = ""):
        self._cfg = config
        self._candidate = candidate  # the candidate label of the metrics (the comparator's candidate_name)
        self._task = config.task
        self._matcher = matcher
        self._sampler = sampler
        self.names = [OVERALL, *matcher.names]
        self._shares = np.array(sorted({0.0, *sampler.possible_shares()}))
        self._metrics_of: ShadowdMetrics | None = None
        self._metric_children: dict[str, tuple[Any, Any, Any, Any]] = {}

    def count(
        self,
        batch: PairBatch,
        tallies: dict[str, SliceTally],
        metrics: ShadowdMetrics | None,
        clock: Callable[[], float],
    ) -> BatchResult:
        """Add every row of ``batch`` to ``tallies`` (by slice name) as ``Comparator.add`` would, row by row."""
        n = len(batch)
        names = self.names
        member = np.ones((len(names), n), dtype=bool)
        if n and len(names) > 1:
            member[1:] = self._matcher.match_batch(batch.features)
        stratum = np.full(n, -1, dtype=np.int8)
        share = np.zeros(n)
        in_sample = np.zeros(n, dtype=bool)
        result = BatchResult(names, member, stratum, share, in_sample)
        if n == 0:
            return result
        prod, cand = batch.production, batch.candidate
        table = _Table(member)

        # Production: failed (nothing to compare against; the ingress counted it), without a candidate, or not.
        prod_ok = (prod.outcomes == _OK) & (prod.widths > 0)
        state = np.where(prod_ok, np.where(cand.outcomes >= 0, 2, 1), 0)
        v_state = table.add(np.arange(n), state, 3)
        v_prod_latency, prod_low = self._latency(table, prod.latency_s, np.flatnonzero(prod_ok))
        seconds = [
            self._against(table, batch, cols, prod_ok) for cols in (batch.noise, batch.reference) if cols is not None
        ]
        c = self._against(table, batch, cand, prod_ok)
        div, compared = c.div, c.compared
        v_classes = v_cells = v_metric = -1
        classes_width = 0
        share_values = np.zeros(0)
        bounds: list[float] = []
        if compared.size:
            # Stratum and evaluation draw (the sampler's rule, on every compared row at once).
            stratum[compared] = _AGREE
            stratum[compared[div.divergent[compared]]] = _DIVERGENT
            stratum[compared[div.flip[compared]]] = _FLIP
            disagree = compared[stratum[compared] != _AGREE]
            if disagree.size:
                share[disagree] = self._sampler.shares(names, member)[disagree]
                in_sample[:] = self._sampler.drawn(batch.request_ids, share, disagree)
            if self._task == "classification":
                classes_width = int(max(div.top_production.max(), div.top_other.max())) + 1
                keys = div.top_production * classes_width + div.top_other
                v_classes = table.add(compared, keys, classes_width * classes_width)
            share_values = self._shares  # every share the config can draw with, and 0.0 (agreeing pairs)
            share_codes = np.searchsorted(share_values, share[compared])
            if not (share_values[np.minimum(share_codes, len(share_values) - 1)] == share[compared]).all():
                share_values, share_codes = np.unique(share[compared], return_inverse=True)  # never, unless a bug
            cells = np.zeros(n, dtype=np.int64)
            cells[compared] = stratum[compared].astype(np.int64) * len(share_values) + share_codes.reshape(-1)
            v_cells = table.add(compared, cells, len(STRATA) * len(share_values))
            if metrics is not None:
                bounds = DIVERGENCE_BOUNDS
                buckets = np.searchsorted(np.asarray(bounds), div.score, side="left")
                v_metric = table.add(compared, buckets, len(bounds))
        table.finish()
        for second in (*seconds, c):
            if second.compared.size:
                second.moments = _moments(member, second.compared, second.div.score)
        score_sums = (member[:, compared].astype(np.float64) @ div.score[compared]).tolist() if bounds else []

        for j, row in enumerate(table.counts.tolist()):
            failed, only, ran = table.dense(v_state, row)
            if not failed + only + ran:
                continue  # no row of this batch is in this slice
            t = tallies.get(names[j]) or tallies.setdefault(names[j], SliceTally())
            t.pairs += failed + only + ran
            t.production_failed += failed
            t.production_only += only
            self._add_latency(t, "production", table, v_prod_latency, prod_low, j, row)
            for second in (*seconds, c):
                d, outcomes = _tallies_of(t, second.role)
                for k, count in enumerate(table.dense(second.v_outcome, row)):
                    if count:
                        outcomes[OUTCOMES[k]] = outcomes.get(OUTCOMES[k], 0) + count
                neither, flip_only, divergent_only, both = table.dense(second.v_divergence, row)
                d.compared += neither + flip_only + divergent_only + both
                d.divergent += divergent_only + both
                d.flips += flip_only + both
                m = second.moments[j] if second.moments is not None else None
                if m is not None:
                    d.score.merge(m)
                self._add_latency(t, second.role, table, second.v_latency, second.latency_low, j, row)
            if v_cells >= 0:
                u = len(share_values)
                for k, count in zip(*table.found(v_cells, j, row), strict=True):
                    t.quality.cell(STRATA[k // u], float(share_values[k % u])).pairs += count
            if v_classes >= 0:
                w = classes_width
                classes = t.candidate.classes
                for k, count in zip(*table.found(v_classes, j, row), strict=True):
                    classes[(k // w, k % w)] = classes.get((k // w, k % w), 0) + count
            if v_metric >= 0 and metrics is not None:
                neither, flip_only, divergent_only, both = table.dense(c.v_divergence, row)
                if neither + flip_only + divergent_only + both:
                    compared_j, divergent_j, flips_j, hist = self._children(metrics, names[j])
                    compared_j.inc(neither + flip_only + divergent_only + both)
                    if not observe_counts(hist, table.dense(v_metric, row), score_sums[j]):
                        for x in div.score[compared[member[j, compared]]].tolist():
                            hist.observe(x)
                    if divergent_only + both:
                        divergent_j.inc(divergent_only + both)
                    if flip_only + both:
                        flips_j.inc(flip_only + both)
        self._items(batch, result, div, clock())
        return result

    # --- pieces ---

    def _children(self, metrics: ShadowdMetrics, name: str) -> tuple[Any, Any, Any, Any]:
        """A slice's compared, divergent and flip counters and divergence histogram, of this candidate (looked up
        once)."""
        if metrics is not self._metrics_of:
            self._metrics_of, self._metric_children = metrics, {}
        children = self._metric_children.get(name)
        if children is None:
            children = self._metric_children[name] = (
                metrics.pairs_compared.labels(candidate=self._candidate, slice=name),
                metrics.pairs_divergent.labels(candidate=self._candidate, slice=name),
                metrics.label_flips.labels(candidate=self._candidate, slice=name),
                metrics.divergence.labels(candidate=self._candidate, slice=name),
            )
        return children

    def _against(self, table: _Table, batch: PairBatch, other: OutputColumns, prod_ok: np.ndarray) -> _Compared:
        """Another model against production on the rows where it ran; declares its variables."""
        ran = np.flatnonzero(prod_ok & (other.outcomes >= 0))
        outcomes = np.full(len(batch), -1, dtype=np.int8)
        outcomes[ran] = other.outcomes[ran]
        prod = batch.production
        div = compare_columns(
            self._task, prod.values, prod.widths, outcomes, other.values, other.widths, self._cfg.divergence
        )
        compared = np.flatnonzero(div.compared)
        v_outcome = table.add(ran, div.outcome.astype(np.int64), len(OUTCOMES))
        v_divergence = table.add(compared, div.divergent.astype(np.int64) * 2 + div.flip.astype(np.int64), 4)
        v_latency, low = self._latency(table, other.latency_s, compared)
        return _Compared(other.role, div, ran, compared, v_outcome, v_divergence, v_latency, low)

    @staticmethod
    def _latency(table: _Table, latency_s: np.ndarray, rows: np.ndarray) -> tuple[int | None, int]:
        """Declare each row's latency bucket (code 0: at or below MIN_VALUE); (variable, lowest bucket)."""
        if not rows.size:
            return None, 0
        x = latency_s[rows]
        codes = np.zeros(len(latency_s), dtype=np.int64)
        first = float(x[0])
        if first > LogHistogram.MIN_VALUE and (x == first).all():  # one latency for all (a worker's batch)
            codes[rows] = 1
            return table.add(rows, codes, 2), math.ceil(math.log(first) / LogHistogram.LOG_GAMMA)
        placed = x > LogHistogram.MIN_VALUE  # NaN is not: placed at zero, as LogHistogram.add
        low = span = 0
        if placed.any():
            buckets = LogHistogram.bucket_indices(x[placed])
            low = int(buckets.min())
            span = int(buckets.max()) - low + 1
            codes[rows[placed]] = buckets - low + 1
        return table.add(rows, codes, span + 1), low

    @staticmethod
    def _add_latency(t: SliceTally, role: str, table: _Table, v: int | None, low: int, j: int, row: list[int]) -> None:
        """Slice j's latency buckets of one role into its histogram (``row``: slice j's counts)."""
        if v is None:
            return
        # Code 0: at or below MIN_VALUE; code k: bucket low + k - 1.
        dense = table.segment(v, j)
        if dense is not None:
            counts = table.dense(v, row)
            placed = sum(counts) - counts[0]
            if counts[0] or placed:
                hist = t.latency_s.get(role) or t.latency_s.setdefault(role, LogHistogram())
                hist.add_dense(counts[0], low, dense[1:], placed)
            return
        codes, found = table.found(v, j, row)
        if codes:
            zero = found[0] if codes[0] == 0 else 0
            start = 1 if zero else 0
            hist = t.latency_s.get(role) or t.latency_s.setdefault(role, LogHistogram())
            hist.add_counts(zero, np.asarray(codes[start:]) + (low - 1), np.asarray(found[start:]))

    def _items(self, batch: PairBatch, result: BatchResult, div: ColumnDivergence, now: float) -> None:
        """An annotation item for each disagreement drawn into the evaluation sample or divergent."""
        disagree = (result.stratum >= 0) & (result.stratum != _AGREE)
        rows = np.flatnonzero(disagree & (result.in_sample | div.divergent))
        if not rows.size:
            return
        classification = self._task == "classification"
        slices = [[self.names[j + 1] for j in np.flatnonzero(m).tolist()] for m in result.member[1:, rows].T]
        columns = zip(
            rows.tolist(),
            div.score[rows].tolist(),
            div.flip[rows].tolist(),
            div.top_production[rows].tolist(),
            div.top_other[rows].tolist(),
            div.abs_diff[rows].tolist(),
            result.share[rows].tolist(),
            result.in_sample[rows].tolist(),
            slices,
            strict=True,
        )
        for i, score, flip, top_p, top_c, abs_diff, share, drawn, names in columns:
            if classification and flip:
                detail = f"top class {top_p} -> {top_c}, tvd {score:.3f}"
            elif classification:
                detail = f"tvd {score:.3f} over {self._cfg.divergence.tvd_threshold}"
            else:
                detail = f"abs diff {abs_diff:.4g}, rel diff {score:.4g}"
            reason: AnnotationReason = "divergent"
            if drawn:
                reason = "evaluation"
                detail = f"evaluation sample (drawn with p={share:g}): {detail}"
            result.items[i] = AnnotationItem(
                request_id=batch.request_ids[i],
                reason=reason,
                priority=score,
                slices=names,
                features=batch.features[i],
                inputs=batch.input(i),
                production=batch.production.output(i),
                candidate=batch.candidate.output(i),
                detail=detail,
                created_ts=now,
                inclusion=share if drawn else None,
            )


def _tallies_of(t: SliceTally, role: str) -> tuple[CandidateTally | FloorTally, dict[str, int]]:
    """The divergence tally and the outcome counts a role's comparisons go to."""
    if role == "candidate":
        return t.candidate, t.candidate_outcomes
    floor = t.noise if role == "noise" else t.reference
    return floor, floor.outcomes

"""Mergeable running aggregates: the comparator's whole memory.

Sits between per-pair divergence and the statistical checks. Everything the
checks and the report need is kept here as counts, moments and fixed-bucket
histograms, so that

- two comparator replicas' tallies merge into exactly what one comparator fed
  both streams would hold (counts exactly; moments up to float rounding);
- the state is plain JSON (``to_dict`` / ``from_dict``) and survives restarts.

Raw (candidate vs production), noise (production vs itself) and churn
(reference vs production) divergence are kept in distinct types,
``CandidateTally``, ``NoiseTally`` and ``ReferenceTally``, so one can never be
merged into or read as another.

``QualityTally`` holds what the label-based checks estimate from: every
compared pair counted in its cell (stratum x evaluation share, known without
labels) and, per cell, the paired differences of the labels whose selection
is known to be random within that cell (random feedback, the evaluation
sample). Labels chosen any other way are only counted as excluded.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

from shadowd.records import OUTCOMES

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "OUTCOMES",
    "CandidateTally",
    "FloorTally",
    "LabelTally",
    "LogHistogram",
    "Moments",
    "NoiseTally",
    "QualityCell",
    "QualityTally",
    "ReferenceTally",
    "SliceTally",
    "cell_key",
]


@dataclass
class Moments:
    """Count, mean and sum of squared deviations (Welford), merged with Chan's formula."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def merge(self, other: Moments) -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean, other.m2
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * other.n / n
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.n = n

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator); 0 below two samples."""
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Moments:
        return cls(int(d["n"]), float(d["mean"]), float(d["m2"]))


class LogHistogram:
    """Fixed logarithmic buckets (as DDSketch): any quantile within 1 % relative error.

    Bucket ``i`` holds values in (gamma**(i-1), gamma**i]; the buckets are the
    same in every replica, so merging is adding counts and is exact. Values at
    or below ``MIN_VALUE`` (zero latencies) share one bucket. The counts live in
    one array from the lowest to the highest bucket seen, so a batch of values
    (``add_dense``), a merge and the quantiles are array operations.
    """

    RELATIVE_ACCURACY: ClassVar[float] = 0.01
    GAMMA: ClassVar[float] = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
    MIN_VALUE: ClassVar[float] = 1e-9
    LOG_GAMMA: ClassVar[float] = math.log(GAMMA)
    _SLACK: ClassVar[int] = 16  # buckets added on each side when the array grows

    def __init__(self) -> None:
        self.zero = 0
        self.n = 0
        self._low = 0  # the bucket index of _dense[0]
        self._dense: np.ndarray | None = None  # int64 counts of buckets _low, _low + 1, ...

    @property
    def counts(self) -> dict[int, int]:
        """Non-empty buckets and their counts, ascending (a copy)."""
        if self._dense is None:
            return {}
        import numpy as np

        idx = np.flatnonzero(self._dense)
        return dict(zip((idx + self._low).tolist(), self._dense[idx].tolist(), strict=True))

    @counts.setter
    def counts(self, counts: dict[int, int]) -> None:
        self._dense = None
        if counts:
            import numpy as np

            keys = np.fromiter(counts.keys(), np.int64, len(counts))
            values = np.fromiter(counts.values(), np.int64, len(counts))
            self._cover(int(keys.min()), int(keys.max()))[keys - self._low] += values

    def _cover(self, low: int, high: int) -> np.ndarray:
        """The count array, grown (with some slack) to hold buckets ``low`` to ``high``."""
        d = self._dense
        if d is not None and low >= self._low and high < self._low + len(d):
            return d
        import numpy as np

        if d is None:
            lo, hi = low, high
        else:
            lo = min(low - self._SLACK, self._low) if low < self._low else self._low
            top = self._low + len(d) - 1
            hi = max(high + self._SLACK, top) if high > top else top
        grown = np.zeros(hi - lo + 1, dtype=np.int64)
        if d is not None:
            grown[self._low - lo : self._low - lo + len(d)] = d
        self._low, self._dense = lo, grown
        return grown

    def add(self, x: float) -> None:
        self.n += 1
        if not x > self.MIN_VALUE:  # also catches NaN: counted, placed at zero
            self.zero += 1
            return
        i = math.ceil(math.log(x) / self.LOG_GAMMA)
        self._cover(i, i)[i - self._low] += 1

    @classmethod
    def bucket_indices(cls, x: np.ndarray) -> np.ndarray:
        """The bucket ``add`` puts each value in, for values above ``MIN_VALUE`` (int64 array).

        numpy's log may differ from ``math.log`` in the last bit; values that close to a bucket
        edge are placed with ``math.log``, so every value lands exactly where ``add`` puts it.
        """
        import numpy as np

        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.log(x) / cls.LOG_GAMMA
            idx: np.ndarray = np.ceil(v).astype(np.int64)
            near = ~(np.abs(v - np.rint(v)) >= 1e-6)
        for i in np.flatnonzero(near).tolist():  # near an edge, or inf (which raises, as in ``add``)
            idx[i] = math.ceil(math.log(float(x[i])) / cls.LOG_GAMMA)
        return idx

    def add_counts(self, zero: int, buckets: np.ndarray, counts: np.ndarray) -> None:
        """Add values already placed: ``zero`` at or below MIN_VALUE, ``counts[k]`` in ``buckets[k]`` (distinct)."""
        self.zero += zero
        self.n += zero
        if buckets.size:
            d = self._cover(int(buckets.min()), int(buckets.max()))
            d[buckets - self._low] += counts
            self.n += int(counts.sum())

    def add_dense(self, zero: int, low: int, counts: np.ndarray, total: int | None = None) -> None:
        """Add values already placed: ``zero`` at or below MIN_VALUE, ``counts[k]`` in bucket ``low + k``
        (``total``: their sum, when the caller knows it)."""
        self.zero += zero
        self.n += zero + self._add_array(low, counts, total)

    def _add_array(self, low: int, counts: np.ndarray, total: int | None = None) -> int:
        """Add ``counts[k]`` to bucket ``low + k``; returns how many values that is."""
        if total is None:
            total = int(counts.sum()) if len(counts) else 0
        if total:
            d = self._cover(low, low + len(counts) - 1)
            d[low - self._low : low - self._low + len(counts)] += counts
        return total

    def merge(self, other: LogHistogram) -> None:
        self.n += other.n
        self.zero += other.zero
        if other._dense is not None:
            self._add_array(other._low, other._dense)

    @classmethod
    def bucket_value(cls, i: int) -> float:
        """The value reported for bucket i: within RELATIVE_ACCURACY of anything in it."""
        return 2 * cls.GAMMA**i / (cls.GAMMA + 1)

    def cumulative(self) -> tuple[list[float], list[int]]:
        """(representative value, count of values <= its bucket's upper edge) per non-empty bucket, ascending."""
        values: list[float] = []
        cum: list[int] = []
        if self.zero:
            values.append(0.0)
            cum.append(self.zero)
        if self._dense is not None:
            import numpy as np

            idx = np.flatnonzero(self._dense)
            values.extend(self.bucket_value(i) for i in (idx + self._low).tolist())
            cum.extend((np.cumsum(self._dense[idx]) + self.zero).tolist())
        return values, cum

    def quantile(self, q: float) -> float | None:
        """The q-quantile (lower empirical quantile, rank ceil(q * n)); None when empty."""
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q * self.n))
        values, cum = self.cumulative()
        k = bisect.bisect_left(cum, rank)
        return values[k] if k < len(values) else None  # None unreachable: the last cumulative count is n

    def to_dict(self) -> dict[str, Any]:
        return {"zero": self.zero, "n": self.n, "counts": {str(i): c for i, c in sorted(self.counts.items())}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogHistogram:
        h = cls()
        h.zero, h.n = int(d["zero"]), int(d["n"])
        h.counts = {int(i): int(c) for i, c in d["counts"].items() if int(c)}
        return h


@dataclass
class _DivergenceTally:
    """Pairs compared against production and how far apart they were."""

    compared: int = 0
    divergent: int = 0
    flips: int = 0
    score: Moments = field(default_factory=Moments)

    def add(self, score: float, divergent: bool, flip: bool | None) -> None:
        self.compared += 1
        self.divergent += int(divergent)
        self.flips += int(bool(flip))
        self.score.add(score)

    def merge(self, other: _DivergenceTally) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        self.compared += other.compared
        self.divergent += other.divergent
        self.flips += other.flips
        self.score.merge(other.score)

    def to_dict(self) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "divergent": self.divergent,
            "flips": self.flips,
            "score": self.score.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        return cls(int(d["compared"]), int(d["divergent"]), int(d["flips"]), Moments.from_dict(d["score"]))


@dataclass
class CandidateTally(_DivergenceTally):
    """Candidate vs production (the raw divergence), plus the paired predicted classes.

    ``classes[(p, c)]`` counts pairs where production's top class is p and the
    candidate's is c (classification only): the paired table behind the
    output-distribution checks.
    """

    classes: dict[tuple[int, int], int] = field(default_factory=dict)

    def add_classes(self, production_class: int, candidate_class: int) -> None:
        key = (production_class, candidate_class)
        self.classes[key] = self.classes.get(key, 0) + 1

    def merge(self, other: _DivergenceTally) -> None:
        super().merge(other)
        for key, c in other.classes.items():  # type: ignore[attr-defined]
            self.classes[key] = self.classes.get(key, 0) + c

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["classes"] = {f"{p}:{c}": n for (p, c), n in sorted(self.classes.items())}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CandidateTally:
        t = super().from_dict(d)
        for key, n in d.get("classes", {}).items():
            p, c = key.split(":")
            t.classes[(int(p), int(c))] = int(n)
        return t


@dataclass
class FloorTally(_DivergenceTally):
    """A second opinion against production, and how often it gave no comparable answer."""

    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))

    def merge(self, other: _DivergenceTally) -> None:
        super().merge(other)
        for k, c in other.outcomes.items():  # type: ignore[attr-defined]
            self.outcomes[k] = self.outcomes.get(k, 0) + c

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "outcomes": dict(self.outcomes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        t = super().from_dict(d)
        t.outcomes = {**dict.fromkeys(OUTCOMES, 0), **{k: int(v) for k, v in d.get("outcomes", {}).items()}}
        return t


@dataclass
class NoiseTally(FloorTally):
    """Noise (production run again) vs production: how much production disagrees with itself."""


@dataclass
class ReferenceTally(FloorTally):
    """Reference (same recipe, another seed or version) vs production: how much equally good models churn."""


# A cell of the stratified quality estimate: (stratum, evaluation share).
CellKey = tuple[str, float]


def cell_key(stratum: str, share: float) -> CellKey:
    return stratum, round(float(share), 6)


@dataclass
class QualityCell:
    """Compared pairs of one stratum and evaluation share, and their labelled paired differences."""

    pairs: int = 0
    accuracy: Moments = field(default_factory=Moments)  # 1[production right] - 1[candidate right]
    loss: Moments = field(default_factory=Moments)  # candidate loss - production loss

    def merge(self, other: QualityCell) -> None:
        self.pairs += other.pairs
        self.accuracy.merge(other.accuracy)
        self.loss.merge(other.loss)

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "accuracy": self.accuracy.to_dict(), "loss": self.loss.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QualityCell:
        return cls(int(d["pairs"]), Moments.from_dict(d["accuracy"]), Moments.from_dict(d["loss"]))


@dataclass
class QualityTally:
    """The stratified label evidence of one slice; see the module docstring."""

    cells: dict[CellKey, QualityCell] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)  # labels in the estimates, by channel
    excluded: dict[str, int] = field(default_factory=dict)  # labels left out, by why

    def cell(self, stratum: str, share: float) -> QualityCell:
        return self.cells.setdefault(cell_key(stratum, share), QualityCell())

    def add_pair(self, stratum: str, share: float) -> None:
        self.cell(stratum, share).pairs += 1

    def add_label(self, stratum: str, share: float, channel: str, accuracy: float | None, loss: float) -> None:
        cell = self.cell(stratum, share)
        if accuracy is not None:
            cell.accuracy.add(accuracy)
        cell.loss.add(loss)
        self.used[channel] = self.used.get(channel, 0) + 1

    def exclude(self, reason: str) -> None:
        self.excluded[reason] = self.excluded.get(reason, 0) + 1

    @property
    def pairs(self) -> int:
        return sum(c.pairs for c in self.cells.values())

    @property
    def labels(self) -> int:
        return sum(self.used.values())

    def strata(self) -> dict[str, int]:
        """Compared pairs by stratum."""
        out: dict[str, int] = {}
        for (stratum, _), cell in self.cells.items():
            out[stratum] = out.get(stratum, 0) + cell.pairs
        return out

    def merge(self, other: QualityTally) -> None:
        for key, cell in other.cells.items():
            self.cells.setdefault(key, QualityCell()).merge(cell)
        for mine, theirs in ((self.used, other.used), (self.excluded, other.excluded)):
            for k, n in theirs.items():
                mine[k] = mine.get(k, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {
            "cells": {f"{s}@{e:g}": c.to_dict() for (s, e), c in sorted(self.cells.items())},
            "used": dict(self.used),
            "excluded": dict(self.excluded),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QualityTally:
        cells = {}
        for key, c in d.get("cells", {}).items():
            stratum, _, share = key.partition("@")
            cells[cell_key(stratum, float(share))] = QualityCell.from_dict(c)
        return cls(
            cells,
            {k: int(v) for k, v in d.get("used", {}).items()},
            {k: int(v) for k, v in d.get("excluded", {}).items()},
        )


@dataclass
class LabelTally:
    """Labelled pairs: paired correctness (classification) and paired loss differences.

    ``prod_only_correct`` / ``cand_only_correct`` are McNemar's discordant
    cells (b and c). ``loss_diff`` is candidate loss minus production loss;
    ``diff_sample`` is a uniform reservoir of those differences (at most
    ``SAMPLE_CAP``) for rank tests and bootstrap intervals.
    """

    SAMPLE_CAP: ClassVar[int] = 5000

    labels: int = 0
    both_correct: int = 0
    prod_only_correct: int = 0
    cand_only_correct: int = 0
    neither_correct: int = 0
    loss: dict[str, Moments] = field(default_factory=lambda: {"production": Moments(), "candidate": Moments()})
    loss_diff: Moments = field(default_factory=Moments)
    diff_sample: list[float] = field(default_factory=list)

    def add(
        self, loss_production: float, loss_candidate: float, correct: tuple[bool, bool] | None, rng: random.Random
    ) -> None:
        self.labels += 1
        if correct is not None:
            p, c = correct
            if p and c:
                self.both_correct += 1
            elif p:
                self.prod_only_correct += 1
            elif c:
                self.cand_only_correct += 1
            else:
                self.neither_correct += 1
        self.loss["production"].add(loss_production)
        self.loss["candidate"].add(loss_candidate)
        diff = loss_candidate - loss_production
        self.loss_diff.add(diff)
        # Reservoir sampling (Algorithm R): every difference seen so far is kept with equal probability.
        if len(self.diff_sample) < self.SAMPLE_CAP:
            self.diff_sample.append(diff)
        else:
            j = rng.randrange(self.loss_diff.n)
            if j < self.SAMPLE_CAP:
                self.diff_sample[j] = diff

    def merge(self, other: LabelTally, rng: random.Random) -> None:
        n_self, n_other = self.loss_diff.n, other.loss_diff.n
        for name in ("labels", "both_correct", "prod_only_correct", "cand_only_correct", "neither_correct"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for role, m in other.loss.items():
            self.loss.setdefault(role, Moments()).merge(m)
        self.loss_diff.merge(other.loss_diff)
        combined = self.diff_sample + other.diff_sample
        if len(combined) > self.SAMPLE_CAP:
            # Keep each side in proportion to how many differences it stands for.
            k_self = round(self.SAMPLE_CAP * n_self / max(n_self + n_other, 1))
            k_self = min(k_self, len(self.diff_sample))
            k_other = min(self.SAMPLE_CAP - k_self, len(other.diff_sample))
            combined = rng.sample(self.diff_sample, k_self) + rng.sample(other.diff_sample, k_other)
        self.diff_sample = combined

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "both_correct": self.both_correct,
            "prod_only_correct": self.prod_only_correct,
            "cand_only_correct": self.cand_only_correct,
            "neither_correct": self.neither_correct,
            "loss": {role: m.to_dict() for role, m in self.loss.items()},
            "loss_diff": self.loss_diff.to_dict(),
            "diff_sample": list(self.diff_sample),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelTally:
        return cls(
            labels=int(d["labels"]),
            both_correct=int(d["both_correct"]),
            prod_only_correct=int(d["prod_only_correct"]),
            cand_only_correct=int(d["cand_only_correct"]),
            neither_correct=int(d["neither_correct"]),
            loss={role: Moments.from_dict(m) for role, m in d["loss"].items()},
            loss_diff=Moments.from_dict(d["loss_diff"]),
            diff_sample=[float(x) for x in d["diff_sample"]],
        )


@dataclass
class SliceTally:
    """Everything known about one slice ("overall" included) in the current window."""

    pairs: int = 0
    production_only: int = 0
    production_failed: int = 0
    candidate_outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    candidate: CandidateTally = field(default_factory=CandidateTally)
    noise: NoiseTally = field(default_factory=NoiseTally)
    reference: ReferenceTally = field(default_factory=ReferenceTally)
    latency_s: dict[str, LogHistogram] = field(default_factory=dict)
    labels: LabelTally = field(default_factory=LabelTally)  # random feedback only: plain accuracies for people
    quality: QualityTally = field(default_factory=QualityTally)

    def add_latency(self, role: str, latency_s: float) -> None:
        self.latency_s.setdefault(role, LogHistogram()).add(latency_s)

    def merge(self, other: SliceTally, rng: random.Random) -> None:
        self.pairs += other.pairs
        self.production_only += other.production_only
        self.production_failed += other.production_failed
        for k, c in other.candidate_outcomes.items():
            self.candidate_outcomes[k] = self.candidate_outcomes.get(k, 0) + c
        self.candidate.merge(other.candidate)
        self.noise.merge(other.noise)
        self.reference.merge(other.reference)
        for role, h in other.latency_s.items():
            self.latency_s.setdefault(role, LogHistogram()).merge(h)
        self.labels.merge(other.labels, rng)
        self.quality.merge(other.quality)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "production_only": self.production_only,
            "production_failed": self.production_failed,
            "candidate_outcomes": dict(self.candidate_outcomes),
            "candidate": self.candidate.to_dict(),
            "noise": self.noise.to_dict(),
            "reference": self.reference.to_dict(),
            "latency_s": {role: h.to_dict() for role, h in sorted(self.latency_s.items())},
            "labels": self.labels.to_dict(),
            "quality": self.quality.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SliceTally:
        return cls(
            pairs=int(d["pairs"]),
            production_only=int(d["production_only"]),
            production_failed=int(d["production_failed"]),
            candidate_outcomes={
                **dict.fromkeys(OUTCOMES, 0),
                **{k: int(v) for k, v in d["candidate_outcomes"].items()},
            },
            candidate=CandidateTally.from_dict(d["candidate"]),
            noise=NoiseTally.from_dict(d["noise"]),
            reference=ReferenceTally.from_dict(d["reference"]) if "reference" in d else ReferenceTally(),
            latency_s={role: LogHistogram.from_dict(h) for role, h in d["latency_s"].items()},
            labels=LabelTally.from_dict(d["labels"]),
            quality=QualityTally.from_dict(d.get("quality", {})),
        )

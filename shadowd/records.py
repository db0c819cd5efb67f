"""Records that cross process boundaries: the ingress, the shadow worker, the
comparator, the annotation queue (Kafka) and the on-disk stores.

Each carries ``schema_version`` so a reader can refuse what it does not know.
``values`` are plain lists: class probabilities (classification) or output
values (regression), one entry per output unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "OUTCOMES",
    "OVERALL",
    "SCHEMA_VERSION",
    "AnnotationItem",
    "Label",
    "LabelChannel",
    "Lane",
    "Mirrored",
    "MirroredBatch",
    "ModelOutput",
    "Outcome",
    "OutputColumns",
    "Pair",
    "PairBatch",
    "Role",
    "Selection",
    "Stratum",
]

SCHEMA_VERSION = 2

# The slice name of all traffic: every report, tally, quota and metric uses this one.
OVERALL = "overall"

Role = Literal["production", "candidate", "noise", "reference"]
# ok, or why a model's output cannot be compared.
Outcome = Literal["ok", "error", "timeout", "nan", "bad_shape"]
# The outcomes in a fixed order: their index is an outcome's code in columnar batches.
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
# How the candidate's answer relates to production's: top class changed (classification), divergent
# past the configured thresholds without a flip, or in agreement. Quality estimates are stratified by it.
Stratum = Literal["flip", "divergent", "agree"]
# The annotation queue's two lanes: the evaluation sample (a known-probability random sample of
# disagreements, served first; its labels decide the gate) and the review lane (priority-ordered:
# divergent, high-loss and expectation items for the flywheel and suites).
Lane = Literal["evaluation", "review"]
# How a label came to be: random feedback, or an annotator's label of an evaluation-sample item. Only
# these enter the quality estimates; a label chosen any other way is counted as excluded, with why.
LabelChannel = Literal["feedback", "evaluation"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = Field(SCHEMA_VERSION, description="Record schema version.")


class ModelOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    model: str = Field(description="Model name from the config.")
    outcome: Outcome = "ok"
    values: list[float] | None = Field(None, description="Probabilities or values; None unless outcome is ok.")
    latency_s: float = Field(0.0, ge=0, description="Model call latency; per example for batched calls.")
    detail: str | None = Field(None, description="One line on what went wrong, when outcome is not ok.")

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class Selection(BaseModel):
    """How the comparator classed a pair, and whether it drew it into the evaluation sample.

    Set by the comparator; kept with the pair so that a label arriving later
    lands in the right cell of the stratified quality estimate.
    """

    model_config = ConfigDict(extra="forbid")
    stratum: Stratum
    evaluation_share: float = Field(
        ge=0, le=1, description="Probability that a pair of this stratum and slices enters the evaluation sample."
    )
    in_sample: bool = Field(description="This pair was drawn (hash of its request id below the share).")
    slices: list[str] | None = Field(
        None,
        description="The configured slices the pair fell in, so its label is counted there even where the pair "
        "store keeps its features redacted (None: recorded before shadowd kept them; matched again).",
    )


class Pair(_Record):
    """One mirrored request: production's answer next to the candidate's (and noise's, reference's)."""

    request_id: str
    ts: float = Field(description="Unix time the request arrived, seconds.")
    features: dict[str, Any] = Field(default_factory=dict, description="Request features used for slicing.")
    inputs: Any = Field(None, description="The request inputs, when shadow.store_inputs is on.")
    production: ModelOutput
    candidate: ModelOutput | None = None
    noise: ModelOutput | None = Field(None, description="Production run a second time, for the noise floor.")
    reference: ModelOutput | None = Field(
        None, description="The reference model (same recipe, another seed or version), for the churn floor."
    )
    selection: Selection | None = Field(None, description="Set by the comparator: stratum and evaluation sample.")
    violations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Failed data expectations on this request and its outputs "
        "(expectation, field, rule, message, role, count).",
    )


AnnotationReason = Literal["evaluation", "divergent", "high_loss", "expectation_violation", "uncertain"]


class AnnotationItem(_Record):
    """An input worth a human label; Kafka key and dedup key = request_id."""

    request_id: str
    reason: AnnotationReason
    priority: float = Field(description="Higher is more urgent (divergence, loss or violation size).")
    slices: list[str] = Field(default_factory=list)
    features: dict[str, Any] = Field(default_factory=dict)
    inputs: Any = None
    production: ModelOutput | None = None
    candidate: ModelOutput | None = None
    detail: str | None = Field(None, description="Why it was queued, in one line.")
    created_ts: float
    assignee: str | None = Field(None, description="On-call annotator at the time it was queued.")
    inclusion: float | None = Field(
        None, ge=0, le=1, description="Evaluation items: the probability with which the queue drew this item."
    )

    @property
    def lane(self) -> Lane:
        """Evaluation items go to their own lane, served to annotators first."""
        return "evaluation" if self.reason == "evaluation" else "review"


class Label(_Record):
    """Ground truth for a request, from product systems (feedback) or annotators."""

    request_id: str
    label: float | int | list[float] | None = Field(
        description="Class index or target value; None for skip / bad data."
    )
    source: Literal["feedback", "annotator"] = "feedback"
    verdict: Literal["label", "skip", "bad_data"] = "label"
    annotator: str | None = None
    ts: float
    lane: Lane | None = Field(
        None,
        description="Annotator labels: the queue lane the item came from (evaluation: the random sample). "
        "A record of how the item was chosen; the daemon decides what a label may be used for from the "
        "pair's own stored selection, never from this field.",
    )
    inclusion: float | None = Field(
        None, ge=0, le=1, description="Annotator labels of evaluation items: the probability the item was drawn with."
    )


# --- the shadow path's own records: ingress -> shadow worker (one Ray call per batch) ---


@dataclass(frozen=True)
class Mirrored:
    """What the ingress buffers per sampled request: production's side of a pair."""

    request_id: str
    ts: float
    features: dict[str, Any]
    x: np.ndarray
    production_values: list[float] | None
    production_outcome: Outcome
    production_latency_s: float
    violations: list[dict[str, Any]]
    served_model: str = ""  # the model that answered (production, or a promoted candidate)


@dataclass(frozen=True)
class MirroredBatch:
    """Mirrored requests in columns: one stacked inputs array pickles far cheaper than n objects."""

    request_ids: list[str]
    ts: list[float]
    features: list[dict[str, Any]]
    x: np.ndarray
    production_values: list[list[float] | None]
    production_outcomes: list[Outcome]
    production_latency_s: list[float]
    violations: list[list[dict[str, Any]]]
    served_models: list[str]

    @classmethod
    def of(cls, items: list[Mirrored]) -> MirroredBatch:
        import numpy as np  # records load without numpy (the config tree imports OVERALL from here)

        return cls(
            [m.request_id for m in items],
            [m.ts for m in items],
            [m.features for m in items],
            np.stack([m.x for m in items]),
            [m.production_values for m in items],
            [m.production_outcome for m in items],
            [m.production_latency_s for m in items],
            [m.violations for m in items],
            [m.served_model for m in items],
        )

    def rows(self, idx: list[int]) -> MirroredBatch:
        """These rows (indices, in order)."""
        return MirroredBatch(
            [self.request_ids[i] for i in idx],
            [self.ts[i] for i in idx],
            [self.features[i] for i in idx],
            self.x[idx],
            [self.production_values[i] for i in idx],
            [self.production_outcomes[i] for i in idx],
            [self.production_latency_s[i] for i in idx],
            [self.violations[i] for i in idx],
            [self.served_models[i] for i in idx],
        )


# --- shadow worker -> hub: finished pairs in columns (one Ray call per batch) ---


@dataclass(frozen=True)
class OutputColumns:
    """One role's outputs for every row of a ``PairBatch``, in columns.

    ``outcomes[i]`` is the index of row i's outcome in ``OUTCOMES``, or -1 where
    this role did not run on row i (no noise run, no candidate). ``values``
    holds each row's values left-aligned, padded with 0.0 past ``widths[i]``;
    ``widths[i]`` is -1 where the output has no values (None).
    """

    role: Role
    models: list[str]
    outcomes: np.ndarray  # int8 (n,)
    values: np.ndarray  # float64 (n, max width)
    widths: np.ndarray  # int64 (n,)
    latency_s: np.ndarray  # float64 (n,)
    details: list[str | None]

    @classmethod
    def of(cls, role: Role, outputs: Sequence[ModelOutput | None]) -> OutputColumns:
        """Columns of ``outputs`` (None where the role did not run); every output must have this role."""
        for i, out in enumerate(outputs):
            if out is not None and out.role != role:
                raise ValueError(f"row {i}: a {out.role!r} output in the {role!r} column")
        return cls.of_lists(
            role,
            [out.model if out is not None else "" for out in outputs],
            [out.outcome if out is not None else None for out in outputs],
            [out.values if out is not None else None for out in outputs],
            [out.latency_s if out is not None else 0.0 for out in outputs],
            [out.detail if out is not None else None for out in outputs],
        )

    @classmethod
    def of_lists(
        cls,
        role: Role,
        models: list[str],
        outcomes: Sequence[Outcome | None],
        values: Sequence[list[float] | None],
        latency_s: Sequence[float],
        details: list[str | None],
    ) -> OutputColumns:
        """Columns from per-row lists; an outcome of None: the role did not run on that row."""
        import numpy as np

        n = len(outcomes)
        codes = np.fromiter((-1 if o is None else OUTCOMES.index(o) for o in outcomes), np.int8, n)
        widths = np.fromiter((-1 if v is None else len(v) for v in values), np.int64, n)
        width = int(widths.max(initial=0))
        rows = [v for v in values if v is not None]
        out = np.zeros((n, width), dtype=np.float64)
        if rows and all(len(r) == width for r in rows):
            out[widths >= 0] = np.asarray(rows, dtype=np.float64).reshape(len(rows), width)
        else:  # ragged: row by row
            for i, v in enumerate(values):
                if v:
                    out[i, : len(v)] = v
        return cls(role, models, codes, out, widths, np.asarray(latency_s, dtype=np.float64), details)

    def __len__(self) -> int:
        return len(self.models)

    def take(self, rows: np.ndarray) -> OutputColumns:
        """These columns' ``rows`` (indices, in order)."""
        idx = rows.tolist()
        return OutputColumns(
            self.role,
            [self.models[i] for i in idx],
            self.outcomes[rows],
            self.values[rows],
            self.widths[rows],
            self.latency_s[rows],
            [self.details[i] for i in idx],
        )

    def output(self, i: int) -> ModelOutput | None:
        """Row i as a ModelOutput (None where the role did not run)."""
        code = int(self.outcomes[i])
        if code < 0:
            return None
        w = int(self.widths[i])
        return ModelOutput(
            role=self.role,
            model=self.models[i],
            outcome=OUTCOMES[code],
            values=self.values[i, :w].tolist() if w >= 0 else None,
            latency_s=float(self.latency_s[i]),
            detail=self.details[i],
        )


@dataclass(frozen=True)
class PairBatch:
    """Finished pairs in columns: what a shadow worker sends the hub, and what ``Comparator.add_batch``
    counts without building a ``Pair`` per row. ``pair(i)`` builds one where it is needed (the pair
    store, annotation items). ``inputs`` is the stacked inputs array, a list of per-row inputs, or None
    (``shadow.store_inputs`` off)."""

    request_ids: list[str]
    ts: list[float]
    features: list[dict[str, Any]]
    inputs: np.ndarray | list[Any] | None
    violations: list[list[dict[str, Any]]]
    production: OutputColumns
    candidate: OutputColumns
    noise: OutputColumns | None = None
    reference: OutputColumns | None = None

    def __len__(self) -> int:
        return len(self.request_ids)

    @classmethod
    def of(cls, pairs: Sequence[Pair]) -> PairBatch:
        """The columns of ``pairs``; ValueError when an output sits under another role's name."""
        noise = [p.noise for p in pairs]
        reference = [p.reference for p in pairs]
        return cls(
            request_ids=[p.request_id for p in pairs],
            ts=[p.ts for p in pairs],
            features=[p.features for p in pairs],
            inputs=[p.inputs for p in pairs] if any(p.inputs is not None for p in pairs) else None,
            violations=[p.violations for p in pairs],
            production=OutputColumns.of("production", [p.production for p in pairs]),
            candidate=OutputColumns.of("candidate", [p.candidate for p in pairs]),
            noise=OutputColumns.of("noise", noise) if any(o is not None for o in noise) else None,
            reference=OutputColumns.of("reference", reference) if any(o is not None for o in reference) else None,
        )

    def take(self, rows: np.ndarray) -> PairBatch:
        """The batch of ``rows`` (indices, in order): e.g. the rows one hub shard owns."""
        idx = rows.tolist()

        def pick(values: list[Any]) -> list[Any]:
            return [values[i] for i in idx]

        inputs: np.ndarray | list[Any] | None = None
        if isinstance(self.inputs, list):
            inputs = pick(self.inputs)
        elif self.inputs is not None:
            inputs = self.inputs[rows]
        return PairBatch(
            request_ids=pick(self.request_ids),
            ts=pick(self.ts),
            features=pick(self.features),
            inputs=inputs,
            violations=pick(self.violations),
            production=self.production.take(rows),
            candidate=self.candidate.take(rows),
            noise=self.noise.take(rows) if self.noise is not None else None,
            reference=self.reference.take(rows) if self.reference is not None else None,
        )

    def input(self, i: int) -> Any:
        if self.inputs is None:
            return None
        if isinstance(self.inputs, list):
            return self.inputs[i]
        return self.inputs[i].tolist()

    def pair(self, i: int, selection: Selection | None = None) -> Pair:
        """Row i as a ``Pair`` (with the comparator's selection, when given)."""
        production = self.production.output(i)
        assert production is not None, "every row has production's side"
        return Pair(
            request_id=self.request_ids[i],
            ts=self.ts[i],
            features=self.features[i],
            inputs=self.input(i),
            production=production,
            candidate=self.candidate.output(i),
            noise=self.noise.output(i) if self.noise is not None else None,
            reference=self.reference.output(i) if self.reference is not None else None,
            selection=selection,
            violations=self.violations[i],
        )

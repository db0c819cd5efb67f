"""Records that cross process boundaries: the ingress, the shadow worker, the
comparator, the annotation queue (Kafka) and the on-disk stores.

Each carries ``schema_version`` so a reader can refuse what it does not know.
``values`` are plain lists: class probabilities (classification) or output
values (regression), one entry per output unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import numpy as np

__all__ = [
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
    "Pair",
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
        )

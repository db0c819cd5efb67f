"""The shadow report as typed objects, and its one JSON rendering.

``Comparator.report()`` builds a ``ShadowReport`` (counts per slice, every
check result, the gate verdict); the hub adds the flywheel, expectation and
drift sections and serves ``to_json()`` as ``GET /shadow/report``;
``shadowd report`` reads that JSON back with ``ShadowReport.from_json`` and
renders it (``compare/render.py``). ``schema_version`` changes whenever a
field changes meaning or goes away; a reader refuses a version it does not
know.

``Verdict`` and ``CheckStatus`` carry their numeric codes in one place: the
value of the ``shadowd_gate_verdict`` / ``shadowd_check_status`` gauges and
the exit code of ``shadowd report --gate``.

``verdict_document`` is the report cut down to what a progressive-delivery
controller needs (``GET /shadow/verdict``: Argo Rollouts' web metric,
Flagger's confirm-promotion webhook): the verdict per candidate, its reasons
and evidence counts, versioned by ``VERDICT_SCHEMA_VERSION`` on its own.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, model_serializer

from shadowd.errors import ShadowdError
from shadowd.records import OVERALL

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "VERDICT_SCHEMA_VERSION",
    "CheckResult",
    "CheckStatus",
    "GateSummary",
    "LabelSummary",
    "LatencySummary",
    "Need",
    "NoiseSummary",
    "ShadowReport",
    "SliceReport",
    "Verdict",
    "combine_verdicts",
    "select_candidate",
    "verdict_document",
]

REPORT_SCHEMA_VERSION = 2
# GET /shadow/verdict: changes only when a field of that document changes meaning or goes away.
VERDICT_SCHEMA_VERSION = 1


class CheckStatus(StrEnum):
    """One check on one slice. ``review``: a divergence check beyond its floor (different here, label it)."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    REVIEW = "review"

    @property
    def gauge_value(self) -> int:
        """Value of ``shadowd_check_status`` (and ``shadowd_drift_status``): 0 pass, 1 fail, 2 inconclusive,
        3 review."""
        return _STATUS_GAUGE[self]


class Verdict(StrEnum):
    """The gate's answer to "may this candidate be promoted?".

    PASS: not worse than the margins where there is evidence, and not broken.
    FAIL: worse than a margin on some slice, or operationally broken.
    REVIEW: different beyond the noise/churn floor on some slice and quality
    there not decided yet: label the evaluation lane. INCONCLUSIVE: not
    enough pairs or labels yet. Both say what they need and roughly when.
    """

    PASS = "PASS"
    FAIL = "FAIL"
    REVIEW = "REVIEW"
    INCONCLUSIVE = "INCONCLUSIVE"

    @property
    def gauge_value(self) -> int:
        """Value of ``shadowd_gate_verdict``: 0 pass, 1 fail, 2 inconclusive, 3 review."""
        return _VERDICT_GAUGE[self]

    @property
    def exit_code(self) -> int:
        """Exit code of ``shadowd report --gate``: 0 pass, 1 fail, 3 not decided yet (inconclusive or
        review: a pipeline waits and asks again); 2 is a usage error."""
        return _VERDICT_EXIT[self]


_STATUS_GAUGE = {CheckStatus.PASS: 0, CheckStatus.FAIL: 1, CheckStatus.INCONCLUSIVE: 2, CheckStatus.REVIEW: 3}
_VERDICT_GAUGE = {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.INCONCLUSIVE: 2, Verdict.REVIEW: 3}
_VERDICT_EXIT = {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.INCONCLUSIVE: 3, Verdict.REVIEW: 3}


def _finite(v: Any) -> Any:
    """JSON has no inf/NaN: an unbounded interval end becomes None (also inside nested extras)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckResult(_Report):
    """One check on one slice. ``value`` and ``ci`` are in the check's own unit; higher is worse."""

    check: str = Field(description="Check name from the config.")
    type: str = Field(description="Check kind (the config's `type`).")
    role: Literal["operational", "divergence", "quality"] = Field(
        description="What the check can do: operational and quality FAIL; divergence puts a slice under review."
    )
    slice: str = Field(description="Slice name, or 'overall'.")
    status: CheckStatus
    value: float | None = Field(description="The measured quantity; None before any data.")
    ci: tuple[float | None, float | None] | None = Field(
        description="Always-valid interval the decision used; None ends are unbounded."
    )
    threshold: float | None = Field(description="The largest allowed value (noise floor and margins included).")
    n: int = Field(description="Pairs or labels the check saw.")
    unit: Literal["pairs", "labels"]
    reason: str = Field(description="One line: the value, the interval, the threshold and what it means.")
    required: bool = Field(description="PASS needs this check to pass.")
    p_value: float = Field(description="Anytime-valid p-value of this test alone (1 before its minimum sample).")
    p_adjusted: float = Field(description="Adjusted across every slice x check test (the gate's correction).")
    needed: int | None = Field(None, description="Roughly how many more samples would decide.")
    eta_h: float | None = Field(None, description="Roughly when that is, in hours, at the current rates.")
    rate_per_h: float | None = Field(None, description="How fast the check's unit arrives on this slice now.")
    resolved: bool | None = Field(
        None, description="Review only: the quality checks on this slice pass, so the difference is not worse."
    )
    noise_floor: float | None = None
    extra: dict[str, Any] = Field(default_factory=dict, description="Check-kind specific detail.")

    @field_serializer("value", "ci", "threshold", "p_value", "p_adjusted", "noise_floor", "extra")
    def _json_safe(self, v: Any) -> Any:
        return _finite(v)


class Need(_Report):
    """What one open check needs before it decides."""

    check: str
    slice: str
    unit: Literal["pairs", "labels"]
    more: int | None = Field(description="Roughly how many more; None when no amount at the current rates would do.")
    eta_h: float | None = Field(description="Roughly when, in hours at the current rates; None when never.")
    rate_per_h: float = Field(description="How fast that unit arrives on this slice now.")


class GateSummary(_Report):
    """The verdict and why."""

    verdict: Verdict
    reasons: list[str]
    needs: list[Need] = Field(default_factory=list, description="REVIEW / INCONCLUSIVE: what would decide, when.")
    review_slices: list[str] = Field(
        default_factory=list, description="Slices under review: their disagreements are drawn for labelling first."
    )
    notes: list[str] = Field(description="Optional checks still open (they never hold the verdict up).")
    alpha: float
    correction: str
    tests: int = Field(description="Slice x check tests in the family the correction runs over.")
    method: str
    noise_floor: bool


class NoiseSummary(_Report):
    """A second opinion against production on one slice: production run twice (noise) or the reference."""

    pairs: int
    compared: int
    flips: int | None
    flip_rate: float | None
    divergent: int
    mean_divergence: float | None


class LatencySummary(_Report):
    n: int
    p50: float | None
    p99: float | None


class LabelSummary(_Report):
    """Labels on one slice: what the quality checks used, what they left out and why."""

    used: int = Field(description="Labels in the quality estimates (random feedback, the evaluation sample).")
    by_channel: dict[str, int] = Field(description="Used labels by how they were chosen.")
    excluded: dict[str, int] = Field(description="Labels left out of the estimates, by why.")
    per_h: float = Field(description="Used labels per hour over the window.")
    strata: dict[str, int] = Field(description="Compared pairs by stratum (flip, divergent, agree).")
    feedback: int = Field(description="Random feedback labels: a uniform sample, so plain accuracies below are fair.")
    accuracy: dict[str, float] | None = Field(description="Accuracy per model over the random feedback labels.")
    mean_loss: dict[str, float] | None = Field(description="Mean loss per model over the random feedback labels.")


class SliceReport(_Report):
    """Counts on one slice ('overall' included) in the current window."""

    pairs: int
    production_only: int
    production_failed: int
    compared: int
    candidate_outcomes: dict[str, int]
    flips: int | None
    flip_rate: float | None
    divergent: int
    divergent_rate: float | None
    mean_divergence: float | None
    noise: NoiseSummary
    reference: NoiseSummary = Field(description="The reference model against production: the churn floor.")
    latency_s: dict[str, LatencySummary]
    labels: LabelSummary


# Sections the hub adds beside the comparator's; absent from the JSON when there is nothing to say.
_OPTIONAL_SECTIONS = ("window", "candidates", "annotations", "expectations", "drift")


class ShadowReport(_Report):
    """The whole test window: ``GET /shadow/report``."""

    schema_version: int = REPORT_SCHEMA_VERSION
    generated_ts: float
    window_started_ts: float
    task: Literal["classification", "regression"]
    models: dict[str, str | None] = Field(description="Names of the production and candidate models.")
    overall: SliceReport
    slices: dict[str, SliceReport]
    checks: list[CheckResult]
    gate: GateSummary
    window: Literal["closed"] | None = Field(
        None, description="'closed': the report kept when this candidate's window closed (it is no longer shadowed)."
    )
    candidates: dict[str, str] | None = Field(
        None,
        description="Every candidate shadowed now and its verdict, when there are several (this report is about "
        "models.candidate; GET /shadow/report?candidate=NAME gives another's).",
    )
    annotations: dict[str, Any] | None = Field(None, description="Annotation queue, labels and suites (the hub's).")
    expectations: dict[str, Any] | None = Field(None, description="Data expectation violations per slice.")
    drift: dict[str, Any] | None = Field(None, description="Drift windows against the training profile.")

    @model_serializer(mode="wrap")
    def _drop_empty_sections(self, handler: Any) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in _OPTIONAL_SECTIONS:
            if data.get(key) is None:
                data.pop(key, None)
        return data

    def slice(self, name: str) -> SliceReport:
        """One slice's counts by name, 'overall' included."""
        return self.overall if name == OVERALL else self.slices[name]

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON data: what the API serves and ``--format json`` prints."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: Any) -> ShadowReport:
        """Read a report served by a daemon; ShadowdError when it is not one this shadowd understands."""
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != REPORT_SCHEMA_VERSION:
            raise ShadowdError(
                f"report schema_version {version!r}; this shadowd reads {REPORT_SCHEMA_VERSION} "
                "(use a shadowd CLI of the daemon's version)"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ShadowdError(f"not a shadowd report: {where}: {first['msg']}") from None


# Several candidates, one answer: any FAIL fails, then any REVIEW, then anything open; PASS needs every one.
_COMBINE_ORDER = (Verdict.FAIL, Verdict.REVIEW, Verdict.INCONCLUSIVE, Verdict.PASS)


def combine_verdicts(verdicts: list[Verdict]) -> Verdict:
    """One verdict for several candidates: the worst of them (FAIL, REVIEW, INCONCLUSIVE, PASS in that
    order); INCONCLUSIVE for none."""
    for v in _COMBINE_ORDER:
        if v in verdicts:
            return v
    return Verdict.INCONCLUSIVE


def verdict_document(*reports: ShadowReport) -> dict[str, Any]:
    """``GET /shadow/verdict``: per candidate its verdict, reasons and evidence counts, and one combined verdict.

    ``candidates`` maps each shadowed candidate's name to its entry, one per report (each candidate's own test
    window). With no candidate configured it is empty and the verdict INCONCLUSIVE, with the gate's reason.
    Counts are the overall slice's: ``pairs`` mirrored, ``compared`` (both answered), ``labels`` used by the
    quality checks.
    """
    candidates: dict[str, dict[str, Any]] = {}
    for report in reports:
        name = report.models.get("candidate")
        if name is None:
            continue
        o = report.overall
        candidates[name] = {
            "verdict": report.gate.verdict.value,
            "reasons": list(report.gate.reasons),
            "review_slices": list(report.gate.review_slices),
            "evidence": {"pairs": o.pairs, "compared": o.compared, "labels": o.labels.used},
            "window_started_ts": report.window_started_ts,
            "window": "open",
        }
    generated_ts = max((r.generated_ts for r in reports), default=0.0)
    no_candidate = list(reports[0].gate.reasons) if reports else ["no candidate is configured"]
    return _verdict_document(candidates, no_candidate, generated_ts)


def select_candidate(document: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The verdict document narrowed to one candidate (its verdict on top); None when there is no such one."""
    entry = document["candidates"].get(name)
    if entry is None:
        return None
    return _verdict_document({name: entry}, document["reasons"], document["generated_ts"])


def _verdict_document(
    candidates: dict[str, dict[str, Any]], no_candidate_reasons: list[str], generated_ts: float
) -> dict[str, Any]:
    verdict = combine_verdicts([Verdict(c["verdict"]) for c in candidates.values()])
    # The reasons of the candidates that decided the combined verdict, each naming its candidate.
    reasons = [f"{n}: {r}" for n, c in candidates.items() if c["verdict"] == verdict for r in c["reasons"]]
    return {
        "version": VERDICT_SCHEMA_VERSION,
        "verdict": verdict.value,
        "reasons": reasons if candidates else no_candidate_reasons,
        "candidates": candidates,
        "generated_ts": generated_ts,
    }

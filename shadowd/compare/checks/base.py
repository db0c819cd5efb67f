"""What a check is, apart from how each kind computes it.

Every kind has a role, which decides what its result can do to the verdict:

- ``operational``: the candidate is broken (errors, NaN, timeouts, latency, a
  flip rate no retrain produces): beyond its bound it FAILs;
- ``divergence``: the candidate answers differently (flips, divergence,
  class shares) beyond the noise or churn floor: that says where to look, not
  which model is right, so it puts the slice under REVIEW (FAIL only when the
  check is ``required``);
- ``quality``: the candidate is worse on labels, estimated from labels whose
  selection is known: beyond the margin it FAILs.


A check kind is a frozen config model (``CheckBase`` subclass, tagged by
``type``) whose ``evidence`` method turns one slice's tally into an
``Evidence``: for a level alpha (and a hypothetical sample-size multiple
``scale``) it says whether the always-valid interval shows the candidate
worse than allowed (``fails``) or within it (``passes``). From that one rule
the gate (``compare/gate.py``) derives the anytime p-value (smallest alpha
that fails), the status, and "needs ~N more" (``more_needed``: smallest scale
that decides). Every check is one-sided: "is the candidate worse than
allowed?"; ``value`` and intervals are in the check's own unit, higher is
worse.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field

from shadowd.compare.tally import Moments, SliceTally
from shadowd.configbase import Strict

__all__ = [
    "CheckBase",
    "CheckContext",
    "Evidence",
    "mean_bounds",
    "mean_sd",
    "more_needed",
    "rate_bounds",
    "rate_hi",
    "rate_lo",
    "scale_needed",
]

Task = Literal["classification", "regression"]
Unit = Literal["pairs", "labels"]
Role = Literal["operational", "divergence", "quality"]

# Largest sample-size multiple "needs ~N more" looks at; beyond it the effect
# sits on the threshold and more data will hardly decide.
_MAX_SCALE = 2.0**20
_CHECK_NAME = r"^[a-z][a-z0-9_]{0,39}$"


@dataclass(frozen=True)
class CheckContext:
    """What every check kind may use besides its tally: the task and the gate's settings."""

    task: Task
    rho: float  # normal-mixture width of the pair-based mean confidence sequences (stats.gaussian_mixture_rho)
    noise_floor: bool  # judge divergence against production's own noise when noise pairs exist
    explain: bool = True  # also compute the fixed-sample tests shown to people (they never decide)
    rho_labels: float = 0.0  # normal-mixture width of the label-based mean confidence sequences
    churn_floor: bool = True  # judge divergence against production-vs-reference when reference pairs exist
    evaluation_shares: frozenset[float] = frozenset()  # every evaluation share the config can draw with


@dataclass
class Evidence:
    """What a check knows on one slice, as decision rules over (alpha, scale)."""

    n: int
    unit: Unit
    value: float | None
    threshold: float | None
    label: str  # the quantity in words, for reasons
    fails: Callable[[float, float], bool]
    passes: Callable[[float, float], bool]
    interval: Callable[[float], tuple[float, float]]
    noise_floor: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # None: the gate treats fewer than min_samples as undecided. True: the interval is valid at any
    # size (the check already falls back to worst cases where data is thin).
    ready: bool | None = None


class CheckBase(Strict):
    """Fields every check kind has. Subclasses add ``type: Literal[...]`` and their thresholds."""

    tasks: ClassVar[frozenset[Task]] = frozenset({"classification", "regression"})
    role: ClassVar[Role] = "operational"

    type: str = Field(description="Check kind; each subclass narrows it to its own tag.")
    name: str = Field(description="Check name: used in reports and as a metrics label.", pattern=_CHECK_NAME)
    min_samples: int = Field(
        200, ge=1, description="Pairs (labels for label-based checks) a slice needs before the check gives a verdict."
    )
    required: bool = Field(
        True,
        description="PASS needs this check to pass; an optional check can still FAIL the gate but never holds it up.",
    )
    slices: list[str] | None = Field(
        None, description="Where the check runs: 'overall' and/or slice names; none means overall and every slice."
    )

    def applies_to(self, task: Task) -> bool:
        return task in self.tasks

    def evidence(self, tally: SliceTally, ctx: CheckContext) -> Evidence:
        """What this check knows on one slice's tally."""
        raise NotImplementedError


# --- building blocks the kinds share ---


# The statistics (numpy, scipy) are imported when a check is first evaluated, not
# when the config tree loads: `shadowd validate-config` needs pydantic alone.


def rate_bounds(s: int, n: int, alpha: float, scale: float) -> tuple[float, float]:
    from shadowd.compare import stats

    return stats.proportion_cs(s * scale, n * scale, alpha)


def rate_lo(s: int, n: int, alpha: float, scale: float) -> float:
    from shadowd.compare import stats

    return stats.proportion_bound(s * scale, n * scale, alpha, upper=False)


def rate_hi(s: int, n: int, alpha: float, scale: float) -> float:
    from shadowd.compare import stats

    return stats.proportion_bound(s * scale, n * scale, alpha, upper=True)


def mean_sd(m: Moments) -> float:
    # Floor the spread at 1/sqrt(n): a handful of identical values is not
    # proof of zero variance, and a zero width would decide on nothing.
    return max(math.sqrt(m.variance), 1 / math.sqrt(max(m.n, 1)))


def mean_bounds(mean: float, sd: float, n: int, alpha: float, scale: float, rho: float) -> tuple[float, float]:
    from shadowd.compare import stats

    hw = stats.mean_cs_halfwidth(n * scale, sd, alpha, rho)
    return mean - hw, mean + hw


def more_needed(ev: Evidence, alpha: float) -> int | None:
    """Roughly how many more samples would decide, if the slice kept its current rates and spread."""
    scale = scale_needed(ev, alpha)
    return None if scale is None else max(1, math.ceil(ev.n * (scale - 1)))


def scale_needed(ev: Evidence, alpha: float) -> float | None:
    """The smallest multiple of everything seen so far (pairs, labels) that would decide; None past 2**20.

    At steady traffic and label rates, the window decides after ``scale - 1``
    times its present length.
    """
    if ev.n == 0:
        return None

    def decides(s: float) -> bool:
        return ev.fails(alpha, s) or ev.passes(alpha, s)

    hi = 2.0
    while not decides(hi):
        if hi >= _MAX_SCALE:
            return None
        hi *= 2
    lo = hi / 2
    while hi - lo > 0.02 * lo:
        mid = (lo + hi) / 2
        if decides(mid):
            hi = mid
        else:
            lo = mid
    return hi

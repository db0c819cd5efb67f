"""Divergence judged against a floor: the shared rule of flip rate and mean divergence.

The floor is how much an equally good model disagrees with production on the
same slice: the churn floor (the reference model, production's recipe with
another seed or the previous version) when reference pairs exist, else the
noise floor (production run a second time). With floor f the allowed value is
``max(f * (1 + rel_margin), f + abs_margin)``, i.e. the candidate must beat
the floor by both margins to be flagged. The floor's own uncertainty is paid
for by splitting alpha between the two intervals.

Divergence says where to look, not which model is right: beyond the allowed
value the slice goes under REVIEW (its disagreements are labelled first), and
only a ``required`` divergence check FAILs the gate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field

from shadowd.compare.checks.base import CheckBase, CheckContext, Evidence, Role
from shadowd.compare.tally import FloorTally, SliceTally

__all__ = ["Bound", "Measure", "NoiseAwareCheck", "floor_of"]

# (alpha, scale, upper) -> one end of an always-valid interval
Bound = Callable[[float, float, bool], float]


@dataclass(frozen=True)
class Measure:
    """One divergence quantity of the candidate and of the floor, with their interval ends."""

    label: str
    value: float | None
    floor: float | None
    candidate: Bound
    noise: Bound


def floor_of(tally: SliceTally, ctx: CheckContext) -> tuple[str | None, FloorTally | None]:
    """Which floor a divergence check uses on this slice: churn (reference), noise, or none."""
    if ctx.churn_floor and tally.reference.compared > 0:
        return "churn", tally.reference
    if ctx.noise_floor and tally.noise.compared > 0:
        return "noise", tally.noise
    return None, None


class NoiseAwareCheck(CheckBase):
    role: ClassVar[Role] = "divergence"

    required: bool = Field(
        False,
        description="false: divergence beyond the floor puts the slice under review (label first), never FAILs; "
        "true: it FAILs the gate, and PASS needs this check to pass.",
    )
    abs_margin: float = Field(
        0.05, ge=0, description="Flag only when the candidate exceeds the floor by more than this (absolute)..."
    )
    rel_margin: float = Field(0.5, ge=0, description="...and by more than this share of the floor (relative).")

    def allowed(self, floor: float) -> float:
        return max(floor * (1 + self.rel_margin), floor + self.abs_margin)

    def measure(self, tally: SliceTally, floor: FloorTally | None, ctx: CheckContext) -> Measure:
        raise NotImplementedError

    def evidence(self, tally: SliceTally, ctx: CheckContext) -> Evidence:
        kind, floor = floor_of(tally, ctx)
        use_floor = floor is not None
        k = 2.0 if use_floor else 1.0  # alpha is split between the candidate's and the floor's interval
        m = self.measure(tally, floor, ctx)

        def fails(a: float, s: float) -> bool:
            ceiling = m.noise(a / k, s, True) if use_floor else 0.0
            return m.candidate(a / k, s, False) > self.allowed(max(ceiling, 0.0))

        def passes(a: float, s: float) -> bool:
            floor_lo = m.noise(a / k, s, False) if use_floor else 0.0
            return m.candidate(a / k, s, True) <= self.allowed(max(floor_lo, 0.0))

        extra: dict[str, Any] = {
            "floor": kind,
            "floor_pairs": floor.compared if floor is not None else 0,
            "noise_pairs": tally.noise.compared,
            "reference_pairs": tally.reference.compared,
        }
        return Evidence(
            n=tally.candidate.compared,
            unit="pairs",
            value=m.value,
            threshold=self.allowed(m.floor or 0.0),
            label=m.label,
            fails=fails,
            passes=passes,
            # The interval the decisions use: at alpha/2 when the floor takes the other half.
            interval=lambda a: (m.candidate(a / k, 1.0, False), m.candidate(a / k, 1.0, True)),
            noise_floor=m.floor,
            extra=extra,
        )

"""Divergence judged against production's own noise: the shared rule of flip rate and mean divergence.

The noise replica runs production a second time; with its floor f the
allowed value is ``max(f * (1 + rel_margin), f + abs_margin)``, i.e. the
candidate must beat the floor by both margins to fail. The floor's own
uncertainty is paid for by splitting alpha between the two intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from shadowd.compare.checks.base import CheckBase, CheckContext, Evidence
from shadowd.compare.tally import SliceTally

__all__ = ["Bound", "Measure", "NoiseAwareCheck"]

# (alpha, scale, upper) -> one end of an always-valid interval
Bound = Callable[[float, float, bool], float]


@dataclass(frozen=True)
class Measure:
    """One divergence quantity of the candidate and of the noise replica, with their interval ends."""

    label: str
    value: float | None
    floor: float | None
    candidate: Bound
    noise: Bound


class NoiseAwareCheck(CheckBase):
    abs_margin: float = Field(
        0.05, ge=0, description="Fail only when the candidate exceeds the noise floor by more than this (absolute)..."
    )
    rel_margin: float = Field(0.5, ge=0, description="...and by more than this share of the floor (relative).")

    def allowed(self, floor: float) -> float:
        return max(floor * (1 + self.rel_margin), floor + self.abs_margin)

    def measure(self, tally: SliceTally, ctx: CheckContext, use_noise: bool) -> Measure:
        raise NotImplementedError

    def evidence(self, tally: SliceTally, ctx: CheckContext) -> Evidence:
        cand, noise = tally.candidate, tally.noise
        use_noise = ctx.noise_floor and noise.compared > 0
        k = 2.0 if use_noise else 1.0  # alpha is split between the candidate's and the floor's interval
        m = self.measure(tally, ctx, use_noise)

        def fails(a: float, s: float) -> bool:
            ceiling = m.noise(a / k, s, True) if use_noise else 0.0
            return m.candidate(a / k, s, False) > self.allowed(max(ceiling, 0.0))

        def passes(a: float, s: float) -> bool:
            floor_lo = m.noise(a / k, s, False) if use_noise else 0.0
            return m.candidate(a / k, s, True) <= self.allowed(max(floor_lo, 0.0))

        extra: dict[str, Any] = {"noise_pairs": noise.compared, "noise_floor_used": use_noise}
        return Evidence(
            n=cand.compared,
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

"""On-call annotation rotation: who labels the queue right now.

Data flow: the ``Flywheel``'s item policy stamps each admitted annotation
item with ``assignee = Rotation.on_call(now)``; ``shadowd annotate`` uses the
rotation's name for its queue offsets (the Kafka consumer group) and shows who is on call.

Shifts of ``shift_s`` seconds follow one another from ``start`` through the
annotators in order, wrapping around (and extending backwards before
``start``, so every instant has exactly one person on call).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from shadowd.config import RotationConfig
from shadowd.flywheel.transports.base import consumer_group

__all__ = ["Rotation", "Shift"]


@dataclass(frozen=True)
class Shift:
    annotator: str
    start_ts: float
    end_ts: float

    def describe(self) -> str:
        fmt = "%Y-%m-%d %H:%M UTC"
        start = datetime.fromtimestamp(self.start_ts, UTC).strftime(fmt)
        end = datetime.fromtimestamp(self.end_ts, UTC).strftime(fmt)
        return f"{self.annotator} ({start} - {end})"


class Rotation:
    def __init__(self, cfg: RotationConfig, clock: Callable[[], float]):
        self.cfg = cfg
        self.name = cfg.name
        self._clock = clock
        self._start_ts = cfg.start.timestamp()

    def shift_at(self, ts: float) -> Shift:
        k = math.floor((ts - self._start_ts) / self.cfg.shift_s)
        begin = self._start_ts + k * self.cfg.shift_s
        return Shift(self.cfg.annotators[k % len(self.cfg.annotators)], begin, begin + self.cfg.shift_s)

    def current_shift(self) -> Shift:
        return self.shift_at(self._clock())

    def on_call(self, ts: float | None = None) -> str:
        return self.shift_at(self._clock() if ts is None else ts).annotator

    @property
    def group(self) -> str:
        return consumer_group(self.name)

"""Statistical checks and the promotion gate (first version: no checks yet)."""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate_gate"]


def evaluate_gate(config, tallies, metrics=None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return [], {"verdict": "INCONCLUSIVE", "reasons": ["statistical checks are not evaluated yet"]}

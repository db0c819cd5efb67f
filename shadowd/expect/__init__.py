"""Data expectations, numerical stability and drift on live shadow traffic (issue 7).

``expectations``: per-request checks on the production path (cheap, vectorised).
``profile``: a reference profile of training data, built offline by ``shadowd profile build``.
``drift``: windowed drift checks of live inputs and both models' outputs against that profile,
run beside the comparator.
"""

from shadowd.expect.expectations import (
    ExpectationSet,
    Violation,
    ViolationTally,
    record_violations,
    violation_item,
)

__all__ = ["ExpectationSet", "Violation", "ViolationTally", "record_violations", "violation_item"]

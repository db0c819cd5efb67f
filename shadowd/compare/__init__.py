"""compare/: the comparator side of shadowd.

Finished pairs -> divergence per pair (``divergence``) -> slices (``slices``)
-> mergeable tallies (``tally``) -> statistical checks and the gate
(``gate``) -> report (``report``). ``Comparator`` ties them together.
"""

from shadowd.compare.comparator import OVERALL, Comparator
from shadowd.compare.divergence import Divergence, pair_divergence
from shadowd.compare.slices import SliceMatcher

__all__ = ["OVERALL", "Comparator", "Divergence", "SliceMatcher", "pair_divergence"]

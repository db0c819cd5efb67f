"""compare/: the comparator side of shadowd.

Finished pairs -> divergence per pair (``divergence``) -> slices (``slices``)
-> mergeable tallies (``tally``) -> statistical checks and the gate
(``gate``) -> report (``report``). ``Comparator`` ties them together.
"""

"""The evaluation sample: which disagreements are drawn for labelling, with what probability.

Sits inside the comparator: every compared pair gets a stratum (flip,
divergent, agree); a flipped or divergent pair is drawn into the evaluation
lane when a hash of its request id falls below its share. The share is known
for every pair, drawn or not, so the labels of the drawn ones (and random
feedback) estimate quality without the bias of a hand-picked sample
(docs/statistics.md, "Labels and how they were chosen").

Shares: ``annotations.evaluation.share`` for all traffic, ``slice_shares``
per slice, and ``review_share`` for slices the gate has under review (their
divergence is beyond the floor and quality is not decided yet), so labels go
where the gate needs them. A pair in several slices takes the largest share.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from shadowd.config import EvaluationConfig
from shadowd.records import OVERALL, Selection, Stratum
from shadowd.sampling import hash_unit

if TYPE_CHECKING:
    import numpy as np

__all__ = ["EVALUATION_SALT", "EvaluationSampler", "possible_shares"]

EVALUATION_SALT = "evaluation"


def possible_shares(cfg: EvaluationConfig) -> frozenset[float]:
    """Every share a pair can be drawn with under this config (fixed: the quality checks split alpha by it)."""
    return frozenset({cfg.share, cfg.review_share, *cfg.slice_shares.values()})


class EvaluationSampler:
    def __init__(self, cfg: EvaluationConfig):
        self.cfg = cfg
        self.review_slices: frozenset[str] = frozenset()

    def share(self, slices: Iterable[str]) -> float:
        """The draw probability of a disagreement in these slices (overall's share included)."""
        shares = [self.cfg.share]
        for name in slices:
            shares.append(self.cfg.slice_shares.get(name, self.cfg.share))
            if name in self.review_slices:
                shares.append(self.cfg.review_share)
        return max(shares)

    def shares(self, names: Sequence[str], member: np.ndarray) -> np.ndarray:
        """``share`` for every row of a batch at once; ``member[j, i]``: row i is in slice ``names[j]``."""
        import numpy as np

        base = self.cfg.share
        out = np.full(member.shape[1], base)
        for j, name in enumerate(names):
            s = self.cfg.slice_shares.get(name, base)
            if name in self.review_slices:
                s = max(s, self.cfg.review_share)
            if s > base:
                out[member[j]] = np.maximum(out[member[j]], s)
        return out

    def drawn(self, request_ids: Sequence[str], shares: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``select``'s draw on the given rows of a batch (bool array over all rows; False elsewhere)."""
        import numpy as np

        out = np.zeros(len(request_ids), dtype=bool)
        for i in rows.tolist():
            share = float(shares[i])
            out[i] = share > 0 and hash_unit(request_ids[i], EVALUATION_SALT) < share
        return out

    def possible_shares(self) -> frozenset[float]:
        return possible_shares(self.cfg)

    def select(self, request_id: str, stratum: Stratum, slices: Iterable[str]) -> Selection:
        names = [s for s in slices if s != OVERALL]
        if stratum == "agree":
            return Selection(stratum=stratum, evaluation_share=0.0, in_sample=False, slices=names)
        share = self.share(slices)
        drawn = share > 0 and hash_unit(request_id, EVALUATION_SALT) < share
        return Selection(stratum=stratum, evaluation_share=share, in_sample=drawn, slices=names)

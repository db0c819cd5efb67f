"""Which requests are mirrored, and which hub shard counts them: a hash of the
request id, so a request is reproducibly in or out of the sample, and on the
same shard, whichever replica serves it (and wherever its label arrives)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["SHARD_SALT", "Shard", "hash_unit", "is_sampled", "shard_of"]

_SCALE = float(1 << 64)
# Independent of the sampling and evaluation hashes: a shard holds a uniform share of every stratum.
SHARD_SALT = "shard"


def hash_unit(request_id: str, salt: str = "") -> float:
    """Map a request id to a uniform number in [0, 1)."""
    digest = hashlib.blake2b(f"{salt}\x00{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def is_sampled(request_id: str, share: float, salt: str = "shadow") -> bool:
    if share >= 1.0:
        return True
    return share > 0.0 and hash_unit(request_id, salt) < share


def shard_of(request_id: str, shards: int) -> int:
    """The hub shard (0 .. shards - 1) that counts a request's pair and joins its labels."""
    if shards < 1:
        raise ValueError(f"got {shards} shards; must be >= 1")
    # min(): a hash just below 2**64 divides to 1.0 in floats.
    return min(int(hash_unit(request_id, SHARD_SALT) * shards), shards - 1)


@dataclass(frozen=True)
class Shard:
    """One hub shard of ``count``: it counts the pairs and joins the labels of the request ids it owns."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}: must be 0 .. {self.count - 1}")

    @property
    def lead(self) -> bool:
        """Shard 0 merges every shard's state into the report, sets the gate gauges and serves /metrics."""
        return self.index == 0

    def owns(self, request_id: str) -> bool:
        return self.count == 1 or shard_of(request_id, self.count) == self.index

"""Which requests are mirrored: a hash of the request id, so a request is
reproducibly in or out of the sample whichever replica serves it."""

from __future__ import annotations

import hashlib

__all__ = ["hash_unit", "is_sampled"]

_SCALE = float(1 << 64)


def hash_unit(request_id: str, salt: str = "") -> float:
    """Map a request id to a uniform number in [0, 1)."""
    digest = hashlib.blake2b(f"{salt}\x00{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def is_sampled(request_id: str, share: float, salt: str = "shadow") -> bool:
    if share >= 1.0:
        return True
    return share > 0.0 and hash_unit(request_id, salt) < share

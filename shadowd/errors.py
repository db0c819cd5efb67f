"""One exception tree for shadowd.

Everything shadowd raises on purpose derives from ``ShadowdError``. The
``retriable`` flag drives retry loops (sinks, broker calls); ``http_status``
is what the ingress answers when the error reaches a client.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "ConfigError",
    "ModelError",
    "PayloadTooLarge",
    "ShadowdError",
    "SinkError",
]


class ShadowdError(Exception):
    """Base of every error shadowd raises on purpose."""

    retriable: bool = False
    http_status: int = 500


class ConfigError(ShadowdError):
    """A config file is missing, unreadable or invalid; the message names file and key."""


class BadRequest(ShadowdError):
    """A client sent something shadowd cannot serve; answered with a 4xx and this reason."""

    http_status = 400

    def __init__(self, reason: str, http_status: int = 400):
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status


class PayloadTooLarge(BadRequest):
    def __init__(self, size_bytes: int, limit_bytes: int):
        super().__init__(f"request body is {size_bytes} bytes; the limit is {limit_bytes}", 413)


class ModelError(ShadowdError):
    """A model raised, returned garbage (NaN/inf, wrong shape) or could not be loaded."""


class SinkError(ShadowdError):
    """An annotation sink could not deliver; retriable ones are retried, then spooled."""

    retriable = True

"""One exception tree for shadowd: every error it raises on purpose.

Everything derives from ``ShadowdError``. Two flags say what a caller should
do with one:

- ``retriable``: trying the same thing again later can succeed (a broker or
  Grafana that is down, a queue offset that could not be committed). Retry
  loops read it: a retriable delivery error is retried with growing backoff;
  a non-retriable one (credentials, ACLs, a protocol mismatch) is kept and
  retried only at the longest backoff, loudly, until someone fixes the setup.
- ``http_status``: what the ingress answers when the error reaches a client
  (4xx for what the client got wrong, never a 500 with internals).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AnnotateError",
    "AuthError",
    "BadRequest",
    "ConfigError",
    "DeliveryError",
    "ExpectationFailed",
    "GrafanaError",
    "LabelStudioError",
    "ModelError",
    "PayloadTooLarge",
    "ShadowdError",
    "SinkError",
    "SpoolError",
    "SpoolWriteError",
    "SuiteError",
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


class AuthError(BadRequest):
    """A request without a valid token (401) or whose token lacks the route's scope (403).
    The reason names the route, the scope and the token's name, never a token."""

    def __init__(self, reason: str, http_status: int, scope: str):
        super().__init__(reason, http_status)
        self.scope = scope


class PayloadTooLarge(BadRequest):
    def __init__(self, size_bytes: int, limit_bytes: int):
        super().__init__(f"request body is {size_bytes} bytes; the limit is {limit_bytes}", 413)


class ExpectationFailed(BadRequest):
    """A request failed a data expectation and the config says reject: answered 422 naming it."""

    def __init__(self, reason: str, violations: list[Any]):
        super().__init__(reason, 422)
        self.violations = violations


class ModelError(ShadowdError):
    """A model raised, returned garbage (NaN/inf, wrong shape) or could not be loaded."""


class SinkError(ShadowdError):
    """The annotation queue cannot take items right now; they stay in the spool and are retried."""

    retriable = True


class DeliveryError(SinkError):
    """A batch of spooled items was not (wholly) delivered.

    ``poison``: the first undelivered record can never be delivered (too large,
    corrupt): it goes to the dead-letter file instead of blocking the queue.
    ``retriable`` False: retrying will not help until the setup is fixed.
    """

    def __init__(self, message: str, retriable: bool = True, poison: bool = False):
        super().__init__(message)
        self.retriable = retriable
        self.poison = poison


class SpoolError(ShadowdError):
    """The spool directory is unusable (locked by another process, corrupt, unwritable)."""


class SpoolWriteError(SpoolError):
    """An append to the spool did not happen; none of it is on disk (appends are all-or-nothing).

    ``reason`` (a bounded metrics label): ``disk_full`` (no space, quota or file size limit),
    ``spool_full`` (``annotations.spool_max_bytes`` reached), ``too_large`` (the records alone
    exceed that cap), ``write_error`` (any other I/O error). Retrying later can succeed,
    except for ``too_large``.
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason
        self.retriable = reason != "too_large"


class SuiteError(ShadowdError):
    """A suite cannot be found, read or replayed; the message names the suite and file."""


class AnnotateError(ShadowdError):
    """The annotation queue or the labels channel cannot be used right now; nothing was committed."""

    retriable = True


class GrafanaError(ShadowdError):
    """Grafana refused a call or could not be reached; the message says which call and why."""

    retriable = True


class LabelStudioError(ShadowdError):
    """Label Studio refused a call or could not be reached; the message says which call and why (never the
    token). Retriable unless the setup is wrong (401/403: the token; 400: the project's labelling config)."""

    def __init__(self, message: str, retriable: bool = True):
        super().__init__(message)
        self.retriable = retriable

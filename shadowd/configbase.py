"""Building blocks of the config tree, for the modules that plug into it.

Model kinds (``shadowd.models``), check kinds (``shadowd.compare.checks``) and
annotation transports (``shadowd.flywheel.transports``) each declare their own
config model next to their code, and a registry line adds it to a tagged
union; ``shadowd.config`` builds the one strict tree from those unions. The
plug-in modules import this module, never ``shadowd.config``, so the tree can
import them without a cycle.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

__all__ = ["SECRET_ERROR", "Scalar", "Strict", "resolve_path", "secret_error"]

# The error type of a value that holds a credential: the config's error message leaves the value out.
SECRET_ERROR = "secret_in_config"

Scalar = str | int | float | bool | None


class Strict(BaseModel):
    """Every config model: unknown keys are errors, values are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_path(path: Path | None, base_dir: Path) -> Path | None:
    """A config path made absolute: relative paths are relative to the config file's folder."""
    return path if path is None or path.is_absolute() else (base_dir / path).resolve()


def secret_error(message: str) -> PydanticCustomError:
    """A validation error for a credential written into the config: the message says where it belongs instead,
    and ``shadowd.config.describe_error`` never shows the value."""
    return PydanticCustomError(SECRET_ERROR, message)

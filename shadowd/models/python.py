"""Model kind ``python``: any object by import path with ``predict(batch) -> array``.

No config value is ever evaluated as code: the target is imported by name.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Literal

from pydantic import Field

from shadowd.errors import ModelError
from shadowd.models.base import LocalModelBase, Predict

__all__ = ["PythonModel"]


def _import_target(target: str) -> Any:
    module_name, _, attr_path = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(f"cannot import module {module_name!r} for target {target!r}: {err}") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelError(f"target {target!r}: {module_name} has no attribute {attr_path!r}") from None
    return obj


class PythonModel(LocalModelBase):
    kind: Literal["python"] = Field(description="python: an import path 'module:attr'.")
    target: str = Field(
        description="Import path 'package.module:attr' of a class or factory returning an object with "
        "predict(batch: numpy array) -> numpy array, or of such a callable itself.",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for a python target.")

    def load(self, torch_threads: int) -> Predict:
        obj = _import_target(self.target)
        if inspect.isclass(obj) or self.kwargs:
            obj = obj(**self.kwargs)
        predict = getattr(obj, "predict", obj)
        if not callable(predict):
            raise ModelError(
                f"target {self.target!r} gives {type(obj).__name__}, which has no predict() and is not callable"
            )
        return predict  # type: ignore[no-any-return]

"""Model adapters: how shadowd loads a model and calls it on a batch.

Used online (the ingress runs production, the shadow worker the candidate and
the noise replica) and offline (``shadowd replay``). A kind runs in shadowd's
process (torchscript, python) or is served elsewhere and called over HTTP
(http). Every kind is one module holding its config model and its loader;
the tagged union below is the registry: a new kind is one new module and one
member here. Loading and calling a model: ``shadowd.models.runtime``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from shadowd.models.base import LocalModelBase, ModelBase
from shadowd.models.http import HttpModel
from shadowd.models.python import PythonModel
from shadowd.models.torchscript import TorchScriptModel

__all__ = ["HttpModel", "LocalModelBase", "ModelBase", "ModelConfig", "PythonModel", "TorchScriptModel"]

# The registry of model kinds, chosen by `kind:` in the config.
ModelConfig = Annotated[TorchScriptModel | PythonModel | HttpModel, Field(discriminator="kind")]

"""Model kind ``torchscript``: a file saved with ``torch.jit.save``, run on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field

from shadowd.configbase import resolve_path
from shadowd.errors import ModelError
from shadowd.models.base import LocalModelBase, Predict

__all__ = ["TorchScriptModel"]


class TorchScriptModel(LocalModelBase):
    kind: Literal["torchscript"] = Field(description="torchscript: a file saved with torch.jit.save.")
    path: Path = Field(description="TorchScript file; relative paths are relative to the config file.")

    def with_base_dir(self, base_dir: Path) -> Self:
        return self.model_copy(update={"path": resolve_path(self.path, base_dir)})

    def load(self, torch_threads: int) -> Predict:
        import numpy as np
        import torch

        torch.set_num_threads(torch_threads)
        try:
            module = torch.jit.load(str(self.path), map_location="cpu")  # type: ignore[no-untyped-call]
        except (RuntimeError, ValueError, OSError) as err:
            raise ModelError(f"cannot load TorchScript model {self.name!r} from {self.path}: {err}") from None
        module.eval()

        def predict(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                out: np.ndarray = module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()
                return out

        return predict

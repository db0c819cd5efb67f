"""The demo's two real models, trained at first run on scikit-learn's bundled
digits (nothing downloaded) and cached as TorchScript in the data dir.

Production was trained with dim-lighting augmentation; the candidate is a
smaller net that binarizes its input at a fixed threshold and was trained on
well-lit images only. Overall they mostly agree, but
on "dark" images (a nod to night-time failures) the candidate is clearly
worse: exactly the regression a shadow test should find, and only there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["DEMO_SEED", "DemoData", "darken", "load_demo_data", "save_torchscript", "train_demo_models", "train_mlp"]

DEMO_SEED = 7
_DARK_RANGE = (0.15, 0.35)


@dataclass(frozen=True)
class DemoData:
    x_train: np.ndarray  # (n, 64) float32 in [0, 1]
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_demo_data(seed: int = DEMO_SEED) -> DemoData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=0.35, random_state=seed, stratify=digits.target
    )
    return DemoData(x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64))


def darken(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dim lighting: scale each image's intensity down."""
    factor = rng.uniform(*_DARK_RANGE, size=(len(x), 1)).astype(np.float32)
    return x * factor


def train_mlp(
    hidden: int, x: np.ndarray, y: np.ndarray, seed: int, background_level: float | None = None, epochs: int = 60
) -> torch.nn.Module:
    """A small MLP on (n, 64) digits; the same data and ``seed`` give the same net (one torch thread)."""
    return _train(hidden, x, y, seed, background_level, epochs)


def save_torchscript(net: torch.nn.Module, path: Path) -> Path:
    import torch

    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 64)), str(path))  # type: ignore[no-untyped-call]
    return path


def _train(
    hidden: int, x: np.ndarray, y: np.ndarray, seed: int, background_level: float | None = None, epochs: int = 60
) -> torch.nn.Module:
    import torch
    from torch import nn

    class SubtractBackground(nn.Module):
        """Background subtraction at a fixed level: cleaner strokes in good light, faint ones vanish in the dark."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - (background_level or 0.0)).clamp(min=0.0)

    torch.manual_seed(seed)
    layers = [nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)]
    net = nn.Sequential(*([SubtractBackground()] if background_level is not None else []), *layers)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(128):  # type: ignore[no-untyped-call]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()  # type: ignore[no-untyped-call]
            opt.step()
    return net.eval()


def _accuracy(net: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.inference_mode():
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def train_demo_models(out_dir: Path, seed: int = DEMO_SEED) -> dict[str, Path]:
    """Train (or reuse cached) production and candidate; returns their TorchScript paths."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"production": out_dir / "production.pt", "candidate": out_dir / "candidate.pt"}
    card = out_dir / "models.json"
    if all(p.exists() for p in paths.values()) and card.exists():
        return paths
    torch.set_num_threads(1)
    data = load_demo_data(seed)
    rng = np.random.default_rng(seed)
    x_aug = np.concatenate([data.x_train, darken(data.x_train, rng)])
    y_aug = np.concatenate([data.y_train, data.y_train])
    nets = {
        "production": _train(64, x_aug, y_aug, seed),
        "candidate": _train(64, data.x_train, data.y_train, seed + 1, background_level=0.2),
    }
    x_dark = darken(data.x_test, np.random.default_rng(seed + 2))
    summary = {}
    for role, net in nets.items():
        save_torchscript(net, paths[role])
        summary[role] = {
            "accuracy_test": round(_accuracy(net, data.x_test, data.y_test), 4),
            "accuracy_test_dark": round(_accuracy(net, x_dark, data.y_test), 4),
        }
    card.write_text(json.dumps(summary, indent=2))
    return paths

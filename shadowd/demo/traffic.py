"""Demo traffic: held-out digits as live requests, a share of them in dim
light at night, with the features slices are defined on, and the true label
kept aside for delayed feedback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from shadowd.demo.models import DEMO_SEED, darken, load_demo_data

__all__ = ["DEMO_SLICES", "DemoRequest", "demo_requests"]

# The demo config's slices, in the config's own declarative form.
DEMO_SLICES = [
    {"name": "dark", "where": {"field": "brightness", "op": "lt", "value": 0.13}},
    {"name": "daylight", "where": {"field": "brightness", "op": "ge", "value": 0.13}},
    {
        "name": "night",
        "where": {"any": [{"field": "hour", "op": "ge", "value": 21}, {"field": "hour", "op": "lt", "value": 6}]},
    },
    {"name": "new_users", "where": {"field": "new_user", "op": "eq", "value": True}},
]


@dataclass(frozen=True)
class DemoRequest:
    request_id: str
    body: dict[str, Any]
    label: int


def demo_requests(n: int, run_id: str = "0", seed: int = DEMO_SEED + 100) -> Iterator[DemoRequest]:
    """Hours uniform over the day; dim light for 80 % of night requests (21:00-06:00) and 10 % of day ones.
    The same seed gives the same traffic; ``run_id`` keeps request ids unique across runs."""
    data = load_demo_data()
    rng = np.random.default_rng(seed)
    for i in range(n):
        k = int(rng.integers(len(data.x_test)))
        x = data.x_test[k : k + 1]
        hour = int(rng.integers(0, 24))
        night = hour >= 21 or hour < 6
        if rng.random() < (0.8 if night else 0.1):
            x = darken(x, rng)
        features = {
            "brightness": round(float(x.mean()), 4),
            "hour": hour,
            "new_user": bool(rng.random() < 0.2),
        }
        body = {"inputs": np.round(x[0], 4).tolist(), "features": features}
        yield DemoRequest(f"demo-{run_id}-{i:06d}", body, int(data.y_test[k]))

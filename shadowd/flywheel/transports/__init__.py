"""Annotation transports: what carries items to the on-call rotation and labels back.

One module per kind, each holding its config model and every side of the
queue (see ``base.Transport``); the tagged union below is the registry, chosen
by ``annotations.sink.type``: a new transport is one new module (a config
with ``type: Literal[...]`` and ``build()``, and the transport), its tests
and one member here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from shadowd.flywheel.transports.base import Backlog, Transport, consumer_group
from shadowd.flywheel.transports.kafka import KafkaTransportConfig
from shadowd.flywheel.transports.spool import SpoolTransportConfig
from shadowd.sampling import Shard

__all__ = [
    "Backlog",
    "KafkaTransportConfig",
    "SpoolTransportConfig",
    "Transport",
    "TransportConfig",
    "build_transport",
    "consumer_group",
]

# The registry of transports, chosen by `annotations.sink.type`.
TransportConfig = Annotated[SpoolTransportConfig | KafkaTransportConfig, Field(discriminator="type")]


def build_transport(
    cfg: SpoolTransportConfig | KafkaTransportConfig, data_dir: Path, shard: Shard | None = None
) -> Transport:
    """The transport a config names (each config builds its own); ``shard``: the hub shard it serves."""
    return cfg.build(data_dir, shard)

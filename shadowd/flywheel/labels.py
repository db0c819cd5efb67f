"""The local labels file: every label an annotator gave on this machine.

Append-only JSON lines, each fsync'd before the queue item counts as done.
With Kafka it is the annotator's record of what it already labelled (an item
delivered again is passed over by request id); embedded, it is the labels
channel itself: the daemon's spool transport tails it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from shadowd.records import Label

__all__ = ["LabelsFile", "labels_path"]


def labels_path(data_dir: Path) -> Path:
    return Path(data_dir) / "labels" / "labels.jsonl"


class LabelsFile:
    """Append-only local record of labels (JSON lines, fsync'd), and the ids already labelled."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._ids: set[str] = set()
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    if line.endswith("\n"):
                        self._ids.add(json.loads(line)["request_id"])

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._ids

    def append(self, label: Label) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(label.model_dump_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._ids.add(label.request_id)

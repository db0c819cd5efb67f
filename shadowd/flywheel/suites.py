"""Hard-example suites: labelled items, kept as offline regression tests.

Data flow: ``Flywheel`` joins a label to a pair that was queued for a human
(or had a high loss) -> ``SuiteStore.add`` appends it to every suite it
belongs to: ``slice.<name>`` per slice, ``tag.<reason>`` per failure tag
(divergent, high_loss, candidate_wrong, ...) and ``all``. ``shadowd replay``
runs a model over suites (``replay_suite``) and checks thresholds: the test a
new candidate must pass before it sees shadow traffic.

On disk, one folder per suite under the folder the user chose::

    <suites_dir>/slice.dark/examples.jsonl   one SuiteExample per line (fsync'd)
    <suites_dir>/slice.dark/manifest.json    schema_version, version, task, count, sha256 of examples

The manifest is the commit point: an example is appended (fsync) first, then
the manifest is replaced atomically. Readers take the first ``count`` lines
and check their sha256, so a reader racing the writer sees the last commit.
A crash between the two leaves the file ahead of its manifest: the store
repairs the suite when it opens it (complete examples kept, a torn last line
cut, an unreadable line moved to ``examples.dead-letter.jsonl``, the manifest
rebuilt); a suite never stays unloadable.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shadowd.compare.loss import example_loss
from shadowd.config import SuiteThresholds
from shadowd.errors import SuiteError
from shadowd.flywheel.spool import write_atomic

__all__ = [
    "SUITE_SCHEMA_VERSION",
    "SuiteExample",
    "SuiteManifest",
    "SuiteResult",
    "SuiteStore",
    "load_suite",
    "replay_suite",
    "resolve_suites",
    "suite_names",
]

log = logging.getLogger(__name__)

SUITE_SCHEMA_VERSION = 1
_NAME_OK = re.compile(r"[^a-z0-9_.-]+")


class SuiteExample(BaseModel):
    """One labelled hard example."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = Field(SUITE_SCHEMA_VERSION, description="Suite example schema version.")
    request_id: str = Field(description="The request it came from.")
    inputs: Any = Field(description="Model inputs, as the request sent them.")
    label: float | int | list[float] = Field(description="Ground truth: class index or target value(s).")
    slices: list[str] = Field(default_factory=list, description="Slices the request belonged to.")
    tags: list[str] = Field(default_factory=list, description="Why it is hard: queue reasons and outcome tags.")
    features: dict[str, Any] = Field(default_factory=dict, description="Request features (redacted).")
    production: list[float] | None = Field(None, description="Production's output when it was served.")
    candidate: list[float] | None = Field(None, description="The candidate's output at the time.")
    label_source: str = Field("feedback", description="feedback or annotator.")
    selected_by: str | None = Field(
        None,
        description="The candidate whose disagreement with production (or high loss) chose this example; "
        "replaying that same candidate on it is circular, so replay leaves it out.",
    )
    ts: float = Field(description="Unix time the label was joined.")


class SuiteManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = Field(SUITE_SCHEMA_VERSION, description="Suite file format version.")
    name: str = Field(description="Suite name, e.g. slice.dark or tag.divergent.")
    task: Literal["classification", "regression"] = Field(description="What the labels are.")
    version: int = Field(0, description="Increases by one with every example added.")
    count: int = Field(0, description="Examples in examples.jsonl.")
    sha256: str = Field("", description="sha256 of examples.jsonl, to notice edits and truncation.")
    updated_ts: float = Field(0.0, description="Unix time of the last change.")


def _safe(name: str) -> str:
    return _NAME_OK.sub("_", name.lower()).strip("_.") or "unnamed"


def suite_names(slices: Iterable[str], tags: Iterable[str]) -> list[str]:
    """The suites an example belongs to."""
    return ["all", *(f"slice.{_safe(s)}" for s in slices), *(f"tag.{_safe(t)}" for t in tags)]


class SuiteStore:
    """Appends examples to suites; one writer (the comparator process)."""

    def __init__(self, directory: str | Path, task: str, clock: Callable[[], float]):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.task = task
        self._clock = clock
        self._lock = threading.Lock()
        self._manifests: dict[str, SuiteManifest] = {}
        self._ids: dict[str, set[str]] = {}
        self._hashes: dict[str, Any] = {}  # running sha256 per suite: an add costs O(line), not O(file)

    def _open(self, name: str) -> SuiteManifest:
        if name not in self._manifests:
            folder = self.directory / name
            mpath = folder / "manifest.json"
            if mpath.exists() or (folder / "examples.jsonl").exists():
                try:
                    manifest, examples = load_suite(folder, exact=True)
                except _Unreadable as err:
                    log.warning("suite %s: %s; repairing it", folder, err)
                    manifest, examples = repair_suite(folder, self.task, self._clock)
                if manifest.task != self.task:
                    raise SuiteError(f"{mpath}: suite is for task {manifest.task!r}, not {self.task!r}")
                self._ids[name] = {e.request_id for e in examples}
                self._hashes[name] = hashlib.sha256((folder / "examples.jsonl").read_bytes())
            else:
                folder.mkdir(parents=True, exist_ok=True)
                manifest = SuiteManifest(name=name, task=self.task)  # type: ignore[arg-type]
                self._ids[name] = set()
                self._hashes[name] = hashlib.sha256()
            self._manifests[name] = manifest
        return self._manifests[name]

    def add(self, example: SuiteExample) -> list[str]:
        """Append to every suite the example belongs to (once per request id); return their names."""
        written = []
        with self._lock:
            for name in suite_names(example.slices, example.tags):
                manifest = self._open(name)
                if example.request_id in self._ids[name]:
                    continue
                folder = self.directory / name
                line = (example.model_dump_json() + "\n").encode()
                with open(folder / "examples.jsonl", "ab") as f:
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
                self._hashes[name].update(line)
                manifest = manifest.model_copy(
                    update={
                        "version": manifest.version + 1,
                        "count": manifest.count + 1,
                        "sha256": self._hashes[name].hexdigest(),
                        "updated_ts": self._clock(),
                    }
                )
                write_atomic(folder / "manifest.json", manifest.model_dump_json(indent=2))  # the commit
                self._manifests[name] = manifest
                self._ids[name].add(example.request_id)
                written.append(name)
        return written

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {n: m.count for n, m in self._manifests.items()}


class _Unreadable(SuiteError):
    """The suite's files disagree (a crash between append and manifest, or an edit): repairable."""


def _read_manifest(path: Path) -> SuiteManifest:
    try:
        manifest = SuiteManifest.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise _Unreadable(f"{path}: missing") from None
    except (OSError, ValueError) as err:
        raise _Unreadable(f"{path}: not a suite manifest: {err}") from None
    if manifest.schema_version != SUITE_SCHEMA_VERSION:
        raise SuiteError(f"{path}: schema_version {manifest.schema_version}; this shadowd reads {SUITE_SCHEMA_VERSION}")
    return manifest


def load_suite(folder: str | Path, exact: bool = False) -> tuple[SuiteManifest, list[SuiteExample]]:
    """Read a suite folder: the ``count`` examples its manifest committed, checked against its sha256.

    Lines past ``count`` are an append not yet committed (a writer is at work, or crashed between
    append and manifest): ignored, unless ``exact`` (the writer opening its own suite) asks for a
    file that matches its manifest to the byte.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder / "manifest.json")
    path = folder / "examples.jsonl"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _Unreadable(f"{path}: missing") from None
    lines = data.splitlines(keepends=True)
    committed = lines[: manifest.count]
    body = b"".join(committed)
    if (
        len(committed) != manifest.count
        or hashlib.sha256(body).hexdigest() != manifest.sha256
        or (exact and len(body) != len(data))
    ):
        raise _Unreadable(
            f"{path}: {len(lines)} lines do not match the manifest ({manifest.count} examples, version "
            f"{manifest.version}); the file was edited or truncated, or a write was cut short"
        )
    examples = []
    for n, line in enumerate(committed, 1):
        try:
            examples.append(SuiteExample.model_validate_json(line))
        except ValueError as err:
            raise _Unreadable(f"{path}: line {n}: {err}") from None
    return manifest, examples


def repair_suite(folder: Path, task: str, clock: Callable[[], float]) -> tuple[SuiteManifest, list[SuiteExample]]:
    """Make a suite loadable again from what its examples file holds; say what was dropped."""
    path, mpath = folder / "examples.jsonl", folder / "manifest.json"
    data = path.read_bytes() if path.exists() else b""
    examples: list[SuiteExample] = []
    good: list[bytes] = []
    bad: list[bytes] = []
    seen: set[str] = set()
    for raw in data.splitlines(keepends=True):
        if not raw.endswith(b"\n"):
            log.warning("suite %s: cutting a torn last line (%d bytes)", folder, len(raw))
            continue
        try:
            example = SuiteExample.model_validate_json(raw)
        except ValueError:
            bad.append(raw)
            continue
        if example.request_id in seen:
            continue
        seen.add(example.request_id)
        examples.append(example)
        good.append(raw)
    if bad:
        with open(folder / "examples.dead-letter.jsonl", "ab") as f:
            f.writelines(bad)
            f.flush()
            os.fsync(f.fileno())
        log.error("suite %s: %d unreadable lines moved to examples.dead-letter.jsonl", folder, len(bad))
    body = b"".join(good)
    if body != data:
        write_atomic(path, body.decode("utf-8"))
    try:
        old = _read_manifest(mpath)
    except _Unreadable:
        old = SuiteManifest(name=folder.name, task=task)  # type: ignore[arg-type]
    manifest = old.model_copy(
        update={
            "version": max(old.version + 1, len(examples)),
            "count": len(examples),
            "sha256": hashlib.sha256(body).hexdigest(),
            "updated_ts": clock(),
        }
    )
    write_atomic(mpath, manifest.model_dump_json(indent=2))
    log.warning("suite %s repaired: %d examples (the manifest said %d)", folder, len(examples), old.count)
    return manifest, examples


def _suite_folders(suites_dir: Path, name: str = "*") -> dict[str, list[Path]]:
    """The folders of suite ``name`` (every suite: '*') in ``suites_dir``: its own, and one per shard of a
    sharded hub (``<suites_dir>/shard-<i>/<name>``), by suite folder name."""
    found: dict[str, list[Path]] = {}
    for pattern in (f"{name}/manifest.json", f"shard-*/{name}/manifest.json"):
        for manifest in sorted(Path(suites_dir).glob(pattern)):
            if not manifest.parent.name.startswith("shard-"):
                found.setdefault(manifest.parent.name, []).append(manifest.parent)
    return found


def resolve_suites(specs: Sequence[str], suites_dir: Path | None) -> list[list[Path]]:
    """Suites from names (looked up in ``suites_dir``) or paths; 'all-suites' means every one. Each suite is
    its folders: one, or one per hub shard that wrote it, replayed together as one suite."""
    out: list[list[Path]] = []
    for spec in specs:
        if spec == "all-suites" and suites_dir is not None:
            out += [folders for _, folders in sorted(_suite_folders(suites_dir).items())]
            continue
        path = Path(spec)
        folders = _suite_folders(suites_dir, spec).get(spec) if suites_dir is not None and "/" not in spec else None
        if (path / "manifest.json").exists():
            out.append([path])
        elif folders:
            out.append(folders)
        else:
            where = f" or in {suites_dir}" if suites_dir is not None else ""
            raise SuiteError(f"no suite {spec!r} (a folder with manifest.json) here{where}")
    return out


class SuiteResult(BaseModel):
    """One suite replayed: metrics, thresholds and the verdict."""

    model_config = ConfigDict(extra="forbid")
    suite: str = Field(description="Suite name.")
    version: int = Field(description="Suite version replayed.")
    examples: int = Field(description="Examples replayed.")
    accuracy: float | None = Field(None, description="Classification: share of top labels equal to the label.")
    mean_loss: float = Field(description="Mean per-example loss (NLL or squared error).")
    mae: float | None = Field(None, description="Regression: mean absolute error.")
    passed: bool = Field(description="Every threshold met.")
    reasons: list[str] = Field(default_factory=list, description="Thresholds missed, with the numbers.")
    excluded_own: int = Field(
        0, description="Examples left out because this model's own disagreements selected them (circular)."
    )


def replay_suite(
    folder: str | Path | Sequence[Path],
    predict: Callable[[np.ndarray], np.ndarray],
    input_shape: Sequence[int],
    thresholds: SuiteThresholds,
    batch_size: int = 256,
    exclude_selected_by: str | None = None,
) -> SuiteResult:
    """Run ``predict`` (batch -> (n, k) probabilities or values) over one suite and check thresholds.

    Examples selected by the disagreements of candidate ``exclude_selected_by``
    are left out: a candidate judged on the inputs where it already differed
    from production fails by construction, which says nothing (suites gate the
    *next* candidate). Replay a baseline with the same exclusion, so both run
    on the same examples. Several folders (one suite written by several hub
    shards) replay as one suite, its version the sum of theirs.
    """
    folders = [Path(folder)] if isinstance(folder, str | Path) else list(folder)
    parts = [load_suite(f) for f in folders]
    manifest = parts[0][0].model_copy(update={"version": sum(m.version for m, _ in parts)})
    examples = [e for _, part in parts for e in part]
    folder = folders[0]
    if not examples:
        raise SuiteError(f"{folder}: suite {manifest.name} is empty")
    own = 0
    if exclude_selected_by is not None:
        kept = [e for e in examples if e.selected_by != exclude_selected_by]
        own = len(examples) - len(kept)
        examples = kept
    if not examples:
        note = f"all {own} examples were selected by {exclude_selected_by} itself: not a test of it (--include-own)"
        return SuiteResult(
            suite=manifest.name,
            version=manifest.version,
            examples=0,
            mean_loss=0.0,
            passed=True,
            reasons=[note],
            excluded_own=own,
        )
    try:
        x = np.asarray([e.inputs for e in examples], dtype=np.float32).reshape(len(examples), *input_shape)
    except ValueError as err:
        raise SuiteError(f"{folder}: inputs do not fit the model's input_shape {list(input_shape)}: {err}") from None
    outputs = np.concatenate(
        [
            np.asarray(predict(x[i : i + batch_size]), dtype=np.float64).reshape(len(x[i : i + batch_size]), -1)
            for i in range(0, len(x), batch_size)
        ]
    )
    losses = [example_loss(manifest.task, list(out), e.label) for out, e in zip(outputs, examples, strict=True)]
    mean_loss = float(np.mean(losses))
    reasons = []
    accuracy = mae = None
    if manifest.task == "classification":
        accuracy = float(np.mean([int(np.argmax(out)) == e.label for out, e in zip(outputs, examples, strict=True)]))
        if accuracy < thresholds.min_accuracy:
            reasons.append(f"accuracy {accuracy:.3f} < min_accuracy {thresholds.min_accuracy}")
    else:
        targets = [np.atleast_1d(np.asarray(e.label, dtype=np.float64)) for e in examples]
        mae = float(np.mean([np.mean(np.abs(out - t)) for out, t in zip(outputs, targets, strict=True)]))
        if thresholds.max_mae is not None and mae > thresholds.max_mae:
            reasons.append(f"mae {mae:.4g} > max_mae {thresholds.max_mae}")
    if thresholds.max_mean_loss is not None and mean_loss > thresholds.max_mean_loss:
        reasons.append(f"mean loss {mean_loss:.4g} > max_mean_loss {thresholds.max_mean_loss}")
    return SuiteResult(
        suite=manifest.name,
        version=manifest.version,
        examples=len(examples),
        accuracy=accuracy,
        mean_loss=mean_loss,
        mae=mae,
        passed=not reasons,
        reasons=reasons,
        excluded_own=own,
    )

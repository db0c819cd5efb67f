"""Reference profile of training data: what live traffic is compared against for drift.

Where it sits: built offline by ``shadowd profile build DATA --out PROFILE``
from the training features (CSV, JSONL or NPZ), written as versioned JSON,
and loaded by the comparator's ``DriftMonitor`` (``expectations.drift.profile``).

Per numeric feature it keeps quantile bin edges with the training counts in
each bin (for PSI), summary statistics, and a seeded random sample of values
(for two-sample KS tests); per categorical feature the category counts (for
PSI and chi-square). Optionally the same for the outputs column (class
labels, or regression targets), so both models' output distributions can be
checked too.

Column names: a CSV column or JSONL key is a feature; a list value (JSONL)
or a 2-D array (NPZ) named ``x`` becomes features ``x[0]``, ``x[1]``, ...;
so ``inputs[3]`` is element 3 of the request's flattened ``inputs``.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, ValidationError, model_validator

from shadowd.errors import ConfigError

__all__ = [
    "OTHER",
    "PROFILE_SCHEMA_VERSION",
    "CategoricalProfile",
    "NumericProfile",
    "Profile",
    "bin_index",
    "build_profile",
    "category_key",
    "load_profile",
    "read_table",
    "save_profile",
]

PROFILE_SCHEMA_VERSION = 1
OTHER = "__other__"  # categories beyond max_categories are counted here


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumericProfile(_Strict):
    kind: Literal["numeric"] = "numeric"
    count: int = Field(ge=0, description="Non-missing values in the training data.")
    missing: int = Field(ge=0, description="Missing (null, NaN, non-numeric) values in the training data.")
    stats: dict[str, float] = Field(description="mean, std, min, p01, p50, p99, max of the non-missing values.")
    bin_edges: list[float] = Field(
        min_length=1,
        description="Sorted unique quantile edges; live values below the first or above the last "
        "fall into the outer bins.",
    )
    bin_counts: list[int] = Field(description="Training values per bin; len(bin_edges) - 1 bins (at least one).")
    sample: list[float] = Field(description="Seeded random sample of training values, for two-sample tests.")

    @model_validator(mode="after")
    def _shapes(self) -> NumericProfile:
        want = max(len(self.bin_edges) - 1, 1)
        if len(self.bin_counts) != want:
            raise ValueError(f"{len(self.bin_edges)} bin_edges need {want} bin_counts, got {len(self.bin_counts)}")
        if any(b <= a for a, b in itertools.pairwise(self.bin_edges)):
            raise ValueError("bin_edges must be strictly increasing")
        return self

    @property
    def inner_edges(self) -> np.ndarray:
        return np.asarray(self.bin_edges[1:-1], dtype=float)


class CategoricalProfile(_Strict):
    kind: Literal["categorical"] = "categorical"
    count: int = Field(ge=0, description="Non-missing values in the training data.")
    missing: int = Field(ge=0, description="Missing (null) values in the training data.")
    frequencies: dict[str, int] = Field(
        description=f"Training count per category key (see category_key); rare ones pooled as {OTHER!r}."
    )


ColumnProfile = Annotated[NumericProfile | CategoricalProfile, Discriminator("kind")]


class Profile(_Strict):
    schema_version: int = Field(PROFILE_SCHEMA_VERSION, description="Profile schema version.")
    created_ts: float = Field(description="Unix time the profile was built.")
    source: str = Field(description="The data file it was built from.")
    rows: int = Field(ge=0, description="Rows in the data.")
    features: dict[str, ColumnProfile] = Field(description="Per feature (request feature or 'inputs[i]').")
    outputs: ColumnProfile | None = Field(
        None, description="Output distribution: class labels (categorical) or regression targets (numeric)."
    )

    @model_validator(mode="after")
    def _version(self) -> Profile:
        if self.schema_version != PROFILE_SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is not supported (this shadowd reads "
                f"{PROFILE_SCHEMA_VERSION}); rebuild it with 'shadowd profile build'"
            )
        return self


def category_key(value: Any) -> str:
    """The one string a categorical value is counted under, in the profile and live alike.

    Strings are themselves; anything else is its JSON text, so 1, "1" and true stay apart.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a class label read from a float array
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, float) and value.is_integer():
            value = int(value)
    return json.dumps(value)


def bin_index(inner_edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin of each value for edges e0 < e1 < ... < eK: bin i holds e_i <= x < e_{i+1}, outer bins open."""
    return np.searchsorted(inner_edges, values, side="right")


# --- reading training data ---


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v == "")


def _expand(name: str, value: Any, row: dict[str, Any]) -> None:
    if isinstance(value, list):
        flat = np.asarray(value, dtype=object).ravel() if value and isinstance(value[0], list) else value
        for i, v in enumerate(flat):
            row[f"{name}[{i}]"] = v
    else:
        row[name] = value


def _columns_from_rows(rows: list[dict[str, Any]]) -> dict[str, list[Any] | np.ndarray]:
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    return {n: [r.get(n) for r in rows] for n in names}


def _csv_value(text: str) -> Any:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def read_table(path: str | Path) -> dict[str, list[Any] | np.ndarray]:
    """Read training data as columns; ConfigError names the file and line when it cannot."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                rows = [{k: _csv_value(v or "") for k, v in r.items() if k is not None} for r in reader]
                if reader.fieldnames is None:
                    raise ConfigError(f"{path}: empty CSV file (no header row)")
            return _columns_from_rows(rows)
        if suffix in (".jsonl", ".ndjson"):
            rows = []
            with path.open() as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ConfigError(f"{path}: line {lineno}: not valid JSON: {err.msg}") from None
                    if not isinstance(obj, dict):
                        raise ConfigError(f"{path}: line {lineno}: each line must be a JSON object")
                    row: dict[str, Any] = {}
                    for k, v in obj.items():
                        _expand(k, v, row)
                    rows.append(row)
            return _columns_from_rows(rows)
        if suffix == ".npz":
            cols: dict[str, list[Any] | np.ndarray] = {}
            with np.load(path, allow_pickle=False) as data:
                for name in data.files:
                    arr = data[name]
                    if arr.ndim == 1:
                        cols[name] = arr
                    elif arr.ndim >= 2:
                        flat = arr.reshape(arr.shape[0], -1)
                        for i in range(flat.shape[1]):
                            cols[f"{name}[{i}]"] = flat[:, i]
            lengths = {len(v) for v in cols.values()}
            if len(lengths) > 1:
                raise ConfigError(f"{path}: arrays have different row counts {sorted(lengths)}")
            return cols
    except OSError as err:
        raise ConfigError(f"{path}: cannot read training data: {err.strerror or err}") from None
    except ValueError as err:  # np.load on a corrupt file
        raise ConfigError(f"{path}: cannot read training data: {err}") from None
    raise ConfigError(f"{path}: unknown data format {suffix!r}; use .csv, .jsonl or .npz")


# --- building ---


def _numeric_values(values: list[Any] | np.ndarray) -> tuple[np.ndarray, int] | None:
    """Non-missing values as floats and the missing count; None when the column is not numeric."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        arr = values.astype(float)
        keep = np.isfinite(arr)
        return arr[keep], int(arr.size - keep.sum())
    nums = []
    missing = 0
    for v in values:
        if _is_missing(v):
            missing += 1
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            nums.append(float(v))
        else:
            return None
    arr = np.asarray(nums, dtype=float)
    keep = np.isfinite(arr)
    return arr[keep], missing + int(arr.size - keep.sum())


def _numeric_profile(
    arr: np.ndarray, missing: int, bins: int, sample_size: int, rng: np.random.Generator
) -> NumericProfile:
    if arr.size == 0:
        return NumericProfile(count=0, missing=missing, stats={}, bin_edges=[0.0], bin_counts=[0], sample=[])
    edges = np.unique(np.quantile(arr, np.linspace(0, 1, bins + 1)))
    counts = np.bincount(bin_index(edges[1:-1], arr), minlength=max(len(edges) - 1, 1))
    sample = arr if arr.size <= sample_size else rng.choice(arr, size=sample_size, replace=False)
    q = np.quantile(arr, [0.01, 0.5, 0.99])
    stats = {
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "min": float(arr.min()),
        "p01": float(q[0]),
        "p50": float(q[1]),
        "p99": float(q[2]),
        "max": float(arr.max()),
    }
    return NumericProfile(
        count=int(arr.size),
        missing=missing,
        stats=stats,
        bin_edges=[float(e) for e in edges],
        bin_counts=[int(c) for c in counts],
        sample=[float(v) for v in sample],
    )


def _categorical_profile(values: list[Any] | np.ndarray, max_categories: int) -> CategoricalProfile:
    vals = values.tolist() if isinstance(values, np.ndarray) else values
    missing = sum(1 for v in vals if _is_missing(v))
    counts = Counter(category_key(v) for v in vals if not _is_missing(v))
    top = dict(counts.most_common(max_categories))
    rest = sum(counts.values()) - sum(top.values())
    if rest:
        top[OTHER] = top.get(OTHER, 0) + rest
    return CategoricalProfile(count=sum(counts.values()), missing=missing, frequencies=top)


def _column(
    values: list[Any] | np.ndarray,
    categorical: bool,
    bins: int,
    sample_size: int,
    max_categories: int,
    rng: np.random.Generator,
) -> NumericProfile | CategoricalProfile:
    numeric = None if categorical else _numeric_values(values)
    if numeric is None:
        return _categorical_profile(values, max_categories)
    return _numeric_profile(numeric[0], numeric[1], bins, sample_size, rng)


def build_profile(
    columns: Mapping[str, list[Any] | np.ndarray],
    *,
    source: str = "<memory>",
    output_column: str | None = None,
    output_kind: Literal["class", "value"] = "class",
    categorical: list[str] | tuple[str, ...] = (),
    bins: int = 10,
    sample_size: int = 2000,
    max_categories: int = 100,
    seed: int = 0,
    now_s: float | None = None,
) -> Profile:
    """Profile training columns. Non-numeric columns, and those named in ``categorical``, are categorical.

    ``output_column`` (class labels for ``output_kind='class'``, targets for
    ``'value'``) becomes the outputs profile instead of a feature.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    unknown = sorted(set(categorical) - set(columns))
    if unknown:
        raise ConfigError(f"{source}: --categorical names unknown column(s) {', '.join(unknown)}")
    if output_column is not None and output_column not in columns:
        raise ConfigError(f"{source}: output column {output_column!r} not found; columns are {', '.join(columns)}")
    rng = np.random.default_rng(seed)
    feats = {}
    for name, values in columns.items():
        if name == output_column:
            continue
        feats[name] = _column(values, name in categorical, bins, sample_size, max_categories, rng)
    outputs = None
    if output_column is not None:
        outputs = _column(columns[output_column], output_kind == "class", bins, sample_size, max_categories, rng)
    rows = len(next(iter(columns.values()))) if columns else 0
    return Profile(
        created_ts=time.time() if now_s is None else now_s, source=source, rows=rows, features=feats, outputs=outputs
    )


def save_profile(profile: Profile, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(profile.model_dump_json(indent=1))
    tmp.replace(path)  # a reader never sees half a profile
    return path


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile; ConfigError names the file and the bad key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read drift profile: {err.strerror or err}") from None
    try:
        return Profile.model_validate_json(text)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {err.error_count() - 1} more errors)" if err.error_count() > 1 else ""
        raise ConfigError(
            f"{path}: not a valid shadowd profile: {loc}: {first['msg'].removeprefix('Value error, ')}{more}"
        ) from None

"""What an annotator is shown of one queue item, as plain data: the browser page and Label Studio use it.

Data flow::

    AnnotationItem (from the queue) -> item_view(item, lane, config, now) -> JSON for the page
                                    -> input_view(...)  image pixels | table rows | text
                                    -> summary_text(...), png_bytes(...)  for Label Studio tasks

Everything here is data, never markup: feature values, details and model
names are hostile input and stay strings for the front end to show as text.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any

from shadowd.config import ShadowdConfig, WebAnnotateConfig
from shadowd.records import AnnotationItem, Lane, ModelOutput

__all__ = ["class_name", "input_view", "item_view", "png_bytes", "summary_text"]

_MAX_TEXT_CHARS = 20_000
_MAX_TABLE_ROWS = 256


def _flat(values: Any) -> list[float] | None:
    """The inputs as one flat list of finite floats, or None when they are not numbers all the way down."""
    out: list[float] = []

    def walk(v: Any) -> bool:
        if isinstance(v, bool):
            return False
        if isinstance(v, (int, float)):
            if not math.isfinite(v):
                return False
            out.append(float(v))
            return True
        if isinstance(v, list):
            return all(walk(x) for x in v)
        return False

    return out if walk(values) and out else None


def _image_shape(n: int, web: WebAnnotateConfig, input_shape: list[int]) -> list[int] | None:
    """[h, w, c] for n values: the configured image_shape, the model's 2-D/3-D input shape, or a square."""
    for shape in (web.image_shape, input_shape if len(input_shape) in (2, 3) else None):
        if shape is not None:
            full = [*shape, 1] if len(shape) == 2 else list(shape)
            if full[2] in (1, 3) and math.prod(full) == n:
                return full
    side = math.isqrt(n)
    if side * side == n and 4 <= side <= 64:
        return [side, side, 1]
    return None


def input_view(item: AnnotationItem, web: WebAnnotateConfig, input_shape: list[int]) -> dict[str, Any]:
    """How to show the inputs: ``{"kind": "image", "shape": [h, w, c], "pixels": [0..255]}``,
    ``{"kind": "table", "rows": [[name, value]]}`` or ``{"kind": "text", "text": ...}``."""
    if item.inputs is None:
        return {"kind": "text", "text": "(inputs not stored: shadow.store_inputs is off, or redacted)"}
    flat = _flat(item.inputs)
    kind = web.input_kind
    if kind == "auto":
        if flat is not None and _image_shape(len(flat), web, input_shape) is not None:
            kind = "image"
        elif flat is not None and len(flat) <= _MAX_TABLE_ROWS:
            kind = "table"
        else:
            kind = "text"
    if kind == "image" and flat is not None:
        shape = _image_shape(len(flat), web, input_shape)
        if shape is not None:
            lo, hi = min(flat), max(flat)
            span = hi - lo
            pixels = [round(255 * (v - lo) / span) if span > 0 else 0 for v in flat]
            return {"kind": "image", "shape": shape, "pixels": pixels, "min": lo, "max": hi}
    if kind in ("table", "image") and flat is not None:
        names = web.input_names or []
        rows = [[names[i] if i < len(names) else f"x[{i}]", f"{v:.6g}"] for i, v in enumerate(flat)]
        return {"kind": "table", "rows": rows[:_MAX_TABLE_ROWS], "more": max(0, len(rows) - _MAX_TABLE_ROWS)}
    text = item.inputs if isinstance(item.inputs, str) else json.dumps(item.inputs, ensure_ascii=False)
    return {"kind": "text", "text": text[:_MAX_TEXT_CHARS], "truncated": len(text) > _MAX_TEXT_CHARS}


def class_name(k: int, class_names: list[str] | None) -> str:
    return class_names[k] if class_names is not None and k < len(class_names) else str(k)


def _model_view(out: ModelOutput, task: str, class_names: list[str] | None) -> dict[str, Any]:
    view: dict[str, Any] = {"role": out.role, "model": out.model, "outcome": out.outcome, "detail": out.detail}
    if out.ok and out.values:
        if task == "classification":
            order = sorted(range(len(out.values)), key=lambda k: -out.values[k])  # type: ignore[index]
            view["top"] = order[0]
            view["probabilities"] = [[k, class_name(k, class_names), out.values[k]] for k in order]
        else:
            view["values"] = out.values
    return view


def item_view(item: AnnotationItem, lane: Lane, config: ShadowdConfig, now: float) -> dict[str, Any]:
    """One item as the page shows it: why it was queued, its slices and age, the inputs, both answers."""
    ann = config.annotations
    models = [_model_view(o, config.task, ann.class_names) for o in (item.production, item.candidate) if o is not None]
    n_classes = len(ann.class_names) if ann.class_names is not None else None
    if n_classes is None and item.production is not None and item.production.values:
        n_classes = len(item.production.values)
    return {
        "request_id": item.request_id,
        "lane": lane,
        "reason": item.reason,
        "detail": item.detail,
        "priority": item.priority,
        "inclusion": item.inclusion,
        "slices": item.slices,
        "created_ts": item.created_ts,
        "age_s": max(0.0, now - item.created_ts),
        "assignee": item.assignee,
        "features": [
            [k, v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)] for k, v in item.features.items()
        ],
        "inputs": input_view(item, ann.web, config.models.production.input_shape),
        "models": models,
        "task": config.task,
        "classes": [class_name(k, ann.class_names) for k in range(n_classes)] if n_classes else [],
    }


def summary_text(item: AnnotationItem, lane: Lane, task: str, class_names: list[str] | None) -> str:
    """Why the item was queued and what each model answered, in a few plain-text lines."""
    why = f"{item.reason}" + (f": {item.detail}" if item.detail else "")
    drawn = f", drawn with p={item.inclusion:.3g}" if item.inclusion else ""
    lines = [
        f"request {item.request_id} ({lane} lane{drawn})",
        f"why: {why}",
        f"slices: {', '.join(item.slices) or '-'}",
    ]
    for out in (item.production, item.candidate):
        if out is None:
            continue
        view = _model_view(out, task, class_names)
        if "probabilities" in view:
            shown = ", ".join(f"{name} {p:.2f}" for _, name, p in view["probabilities"][:3])
        elif "values" in view:
            shown = ", ".join(f"{v:.4g}" for v in view["values"])
        else:
            shown = f"{out.outcome}: {out.detail or ''}"
        lines.append(f"{out.role} ({out.model}): {shown}")
    for k, v in list(item.features.items())[:32]:
        lines.append(f"feature {k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"[:300])
    return "\n".join(lines)


def png_bytes(pixels: list[int], shape: list[int], scale: int = 1) -> bytes:
    """A PNG (8-bit grey or RGB) of ``pixels`` (row-major, 0..255), each pixel drawn ``scale`` x ``scale``."""
    h, w, c = shape
    color_type = 0 if c == 1 else 2
    rows = []
    for y in range(h):
        row = bytearray()
        for x in range(w):
            px = pixels[(y * w + x) * c : (y * w + x + 1) * c]
            row += bytes(px) * scale
        rows.append(b"\x00" + bytes(row))
    raw = b"".join(r for r in rows for _ in range(scale))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w * scale, h * scale, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")

"""The terminal front end of ``shadowd annotate``: show an item, read an answer.

Queue logic lives in ``annotate.Annotator``; this module only renders items
(rich) and parses what a person types. Everything that comes from an item or
a person (ids, features, details, model names, typed answers) is shown as
plain ``Text``, never parsed as rich markup or emoji codes: a feature value
``[/x]`` once raised, and the item came back to every annotator.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from shadowd.errors import AnnotateError
from shadowd.flywheel.annotate import Annotator, Answer, check_answer
from shadowd.records import AnnotationItem

__all__ = ["annotate_session", "parse_answer", "render_item"]


def _summary(values: Any) -> str:
    try:
        import numpy as np

        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return json.dumps(values)[:200]
    if arr.size == 0:
        return "[]"
    return f"shape {list(arr.shape)}, min {arr.min():.3g}, mean {arr.mean():.3g}, max {arr.max():.3g}"


def _image(values: Any) -> str | None:
    """A small square input (e.g. 8x8 digits) as shaded text, so a person can label it."""
    try:
        import numpy as np

        arr = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        return None
    side = round(arr.size**0.5)
    if side * side != arr.size or not 4 <= side <= 32 or not np.isfinite(arr).all():
        return None
    lo, hi = float(arr.min()), float(arr.max())
    shades = " .:-=+*#%@"
    norm = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    rows = norm.reshape(side, side)
    return "\n".join("".join(shades[min(9, int(v * 9.999))] * 2 for v in row) for row in rows)


def _top(values: list[float] | None, task: str) -> str:
    if not values:
        return "-"
    if task == "regression":
        return ", ".join(f"{v:.4g}" for v in values)
    order = sorted(range(len(values)), key=lambda k: -values[k])[:3]
    return "  ".join(f"class {k}: {values[k]:.2f}" for k in order)


def render_item(item: AnnotationItem, task: str) -> Panel:
    """A rich renderable of one item: why it was queued, inputs, both outputs."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    detail = f": {item.detail}" if item.detail else ""
    table.add_row("request", Text(item.request_id))
    table.add_row("why", Text(f"{item.reason} (priority {item.priority:.3g}){detail}"))
    table.add_row("slices", Text(", ".join(item.slices) or "-"))
    table.add_row("assigned", Text(item.assignee or "-"))
    if item.features:
        table.add_row("features", Text(json.dumps(item.features)[:300]))
    table.add_row("inputs", Text(_summary(item.inputs) if item.inputs is not None else "(not stored)"))
    for out in (item.production, item.candidate):
        if out is not None:
            shown = _top(out.values, task) if out.ok else f"{out.outcome}: {out.detail or ''}"
            table.add_row(Text(f"{out.role} ({out.model})"), Text(shown))
    parts: list[Any] = [table]
    picture = _image(item.inputs) if item.inputs is not None else None
    if picture:
        parts.append(Panel(Text(picture), title="inputs", expand=False))
    return Panel(Group(*parts), title=Text(f"annotation item ({item.reason})"))


def parse_answer(text: str, item: AnnotationItem, task: str) -> Answer | None:
    """A typed answer: a class index or value(s), 's' skip, 'b' bad data; None for 'q' (quit).

    Raises ValueError with a one-line reason for anything else.
    """
    text = text.strip()
    if text in ("q", "quit"):
        return None
    if text in ("s", "skip"):
        return "skip"
    if text in ("b", "bad", "bad_data"):
        return "bad_data"
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a label; type a number, s, b or q") from None
    if value in ("skip", "bad_data"):  # typed as JSON strings: not a label either
        raise ValueError(f"{text!r} is not a label; type a number, s, b or q")
    try:
        return check_answer(value, item, task)
    except ValueError:
        what = "a class index" if task == "classification" else "a value or a list of values"
        n = len(item.production.values or []) if item.production is not None else 0
        in_range = f" in 0..{n - 1}" if task == "classification" and n else ""
        raise ValueError(f"{text!r} is not {what}{in_range}") from None


def annotate_session(
    annotator: Annotator,
    console: Console,
    ask: Callable[[str], str],
    max_items: int | None = None,
    wait_s: float = 10.0,
) -> int:
    """Show items one at a time and record answers until the queue is empty, ``q``, or ``max_items``."""
    task = annotator.config.task
    done = 0
    console.print(
        Text.assemble("annotating as ", (annotator.annotator, "bold"), f" (rotation {annotator.rotation_name})")
    )
    while max_items is None or done < max_items:
        item = annotator.next_item(timeout_s=wait_s)
        if item is None:
            console.print("the queue is empty")
            break
        console.print(render_item(item, task))
        while True:
            try:
                answer = parse_answer(ask("label (class / value), s skip, b bad data, q quit"), item, task)
            except ValueError as err:
                console.print(Text(str(err), style="red"))
                continue
            if answer is None:
                return done
            try:
                label = annotator.submit(answer)
            except AnnotateError as err:
                console.print(Text(str(err), style="red"))
                continue
            console.print(Text(f"saved: {label.verdict} {'' if label.label is None else label.label}"))
            done += 1
            break
    return done

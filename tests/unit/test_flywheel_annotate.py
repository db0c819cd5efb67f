"""Annotator in embedded mode (the spool is the queue; no broker): one item at a time,
label persisted before the offset moves, a crash mid-item brings the item back."""

import io
import json

import pytest
from rich.console import Console

from shadowd.config import parse_config
from shadowd.errors import AnnotateError
from shadowd.flywheel.annotate import Annotator
from shadowd.flywheel.annotate_ui import annotate_session, parse_answer, render_item
from shadowd.flywheel.labels import LabelsFile
from shadowd.flywheel.spool import Spool
from shadowd.flywheel.transports.spool import spool_backlog
from shadowd.records import AnnotationItem, ModelOutput


def config(tmp_path):
    return parse_config(
        {
            "task": "classification",
            "data_dir": str(tmp_path),
            "models": {"production": {"name": "p", "kind": "python", "target": "m:f", "input_shape": [64]}},
            "annotations": {
                "rotation": {
                    "name": "digits",
                    "annotators": ["ana", "bo"],
                    "shift_s": 3600,
                    "start": "2020-01-01T00:00:00Z",
                }
            },
        }
    )


def item(i, created_ts=1000.0):
    return AnnotationItem(
        request_id=f"r{i}",
        reason="divergent",
        priority=0.7,
        slices=["dark"],
        inputs=[float(k % 16) for k in range(64)],
        production=ModelOutput(role="production", model="mlp", values=[0.1, 0.7, 0.2]),
        candidate=ModelOutput(role="candidate", model="bgsub", values=[0.6, 0.3, 0.1]),
        detail="top class 1 -> 0",
        created_ts=created_ts + i,
    )


def spool_items(tmp_path, items):
    with Spool(tmp_path / "spool") as sp:
        sp.append([(it.request_id, it.model_dump_json()) for it in items])


def test_items_one_at_a_time_and_labels_persisted_before_commit(tmp_path):
    cfg = config(tmp_path)
    spool_items(tmp_path, [item(i) for i in range(3)])
    ann = Annotator(cfg, annotator="ana", clock=lambda: 5000.0)
    first = ann.next_item(timeout_s=1)
    assert first.request_id == "r0"
    assert ann.next_item(timeout_s=1) is first  # the same one until it is answered
    lab = ann.submit(1)
    assert (lab.request_id, lab.label, lab.source, lab.annotator, lab.verdict) == ("r0", 1, "annotator", "ana", "label")
    assert ann.next_item(timeout_s=1).request_id == "r1"
    ann.submit("bad_data")
    assert ann.next_item(timeout_s=1).request_id == "r2"
    ann.submit("skip")
    assert ann.next_item(timeout_s=0.1) is None
    lines = [json.loads(x) for x in (tmp_path / "labels" / "labels.jsonl").read_text().splitlines()]
    assert [(x["request_id"], x["verdict"]) for x in lines] == [("r0", "label"), ("r1", "bad_data"), ("r2", "skip")]
    with pytest.raises(AnnotateError, match="no current item"):
        ann.submit(0)


def test_killed_mid_item_the_item_comes_back(tmp_path):
    cfg = config(tmp_path)
    spool_items(tmp_path, [item(i) for i in range(2)])
    a = Annotator(cfg, annotator="ana")
    assert a.next_item(timeout_s=1).request_id == "r0"
    a.close()  # died before answering: nothing committed (a dead process's spool lock goes with it)
    b = Annotator(cfg, annotator="bo")
    assert b.next_item(timeout_s=1).request_id == "r0"


def test_crash_after_label_before_commit_is_not_labelled_twice(tmp_path):
    cfg = config(tmp_path)
    spool_items(tmp_path, [item(i) for i in range(2)])
    a = Annotator(cfg, annotator="ana")
    a.next_item(timeout_s=1)
    a.queue._readers["review"].commit = lambda handle: (_ for _ in ()).throw(SystemExit("crash"))  # type: ignore[method-assign]  # dies between label and commit
    with pytest.raises(SystemExit):
        a.submit(1)
    a.close()  # the process is gone, and its spool lock with it
    b = Annotator(cfg, annotator="ana")
    assert b.next_item(timeout_s=1).request_id == "r1"  # r0 is labelled: passed over
    assert b.passed_over == 1
    assert len(LabelsFile(tmp_path / "labels" / "labels.jsonl").path.read_text().splitlines()) == 1


def test_on_call_person_is_the_default_annotator(tmp_path):
    cfg = config(tmp_path)
    # 2020-01-01T00:00Z + 1 h 30 min: the second shift, bo's
    ann = Annotator(cfg, clock=lambda: 1577836800.0 + 5400)
    assert ann.annotator == "bo" and ann.rotation_name == "digits"


def test_backlog_and_oldest_age(tmp_path):
    spool_items(tmp_path, [item(i, created_ts=1000.0) for i in range(5)])
    full = spool_backlog(tmp_path / "spool", 0, clock=lambda: 1100.0)
    assert (full.items, full.oldest_age_s) == (5, 100.0)
    b = spool_backlog(tmp_path / "spool", 2, clock=lambda: 1100.0)
    assert (b.items, b.oldest_age_s) == (3, 1100.0 - 1002.0)
    assert spool_backlog(tmp_path / "spool", 5, clock=lambda: 1100.0).items == 0


def test_parse_answer():
    it = item(0)
    assert parse_answer("2", it, "classification") == 2
    assert parse_answer("s", it, "classification") == "skip"
    assert parse_answer("b", it, "classification") == "bad_data"
    assert parse_answer("q", it, "classification") is None
    with pytest.raises(ValueError, match=r"not a class index in 0\.\.2"):
        parse_answer("3", it, "classification")
    with pytest.raises(ValueError, match="not a label"):
        parse_answer("cat", it, "classification")
    assert parse_answer("1.5", it, "regression") == 1.5
    assert parse_answer("[1, 2.5]", it, "regression") == [1.0, 2.5]


def test_session_shows_item_and_takes_answers(tmp_path):
    cfg = config(tmp_path)
    spool_items(tmp_path, [item(i) for i in range(3)])
    ann = Annotator(cfg, annotator="ana")
    out = io.StringIO()
    console = Console(file=out, width=100)
    answers = iter(["7", "1", "b", "q"])  # 7 is refused (3 classes), then 1; b; then quit on the third
    done = annotate_session(ann, console, lambda prompt: next(answers), wait_s=0.5)
    text = out.getvalue()
    assert done == 2
    assert "r0" in text and "divergent" in text and "top class 1 -> 0" in text
    assert "class 1: 0.70" in text and "class 0: 0.60" in text
    assert "not a class index" in text
    assert ann.next_item(timeout_s=0.1).request_id == "r2"  # quit left r2 unanswered


def test_render_small_square_inputs_as_a_picture():
    out = io.StringIO()
    Console(file=out, width=100).print(render_item(item(0), "classification"))
    assert "@@" in out.getvalue()  # the brightest pixels of the 8x8 input


def test_item_text_is_shown_as_text_never_as_markup(tmp_path):
    """A feature value "[/x]" made rich raise (a closing tag with nothing open): the item was never
    committed and came back to every annotator, stopping the rotation."""
    hostile = item(0).model_copy(
        update={
            "features": {"note": "[/x]", "user": "[bold red]eve[/bold red] :smile:"},
            "detail": "label [/]",
            "assignee": "[/assignee]",
            "candidate": ModelOutput(role="candidate", model="[/m]", outcome="error", detail="boom [/"),
        }
    )
    out = io.StringIO()
    Console(file=out, width=200).print(render_item(hostile, "classification"))
    text = out.getvalue()
    for raw in ("[/x]", "[bold red]eve[/bold red] :smile:", "label [/]", "[/assignee]", "candidate ([/m])", "boom [/"):
        assert raw in text, raw

    cfg = config(tmp_path)
    spool_items(tmp_path, [hostile, item(1)])
    ann = Annotator(cfg, annotator="[/ana]")
    out = io.StringIO()
    answers = iter(["[/x]", "1", "q"])  # a typed answer echoed in the error message is text too
    done = annotate_session(ann, Console(file=out, width=200), lambda prompt: next(answers), wait_s=0.5)
    assert done == 1 and "'[/x]' is not a label" in out.getvalue() and "[/ana]" in out.getvalue()
    assert "r0" in ann.labels  # labelled and committed: the rotation moves on

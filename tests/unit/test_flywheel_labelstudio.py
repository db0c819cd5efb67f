"""The Label Studio bridge's pure parts: the labelling config, tasks out, annotations back, the PNG.
(The bridge against a real Label Studio is tests/integration/test_label_studio.py.)"""

import struct
import xml.etree.ElementTree as ET
import zlib

import pytest

from shadowd.config import parse_config
from shadowd.errors import ConfigError
from shadowd.flywheel.item_view import png_bytes
from shadowd.flywheel.labelstudio import annotation_label, label_config, project_input_kind, task_for
from shadowd.records import AnnotationItem, ModelOutput

NAMES = ["cat", 'dog "big" <b>', "eel"]


def config(task="classification", input_shape=(64,), **annotations):
    raw = {
        "task": task,
        "models": {
            "production": {
                "name": "p",
                "kind": "python",
                "target": "m:f",
                "input_shape": list(input_shape),
                **({"output": "values"} if task == "regression" else {}),
            }
        },
        "annotations": {
            "label_studio": {"url": "http://ls:8080", "token_env": "LS_TOKEN"},
            **({"class_names": NAMES} if task == "classification" else {}),
            **annotations,
        },
    }
    return parse_config(raw)


def item(lane="evaluation"):
    return AnnotationItem(
        request_id="r1",
        reason="evaluation" if lane == "evaluation" else "divergent",
        priority=0.5,
        inputs=[float(k % 16) for k in range(64)],
        features={"note": "<script>x</script>"},
        production=ModelOutput(role="production", model="prod-v1", values=[0.1, 0.7, 0.2]),
        candidate=ModelOutput(role="candidate", model="cand-v2", values=[0.6, 0.3, 0.1]),
        created_ts=0,
        inclusion=0.25 if lane == "evaluation" else None,
    )


def test_label_studio_needs_class_names_for_classification():
    with pytest.raises(ConfigError, match=r"needs annotations\.class_names"):
        parse_config(
            {
                "task": "classification",
                "models": {"production": {"name": "p", "kind": "python", "target": "m:f", "input_shape": [4]}},
                "annotations": {"label_studio": {"url": "http://ls", "token_env": "X"}},
            }
        )


def test_label_config_is_well_formed_xml_with_escaped_class_names():
    root = ET.fromstring(label_config(config()))
    assert [c.get("value") for c in root.iter("Choice")] == [*NAMES, "bad data"]
    assert root.find("Image").get("value") == "$image"  # 64 inputs: an 8x8 picture
    assert project_input_kind(config(input_shape=(8,))) == "table"
    assert ET.fromstring(label_config(config(task="regression"))).find("Number") is not None


def test_task_carries_both_models_as_predictions_and_the_provenance():
    task = task_for(item(), "evaluation", config())
    data = task["data"]
    assert (data["shadowd_request_id"], data["shadowd_lane"], data["shadowd_inclusion"]) == ("r1", "evaluation", 0.25)
    assert "feature note: <script>x</script>" in data["summary"]  # text; Label Studio's Text tag shows it as text
    assert data["image"].startswith("data:image/png;base64,")
    preds = {p["model_version"]: (p["result"][0]["value"]["choices"], p["score"]) for p in task["predictions"]}
    assert preds == {"production:prod-v1": ([NAMES[1]], 0.7), "candidate:cand-v2": (["cat"], 0.6)}


def ls_task(*annotations, lane="evaluation", inclusion=0.25):
    return {
        "id": 9,
        "data": {"shadowd_request_id": "r1", "shadowd_lane": lane, "shadowd_inclusion": inclusion},
        "annotations": list(annotations),
    }


def choice(ann_id, value, name="label", cancelled=False):
    return {
        "id": ann_id,
        "was_cancelled": cancelled,
        "result": [{"from_name": name, "to_name": "summary", "type": "choices", "value": {"choices": [value]}}],
    }


def test_annotation_back_as_a_label_with_its_provenance():
    cfg = config()
    lab = annotation_label(ls_task(choice(5, NAMES[1])), cfg, "label-studio:ana", 10.0)
    assert (lab.request_id, lab.label, lab.verdict, lab.source) == ("r1", 1, "label", "annotator")
    assert (lab.lane, lab.inclusion, lab.annotator) == ("evaluation", 0.25, "label-studio:ana")
    # the first submitted annotation counts; a skipped one is not an answer
    first = annotation_label(ls_task(choice(7, "eel"), choice(3, "cat"), choice(1, "dog", cancelled=True)), cfg, "a", 0)
    assert first.label == 0
    assert annotation_label(ls_task(choice(1, "cat", cancelled=True)), cfg, "a", 0) is None
    assert annotation_label({"id": 1, "data": {"x": 1}, "annotations": [choice(1, "cat")]}, cfg, "a", 0) is None
    bad = annotation_label(ls_task(choice(2, "bad data", name="verdict"), lane="review", inclusion=None), cfg, "a", 0)
    assert (bad.verdict, bad.label, bad.lane, bad.inclusion) == ("bad_data", None, "review", None)
    with pytest.raises(ValueError, match="not in class_names"):
        annotation_label(ls_task(choice(1, "wolf")), cfg, "a", 0)
    # a lane or inclusion edited into something else is not carried over
    odd = annotation_label(ls_task(choice(1, "cat"), lane="<b>", inclusion=7), cfg, "a", 0)
    assert (odd.lane, odd.inclusion) == (None, None)


def test_regression_answers_are_numbers():
    cfg = config(task="regression")
    number = {"id": 1, "result": [{"from_name": "value", "type": "number", "value": {"number": 2.5}}]}
    assert annotation_label(ls_task(number), cfg, "a", 0).label == 2.5


def test_png_is_a_valid_image_of_the_right_size():
    png = png_bytes(list(range(0, 256, 4)), [8, 8, 1], scale=4)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h, depth, color = struct.unpack(">IIBB", png[16:26])
    assert (w, h, depth, color) == (32, 32, 8, 0)
    idat_len = struct.unpack(">I", png[33:37])[0]
    raw = zlib.decompress(png[41 : 41 + idat_len])
    assert len(raw) == 32 * (1 + 32) and raw[1] == 0 and raw[-1] == 252


def test_the_demo_ends_with_the_page_and_how_to_open_it(tmp_path):
    from pathlib import Path

    from shadowd.demo.run import page_hint
    from tests.unit.test_flywheel_annotate import config as annotate_config
    from tests.unit.test_flywheel_annotate import item as queued
    from tests.unit.test_flywheel_annotate import spool_items

    cfg = annotate_config(tmp_path)
    spool_items(tmp_path, [queued(0), queued(1)])
    hint = page_hint(cfg, Path("shadowd-data/demo/shadowd.yaml")).splitlines()
    assert hint[0].startswith("labelling page: http://127.0.0.1:8780/ (2 items wait there")
    assert hint[1] == "open it: shadowd annotate --web -c shadowd-data/demo/shadowd.yaml --open"

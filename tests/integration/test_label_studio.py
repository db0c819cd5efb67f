"""The Label Studio bridge against a real Label Studio server (tests/fixtures/label_studio.py) and a real
shadowd on Ray Serve: queue items become tasks with both models' answers as predictions, the queue is
committed only once a task exists (a bridge killed in between creates no second task), annotations come
back as annotator labels with their provenance, by polling and by webhook, and count once."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from shadowd.errors import LabelStudioError
from shadowd.flywheel.annotate import WorkQueue
from shadowd.flywheel.labelstudio import LabelStudioBridge, LabelStudioClient
from shadowd.serving.annotate_web import serve_webhook
from tests.fixtures.services import free_port
from tests.integration.test_annotate_page import HOSTILE, daemon_with_items, report, wait_queued

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TOKEN_ENV = "SHADOWD_TEST_LABEL_STUDIO_TOKEN"
CLASSES = [str(k) for k in range(10)]


class CrashAfterCreate(LabelStudioClient):
    """The real client, but the process dies right after Label Studio created the task (before the commit)."""

    def import_task(self, project_id: int, task: dict[str, Any]) -> int:
        super().import_task(project_id, task)
        raise SystemExit("killed between creating the task and committing the queue")


def _tasks(ls: Any, project: int) -> list[dict[str, Any]]:
    got = requests.get(
        f"{ls.url}/api/tasks",
        params={"project": str(project), "fields": "all", "page_size": "1000"},
        headers=ls.headers,
        timeout=30,
    )
    got.raise_for_status()
    tasks: list[dict[str, Any]] = got.json()["tasks"]
    return tasks


def _annotate(ls: Any, task_id: int, choice: str | None = None, bad: bool = False, skip: bool = False) -> None:
    result = []
    if choice is not None:
        result.append({"from_name": "label", "to_name": "summary", "type": "choices", "value": {"choices": [choice]}})
    if bad:
        result.append(
            {"from_name": "verdict", "to_name": "summary", "type": "choices", "value": {"choices": ["bad data"]}}
        )
    r = requests.post(
        f"{ls.url}/api/tasks/{task_id}/annotations",
        json={"result": result, "was_cancelled": skip},
        headers=ls.headers,
        timeout=30,
    )
    assert r.status_code == 201, r.text


def _labels(daemon: Any) -> dict[str, dict[str, Any]]:
    path = daemon.config.data_dir / "labels" / "labels.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return {x["request_id"]: x for x in lines}


def test_bridge_round_trip_with_a_real_label_studio(shadowd_app: Any, label_studio: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv(TOKEN_ENV, label_studio.token)
    webhook_port = free_port()
    daemon = daemon_with_items(
        shadowd_app,
        class_names=CLASSES,
        label_studio={
            "url": label_studio.url,
            "token_env": TOKEN_ENV,
            "project_title": "shadowd digits",
            "webhook_port": webhook_port,
        },
    )
    wait_queued(daemon, 6)
    cfg = daemon.config
    labels_before = dict(report(daemon)["annotations"]["labels"])

    # Label Studio down: nothing is exported, nothing committed.
    queue = WorkQueue(cfg)
    down = LabelStudioBridge(cfg, queue, client=LabelStudioClient(f"http://127.0.0.1:{free_port()}", "x" * 40))
    with pytest.raises(LabelStudioError, match="unreachable"):
        down.start()
    backlog = queue.backlog().items
    assert backlog >= 6

    # Killed right after Label Studio created the first task: the queue was not committed.
    crash = LabelStudioBridge(cfg, queue, client=CrashAfterCreate(label_studio.url, label_studio.token))
    crash.start()
    with pytest.raises(SystemExit):
        crash.export_pending()
    queue.close()
    project = crash.project_id
    assert project is not None
    (crashed,) = (t["data"]["shadowd_request_id"] for t in _tasks(label_studio, project))
    queue = WorkQueue(cfg)
    assert queue.backlog().items >= backlog  # the item is still the rotation's

    # A fresh bridge finds that task by request id, commits its item without a second task, exports the rest.
    bridge = LabelStudioBridge(cfg, queue).start()
    assert bridge.project_id == project  # found by title
    exported = bridge.export_pending()
    assert exported >= backlog and bridge.exported == exported - 1  # the crashed one came back: no new task
    assert queue.backlog().items == 0  # committed, all of it
    tasks = _tasks(label_studio, project)
    rids = [t["data"]["shadowd_request_id"] for t in tasks]
    assert len(rids) == len(set(rids)) == exported and crashed in rids  # one task per item, none twice

    # A personal access token (a JWT) works too: exchanged for access tokens at /api/token/refresh/.
    made = requests.post(f"{label_studio.url}/api/token/", headers=label_studio.headers, timeout=30)
    assert made.status_code == 201, made.text
    pat = made.json()["token"]
    assert pat.count(".") == 2
    assert LabelStudioClient(label_studio.url, pat).call("GET", f"/api/projects/{project}")["id"] == project

    # Each task: both models' answers as pre-annotations, the provenance, the inputs, hostile text kept as text.
    ev = next(t for t in tasks if t["data"]["shadowd_lane"] == "evaluation")
    rv = next(t for t in tasks if t["data"]["shadowd_lane"] == "review")
    assert ev["data"]["shadowd_inclusion"] == 0.5 and rv["data"]["shadowd_inclusion"] is None
    versions = {p["model_version"]: p for p in ev["predictions"]}
    assert set(versions) == {"production:digits-prod", "candidate:digits-cand"}
    for p in versions.values():
        assert 0 < p["score"] <= 1 and p["result"][0]["value"]["choices"][0] in CLASSES
    assert ev["data"]["image"].startswith("data:image/png;base64,")
    assert HOSTILE["note"] in ev["data"]["summary"]

    # Annotations come back by polling: evaluation lane (usable by the gate), review lane (not), bad data;
    # a skipped (cancelled) annotation is left for someone else.
    others = [t for t in tasks if t["id"] not in (ev["id"], rv["id"])]
    _annotate(label_studio, ev["id"], choice="3")
    _annotate(label_studio, rv["id"], choice="5")
    _annotate(label_studio, others[0]["id"], choice="0", bad=True)
    _annotate(label_studio, others[1]["id"], skip=True)
    assert bridge.import_labels() == 3
    assert bridge.import_labels() == 0  # at least once, but a label counts once
    got = _labels(daemon)
    evl, rvl = got[ev["data"]["shadowd_request_id"]], got[rv["data"]["shadowd_request_id"]]
    assert (evl["label"], evl["lane"], evl["inclusion"], evl["source"]) == (3, "evaluation", 0.5, "annotator")
    assert (rvl["label"], rvl["lane"], rvl["inclusion"]) == (5, "review", None)
    assert evl["annotator"] == f"label-studio:{label_studio.email}"
    assert got[others[0]["data"]["shadowd_request_id"]]["verdict"] == "bad_data"
    assert others[1]["data"]["shadowd_request_id"] not in got

    # By webhook: Label Studio posts ANNOTATION_CREATED to the bridge, which imports the task at once.
    receiver = serve_webhook(cfg, bridge)
    try:
        hook = requests.post(
            f"{label_studio.url}/api/webhooks",
            json={
                "project": project,
                "url": f"{receiver.url}webhook",
                "send_payload": True,
                "headers": {"Authorization": f"Bearer {daemon.token}"},
                "actions": ["ANNOTATION_CREATED"],
                "is_active": True,
                "send_for_all_actions": False,
            },
            headers=label_studio.headers,
            timeout=30,
        )
        assert hook.status_code == 201, hook.text
        # Without the token the receiver refuses (what a stranger posting there gets).
        assert requests.post(f"{receiver.url}webhook", json={"action": "x"}, timeout=10).status_code == 401
        _annotate(label_studio, others[2]["id"], choice="7")
        rid = others[2]["data"]["shadowd_request_id"]
        deadline = time.monotonic() + 60
        while rid not in _labels(daemon) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _labels(daemon)[rid]["label"] == 7  # no poll ran: the webhook brought it
        assert bridge.import_labels() == 0  # and polling does not bring it twice
    finally:
        receiver.close()
        bridge.close()
        queue.close()

    # The daemon joined the four labels to their pairs; the evaluation-lane one counts for the gate.
    deadline = time.monotonic() + 60
    while True:
        rep = report(daemon)
        counts = rep["annotations"]["labels"]
        grown = {k: counts.get(k, 0) - labels_before.get(k, 0) for k in ("joined", "skipped", "duplicate")}
        if grown == {"joined": 3, "skipped": 1, "duplicate": 0} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert grown == {"joined": 3, "skipped": 1, "duplicate": 0}, counts
    overall = rep["overall"]["labels"]
    assert overall["by_channel"].get("evaluation", 0) >= 1, overall
    assert overall["excluded"].get("priority queue (not a random sample)", 0) >= 1, overall
    assert overall["excluded"].get("marked bad data") == 1, overall

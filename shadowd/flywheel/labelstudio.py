"""The Label Studio bridge (``shadowd label-studio``): queue items out as tasks, annotations back as labels.

Data flow::

    the rotation's queue (WorkQueue, evaluation lane first; session "label-studio")
        -> item -> a Label Studio task in annotations.label_studio's project:
             data: summary (why queued, slices, both answers), the inputs (image | table | text),
                   shadowd_request_id, shadowd_lane, shadowd_inclusion
             predictions: production's and the candidate's answers (model_version "<role>:<model>", score)
           POST /api/projects/<id>/import answered with the task id  -> only then the queue is committed
    Label Studio annotations --poll (GET /api/tasks, every poll_interval_s) or webhook (POST /webhook)-->
        -> Label(source annotator, lane, inclusion) -> labels channel (acked) + labels file (fsync)
        -> the daemon joins it to its pair; provenance from the pair's own selection

Guarantees: an item is committed only once its task exists (a bridge killed
in between finds the task by request id at its next start and does not
create another); every annotation is fetched at least once (polling; a
webhook only brings it sooner) and counts once (the labels file is checked by
request id before anything is written, and the daemon joins a request's
annotator label once). The first submitted, not skipped annotation of a task
is the label; later edits in Label Studio do not change it. Skipped
(cancelled) annotations are left in Label Studio for someone else.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from xml.sax.saxutils import quoteattr

import requests

from shadowd.config import LabelStudioConfig, ShadowdConfig
from shadowd.errors import ConfigError, LabelStudioError
from shadowd.flywheel.annotate import Lease, WorkQueue
from shadowd.flywheel.item_view import input_view, png_bytes, summary_text
from shadowd.records import AnnotationItem, Label, Lane, ModelOutput

__all__ = [
    "LabelStudioBridge",
    "LabelStudioClient",
    "annotation_label",
    "label_config",
    "project_input_kind",
    "read_token",
    "task_for",
]

log = logging.getLogger(__name__)

_PAGE_SIZE = 100
_BAD_DATA = "bad data"
_TOKEN_REFRESH_MARGIN_S = 30


def read_token(cfg: LabelStudioConfig) -> str:
    """The API token from token_env or token_file; ConfigError names the key, never the value."""
    if cfg.token_env is not None:
        value = os.environ.get(cfg.token_env)
        if not value:
            raise ConfigError(f"annotations.label_studio.token_env: environment variable {cfg.token_env} is not set")
        return value.strip()
    assert cfg.token_file is not None
    try:
        return cfg.token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"annotations.label_studio.token_file: cannot read {cfg.token_file}: {err}") from None


class LabelStudioClient:
    """Label Studio's REST API, the calls the bridge makes. A personal access token (a JWT) is exchanged
    for short-lived access tokens (``/api/token/refresh/``); a legacy token is sent as ``Token <key>``."""

    def __init__(self, url: str, token: str, timeout_s: float = 30.0, session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s
        self._http = session or requests.Session()
        self._personal = token.count(".") == 2  # a JWT: header.payload.signature
        self._access: str | None = None
        self._lock = threading.Lock()

    def _auth(self, fresh: bool = False) -> str:
        if not self._personal:
            return f"Token {self._token}"
        with self._lock:
            if self._access is None or fresh:
                r = self._send("POST", "/api/token/refresh/", {}, json={"refresh": self._token})
                self._access = r.json().get("access")
                if not self._access:
                    raise LabelStudioError("POST /api/token/refresh answered no access token", retriable=False)
            return f"Bearer {self._access}"

    def _send(self, method: str, path: str, headers: dict[str, str], **kw: Any) -> requests.Response:
        try:
            r = self._http.request(method, self.url + path, headers=headers, timeout=self._timeout_s, **kw)
        except requests.RequestException as err:
            raise LabelStudioError(
                f"{method} {path}: Label Studio at {self.url} unreachable: {type(err).__name__}"
            ) from None
        if r.status_code >= 400:
            detail = r.text[:300].replace("\n", " ")
            retriable = r.status_code >= 500 or r.status_code == 429
            raise LabelStudioError(f"{method} {path}: HTTP {r.status_code}: {detail}", retriable=retriable)
        return r

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._send(method, path, {"Authorization": self._auth()}, **kw)
        except LabelStudioError as err:
            if not (self._personal and "HTTP 401" in str(err)):
                raise
            r = self._send(method, path, {"Authorization": self._auth(fresh=True)}, **kw)  # access token expired
        return r.json() if r.content else None

    def find_or_create_project(self, title: str, config_xml: str) -> int:
        got = self.call("GET", "/api/projects", params={"title": title, "page_size": _PAGE_SIZE})
        for project in got.get("results", []) if isinstance(got, dict) else got:
            if project.get("title") == title:
                return int(project["id"])
        created = self.call("POST", "/api/projects", json={"title": title, "label_config": config_xml})
        return int(created["id"])

    def import_task(self, project_id: int, task: dict[str, Any]) -> int:
        """Create one task with its predictions (one request, one transaction); its id."""
        got = self.call("POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=[task])
        ids = got.get("task_ids") if isinstance(got, dict) else None
        if not ids:
            raise LabelStudioError(f"POST /api/projects/{project_id}/import created no task: {str(got)[:200]}")
        return int(ids[0])

    def tasks(self, project_id: int) -> Iterator[dict[str, Any]]:
        """Every task of the project, with its annotations, page by page."""
        page = 1
        while True:
            got = self.call(
                "GET",
                "/api/tasks",
                params={"project": project_id, "fields": "all", "page": page, "page_size": _PAGE_SIZE},
            )
            batch = got.get("tasks", []) if isinstance(got, dict) else []
            yield from batch
            total = int(got.get("total", 0)) if isinstance(got, dict) else 0
            if not batch or page * _PAGE_SIZE >= total:
                return
            page += 1

    def task(self, task_id: int) -> dict[str, Any]:
        got: dict[str, Any] = self.call("GET", f"/api/tasks/{task_id}")
        return got

    def user_email(self, user_id: int) -> str | None:
        try:
            got = self.call("GET", f"/api/users/{user_id}")
        except LabelStudioError:
            return None
        email = got.get("email") if isinstance(got, dict) else None
        return str(email) if email else None


# --- tasks out ---


def project_input_kind(config: ShadowdConfig) -> str:
    """The project's one input tag (Label Studio fixes it in the labelling config): image, table or text."""
    web = config.annotations.web
    if web.input_kind != "auto":
        return web.input_kind
    n = math.prod(config.models.production.input_shape)
    probe = AnnotationItem(request_id="probe", reason="divergent", priority=0, inputs=[0.0] * n, created_ts=0)
    return str(input_view(probe, web, config.models.production.input_shape)["kind"])


def label_config(config: ShadowdConfig) -> str:
    """A labelling config for the task: the summary, the inputs, the answer (choices or a number), bad data."""
    kind = project_input_kind(config)
    inputs = {
        "image": '<Image name="image" value="$image" zoom="true"/>',
        "table": '<Table name="table" value="$table"/>',
        "text": '<Text name="text" value="$text"/>',
    }[kind]
    if config.task == "classification":
        names = config.annotations.class_names or []
        choices = "".join(f"<Choice value={quoteattr(n)}/>" for n in names)
        answer = f'<Choices name="label" toName="summary" choice="single" showInline="true">{choices}</Choices>'
    else:
        answer = '<Number name="value" toName="summary"/>'
    return (
        '<View><Header value="Why shadowd queued it, and what the models answered"/>'
        f'<Text name="summary" value="$summary"/>{inputs}{answer}'
        f'<Choices name="verdict" toName="summary" choice="single" required="false">'
        f"<Choice value={quoteattr(_BAD_DATA)}/></Choices></View>"
    )


def _prediction(out: ModelOutput, config: ShadowdConfig) -> dict[str, Any] | None:
    if not out.ok or not out.values:
        return None
    version = f"{out.role}:{out.model}"
    if config.task == "classification":
        names = config.annotations.class_names or []
        top = max(range(len(out.values)), key=lambda k: out.values[k])  # type: ignore[index]
        if top >= len(names):
            return None
        value = {"choices": [names[top]]}
        result = {"from_name": "label", "to_name": "summary", "type": "choices", "value": value}
        return {"model_version": version, "score": float(out.values[top]), "result": [result]}
    result = {"from_name": "value", "to_name": "summary", "type": "number", "value": {"number": out.values[0]}}
    return {"model_version": version, "result": [result]}


def task_for(item: AnnotationItem, lane: Lane, config: ShadowdConfig) -> dict[str, Any]:
    """The Label Studio task of a queue item: data for the labelling config, both models as predictions."""
    kind = project_input_kind(config)
    view = input_view(item, config.annotations.web, config.models.production.input_shape)
    data: dict[str, Any] = {
        "summary": summary_text(item, lane, config.task, config.annotations.class_names),
        "shadowd_request_id": item.request_id,
        "shadowd_lane": lane,
        "shadowd_inclusion": item.inclusion,
        "shadowd_reason": item.reason,
    }
    if kind == "image":
        if view["kind"] == "image":
            h, w, _ = view["shape"]
            png = png_bytes(view["pixels"], view["shape"], scale=max(1, 256 // max(h, w)))
        else:
            png = png_bytes([0], [1, 1, 1])
        data["image"] = "data:image/png;base64," + base64.b64encode(png).decode()
    elif kind == "table":
        rows = view["rows"] if view["kind"] == "table" else [["inputs", view.get("text", "")]]
        data["table"] = {str(k): str(v) for k, v in rows}
    else:
        data["text"] = view["text"] if view["kind"] == "text" else "\n".join(f"{k}: {v}" for k, v in view["rows"])
    predictions = [p for p in (_prediction(o, config) for o in (item.production, item.candidate) if o) if p]
    return {"data": data, "predictions": predictions}


# --- annotations back ---


def annotation_label(task: dict[str, Any], config: ShadowdConfig, annotator: str, ts: float) -> Label | None:
    """The label of a task's first submitted, not skipped annotation (None: none yet, or not shadowd's).

    Raises ValueError when the annotation holds no answer shadowd can use (a choice not in class_names).
    """
    data = task.get("data") or {}
    rid = data.get("shadowd_request_id")
    if not isinstance(rid, str) or not rid:
        return None
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not done:
        return None
    first = min(done, key=lambda a: int(a.get("id", 0)))
    verdict = "label"
    value: int | float | None = None
    for r in first.get("result") or []:
        v = r.get("value") or {}
        if r.get("from_name") == "verdict" and _BAD_DATA in (v.get("choices") or []):
            verdict = "bad_data"
        elif r.get("from_name") == "label" and v.get("choices"):
            names = config.annotations.class_names or []
            if v["choices"][0] not in names:
                raise ValueError(f"task {task.get('id')}: choice {v['choices'][0]!r} is not in class_names")
            value = names.index(v["choices"][0])
        elif r.get("from_name") == "value" and isinstance(v.get("number"), (int, float)):
            value = float(v["number"])
    if verdict == "label" and value is None:
        raise ValueError(f"task {task.get('id')}: the annotation has no answer (no choice, no number, not bad data)")
    lane = data.get("shadowd_lane")
    inclusion = data.get("shadowd_inclusion")
    return Label(
        request_id=rid,
        label=value if verdict == "label" else None,
        source="annotator",
        verdict=verdict,  # type: ignore[arg-type]
        annotator=annotator,
        ts=ts,
        lane=lane if lane in ("evaluation", "review") else None,
        inclusion=float(inclusion) if isinstance(inclusion, (int, float)) and 0 <= inclusion <= 1 else None,
    )


class LabelStudioBridge:
    """Moves the rotation's queue into a Label Studio project and the annotations back as labels."""

    SESSION = "label-studio"

    def __init__(
        self,
        config: ShadowdConfig,
        queue: WorkQueue,
        client: LabelStudioClient | None = None,
        clock: Callable[[], float] = time.time,
    ):
        ls = config.annotations.label_studio
        if ls is None:
            raise ConfigError("annotations.label_studio is not configured")
        self.config = config
        self.ls = ls
        self.queue = queue
        self.client = client or LabelStudioClient(ls.url, read_token(ls), ls.timeout_s)
        self._clock = clock
        self._session = queue.open_session(self.SESSION)
        self.project_id: int | None = None
        self._exported: dict[str, int] = {}  # request id -> task id
        self._stale = True  # re-read the project's tasks before the next export (start, or after a failure)
        self._emails: dict[int, str] = {}
        self._lock = threading.Lock()
        self.exported = self.imported = 0

    def start(self) -> LabelStudioBridge:
        """Find (or create) the project and learn which requests already have a task there."""
        with self._lock:
            if self.ls.project_id is not None:
                self.project_id = self.ls.project_id
                self.client.call("GET", f"/api/projects/{self.project_id}")  # fail now if it is not there
            else:
                self.project_id = self.client.find_or_create_project(self.ls.project_title, label_config(self.config))
            self._refresh()
        return self

    def _refresh(self) -> None:
        assert self.project_id is not None
        self._exported = {
            str(t["data"]["shadowd_request_id"]): int(t["id"])
            for t in self.client.tasks(self.project_id)
            if isinstance(t.get("data"), dict) and t["data"].get("shadowd_request_id")
        }
        self._stale = False

    def export_pending(self, wait_s: float = 0.0, max_items: int | None = None) -> int:
        """Export the items waiting in the queue (waiting up to ``wait_s`` for the first); how many were done.

        An item is committed only once its task exists; on a Label Studio error it goes back to the
        queue (nothing committed) and the error is raised.
        """
        done = 0
        with self._lock:
            assert self.project_id is not None, "start() first"
            while max_items is None or done < max_items:
                held = self.queue.lease(self._session, timeout_s=wait_s if done == 0 else 0.0)
                if held is None:
                    break
                try:
                    self._export(held)
                except BaseException:
                    self.queue.release(self._session)
                    self._stale = True  # the task may exist after all (a timeout after the commit)
                    raise
                self.queue.complete(self._session, held.item.request_id)
                done += 1
        return done

    def _export(self, held: Lease) -> None:
        assert self.project_id is not None
        if self._stale:
            self._refresh()
        rid = held.item.request_id
        if rid in self._exported:
            log.info("request %s already has task %s in project %s", rid, self._exported[rid], self.project_id)
            return
        task_id = self.client.import_task(self.project_id, task_for(held.item, held.lane, self.config))
        self._exported[rid] = task_id
        self.exported += 1

    def import_labels(self) -> int:
        """Fetch the project's annotated tasks; persist the label of each that has none yet. How many."""
        assert self.project_id is not None, "start() first"
        count = 0
        for task in self.client.tasks(self.project_id):
            if task.get("total_annotations") or task.get("annotations"):
                count += self.import_task(task)
        return count

    def import_task(self, task: dict[str, Any]) -> bool:
        """Persist the label of one task (fetched or from a webhook) unless its request has one: True if new."""
        rid = (task.get("data") or {}).get("shadowd_request_id")
        if not isinstance(rid, str) or rid in self.queue.labels:
            return False
        done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not done:
            return False
        first = min(done, key=lambda a: int(a.get("id", 0)))
        try:
            label = annotation_label(task, self.config, self._annotator(first.get("completed_by")), self._clock())
        except ValueError as err:
            log.warning("label studio: %s; left out", err)
            return False
        if label is None or not self.queue.record(label):
            return False
        self.imported += 1
        return True

    def on_webhook(self, body: dict[str, Any]) -> dict[str, Any]:
        """A Label Studio webhook (ANNOTATION_CREATED / ANNOTATION_UPDATED): import that task now, fetched
        from the API (the payload only names it)."""
        action = body.get("action")
        task = body.get("task")
        task_id = task.get("id") if isinstance(task, dict) else None
        if action not in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED") or not isinstance(
            task_id, int
        ):
            return {"imported": False, "ignored": f"action {str(action)[:40]!r} is not an annotation of a task"}
        fetched = self.client.task(task_id)
        if fetched.get("project") not in (None, self.project_id):
            return {"imported": False, "ignored": f"task {task_id} is not in project {self.project_id}"}
        return {"imported": self.import_task(fetched)}

    def _annotator(self, completed_by: Any) -> str:
        if isinstance(completed_by, dict):
            email = completed_by.get("email")
            return f"label-studio:{email or completed_by.get('id')}"
        if isinstance(completed_by, int):
            if completed_by not in self._emails:
                self._emails[completed_by] = self.client.user_email(completed_by) or str(completed_by)
            return f"label-studio:{self._emails[completed_by]}"
        return "label-studio"

    def run(self, stop: threading.Event, on_error: Callable[[Exception], None] | None = None) -> None:
        """Export and import until ``stop`` is set; Label Studio errors are reported and retried."""
        last_poll = -math.inf
        while not stop.is_set():
            try:
                if self.project_id is None:
                    self.start()
                self.export_pending(wait_s=self.ls.export_interval_s)
                if time.monotonic() - last_poll >= self.ls.poll_interval_s:
                    self.import_labels()
                    last_poll = time.monotonic()
            except LabelStudioError as err:
                if on_error is not None:
                    on_error(err)
                log.warning("label studio: %s", err)
                stop.wait(self.ls.export_interval_s)

    def close(self) -> None:
        self.queue.close_session(self._session)

"""Grafana side of observability: provision the dashboards, mark gate verdict changes.

Where it sits: ``shadowd dashboards push`` sends the dashboards built by
``shadowd.observe.dashboards`` into a Grafana folder; the comparator hub, when
``grafana`` is configured, calls a ``VerdictAnnotator`` after each gate
evaluation, which writes a Grafana annotation whenever the verdict changes, so
every panel shows when the candidate started (or stopped) failing.

Uses ``grafana-client``, the maintained successor of ``grafana-api`` (which
has had no release since 2019): same API shape, token auth, typed errors.
Annotations are organisation-wide and tagged ``shadowd``, ``gate`` and the new
verdict; the dashboards' annotation query shows every annotation with the
first two tags, so one write appears on all of them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from shadowd.errors import GrafanaError

__all__ = [
    "PushResult",
    "PushedDashboard",
    "VerdictAnnotator",
    "annotate_verdict_change",
    "connect",
    "push_dashboards",
]

log = logging.getLogger(__name__)

DEFAULT_FOLDER_TITLE = "shadowd"
DEFAULT_FOLDER_UID = "shadowd"
# Tags put on every gate-verdict annotation; the dashboards (shadowd.observe.dashboards)
# show every annotation carrying all of them.
GATE_ANNOTATION_TAGS = ("shadowd", "gate")


@dataclass(frozen=True)
class PushedDashboard:
    """One dashboard as Grafana stored it."""

    uid: str
    title: str
    url: str
    version: int


@dataclass(frozen=True)
class PushResult:
    folder_uid: str
    folder_created: bool
    dashboards: tuple[PushedDashboard, ...]


def connect(url: str, token: str, *, timeout_s: float = 10.0) -> GrafanaApi:
    """A Grafana API client for ``url`` (e.g. ``http://grafana:3000``) with a service-account token."""
    if not token:
        raise GrafanaError("no Grafana token given (use --token or set GRAFANA_TOKEN)")
    client: GrafanaApi = GrafanaApi.from_url(url.rstrip("/"), credential=token, timeout=timeout_s)
    return client


def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except GrafanaException as err:
        raise GrafanaError(f"Grafana refused to {what}: {err}") from err
    except OSError as err:  # connection refused, DNS, TLS
        raise GrafanaError(f"could not reach Grafana to {what}: {err}") from err


def _ensure_folder(client: GrafanaApi, title: str, uid: str) -> bool:
    """Make sure the folder exists; True when it was created now."""
    try:
        client.folder.get_folder(uid)  # type: ignore[no-untyped-call]
        return False
    except GrafanaClientError as err:
        if err.status_code != 404:
            raise GrafanaError(f"Grafana refused to read folder {uid!r}: {err}") from err
    except GrafanaException as err:
        raise GrafanaError(f"Grafana refused to read folder {uid!r}: {err}") from err
    except OSError as err:
        raise GrafanaError(f"could not reach Grafana to read folder {uid!r}: {err}") from err
    _call(f"create folder {title!r}", client.folder.create_folder, title, uid=uid)
    return True


def push_dashboards(
    client: GrafanaApi,
    dashboards: Iterable[Mapping[str, Any]] | None = None,
    *,
    folder_title: str = DEFAULT_FOLDER_TITLE,
    folder_uid: str = DEFAULT_FOLDER_UID,
    message: str = "pushed by shadowd dashboards push",
) -> PushResult:
    """Create the folder if needed, then create or replace each dashboard (matched by uid) in it.

    ``dashboards`` defaults to every dashboard shadowd ships.
    """
    if dashboards is None:
        # Imported here: the generator needs the [grafana] extra, the annotator below does not.
        from shadowd.observe.dashboards import build_dashboards

        dashboards = build_dashboards().values()
    created = _ensure_folder(client, folder_title, folder_uid)
    pushed = []
    for dashboard in dashboards:
        # id None + overwrite: Grafana matches on uid, so a re-push updates in place.
        body = {"dashboard": {**dashboard, "id": None}, "folderUid": folder_uid, "overwrite": True, "message": message}
        answer = _call(f"save dashboard {dashboard['uid']!r}", client.dashboard.update_dashboard, body)
        pushed.append(
            PushedDashboard(answer["uid"], dashboard["title"], answer.get("url", ""), answer.get("version", 0))
        )
    return PushResult(folder_uid, created, tuple(pushed))


def _verdict_name(verdict: object) -> str:
    value = verdict.value if isinstance(verdict, Enum) else verdict
    return str(value).lower()


def annotate_verdict_change(
    client: GrafanaApi,
    old: object | None,
    new: object,
    text: str,
    *,
    time_ms: int | None = None,
    dashboard_uid: str | None = None,
    candidate: str | None = None,
) -> int | None:
    """Write one annotation if the gate verdict (of ``candidate``'s test, when named: tagged
    ``candidate:<name>``) changed from ``old`` to ``new``; return its id.

    ``old`` None means "no verdict yet" (daemon start), which counts as a
    change. Verdicts may be strings or enums ("pass", "fail", "inconclusive").
    Returns None, without calling Grafana, when nothing changed.
    """
    old_name = None if old is None else _verdict_name(old)
    new_name = _verdict_name(new)
    if old_name == new_name:
        return None
    change = new_name.upper() if old_name is None else f"{old_name.upper()} -> {new_name.upper()}"
    headline = f"gate verdict{f' of {candidate}' if candidate else ''}: {change}"
    answer = _call(
        "add a gate annotation",
        client.annotations.add_annotation,
        dashboard_uid=dashboard_uid,
        time_from=int(time.time() * 1000) if time_ms is None else time_ms,
        tags=[*GATE_ANNOTATION_TAGS, *([f"candidate:{candidate}"] if candidate else []), new_name],
        text=f"{headline}. {text}".strip(),
    )
    return answer.get("id") if isinstance(answer, dict) else None


class VerdictAnnotator:
    """Remembers the last gate verdict (of each candidate's test) and annotates Grafana when it changes.

    Built for the comparator hub: ``observe`` never raises (Grafana being down
    must not stop comparisons); a failed write is logged and retried on the
    next call, so the change is not lost.
    """

    def __init__(self, client: GrafanaApi, clock: Callable[[], float] = time.time):
        self._client = client
        self._clock = clock
        self._last: dict[str | None, str] = {}  # by candidate

    @classmethod
    def from_settings(
        cls, url: str, token_env: str = "GRAFANA_TOKEN", timeout_s: float = 5.0, env: Mapping[str, str] = os.environ
    ) -> VerdictAnnotator:
        token = env.get(token_env, "")
        if not token:
            raise GrafanaError(f"grafana.token_env names {token_env!r}, which is not set in the environment")
        return cls(connect(url, token, timeout_s=timeout_s))

    @property
    def last_verdict(self) -> str | None:
        return self._last.get(None)

    def last_of(self, candidate: str | None) -> str | None:
        return self._last.get(candidate)

    def observe(self, verdict: object, text: str = "", candidate: str | None = None) -> int | None:
        """Record the verdict of one gate evaluation (of ``candidate``'s test); returns the annotation id when
        one was written."""
        name = _verdict_name(verdict)
        last = self._last.get(candidate)
        if name == last:
            return None
        try:
            annotation_id = annotate_verdict_change(
                self._client, last, name, text, time_ms=int(self._clock() * 1000), candidate=candidate
            )
        except GrafanaError as err:
            log.warning("gate verdict %s not annotated in Grafana (will retry): %s", name, err)
            return None
        self._last[candidate] = name
        return annotation_id

    def forget(self, keep: set[str | None]) -> None:
        """Let go of the candidates no longer tested (a candidate added again starts afresh)."""
        self._last = {c: v for c, v in self._last.items() if c in keep}

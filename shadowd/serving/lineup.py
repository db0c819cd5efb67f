"""The model lineup: which model answers clients and which runs in the shadow, changed at runtime.

A lineup is a versioned ``ModelsConfig``. The config file gives the first
one; ``shadowd candidates`` (``POST /shadow/candidates``, scope admin) moves
it on without restarting anything:

    set NAME      add a candidate (up to shadow.max_candidates), or with ``replace`` take another's place:
                  a new test window for it only; the others' windows go on
    remove NAME   stop shadowing that candidate (its window's report kept)
    promote NAME  the candidate (the only one shadowed) answers clients; production stays in the shadow as the
                  baseline
                  (``models.live: candidate``): the checks go on asking "is the candidate worse?"
    rollback      production answers again; the candidate goes back to the shadow
    finish        keep the promoted model as production and stop shadowing its predecessor

The lead hub shard holds the lineup: it validates a change, loads a new
model once to prove it loads, keeps the closing window's report, commits the
new version (``lineup.json``, written atomically) and appends the change to
``audit.jsonl`` (who, when, the verdict and evidence at that moment) before
answering. Every ingress and worker replica asks the lead for the version
each ``POLL_S`` and swaps its models in place when it changed (the old ones
answer until the new ones are loaded); every hub shard takes it from the
lead. A lineup is saved with a fingerprint of the config's ``models``
section: when a deploy changes that section (a GitOps values change), the
config wins and the runtime changes are dropped, audited as such.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn
from urllib.parse import urlsplit

from pydantic import Field, TypeAdapter, ValidationError

from shadowd.config import ModelsConfig, ShadowdConfig
from shadowd.configbase import Strict
from shadowd.errors import BadRequest
from shadowd.models import HttpModel, ModelBase, ModelConfig, PythonModel, TorchScriptModel

__all__ = [
    "POLL_S",
    "Lineup",
    "LineupChange",
    "LineupFollower",
    "LineupStore",
    "Schedule",
    "Trial",
    "apply_change",
    "check_allowed",
    "close_later",
    "epoch",
    "fingerprint",
    "lineup_config",
    "parse_change",
    "retire_after",
]

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often a replica asks the lead for the lineup's version


class Schedule(Strict):
    """When a candidate's test starts, and when it stops by itself: shadowing ends (as ``remove`` would, audited,
    the window's report kept) and its verdict stays readable (``GET /shadow/verdict?candidate=NAME``)."""

    start_at: float | None = Field(
        None,
        gt=0,
        description="Start the test at this time (seconds since the epoch): the candidate is loaded when set (so "
        "a model that does not load is refused at once) but not called before; its window starts then. None, or "
        "a time past: at once.",
    )
    max_duration_s: float | None = Field(None, gt=0, description="Stop this long after the test started.")
    stop_when_decided: bool = Field(False, description="Stop once the gate says PASS or FAIL.")


class SetCandidate(Strict):
    action: Literal["set"]
    candidate: ModelConfig = Field(description="The new candidate's model config (the keys of models.candidate).")
    replace: str | None = Field(
        None, min_length=1, description="The shadowed candidate it replaces (that one's window closes); none: added."
    )
    schedule: Schedule | None = Field(None, description="Stop the test by itself; none: it runs until changed.")


class RemoveCandidate(Strict):
    action: Literal["remove"]
    candidate: str | None = Field(
        None, min_length=1, description="Which candidate; may be left out when only one is shadowed."
    )


class Promote(Strict):
    action: Literal["promote"]
    candidate: str = Field(min_length=1, description="The candidate's name, as a check that it is the one meant.")


class Rollback(Strict):
    action: Literal["rollback"]


class Finish(Strict):
    action: Literal["finish"]


LineupChange = Annotated[SetCandidate | RemoveCandidate | Promote | Rollback | Finish, Field(discriminator="action")]
_CHANGE: TypeAdapter[LineupChange] = TypeAdapter(LineupChange)


def parse_change(body: Any) -> LineupChange:
    """A change from a request body; ``BadRequest`` (422) names the key and what was expected."""
    try:
        return _CHANGE.validate_python(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"{where}: {first['msg']} (actions: set, remove, promote, rollback, finish)", 422) from None


def fingerprint(models: ModelsConfig) -> str:
    """A short hash of a models section as written (defaults left out, so an upgrade that adds a field does not
    change it): tells whether the config changed since a lineup was saved. One candidate hashes as
    ``candidate: {...}``, as lineups were saved before several candidates."""
    data = models.model_dump(mode="json", exclude_defaults=True)
    cands = data.pop("candidates", [])
    if len(cands) == 1:
        data["candidate"] = cands[0]
    elif cands:
        data["candidates"] = cands
    text = json.dumps(data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Trial:
    """One candidate's test: when it was set (its window's start and its schedule's clock) and its schedule."""

    set_at: float = 0.0
    schedule: Schedule | None = None

    @property
    def starts_at(self) -> float:
        """When the test starts: its set, or its schedule's start if later."""
        start = self.schedule.start_at if self.schedule is not None else None
        return max(self.set_at, start or 0.0)

    def to_json(self) -> dict[str, Any]:
        schedule = self.schedule.model_dump(mode="json") if self.schedule is not None else None
        return {"set_at": self.set_at, "schedule": schedule}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trial:
        schedule = Schedule.model_validate(data["schedule"]) if data.get("schedule") else None
        return cls(float(data.get("set_at", 0.0)), schedule)


@dataclass(frozen=True)
class Lineup:
    version: int
    models: ModelsConfig
    since: float = 0.0  # when the served side last changed: pairs of earlier requests belong to closed windows
    trials: dict[str, Trial] = field(default_factory=dict)  # per candidate; kept across promote and rollback
    epoch: str = ""  # which history of changes: a new one whenever the lineup starts afresh from the config

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "models": self.models.model_dump(mode="json"),
            "since": self.since,
            "trials": {name: t.to_json() for name, t in self.trials.items()},
            "epoch": self.epoch,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lineup:
        models = ModelsConfig.model_validate(data["models"])
        trials = {str(n): Trial.from_json(t) for n, t in (data.get("trials") or {}).items()}
        if "trials" not in data and models.candidate is not None:  # saved before several candidates
            trials = {models.candidate.name: Trial.from_json(data)}
        since = float(data.get("since", 0.0))
        return cls(int(data["version"]), models, since, trials, str(data.get("epoch", "")))

    def supersedes(self, other: Lineup) -> bool:
        """Should a shard holding ``other`` take this one from the lead? Within one history (epoch) only a
        later version (a late message must not undo a change); from another history (the lead started one
        afresh from the config) always."""
        return self.epoch != other.epoch or self.version > other.version

    def trial(self, name: str) -> Trial:
        return self.trials.get(name, Trial())

    def started(self, name: str) -> float:
        """When candidate ``name``'s window starts: its set (or its schedule's start), or the served side's last
        change if later. Requests before it are not shadowed to that candidate."""
        return max(self.since, self.trial(name).starts_at)

    def window(self, name: str) -> tuple[ModelsConfig, float] | None:
        """What a candidate's test window is: its lineup and start. A change that alters it closes the window
        (and starts a new one); None: ``name`` is not a candidate here."""
        if self.models.candidate_named(name) is None:
            return None
        return self.models.only(name), self.started(name)

    def closed_by(self, after: Lineup) -> list[str]:
        """The candidates whose window ``after`` closes (replaced, removed, or the served side changed)."""
        return [c.name for c in self.models.candidates if self.window(c.name) != after.window(c.name)]

    def due(self, verdicts: dict[str, str], now: float) -> dict[str, str]:
        """The shadowed candidates whose test stops now by its schedule, with why; ``verdicts`` by name."""
        if self.models.live != "production":
            return {}
        stops = {}
        for cand in self.models.candidates:
            t = self.trial(cand.name)
            s = t.schedule
            if s is None:
                continue
            if now < t.starts_at:
                continue  # not started yet
            if s.max_duration_s is not None and now - t.starts_at >= s.max_duration_s:
                stops[cand.name] = f"its maximum duration of {s.max_duration_s:g} s is reached"
            elif s.stop_when_decided and verdicts.get(cand.name) in ("PASS", "FAIL"):
                stops[cand.name] = f"the gate decided {verdicts[cand.name]}"
        return stops

    def summary(self) -> dict[str, Any]:
        """Names and kinds only (no URLs, headers or paths): for the audit log and GET /shadow/candidates."""
        m = self.models

        def one(model: ModelConfig | None) -> dict[str, Any] | None:
            return None if model is None else {"name": model.name, "kind": model.kind}

        def test(model: ModelConfig) -> dict[str, Any]:
            t = self.trial(model.name)
            schedule = t.schedule.model_dump(mode="json") if t.schedule is not None else None
            return {**(one(model) or {}), "window_started_ts": self.started(model.name), "schedule": schedule}

        return {
            "version": self.version,
            "live": m.live,
            "served": m.served.name,
            "production": one(m.production),
            "candidates": [test(c) for c in m.candidates],
            "candidate": one(m.candidate),
            "shadowed": [x.name for x in m.shadowed],
        }


def epoch() -> str:
    """A new history of lineup changes (see ``Lineup.supersedes``)."""
    return uuid.uuid4().hex[:12]


def apply_change(models: ModelsConfig, change: LineupChange, max_candidates: int = 16) -> ModelsConfig:
    """The models after ``change``; ``BadRequest`` 409 when the lineup does not allow it (with what does)."""
    promoted = models.live == "candidate"
    names = [c.name for c in models.candidates]
    shadowed = ", ".join(names) or "none"
    if isinstance(change, SetCandidate):
        new = change.candidate
        if promoted:
            raise BadRequest(
                f"candidate {models.served.name!r} is promoted and answers clients: rollback or finish first", 409
            )
        if new.name in (models.production.name, models.reference.name if models.reference else None):
            raise BadRequest(f"candidate name {new.name!r} is taken by another model of the lineup", 409)
        if new.name in names:
            raise BadRequest(
                f"candidate {new.name!r} is already shadowed: give the new model a new name (a version), so "
                "its evidence never mixes with the old one's",
                409,
            )
        if change.replace is not None:
            if change.replace not in names:
                raise BadRequest(f"no candidate {change.replace!r} to replace; shadowed: {shadowed}", 409)
            return models.with_candidates([new if c.name == change.replace else c for c in models.candidates])
        if len(names) >= max_candidates:
            raise BadRequest(
                f"{len(names)} candidates are shadowed ({shadowed}), the most shadow.max_candidates allows: "
                "replace or remove one",
                409,
            )
        return models.with_candidates([*models.candidates, new])
    if not names:
        raise BadRequest(f"no candidate is shadowed: there is nothing to {change.action}", 409)
    if isinstance(change, RemoveCandidate):
        if promoted:
            raise BadRequest(f"candidate {names[0]!r} is promoted and answers clients: rollback or finish first", 409)
        name = change.candidate
        if name is None and len(names) > 1:
            raise BadRequest(f"{len(names)} candidates are shadowed ({shadowed}): name the one to remove", 409)
        if name is not None and name not in names:
            raise BadRequest(f"no candidate {name!r} is shadowed; shadowed: {shadowed}", 409)
        gone = name or names[0]
        return models.with_candidates([c for c in models.candidates if c.name != gone])
    if isinstance(change, Promote):
        if change.candidate not in names:
            raise BadRequest(f"no candidate {change.candidate!r} is shadowed; shadowed: {shadowed}", 409)
        if promoted:
            raise BadRequest(f"candidate {change.candidate!r} is already promoted", 409)
        if len(names) > 1:
            others = ", ".join(n for n in names if n != change.candidate)
            raise BadRequest(
                f"other candidates are shadowed ({others}): remove them first; a promotion keeps only the "
                "previous production in the shadow",
                409,
            )
        return models.model_copy(update={"live": "candidate"})
    if not promoted:
        raise BadRequest(f"nothing is promoted: production {models.production.name!r} answers clients", 409)
    if isinstance(change, Rollback):
        return models.model_copy(update={"live": "production"})
    return models.model_copy(update={"production": models.candidates[0], "candidates": [], "live": "production"})


def retire_after(model: ModelBase) -> float:
    """Seconds after a swap before a replaced model is closed: longer than any call that started on it."""
    if isinstance(model, HttpModel):
        return max(60.0, model.timeout_s * (model.retries + 1) + 10.0)
    return 60.0


_CLOSING: set[asyncio.Future[None]] = set()  # closes under way (a task nobody holds may be collected)


def close_later(model: ModelBase, close: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Close a replaced model (or its runner) ``retire_after(model)`` seconds from now, on this loop."""

    def start() -> None:
        task = asyncio.ensure_future(close())
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)

    asyncio.get_running_loop().call_later(retire_after(model), start)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    """(scheme, host, port) of a URL, the port made explicit: what a credential and a server are tied to."""
    u = urlsplit(url)
    return u.scheme.lower(), u.hostname, u.port or {"http": 80, "https": 443}.get(u.scheme.lower())


def _path_under(path: str, prefix: str) -> bool:
    """Is ``path`` (no dot segments: refused before) ``prefix`` or below it, by whole segments?"""
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


def check_allowed(config: ShadowdConfig, base: ModelsConfig, model: ModelConfig) -> None:
    """``BadRequest`` 403 unless a runtime candidate uses only what the config trusts (``lineup``, and what
    the config's own models in ``base`` use): the code it imports and its arguments, the files it reads, the
    servers it sends production's inputs to, and which credentials go to which server."""
    allowed = config.lineup
    own = [m for m in (base.production, *base.candidates, base.reference) if m is not None]

    def refuse(what: str, key: str) -> NoReturn:
        raise BadRequest(f"{what} is not allowed at runtime: the config's models do not use it (add it to {key})", 403)

    if isinstance(model, PythonModel):
        same = any(isinstance(m, PythonModel) and (m.target, m.kwargs) == (model.target, model.kwargs) for m in own)
        if not same and model.target not in allowed.python_targets:
            refuse(f"python target {model.target!r} with these kwargs", "lineup.python_targets")
    elif isinstance(model, TorchScriptModel):
        path = Path(model.path)
        if not path.is_absolute():
            raise BadRequest(f"path {model.path!r}: give an absolute path (as the daemon's nodes see it)", 422)
        dirs = [Path(m.path).resolve().parent for m in own if isinstance(m, TorchScriptModel)]
        dirs += [Path(d).resolve() for d in allowed.model_dirs]
        if not any(path.resolve().is_relative_to(d) for d in dirs):  # symlinks followed first
            refuse(f"model file {model.path!r}", "lineup.model_dirs")
    elif isinstance(model, HttpModel):
        endpoint = urlsplit(model.endpoint())
        segments = endpoint.path.split("/")
        if any(seg in (".", "..") or "%2e" in seg.lower() for seg in segments):
            raise BadRequest(f"url {model.url!r}: dot segments ('.', '..', '%2e') are not allowed", 422)
        origin = _origin(model.url)
        servers = {_origin(m.url) for m in own if isinstance(m, HttpModel)}
        listed = [(_origin(u), urlsplit(u).path) for u in allowed.http_urls]
        if origin not in servers and not any(o == origin and _path_under(endpoint.path, p) for o, p in listed):
            refuse(f"URL {origin[0]}://{origin[1]}:{origin[2]}{endpoint.path}", "lineup.http_urls")
        # A credential goes only to the server the config sends it to, unless lineup.credentials lists it.
        tied: dict[str, set[tuple[str, str | None, int | None]]] = {}
        for m in own:
            if isinstance(m, HttpModel):
                for source in [*m.headers_env.values(), *(str(f) for f in m.headers_file.values())]:
                    tied.setdefault(source, set()).add(_origin(m.url))
                if m.ca_file is not None:
                    tied.setdefault(str(m.ca_file), set()).add(_origin(m.url))
        files = [*(str(f) for f in model.headers_file.values()), *([str(model.ca_file)] if model.ca_file else [])]
        for source in [*model.headers_env.values(), *files]:
            if source not in allowed.credentials and origin not in tied.get(source, set()):
                refuse(f"credential or CA file {source!r} for this server", "lineup.credentials")


def lineup_config(config: ShadowdConfig, models: ModelsConfig) -> ShadowdConfig:
    """``config`` with ``models``; ``BadRequest`` 422 when the models do not fit it (input shapes, output kind)."""
    prod = models.production
    others = [(f"candidate {c.name!r}", c) for c in models.candidates] + [("reference", models.reference)]
    for role, model in others:
        if model is not None and model.input_shape != prod.input_shape:
            raise BadRequest(
                f"{role}.input_shape {model.input_shape} differs from production's {prod.input_shape}", 422
            )
        if model is not None and (model.output == "values") != (prod.output == "values"):
            raise BadRequest(f"{role}.output {model.output!r} does not fit production's {prod.output!r}", 422)
    return config.model_copy(update={"models": models})


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class LineupStore:
    """A shard's lineup under ``<data_dir>/lineup/``; the lead also keeps the audit log and closed windows'
    reports there."""

    def __init__(self, data_dir: Path):
        self.folder = data_dir / "lineup"
        self.path = self.folder / "lineup.json"
        self.audit_path = self.folder / "audit.jsonl"
        self.reports = self.folder / "reports"

    def load(self, base: ModelsConfig) -> tuple[Lineup, bool]:
        """(the lineup, whether a saved one was dropped because the config's models changed since). No saved
        lineup, or one for another config: the config's, version 0."""
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return Lineup(0, base, epoch=epoch()), False
        except (OSError, ValueError) as err:  # unreadable: kept aside for a person, the config's lineup
            return self._unreadable(base, err), True
        if saved.get("base") != fingerprint(base):
            return Lineup(int(saved.get("version", 0)) + 1, base, since=time.time(), epoch=epoch()), True
        try:
            return Lineup.from_json(saved), False
        except (KeyError, TypeError, ValueError) as err:
            return self._unreadable(base, err), True

    def _unreadable(self, base: ModelsConfig, err: Exception) -> Lineup:
        aside = self.path.with_name(f"lineup.json.unreadable-{int(time.time())}")
        os.replace(self.path, aside)
        log.error("lineup %s unreadable (%s); moved to %s, following the config's models", self.path, err, aside)
        return Lineup(1, base, since=time.time(), epoch=epoch())

    def save(self, lineup: Lineup, base: ModelsConfig) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path, json.dumps({**lineup.to_json(), "base": fingerprint(base)}))

    def audit(self, entry: dict[str, Any]) -> None:
        """One JSON line, synced before the change is answered."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.audit_path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            torn = f.tell() > 0 and (f.seek(-1, os.SEEK_END) or f.read(1)) != b"\n"
            f.write((b"\n" if torn else b"") + json.dumps(entry, sort_keys=True).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def history(self, last: int = 20) -> list[dict[str, Any]]:
        try:
            lines = self.audit_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines[-last:]:
            try:
                entries.append(json.loads(line))
            except ValueError:  # a line torn by a crash mid-write
                continue
        return entries

    def keep_report(self, version: int, report: dict[str, Any]) -> str:
        """Keep the report of a window a change closes (one candidate's); returns its file name (under
        ``reports/``)."""
        self.reports.mkdir(parents=True, exist_ok=True)
        cand = report.get("models", {}).get("candidate")
        tag = hashlib.sha256(cand.encode()).hexdigest()[:8] if cand else "0"  # names that read alike stay apart
        judged = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', cand)[:60]}-{tag}" if cand else "none"
        name = f"{version:06d}-{judged}-{int(time.time())}.json"
        _write_atomic(self.reports / name, json.dumps(report))
        return name

    def kept_reports(self) -> list[str]:
        return sorted(p.name for p in self.reports.glob("*.json")) if self.reports.is_dir() else []

    def last_report_of(self, name: str, scan: int = 200) -> dict[str, Any] | None:
        """The report of the newest window (of the ``scan`` newest kept) that judged candidate ``name``, in the
        shadow or promoted; None when there is none. Newest by the time each was kept, not by file name (a
        lineup version can start again from 1)."""
        if not self.reports.is_dir():
            return None
        files = sorted(self.reports.glob("*.json"), key=lambda f: f.stat().st_mtime_ns, reverse=True)
        for file in files[:scan]:
            try:
                report: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
                if report["models"]["candidate"] == name:
                    return report
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return None


class LineupFollower:
    """A replica's side of the lineup: asks the lead hub shard for it every ``POLL_S`` and awaits
    ``on_change`` with each new version (which loads the new models in a thread and swaps them in)."""

    def __init__(self, lead: Any, on_change: Callable[[Lineup], Awaitable[None]], timeout_s: float):
        self._lead = lead
        self._on_change = on_change
        self._timeout_s = timeout_s
        self.version: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Task[None] | None = None
        self._syncing = asyncio.Lock()
        self._failed: int | None = None  # a version this replica could not follow, tried again after a backoff
        self._backoff_s = 0.0
        self._retry_at = 0.0

    async def sync(self) -> None:
        """One round: ask, and follow a new version (one round at a time). A version whose models do not load
        here is tried again after 2, 4, ... 60 s, not every round."""
        async with self._syncing:
            data = await asyncio.wait_for(self._lead.lineup.remote(), self._timeout_s)
            lineup = Lineup.from_json(data)
            if lineup.version == self.version:
                return
            if lineup.version == self._failed and time.monotonic() < self._retry_at:
                return
            try:
                await self._on_change(lineup)
            except Exception as err:
                self._backoff_s = min(60.0, 2 * self._backoff_s) if self._failed == lineup.version else 2.0
                self._failed, self._retry_at = lineup.version, time.monotonic() + self._backoff_s
                log.error("cannot follow lineup version %d (again in %.0f s): %s", lineup.version, self._backoff_s, err)
                raise
            self.version, self._failed = lineup.version, None

    async def ready(self) -> None:
        """Before this replica's first shadow or production call: the lineup synced once (a replica that
        starts after a runtime change never answers with the config's models), or tried and logged."""
        self.ensure_started()
        if self._first is not None and not self._first.done():
            await asyncio.shield(self._first)

    def ensure_started(self) -> None:
        if self._first is None:
            self._first = asyncio.get_running_loop().create_task(self._once())
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _once(self) -> None:
        try:
            await self.sync()
        except Exception as err:  # the hub restarting: the config's lineup until it answers
            log.warning("lineup not synced with the lead hub yet (%s); following the config's", type(err).__name__)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.sync()
            except Exception as err:
                log.warning("lineup poll failed: %s", type(err).__name__)

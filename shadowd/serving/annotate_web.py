"""The labelling page: ``shadowd annotate --web`` serves the on-call rotation's queue to browsers.

Data flow::

    browser tab --GET /--> the page (static: index.html, app.js, app.css from shadowd/serving/web/, no CDN)
        --POST /api/session (token: scope labels)--> a session on the WorkQueue (flywheel/annotate.py)
        --POST /api/next--> WorkQueue.lease(session) -> item_view (flywheel/item_view.py) -> JSON
        --POST /api/label {request_id, answer}--> WorkQueue.submit: label on the labels channel (acked)
              and in the local labels file (fsync), then the queue is committed -> the daemon joins it
        --GET /api/status (every 15 s)--> backlog, oldest age, rotation; renews the session's lease

One process reads the rotation's queue and leases each item to one tab at a
time (the same queue code as the terminal annotator); an item a tab holds
longer than ``annotations.web.lease_s`` without asking goes to the next one.

Security (docs/security.md): every /api route needs a bearer token with scope
``labels`` (the daemon's tokens; without configured ones, the data dir's
generated token, loopback only). The page takes the token from the URL's
fragment (never sent to a server, never in a log) into the tab's
sessionStorage and sends it as a header: no cookie, so another site cannot
make a browser label. Items are rendered as text nodes only; a strict
Content-Security-Policy allows only the page's own script. Bodies over 16 KiB
get a 413; a Host header that is not this loopback address gets a 421 (DNS
rebinding).
"""

from __future__ import annotations

import contextlib
import html
import http.server
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shadowd.config import ShadowdConfig, is_loopback
from shadowd.errors import AnnotateError, AuthError, BadRequest, LabelStudioError
from shadowd.flywheel.annotate import LANES, LeaseLost, WorkQueue, check_answer
from shadowd.flywheel.item_view import item_view
from shadowd.flywheel.labelstudio import LabelStudioBridge
from shadowd.flywheel.transports import Backlog
from shadowd.serving.auth import Scope, TokenSet, generated_token_path, load_tokens

__all__ = ["AnnotateServer", "PageTokens", "Route", "open_link", "serve_page", "serve_webhook"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_NEXT_WAIT_S = 1.0  # how long /api/next waits for an item before answering "empty"


class PageTokens:
    """The tokens the page accepts: the configured ones, or the data dir's generated one (re-read when a
    daemon restart replaces it)."""

    def __init__(self, config: ShadowdConfig):
        self._config = config
        self._stamp: tuple[int, int] | None = None
        self._tokens: TokenSet = load_tokens(config)
        self._lock = threading.Lock()

    def check(self, authorization: str | None, scope: Scope, route: str) -> str:
        if not self._config.auth.configured:
            with self._lock:
                try:
                    st = generated_token_path(self._config.data_dir).stat()
                    stamp = (st.st_mtime_ns, st.st_ino)
                except OSError:
                    stamp = None
                if stamp != self._stamp:
                    self._tokens, self._stamp = load_tokens(self._config), stamp
        return self._tokens.check(authorization, scope, route)

    @property
    def generated(self) -> bool:
        return self._tokens.generated


@dataclass(frozen=True)
class Route:
    """One API route: its handler takes (server, token name, session or None, JSON body) -> JSON answer."""

    handler: Callable[[AnnotateServer, str, str | None, dict[str, Any]], tuple[int, Any]]
    scope: Scope = "labels"
    needs_session: bool = True
    max_body_bytes: int = MAX_BODY_BYTES


class AnnotateServer:
    """The page's HTTP server around one WorkQueue. ``start()`` serves in a thread; ``close()`` stops."""

    def __init__(
        self,
        config: ShadowdConfig,
        queue: WorkQueue,
        annotator: str | None = None,
        host: str | None = None,
        port: int | None = None,
        extra_routes: dict[tuple[str, str], Route] | None = None,
        page: bool = True,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.queue = queue
        self.fixed_annotator = annotator
        self.tokens = PageTokens(config)
        self._clock = clock
        self._page = page
        self._routes: dict[tuple[str, str], Route] = (
            {
                ("POST", "/api/session"): Route(AnnotateServer._open_session, needs_session=False),
                ("GET", "/api/status"): Route(AnnotateServer._status),
                ("POST", "/api/next"): Route(AnnotateServer._next),
                ("POST", "/api/label"): Route(AnnotateServer._label),
                ("POST", "/api/release"): Route(AnnotateServer._release),
                ("POST", "/api/close"): Route(AnnotateServer._close_session),
            }
            if page
            else {}
        )
        self._routes.update(extra_routes or {})
        self._session_owner: dict[str, str] = {}
        self._backlog: tuple[float, dict[str, Any]] | None = None
        self._backlog_lock = threading.Lock()
        web = config.annotations.web
        self.host = host or web.host
        self._httpd = http.server.ThreadingHTTPServer((self.host, web.port if port is None else port), _handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    def start(self) -> AnnotateServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="shadowd-annotate-web", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
        self._httpd.server_close()

    # --- routes ---

    def annotator_for(self, token_name: str) -> str:
        """Who labels: --as, else the token's holder (configured tokens), else whoever is on call."""
        if self.fixed_annotator:
            return self.fixed_annotator
        if self.config.auth.configured:
            return token_name
        rotation = self.queue.rotation
        return rotation.on_call() if rotation is not None else os.environ.get("USER", "annotator")

    def _open_session(self, token: str, session: str | None, body: dict[str, Any]) -> tuple[int, Any]:
        annotator = self.annotator_for(token)
        sid = self.queue.open_session(annotator)
        for old in [s for s in self._session_owner if not self.queue.has_session(s)]:
            del self._session_owner[old]  # sessions the queue forgot (idle past twice the lease)
        self._session_owner[sid] = token
        ann = self.config.annotations
        return 200, {
            "session": sid,
            "annotator": annotator,
            "rotation": self.queue.rotation_name,
            "task": self.config.task,
            "class_names": ann.class_names,
            "lease_s": self.queue.lease_s,
        }

    def _status(self, token: str, session: str | None, body: dict[str, Any]) -> tuple[int, Any]:
        assert session is not None
        held = self.queue.current(session)  # renews the lease
        rotation: dict[str, Any] | None = None
        if self.queue.rotation is not None:
            now = self.queue.rotation.current_shift()
            nxt = self.queue.rotation.shift_at(now.end_ts)
            rotation = {
                "name": self.queue.rotation_name,
                "on_call": now.annotator,
                "until_ts": now.end_ts,
                "next": nxt.annotator,
                "next_until_ts": nxt.end_ts,
            }
        return 200, {
            "now": self._clock(),
            "backlog": self._cached_backlog(),
            "rotation": rotation,
            "holding": held.item.request_id if held is not None else None,
            "in_flight": self.queue.in_flight(),
        }

    def _cached_backlog(self) -> dict[str, Any]:
        """The rotation's backlog per lane, measured at most as often as the transport allows."""
        with self._backlog_lock:
            now = time.monotonic()
            if self._backlog is not None and now - self._backlog[0] < self.queue.transport.backlog_every_s:
                return self._backlog[1]
            lanes: dict[str, Backlog] = {}
            for lane in LANES:
                try:
                    lanes[lane] = self.queue.backlog(lane)
                except Exception as err:  # a broker hiccup must not break the page
                    log.debug("backlog of %s: %s", lane, err)
            value = {
                "items": sum(b.items for b in lanes.values()),
                "oldest_age_s": max((b.oldest_age_s for b in lanes.values()), default=0.0),
                "lanes": {lane: {"items": b.items, "oldest_age_s": b.oldest_age_s} for lane, b in lanes.items()},
            }
            self._backlog = (now, value)
            return value

    def _next(self, token: str, session: str | None, body: dict[str, Any]) -> tuple[int, Any]:
        assert session is not None
        held = self.queue.lease(session, timeout_s=_NEXT_WAIT_S)
        if held is None:
            return 200, {"item": None}
        return 200, {"item": item_view(held.item, held.lane, self.config, self._clock())}

    def _label(self, token: str, session: str | None, body: dict[str, Any]) -> tuple[int, Any]:
        assert session is not None
        rid = body.get("request_id")
        if not isinstance(rid, str) or not rid:
            raise BadRequest("the body needs 'request_id' (the item's) and 'answer'", 422)
        if "answer" not in body:
            raise BadRequest("the body needs 'answer': a class index or value(s), 'skip' or 'bad_data'", 422)
        held = self.queue.current(session)
        if held is None or held.item.request_id != rid:
            raise LeaseLost(
                f"this tab no longer holds item {rid!r}: its lease ran out ({self.queue.lease_s:g} s without the "
                "page asking) and it went to the next annotator, or it was answered already"
            )
        n_classes = len(self.config.annotations.class_names or []) or None
        try:
            answer = check_answer(body["answer"], held.item, self.config.task, n_classes)
        except ValueError as err:
            raise BadRequest(str(err), 422) from None
        label = self.queue.submit(session, answer, request_id=rid)
        return 200, {"label": json.loads(label.model_dump_json())}

    def _release(self, token: str, session: str | None, body: dict[str, Any]) -> tuple[int, Any]:
        assert session is not None
        self.queue.release(session)
        return 200, {"released": True}

    def _close_session(self, token: str, session: str | None, body: dict[str, Any]) -> tuple[int, Any]:
        assert session is not None
        self.queue.close_session(session)
        self._session_owner.pop(session, None)
        return 200, {"closed": True}

    # --- dispatch (called by the handler thread) ---

    def body_limit(self, method: str, path: str) -> int:
        route = self._routes.get((method, path))
        return route.max_body_bytes if route is not None else MAX_BODY_BYTES

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self._page and method == "GET" and path in _STATIC:
            name, ctype = _STATIC[path]
            return 200, {"Content-Type": ctype}, _asset(name)
        route = self._routes.get((method, path))
        if route is None:
            if any(p == path for _, p in self._routes) or (self._page and path in _STATIC):
                return _json(405, {"error": f"{method} is not allowed on {path}"})
            return _json(404, {"error": f"no route {path}"})
        try:
            token = self.tokens.check(headers.get("Authorization"), route.scope, f"{method} {path}")
            session = None
            if route.needs_session:
                session = headers.get("X-Shadowd-Session") or ""
                owner = self._session_owner.get(session)
                if owner is None:
                    return _json(409, {"error": "unknown session: it ended or expired; open a new one"})
                if owner != token:
                    raise AuthError(f"session belongs to another token than '{token}'", 403, route.scope)
            data: dict[str, Any] = {}
            if body:
                try:
                    parsed = json.loads(body)
                except (ValueError, UnicodeDecodeError):
                    raise BadRequest("the body is not valid JSON", 400) from None
                if not isinstance(parsed, dict):
                    raise BadRequest("the body must be a JSON object", 400)
                data = parsed
            status, answer = route.handler(self, token, session, data)
            return _json(status, answer)
        except AuthError as err:
            hdrs = {"WWW-Authenticate": 'Bearer realm="shadowd"'} if err.http_status == 401 else {}
            status, h, b = _json(err.http_status, {"error": str(err)})
            return status, {**h, **hdrs}, b
        except LeaseLost as err:
            return _json(409, {"error": str(err)})
        except AnnotateError as err:  # the labels channel is down: the item stays with the tab, try again
            return _json(503, {"error": str(err)})
        except BadRequest as err:
            return _json(err.http_status, {"error": str(err)})


def _json(status: int, body: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(body, allow_nan=False).encode()


def _asset(name: str) -> bytes:
    return resources.files("shadowd.serving").joinpath("web", name).read_bytes()


def _handler(server: AnnotateServer) -> type[http.server.BaseHTTPRequestHandler]:
    loopback = is_loopback(server.host)

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "shadowd-annotate"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # no headers, no bodies: never a token
            log.debug("%s %s", self.address_string(), format % args)

        def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for k, v in {**_SECURITY_HEADERS, **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _dispatch(self) -> None:
            path = urlsplit(self.path).path
            if loopback and not _host_is_loopback(self.headers.get("Host", "")):
                self.close_connection = True
                self._answer(*_json(421, {"error": "this page answers only to its loopback address"}))
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            limit = server.body_limit(self.command, path)
            if length < 0 or length > limit:
                self.close_connection = True
                status = 400 if length < 0 else 413
                self._answer(*_json(status, {"error": f"a body must be 0 to {limit} bytes"}))
                return
            body = self.rfile.read(length) if length else b""
            try:
                self._answer(*server.handle(self.command, path, self.headers, body))
            except Exception:
                log.exception("annotate page: %s %s failed", self.command, path)
                self._answer(*_json(500, {"error": "internal error; the annotate log has the details"}))

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    return Handler


def _host_is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1 : host.find("]")]
    return bool(name) and is_loopback(name)


def open_link(config: ShadowdConfig, url: str) -> Path | None:
    """A file that sends a browser to the page with the generated token in the URL fragment (0600, like the
    token itself), so the token never lands on a command line; None with configured tokens."""
    if config.auth.configured:
        return None
    token = generated_token_path(config.data_dir).read_text().strip()
    path = Path(config.data_dir) / "annotate" / "open-page.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        target = html.escape(f"{url}#token={token}", quote=True)
        f.write(f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={target}">')
    return path


def serve_page(
    config: ShadowdConfig,
    annotator: str | None = None,
    host: str | None = None,
    port: int | None = None,
) -> AnnotateServer:
    """A started page on its own WorkQueue (``annotations.web.lease_s``)."""
    queue = WorkQueue(config, lease_s=config.annotations.web.lease_s)
    try:
        return AnnotateServer(config, queue, annotator, host, port).start()
    except BaseException:
        queue.close()
        raise


WEBHOOK_MAX_BODY_BYTES = 4 * 1024 * 1024  # Label Studio sends the whole task (an image as a data URL)


def serve_webhook(config: ShadowdConfig, bridge: LabelStudioBridge) -> AnnotateServer:
    """Label Studio's webhook receiver (POST /webhook, a token of scope labels): imports the task at once."""
    ls = config.annotations.label_studio
    assert ls is not None and ls.webhook_port is not None

    def webhook(server: AnnotateServer, token: str, session: str | None, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            return 200, bridge.on_webhook(body)
        except LabelStudioError as err:  # fetching the task failed: Label Studio may retry; polling will
            return 503, {"error": str(err)}

    route = Route(webhook, needs_session=False, max_body_bytes=WEBHOOK_MAX_BODY_BYTES)
    return AnnotateServer(
        config,
        bridge.queue,
        host=ls.webhook_host,
        port=ls.webhook_port,
        extra_routes={("POST", "/webhook"): route},
        page=False,
    ).start()

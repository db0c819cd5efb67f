"""ShadowIngress: the HTTP front of shadowd and the production path.

The production model runs inside this replica (no extra hop), or is served
elsewhere (``kind: http``) and awaited here; either way through
``LoadedModel.apredict``, so the event loop is never blocked on a remote
model (a local one runs inline or, with ``run_in_thread``, in a thread). A
request is parsed, answered from production, and, if sampled, production's
side of the pair is offered to the ``ShadowBuffer`` (O(1), never blocks).
Everything else (candidate, comparison, annotation) happens in other
deployments.

Routes and the token scope each needs (``shadowd.serving.auth``), checked
before the body is read: POST /predict (open, or ``predict`` with
``auth.predict_requires_token``), POST /feedback (``labels``), GET
/shadow/report (``read``), GET /shadow/verdict and POST
/shadow/verdict/flagger (``read``: the verdict for Argo Rollouts' web metric
and Flagger's confirm-promotion webhook; the latter answers 200 on PASS, 412
otherwise), POST /shadow/reset (``admin``), GET /healthz (open). A failure
of shadowd or of a local model answers 500 with the request id to find it
in the log, never the exception text; a remote production model that is
unreachable or answers badly answers 502, one that does not answer within
its ``timeout_s`` 504, each with a one-line reason and the request id.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import numpy as np
from ray import serve
from ray.exceptions import RayError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shadowd.compare.report import Verdict, select_candidate
from shadowd.config import ShadowdConfig
from shadowd.errors import AuthError, BadRequest, RemoteModelError
from shadowd.expect import ExpectationSet, Violation, record_violations, violation_item
from shadowd.models import ModelConfig
from shadowd.models.runtime import LoadedModel, check_rows, load_model
from shadowd.records import AnnotationItem, Mirrored, MirroredBatch, ModelOutput, Outcome, Role
from shadowd.sampling import is_sampled, shard_of
from shadowd.serving.auth import Scope, load_tokens
from shadowd.serving.lineup import Lineup, LineupFollower, close_later
from shadowd.serving.protocol import (
    PredictRequest,
    parse_candidate_query,
    parse_feedback,
    parse_flagger,
    parse_predict,
    read_json,
    request_id_from,
)
from shadowd.serving.runtime import MetricsPublisher, process_metrics
from shadowd.serving.shadow_buffer import ShadowBuffer

__all__ = ["ShadowIngress"]

log = logging.getLogger(__name__)

# A change may load a new model in the lead before it answers (``shadowd.serving.hub._LOAD_CHECK_S``).
_CHANGE_TIMEOUT_S = 180.0
_HUB_CALLS = 16  # report/feedback/reset calls one ingress replica lets wait on the hub at once
_BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="shadowd"'}

Handler = Callable[[Request], Awaitable[Response]]


def _serve_request_id() -> str | None:
    """The id Ray Serve's proxy gave this request: the client's X-Request-ID, or one it
    generated and echoes in the response's X-Request-ID header."""
    from ray.serve.context import _get_serve_request_context  # no public accessor yet

    return _get_serve_request_context().request_id or None


def _internal_error(request_id: str, what: str) -> JSONResponse:
    """A 500 that tells the client which request to look up, never the exception (it may hold data)."""
    return JSONResponse(
        {"error": f"{what}; the shadowd log has the details under request id {request_id}", "request_id": request_id},
        status_code=500,
    )


class ShadowIngress:
    def __init__(self, config: ShadowdConfig, worker: Any, hubs: list[Any]):
        """``hubs``: a handle per hub shard, in shard order (the first is the lead, which answers reports)."""
        self._cfg = config
        self._hubs = hubs
        self._metrics = process_metrics()
        self._publisher = MetricsPublisher(hubs[0])  # to the lead's /metrics, from another node
        self._models = config.models  # the lineup this replica follows (shadowd.serving.lineup)
        served = self._models.served
        self._model = load_model(served, config.serving.torch_threads)
        self._input_shape = tuple(served.input_shape)
        self._classification = config.task == "classification"
        self._prefix = config.serving.route_prefix.rstrip("/")
        self._batching = False
        self._set_batching(served)
        self._lineup = LineupFollower(hubs[0], self._follow, config.serving.hub_timeout_s)
        self._standby: LoadedModel | None = None  # the previous production while a candidate is promoted
        self._hub_calls = asyncio.Semaphore(_HUB_CALLS)
        self._expect = ExpectationSet(config.expectations, redaction=config.annotations.redaction)
        # Violating requests worth a human look travel to the hub beside the shadow path, bounded the same way.
        self._violation_items = ShadowBuffer(
            send=self._send_items,
            max_in_flight=config.shadow.max_in_flight,
            flush_interval_s=config.shadow.flush_interval_ms / 1000,
            max_flush_size=config.shadow.max_flush_size,
            on_drop=lambda reason, n: self._metrics.pairs_dropped.labels(f"violation_{reason}").inc(n),
            max_in_flight_bytes=config.shadow.max_in_flight_bytes,
        )
        self._buffer = None
        if worker is not None and config.shadow.enabled(config.models):
            self._buffer = ShadowBuffer(
                send=lambda batch: worker.process.remote(MirroredBatch.of(batch)),
                max_in_flight=config.shadow.max_in_flight,
                flush_interval_s=config.shadow.flush_interval_ms / 1000,
                max_flush_size=config.shadow.max_flush_size,
                on_drop=lambda reason, n: self._metrics.pairs_dropped.labels(reason).inc(n),
                max_in_flight_bytes=config.shadow.max_in_flight_bytes,
            )
        self._tokens = load_tokens(config)
        predict_scope: Scope | None = "predict" if config.auth.predict_requires_token else None
        self._routes: dict[tuple[str, str], tuple[Handler, Scope | None]] = {
            ("POST", "/predict"): (self._predict, predict_scope),
            ("POST", "/feedback"): (self._feedback, "labels"),
            ("GET", "/shadow/report"): (self._report, "read"),
            ("GET", "/shadow/verdict"): (self._verdict, "read"),
            ("POST", "/shadow/verdict/flagger"): (self._flagger, "read"),
            ("POST", "/shadow/reset"): (self._reset, "admin"),
            ("GET", "/shadow/candidates"): (self._candidates, "read"),
            ("POST", "/shadow/candidates"): (self._change_candidates, "admin"),
            ("GET", "/healthz"): (self._healthz, None),
        }

    def _set_batching(self, served: ModelConfig) -> None:
        if served.max_batch_size > 1 or self._batching:  # serve.batch adds these setters; its stubs do not say so
            self._predict_batch.set_max_batch_size(served.max_batch_size)  # type: ignore[attr-defined]
            self._predict_batch.set_batch_wait_timeout_s(served.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self._batching = served.max_batch_size > 1

    async def _follow(self, lineup: Lineup) -> None:
        """A new lineup: a newly served model is loaded in a thread while the old one answers, then swapped in
        (requests already running finish on the old one, which is closed once they are done). While a candidate
        is promoted, the previous production stays loaded here: a rollback swaps it back at once."""
        models = lineup.models
        served = models.served
        loaded = [m for m in (self._model, self._standby) if m is not None]
        if served != self._model.cfg:
            model = next((m for m in loaded if m.cfg == served), None)
            if model is None:
                model = await asyncio.to_thread(load_model, served, self._cfg.serving.torch_threads)
            old, self._model = self._model, model
            self._set_batching(served)
            log.info("now serving %r (was %r), lineup version %d", model.name, old.name, lineup.version)
        # Kept: the served model, and while promoted the production it replaced; the rest closed once every
        # request that started on it is answered.
        promoted = models.live == "candidate"
        self._standby = next(
            (m for m in loaded if promoted and m is not self._model and m.cfg == models.production), None
        )
        for m in loaded:
            if m is not self._model and m is not self._standby:
                close_later(m.cfg, m.aclose)
        self._models = models

    async def __call__(self, request: Request) -> Response:
        self._publisher.ensure_started()
        self._lineup.ensure_started()
        path = request.url.path
        if self._prefix and path.startswith(self._prefix):
            path = path[len(self._prefix) :] or "/"
        route = self._routes.get((request.method, path))
        try:
            if route is None:
                known = [p for (m, p) in self._routes if p == path]
                if known:
                    raise BadRequest(f"{request.method} is not allowed on {path}", 405)
                raise BadRequest(
                    f"no route {path}; see /predict, /feedback, /shadow/report, /shadow/verdict, /healthz", 404
                )
            handler, scope = route
            if scope is not None:  # before the body is read: a request without the token costs nothing more
                token = self._tokens.check(request.headers.get("authorization"), scope, f"{request.method} {path}")
                request.state.token_name = token
            return await handler(request)
        except AuthError as err:
            self._metrics.auth_failures.labels(scope=err.scope, status=str(err.http_status)).inc()
            self._metrics.bad_requests.labels(str(err.http_status)).inc()
            headers = _BEARER_CHALLENGE if err.http_status == 401 else None
            return JSONResponse({"error": err.reason}, status_code=err.http_status, headers=headers)
        except BadRequest as err:
            self._metrics.bad_requests.labels(str(err.http_status)).inc()
            return JSONResponse({"error": err.reason}, status_code=err.http_status)
        except Exception:  # a bug or a dead hub: the log has the details, the client gets the id to find them
            request_id = _serve_request_id() or "-"
            log.exception("internal error answering %s %s (request %s)", request.method, path, request_id)
            return _internal_error(request_id, "internal error")

    async def _json(self, request: Request) -> dict[str, Any]:
        limit = self._cfg.serving.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit():
            if int(declared) > limit:
                raise BadRequest(f"request body is {declared} bytes; the limit is {limit}", 413)
            return read_json(await request.body(), limit)  # the usual case: the length is known and small
        body = bytearray()
        async for chunk in request.stream():  # chunked uploads have no length to check up front
            body += chunk
            if len(body) > limit:
                raise BadRequest(f"request body is over the limit of {limit} bytes", 413)
        return read_json(bytes(body), limit)

    async def _send_items(self, items: list[AnnotationItem]) -> None:
        """Violation items to the hub shards owning their request ids (the shard's policy dedups them)."""
        n = len(self._hubs)
        by_shard: dict[int, list[AnnotationItem]] = {}
        for item in items:
            by_shard.setdefault(shard_of(item.request_id, n), []).append(item)
        await asyncio.gather(*(self._hubs[s].add_items.remote(part) for s, part in by_shard.items()))

    async def _hub_call(self, method: str, *args: Any, shard: int = 0, timeout_s: float | None = None) -> Any:
        """Call a hub shard (the lead unless named), bounded: a slow or restarting hub gets a 503, never a
        hung ingress."""
        if self._hub_calls.locked():
            raise BadRequest("too many report/feedback calls in flight; retry shortly", 503)
        timeout_s = timeout_s or self._cfg.serving.hub_timeout_s
        async with self._hub_calls:
            try:
                call = getattr(self._hubs[shard], method).remote(*args)
                return await asyncio.wait_for(call, timeout_s)
            except TimeoutError:
                raise BadRequest(f"the hub did not answer within {timeout_s} s; retry", 503) from None
            except RayError as err:  # the hub replica died; Serve starts another, which resumes its state
                log.warning("hub call %s failed: %s", method, type(err).__name__)
                raise BadRequest("the hub is restarting; retry shortly", 503) from None

    @serve.batch(max_batch_size=1)
    async def _predict_batch(self, xs: list[np.ndarray]) -> list[tuple[np.ndarray, LoadedModel]]:
        model = self._model
        return [(row, model) for row in await model.apredict(np.stack(xs))]

    async def _run_production(self, x: np.ndarray) -> tuple[np.ndarray, LoadedModel]:
        """The served model's answer to one example, and which model gave it (the lineup may change meanwhile)."""
        if self._batching:
            return await self._predict_batch(x)
        model = self._model
        row: np.ndarray = (await model.apredict(x[None]))[0]
        return row, model

    def _role_of(self, model: LoadedModel) -> Role:
        """The metrics role of the model that answered: production, or the candidate once promoted."""
        cand = self._models.candidate
        return "candidate" if cand is not None and model.name == cand.name else "production"

    def _remote_failure(self, err: RemoteModelError, request_id: str, model: LoadedModel) -> JSONResponse:
        """A remote production model failed: 502 (refused, error status, bad answer) or 504 (timeout), with the
        reason; counted. The log gets an excerpt of the answer, the client never does."""
        role = self._role_of(model)
        outcome = "timeout" if err.http_status == 504 else "error"
        self._metrics.requests.labels(role=role, outcome=outcome, model=model.name).inc()
        self._metrics.remote_failures.labels(role, err.reason).inc()
        log.warning(
            "production model %r failed on request %s: %s%s",
            model.name,
            request_id,
            err,
            f" (answer: {err.detail})" if err.detail else "",
        )
        return JSONResponse(
            {"error": f"production model {model.name!r}: {err}", "request_id": request_id},
            status_code=err.http_status,
        )

    async def _predict(self, request: Request) -> Response:
        t_start = time.perf_counter()
        await self._lineup.ready()  # a replica that (re)started answers with the current lineup's model
        request_id = request_id_from(request.headers, _serve_request_id())
        req = parse_predict(await self._json(request), request_id, self._input_shape, self._cfg.serving)
        violations = self._expect.check_request(req.features, req.inputs)
        if violations:
            record_violations(self._metrics, violations)
            self._expect.raise_if_rejected(violations)  # 422 when the config says reject
        ts = time.time()
        t0 = time.perf_counter()
        model = self._model
        try:
            out, model = await self._run_production(req.inputs)
        except RemoteModelError as err:
            return self._remote_failure(err, request_id, model)
        except Exception:
            self._metrics.requests.labels(role=self._role_of(model), outcome="error", model=model.name).inc()
            log.exception("production model failed on request %s", request_id)
            return _internal_error(request_id, "the production model failed")
        latency_s = time.perf_counter() - t0
        values = np.asarray(out, dtype=np.float64).reshape(-1)
        outcome = check_rows(values[None], 1, None)[0][0]
        role = self._role_of(model)
        self._metrics.requests.labels(role=role, outcome=outcome, model=model.name).inc()
        self._metrics.latency.labels(role=role, model=model.name).observe(latency_s)
        output_violations = self._expect.check_output("production", values)
        if output_violations:
            record_violations(self._metrics, output_violations)
            violations = violations + output_violations
        # JSON has no NaN: a non-finite production output goes out as null.
        listed: list[float | None] = [v if math.isfinite(v) else None for v in values.tolist()]
        self._hand_off(
            req, ts, values.tolist() if outcome == "ok" else None, outcome, latency_s, violations, model.name
        )
        body: dict[str, Any] = {"request_id": request_id, "model": model.name, "outputs": listed}
        if outcome == "ok":
            body["prediction"] = (
                int(values.argmax()) if self._classification else (listed[0] if len(listed) == 1 else listed)
            )
        self._metrics.request_latency.observe(time.perf_counter() - t_start)
        return JSONResponse(body)

    def _hand_off(
        self,
        req: PredictRequest,
        ts: float,
        values: list[float] | None,
        outcome: Outcome,
        latency_s: float,
        violations: list[Violation],
        served: str,
    ) -> None:
        """O(1) appends to bounded buffers, nothing awaited: the shadow pair, and a violation item."""
        shadowing = self._buffer is not None and bool(self._models.shadowed)
        if shadowing and is_sampled(req.request_id, self._cfg.shadow.mirror_share(self._models)):
            assert self._buffer is not None
            self._metrics.pairs_sampled.inc()
            self._buffer.offer(
                Mirrored(
                    request_id=req.request_id,
                    ts=ts,
                    features=req.features,
                    x=req.inputs,
                    production_values=values,
                    production_outcome=outcome,
                    production_latency_s=latency_s,
                    violations=[asdict(v) for v in violations],
                    served_model=served,
                ),
                req.nbytes,
            )
        if violations and self._expect.should_annotate(req.request_id, violations):
            production = ModelOutput(
                role="production", model=served, outcome=outcome, values=values, latency_s=latency_s
            )
            item = violation_item(
                req.request_id,
                violations,
                created_ts=ts,
                features=req.features,
                inputs=req.inputs.tolist(),
                production=production,
            )
            self._violation_items.offer(item, req.nbytes)

    async def _feedback(self, request: Request) -> Response:
        label = parse_feedback(await self._json(request), time.time())
        status, body = await self._hub_call("feedback", label, shard=shard_of(label.request_id, len(self._hubs)))
        return JSONResponse(body, status_code=status)

    async def _report(self, request: Request) -> Response:
        params = request.query_params
        candidate = parse_candidate_query(params, params.multi_items(), "/shadow/report")
        status, body = await self._hub_call("report_response", candidate)
        return JSONResponse(body, status_code=status)

    async def _candidate_verdict(self, candidate: str | None) -> dict[str, Any]:
        """The hub's verdict document, narrowed to ``candidate`` when one is named (404 if it is not shadowed)."""
        document: dict[str, Any] = await self._hub_call("verdict", candidate)
        if candidate is None:
            return document
        narrowed = select_candidate(document, candidate)
        if narrowed is None:
            known = ", ".join(sorted(document["candidates"])) or "none (shadowing is off)"
            raise BadRequest(f"no candidate {candidate!r}; this daemon shadows: {known}", 404)
        return narrowed

    async def _verdict(self, request: Request) -> Response:
        """Always 200 with the verdict in the body: Argo Rollouts' web metric reads it with jsonPath (a non-2xx
        answer would be a measurement error there, not a verdict)."""
        params = request.query_params
        candidate = parse_candidate_query(params, params.multi_items(), "/shadow/verdict")
        return JSONResponse(await self._candidate_verdict(candidate))

    async def _flagger(self, request: Request) -> Response:
        """Flagger's confirm-promotion webhook: 200 on PASS; 412 otherwise, the verdict and reasons in the body
        (Flagger shows it as the reason the promotion waits, and asks again at the next interval)."""
        payload = parse_flagger(await self._json(request))
        document = await self._candidate_verdict(payload.candidate)
        verdict = document["verdict"]
        body: dict[str, Any] = {
            "canary": f"{payload.namespace}/{payload.name}",
            "phase": payload.phase,
            "verdict": verdict,
            "reasons": document["reasons"],
            "candidates": {n: c["verdict"] for n, c in document["candidates"].items()},
        }
        if verdict == Verdict.PASS:
            return JSONResponse(body)
        first = document["reasons"][0] if document["reasons"] else "no reason given"
        body["error"] = f"shadow verdict {verdict}, not PASS: {first}"
        return JSONResponse(body, status_code=412)

    async def _reset(self, request: Request) -> Response:
        return JSONResponse(await self._hub_call("reset"))

    async def _candidates(self, request: Request) -> Response:
        return JSONResponse(await self._hub_call("candidates"))

    async def _change_candidates(self, request: Request) -> Response:
        """Change the lineup (set, remove, promote, rollback, finish): the lead validates, audits and commits
        it; every replica follows within ``POLL_S`` (this one at once)."""
        body = await self._json(request)
        try:
            status, answer = await self._hub_call(
                "change_lineup", body, request.state.token_name, timeout_s=_CHANGE_TIMEOUT_S
            )
        except BadRequest as err:  # the lead may still commit it: say how to find out before a retry
            raise BadRequest(f"{err.reason}; GET /shadow/candidates says whether the change was made", 503) from None
        if status == 200:
            try:
                await self._lineup.sync()
            except Exception as err:  # committed: this replica follows at its next poll like every other
                log.warning("lineup changed; this replica follows at its next poll (%s)", type(err).__name__)
        return JSONResponse(answer, status_code=status)

    async def __del__(self) -> None:
        # Graceful shutdown: what is buffered still reaches the worker and the hub's durable spool.
        for buffer in (self._buffer, self._violation_items):
            if buffer is not None:
                await buffer.drain(timeout_s=5.0)
        await self._model.aclose()
        if self._standby is not None:
            await self._standby.aclose()

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "production": self._model.name,
                "candidate": self._models.candidate.name if self._models.candidate else None,
                "candidates": [c.name for c in self._models.candidates],
                "live": self._models.live,
                "shadow_outstanding": self._buffer.outstanding if self._buffer else 0,
            }
        )

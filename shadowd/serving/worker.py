"""ShadowWorker: runs the candidate (and, on sampled shares, production again
for the noise floor and the reference model for the churn floor) on mirrored
requests in batches, isolated from production, and hands the finished pairs
to the hub in columns (``PairBatch``: one call per batch).

Fault isolation: a local candidate runs in a small thread pool under a
timeout; a remote one (``kind: http``) is awaited on this replica's loop
under the same timeout and the same bound on calls in flight. A call that
raises, hangs past ``candidate_timeout_s``, fails remotely (refused, an
error status, a bad answer), or returns NaN/inf or the wrong shape is
recorded as that outcome on its pairs; nothing here can reach a production
answer, which was sent before the pair was even queued. A local candidate
that hangs keeps its thread; once every thread is stuck, further batches are
marked as timeouts at once instead of piling up behind them (a remote call
past the timeout is cancelled and frees its slot).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shadowd.config import ModelsConfig, ShadowdConfig
from shadowd.errors import RemoteModelError
from shadowd.expect import ExpectationSet, Violation, record_violations
from shadowd.models import HttpModel, ModelConfig
from shadowd.models.runtime import LoadedModel, check_rows, load_model
from shadowd.records import MirroredBatch, ModelOutput, Outcome, OutputColumns, PairBatch, Role
from shadowd.sampling import is_sampled, shard_of
from shadowd.serving.lineup import Lineup, LineupFollower, close_later
from shadowd.serving.runtime import MetricsPublisher, behind_production, process_metrics

__all__ = ["MODEL_THREADS", "ShadowWorker", "run_role"]

_SECOND_OF: dict[str, str] = {"noise": "production", "reference": "reference"}  # the models a second opinion runs

log = logging.getLogger(__name__)

# Threads per model. The worker deployment takes at most this many calls at once, so a busy
# candidate applies backpressure (the ingress's budget then drops and counts) instead of a call
# finding no free thread; only calls stuck past the timeout can leave none free.
MODEL_THREADS = 2
_REMOTE_OUTCOMES: dict[str, Outcome] = {"timeout": "timeout", "bad_shape": "bad_shape"}


class _Runner:
    """Calls one model with a timeout, at most MODEL_THREADS calls at once: a local model in a bounded thread
    pool, a remote one on the event loop. ``on_remote_failure`` counts a remote failure by its reason."""

    def __init__(
        self, model: LoadedModel, timeout_s: float, on_remote_failure: Callable[[str], None] = lambda reason: None
    ):
        self.model = model
        self.timeout_s = timeout_s
        self._on_remote_failure = on_remote_failure
        self._pool = (
            None
            if model.remote
            else ThreadPoolExecutor(max_workers=MODEL_THREADS, thread_name_prefix=f"shadow-{model.name}")
        )
        # Free slots; released by the thread itself (a hung local call keeps its slot) or when a remote call ends.
        self._slots = threading.Semaphore(MODEL_THREADS)

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        await self.model.aclose()

    def _call(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        try:
            return self.model.predict(x), time.perf_counter() - t0
        finally:
            self._slots.release()

    async def __call__(self, x: np.ndarray) -> tuple[Outcome | np.ndarray, float, str | None]:
        """(output array | failed outcome, seconds per example, reason)."""
        if not self._slots.acquire(blocking=False):
            return "timeout", 0.0, f"all {MODEL_THREADS} model threads are still busy with earlier calls"
        if self._pool is None:
            return await self._call_remote(x)
        loop = asyncio.get_running_loop()
        try:
            out, elapsed_s = await asyncio.wait_for(loop.run_in_executor(self._pool, self._call, x), self.timeout_s)
        except TimeoutError:
            return "timeout", self.timeout_s / len(x), f"no answer within {self.timeout_s} s"
        except Exception as err:  # the model's own failure, whatever it is
            return "error", 0.0, f"{type(err).__name__}: {err}"[:300]
        return out, elapsed_s / len(x), None

    async def _call_remote(self, x: np.ndarray) -> tuple[Outcome | np.ndarray, float, str | None]:
        """A remote model's call, awaited here; cancelled at the timeout, which frees its slot."""
        t0 = time.perf_counter()
        try:
            out = await asyncio.wait_for(self.model.apredict(x), self.timeout_s)
        except TimeoutError:
            self._on_remote_failure("timeout")
            return "timeout", self.timeout_s / len(x), f"no answer within {self.timeout_s} s"
        except RemoteModelError as err:
            self._on_remote_failure(err.reason)
            outcome = _REMOTE_OUTCOMES.get(err.outcome, "error")
            return outcome, (time.perf_counter() - t0) / len(x), str(err)[:300]
        except Exception as err:
            return "error", 0.0, f"{type(err).__name__}: {err}"[:300]
        finally:
            self._slots.release()
        return out, (time.perf_counter() - t0) / len(x), None


async def run_role(
    runner: _Runner, role: Role, x: np.ndarray, width: int | None, expect: ExpectationSet | None = None
) -> tuple[list[ModelOutput], list[list[Violation]]]:
    """One ModelOutput per row of ``x`` and its output-expectation violations; failures become
    outcomes, never exceptions."""
    out, per_example_s, reason = await runner(x)
    n = len(x)
    name = runner.model.name
    if isinstance(out, str):
        return [ModelOutput(role=role, model=name, outcome=out, latency_s=per_example_s, detail=reason)] * n, [[]] * n
    outcomes, reason = check_rows(out, n, width)
    violations = expect.check_output_rows(role, out) if expect is not None and out.ndim == 2 else [[]] * n
    return [
        ModelOutput(
            role=role,
            model=name,
            outcome=oc,
            values=out[i].tolist() if oc == "ok" else None,
            latency_s=per_example_s,
            detail=None if oc == "ok" else reason,
        )
        for i, oc in enumerate(outcomes)
    ], violations


@dataclass(frozen=True)
class _Shadow:
    """One test: the shadowed model's runner, on its share of the requests."""

    name: str  # the test's candidate (its pairs' candidate side; after a promotion, the promoted model)
    share: float
    runner: _Runner


@dataclass(frozen=True)
class _Runners:
    """What the worker runs for one lineup: swapped whole when the lineup changes."""

    models: ModelsConfig
    shadows: list[_Shadow]
    shadow_role: Role
    seconds: list[tuple[Role, float, _Runner]]
    # After a promotion: the served model again, timed here, so both sides' latency is measured alike.
    timing: _Runner | None = None

    def all(self) -> list[_Runner]:
        runners = [s.runner for s in self.shadows] + [r for _, _, r in self.seconds]
        return runners + ([self.timing] if self.timing is not None else [])


class ShadowWorker:
    def __init__(self, config: ShadowdConfig, hubs: list[Any]):
        """``hubs``: a handle per hub shard, in shard order."""
        self._cfg = config
        self._hubs = hubs
        behind_production(config.serving.shadow_cpu)
        self._metrics = process_metrics()
        self._publisher = MetricsPublisher(hubs[0])  # to the lead's /metrics, from another node
        self._expect = ExpectationSet(config.expectations, redaction=config.annotations.redaction)
        self._runners = self._load(config.models, None)
        self._starts: dict[str, float] = {}  # each test's start (a scheduled one): requests before it are not its
        self._lineup = LineupFollower(hubs[0], self._follow, config.serving.hub_timeout_s)

    def _runner(self, model: ModelConfig, role: Role, timeout_s: float, created: list[_Runner] | None) -> _Runner:
        runner = _Runner(load_model(model, self._cfg.serving.torch_threads), timeout_s, self._failures(role))
        if created is not None:
            created.append(runner)
        return runner

    def _load(self, models: ModelsConfig, now: _Runners | None, created: list[_Runner] | None = None) -> _Runners:
        """The runners for ``models``, reusing those of ``now`` whose model did not change. Each candidate runs
        in the shadow on its own share and timeout, or (a promotion) production runs there on the promoted
        candidate's; the noise floor is production again (the model of the pair's production side either
        way); the reference gives the churn floor."""
        shadow_role: Role = "candidate" if models.live == "production" else "production"
        cfg = self._cfg.shadow
        running = [s.runner for s in now.shadows] if now is not None else []
        shadows = []
        for cand in models.candidates:  # a test per candidate; after a promotion, the one promoted
            shadowed = cand if shadow_role == "candidate" else models.production
            timeout_s = cfg.timeout_of(cand)
            alike = (r for r in running if r.model.cfg == shadowed and r.timeout_s == timeout_s)
            runner = next(alike, None) or self._runner(shadowed, shadow_role, timeout_s, created)
            shadows.append(_Shadow(cand.name, cfg.share_of(cand), runner))
        seconds: list[tuple[Role, float, _Runner]] = []
        shares: list[tuple[Role, float, ModelConfig | None]] = [
            ("noise", cfg.noise_share, models.production),
            ("reference", cfg.reference_share, models.reference),
        ]
        before = {role: (share, runner) for role, share, runner in now.seconds} if now is not None else {}
        for role, share, model in shares:
            if model is None or share <= 0:
                continue
            kept = before.get(role)
            same = now is not None and kept is not None and getattr(now.models, _SECOND_OF[role]) == model
            runner = (
                kept[1] if same and kept is not None else self._runner(model, role, cfg.candidate_timeout_s, created)
            )
            seconds.append((role, share, runner))
        timing = None
        if shadow_role == "production" and not isinstance(models.served, HttpModel):  # not twice the remote load
            same = now is not None and now.timing is not None and now.models.served == models.served
            timing = (
                now.timing
                if same and now is not None
                else self._runner(models.served, "candidate", cfg.candidate_timeout_s, created)
            )
        return _Runners(models, shadows, shadow_role, seconds, timing)

    async def _follow(self, lineup: Lineup) -> None:
        """A new lineup: new models load in a thread while the old ones keep working, then swap in."""
        old = self._runners
        self._starts = {c.name: lineup.started(c.name) for c in lineup.models.candidates}
        if lineup.models == old.models:
            return
        created: list[_Runner] = []
        try:
            self._runners = await asyncio.to_thread(self._load, lineup.models, old, created)
        except Exception:
            for runner in created:  # loaded before another model failed: let them go
                await runner.aclose()
            raise
        log.info("shadow worker follows lineup version %d", lineup.version)
        kept = {id(r) for r in self._runners.all()}
        for runner in old.all():  # closed once every call that started on it is over
            if id(runner) not in kept:
                close_later(runner.model.cfg, runner.aclose)

    def _failures(self, role: Role) -> Callable[[str], None]:
        """Counts a remote model's failures for ``role`` by reason."""
        return lambda reason: self._metrics.remote_failures.labels(role, reason).inc()

    def _record(self, violations: list[Violation]) -> list[dict[str, Any]]:
        """Count output violations in metrics; return them as the pair carries them."""
        record_violations(self._metrics, violations)
        return [asdict(v) for v in violations]

    def _count(self, results: list[ModelOutput | None]) -> None:
        for result in results:
            if result is not None:
                self._metrics.requests.labels(role=result.role, outcome=result.outcome, model=result.model).inc()
                if result.outcome in ("ok", "nan"):
                    self._metrics.latency.labels(role=result.role, model=result.model).observe(result.latency_s)

    @staticmethod
    async def _latency_of_served(runners: _Runners, x: np.ndarray, at_ingress: list[float]) -> list[float]:
        """The served model's latency per row as the pair records it: the ingress's timing, or, after a promotion
        (the other side timed here, per example of a batch), this worker's timing of the served model too: a
        latency check compares like with like (the values stay what clients got)."""
        if runners.timing is None:
            return at_ingress
        timed, _ = await run_role(runners.timing, "candidate", x, None)
        return [t.latency_s if t.outcome in ("ok", "nan") else a for t, a in zip(timed, at_ingress, strict=True)]

    async def process(self, batch: MirroredBatch) -> int:
        """Run each test's shadowed model on its share of a batch (and noise, reference once), send each test's
        pairs to the hub; returns pairs sent. Rows answered by a model the current lineup does not serve (in
        flight across a change) are dropped and counted."""
        self._publisher.ensure_started()
        await self._lineup.ready()
        runners = self._runners
        served = runners.models.served.name
        keep = [i for i, name in enumerate(batch.served_models) if name == served]
        if not runners.shadows or len(keep) < len(batch.request_ids):
            self._metrics.pairs_dropped.labels("lineup").inc(len(batch.request_ids) - len(keep))
            if not runners.shadows or not keep:
                return 0
            batch = batch.rows(keep)
        requests = list(enumerate(zip(batch.request_ids, batch.ts, strict=True)))
        tests = [
            (s, [i for i, (rid, ts) in requests if is_sampled(rid, s.share) and ts >= self._starts.get(s.name, 0.0)])
            for s in runners.shadows
        ]
        tests = [(s, idx) for s, idx in tests if idx]
        if not tests:
            return 0
        x = batch.x
        width = next((len(v) for v in batch.production_values if v), None)
        violations: list[list[dict[str, Any]]] = [[] for _ in batch.request_ids]
        seconds: dict[Role, list[ModelOutput | None]] = {}
        for role, share, runner in runners.seconds:  # once per request, whichever tests it is in
            outputs: list[ModelOutput | None] = [None] * len(x)
            idx = [i for i, rid in enumerate(batch.request_ids) if is_sampled(rid, share, role)]
            if idx:
                outs, found_here = await run_role(runner, role, x[idx], width, self._expect)
                for i, out, vs in zip(idx, outs, found_here, strict=True):
                    outputs[i] = out
                    violations[i] += self._record(vs)
            seconds[role] = outputs
            self._count(outputs)
        shadowed = await asyncio.gather(
            *(run_role(s.runner, runners.shadow_role, x[idx], width, self._expect) for s, idx in tests)
        )
        latency = await self._latency_of_served(runners, x, batch.production_latency_s)
        answered_role: Role = "production" if runners.shadow_role == "candidate" else "candidate"
        pairs = []
        for (_, idx), (outs, found_here) in zip(tests, shadowed, strict=True):
            self._count(list(outs))
            found = [self._record(vs) for vs in found_here]
            rows = batch.rows(idx) if len(idx) < len(x) else batch
            # The hub gets the pairs in columns (one stacked array per role, not a Pair per row). After a
            # promotion the served model is the pair's candidate side and the shadowed production its production
            # side.
            answered = OutputColumns.of_lists(
                answered_role,
                [served] * len(idx),
                rows.production_outcomes,
                rows.production_values,
                [latency[i] for i in idx],
                [None] * len(idx),
            )
            shadow_side = OutputColumns.of(runners.shadow_role, outs)
            production, candidate = (
                (answered, shadow_side) if runners.shadow_role == "candidate" else (shadow_side, answered)
            )
            noise, reference = seconds.get("noise"), seconds.get("reference")
            pairs.append(
                PairBatch(
                    request_ids=rows.request_ids,
                    ts=rows.ts,
                    features=rows.features,
                    inputs=x[idx] if self._cfg.shadow.store_inputs else None,
                    violations=[rows.violations[k] + violations[i] + found[k] for k, i in enumerate(idx)],
                    production=production,
                    candidate=candidate,
                    noise=OutputColumns.of("noise", [noise[i] for i in idx]) if noise is not None else None,
                    reference=(
                        OutputColumns.of("reference", [reference[i] for i in idx]) if reference is not None else None
                    ),
                )
            )
        sent = await asyncio.gather(*(self._send(p) for p in pairs), return_exceptions=True)
        failed = [err for err in sent if isinstance(err, BaseException)]
        if len(failed) == len(pairs):
            raise failed[0]  # none arrived: the ingress counts the batch (reason worker), as with one test
        for p, err in zip(pairs, sent, strict=True):  # the other tests have theirs: count only what was lost
            if isinstance(err, BaseException):
                log.warning("the hub did not take %d pairs: %s", len(p), type(err).__name__)
                self._metrics.pairs_dropped.labels("hub").inc(len(p))
        return sum(n for n in sent if isinstance(n, int))

    async def _send(self, pairs: PairBatch) -> int:
        """One test's pairs to the hub (split by shard: each shard gets the rows of the request ids it owns)."""
        if len(self._hubs) == 1:
            await self._hubs[0].add_batch.remote(pairs)
            return len(pairs)
        shards = np.fromiter((shard_of(r, len(self._hubs)) for r in pairs.request_ids), np.int64, len(pairs))
        parts = [(s, rows) for s in range(len(self._hubs)) if (rows := np.flatnonzero(shards == s)).size]
        sent = await asyncio.gather(
            *(self._hubs[s].add_batch.remote(pairs.take(rows)) for s, rows in parts), return_exceptions=True
        )
        failed = [(s, r.size, err) for (s, r), err in zip(parts, sent, strict=True) if isinstance(err, Exception)]
        if len(failed) == len(parts):
            raise failed[0][2]
        for s, n, err in failed:  # the other shards have theirs: count only what this shard lost
            log.warning("hub shard %d did not take %d pairs: %s", s, n, type(err).__name__)
            self._metrics.pairs_dropped.labels("hub").inc(n)
        return len(pairs)  # sent: what a shard did not take is counted above

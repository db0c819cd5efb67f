"""Added production latency of shadowd, measured side by side in one run.

Arms (same 5 ms sleep-based production model, same sequential HTTP load,
deployed together under different route prefixes, requests interleaved in
blocks with the arm order rotated every round):
  a  plain Ray Serve: one deployment running the model (what you run without shadowd)
  b  shadowd, shadowing off (no candidate)
  c  shadowd, 100 % shadowing, candidate of equal latency that does not compete for CPU (sleep)
  d  as c with a CPU-bound candidate (informational: on 2 cores it competes with production)
  n  as c with the shadow worker and hub at production's CPU priority (serving.shadow_cpu normal; c runs
     them at the default, low: nice 19): c/n is what the lower priority buys
  i  as c with serving.shadow_cpu idle (SCHED_IDLE)
  e  as b with data expectations on (features and inputs checked on every request)
  r  the same model behind a small HTTP model server (OIP v2, its own process), called directly
  f  shadowd in front of that server: production kind http, shadowing off
  g  as f with 100 % shadowing and the sleep candidate of c
  m  as c with three sleep candidates shadowed at once (models.candidates): m/c is what two more cost production

Prints p50/p99 per arm and the ratios c/a and c/b (target c/a p99 <= 1.10)
and e/b, the cost of expectations (target p99 <= 1.05); f/r and g/r, what
shadowd adds in front of a remote production model. ``--runs N`` measures N
times on the same deployments (each run its own rounds) and adds each
ratio's median and spread over the runs.
Usage: .venv/bin/python bench/latency.py [--rounds 8] [--block 100] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import requests
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse

from shadowd.app import build_app
from shadowd.config import parse_config
from shadowd.launcher import ensure_ray, wait_healthy
from shadowd.testing import SleepyModel

MODEL_MS = 5.0


class PlainModel:
    """Arm a: the production model behind plain Ray Serve, nothing else."""

    def __init__(self) -> None:
        self.model = SleepyModel(latency_ms=MODEL_MS)

    async def __call__(self, request: Request) -> JSONResponse:
        body = await request.json()
        out = self.model.predict(np.asarray([body["inputs"]], dtype=np.float32))[0]
        return JSONResponse({"outputs": out.tolist(), "prediction": int(out.argmax())})


def _serve_remote(port: int) -> None:
    """Arm r's server, in a process of its own: the production model (5 ms sleep) behind OIP v2, one thread per
    connection (kept alive), as a model server would answer."""
    model = SleepyModel(latency_ms=MODEL_MS)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: without it, delayed ACKs add 40 ms

        def do_POST(self) -> None:
            tensor = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["inputs"][0]
            x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
            out = model.predict(x)
            answer = {
                "outputs": [{"name": "p", "shape": list(out.shape), "datatype": "FP64", "data": out.ravel().tolist()}]
            }
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def _remote_model(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "kind": "http", "url": f"http://127.0.0.1:{port}", "input_shape": [8], "timeout_s": 5.0}


def _model(name: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "python",
        "target": "shadowd.testing:SleepyModel",
        "kwargs": kwargs,
        "input_shape": [8],
    }


EXPECTATIONS = {
    "features": {"x0": {"type": "number", "required": True, "min": -100, "max": 100}},
    "inputs": {"shape": [8], "finite": True, "min": -100, "max": 100},
}


def _shadowd(
    prefix: str,
    data_dir: Path,
    port: int,
    candidate: dict[str, Any] | list[dict[str, Any]] | None,
    flush_ms: float,
    expectations: dict[str, Any] | None = None,
    production: dict[str, Any] | None = None,
    cpu: str = "low",
) -> Application:
    raw = {
        "task": "classification",
        "data_dir": str(data_dir / prefix.strip("/")),
        "models": {
            "production": production or _model("prod", latency_ms=MODEL_MS),
            **({"candidates": candidate} if isinstance(candidate, list) else {"candidate": candidate}),
        },
        "shadow": {"sample_share": 1.0, "flush_interval_ms": flush_ms},
        "serving": {"port": port, "route_prefix": prefix, "shadow_cpu": cpu},
        "metrics": {"port": 0},
        "expectations": expectations or {},
    }
    return build_app(parse_config(raw, f"bench{prefix}"))


def _predict_body(x: list[float]) -> dict[str, Any]:
    return {"inputs": x, "features": {"x0": 1}}


def _oip_body(x: list[float]) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": [1, 8], "datatype": "FP32", "data": x}]}


def _block(
    session: requests.Session,
    url: str,
    n: int,
    rng: np.random.Generator,
    make_body: Callable[[list[float]], dict[str, Any]] = _predict_body,
) -> list[float]:
    out = []
    for _ in range(n):
        body = make_body(rng.normal(size=8).round(4).tolist())
        t0 = time.perf_counter()
        r = session.post(url, json=body, timeout=30)
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--flush-ms", type=float, default=100.0, help="shadow.flush_interval_ms for arms b-d, f, g")
    parser.add_argument("--remote-port", type=int, default=8124, help="arm r's model server")
    parser.add_argument("--runs", type=int, default=1, help="measure this many times; ratios' median and spread")
    parser.add_argument("--arms", default="abcdnierfgm", help="the arms to measure, e.g. abcni (all are deployed)")
    args = parser.parse_args()

    # Before Ray starts, in a fresh interpreter: the remote model server shares nothing with shadowd.
    server = multiprocessing.get_context("spawn").Process(target=_serve_remote, args=(args.remote_port,), daemon=True)
    server.start()
    ensure_ray(num_cpus=10)  # logical CPUs so all four arms fit; the machine has what it has
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    base = f"http://127.0.0.1:{args.port}"
    tmp = Path(tempfile.mkdtemp(prefix="shadowd-bench-"))
    plain = serve.deployment(ray_actor_options={"num_cpus": 0.5})(PlainModel)
    serve.run(plain.bind(), name="a", route_prefix="/a", blocking=False)
    serve.run(_shadowd("/b", tmp, args.port, None, args.flush_ms), name="b", route_prefix="/b", blocking=False)
    serve.run(
        _shadowd("/c", tmp, args.port, _model("cand", latency_ms=MODEL_MS), args.flush_ms),
        name="c",
        route_prefix="/c",
        blocking=False,
    )
    serve.run(
        _shadowd("/d", tmp, args.port, _model("cand", latency_ms=MODEL_MS, busy=True), args.flush_ms),
        name="d",
        route_prefix="/d",
        blocking=False,
    )
    serve.run(
        _shadowd("/n", tmp, args.port, _model("cand", latency_ms=MODEL_MS), args.flush_ms, cpu="normal"),
        name="n",
        route_prefix="/n",
        blocking=False,
    )
    serve.run(
        _shadowd("/i", tmp, args.port, _model("cand", latency_ms=MODEL_MS), args.flush_ms, cpu="idle"),
        name="i",
        route_prefix="/i",
        blocking=False,
    )
    serve.run(
        _shadowd("/e", tmp, args.port, None, args.flush_ms, EXPECTATIONS), name="e", route_prefix="/e", blocking=False
    )
    remote = _remote_model("prod", args.remote_port)
    serve.run(
        _shadowd("/f", tmp, args.port, None, args.flush_ms, production=remote),
        name="f",
        route_prefix="/f",
        blocking=False,
    )
    serve.run(
        _shadowd("/g", tmp, args.port, _model("cand", latency_ms=MODEL_MS), args.flush_ms, production=remote),
        name="g",
        route_prefix="/g",
        blocking=False,
    )
    three = [_model(f"cand{k}", latency_ms=MODEL_MS) for k in range(3)]
    serve.run(_shadowd("/m", tmp, args.port, three, args.flush_ms), name="m", route_prefix="/m", blocking=False)
    for prefix in ("/b", "/c", "/d", "/n", "/i", "/e", "/f", "/g", "/m"):
        wait_healthy(f"{base}{prefix}", 120)
    urls = {
        "a": f"{base}/a",
        "b": f"{base}/b/predict",
        "c": f"{base}/c/predict",
        "d": f"{base}/d/predict",
        "n": f"{base}/n/predict",
        "i": f"{base}/i/predict",
        "e": f"{base}/e/predict",
        "r": f"http://127.0.0.1:{args.remote_port}/v2/models/prod/infer",
        "f": f"{base}/f/predict",
        "g": f"{base}/g/predict",
        "m": f"{base}/m/predict",
    }
    bodies = {arm: _oip_body if arm == "r" else _predict_body for arm in urls}
    arms = [a for a in urls if a in args.arms]
    runs: list[dict[str, list[float]]] = []
    rng = np.random.default_rng(0)
    with requests.Session() as session:
        for arm in arms:  # warm-up, discarded
            _block(session, urls[arm], 30, rng, bodies[arm])
        for _ in range(args.runs):
            samples: dict[str, list[float]] = {a: [] for a in arms}
            for r in range(args.rounds):
                order = arms[r % len(arms) :] + arms[: r % len(arms)]
                for arm in order:
                    samples[arm] += _block(session, urls[arm], args.block, rng, bodies[arm])
                    time.sleep(0.2)  # let the arm's shadow path drain before the next arm
            runs.append(samples)
    serve.shutdown()
    server.terminate()
    for i, samples in enumerate(runs):
        if len(runs) > 1:
            print(f"\nRun {i + 1} of {len(runs)}\n")
        _print_run(arms, samples)
    if len(runs) > 1:
        _print_spread(runs)


RATIOS = (
    ("c", "a"),
    ("c", "b"),
    ("b", "a"),
    ("d", "a"),
    ("n", "a"),
    ("c", "n"),
    ("i", "a"),
    ("i", "n"),
    ("e", "b"),
    ("f", "r"),
    ("g", "r"),
    ("g", "f"),
    ("m", "c"),
)


def _quantiles(samples: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    return {a: (np.percentile(s, 50) * 1e3, np.percentile(s, 99) * 1e3) for a, s in samples.items()}


def _print_spread(runs: list[dict[str, list[float]]]) -> None:
    """Each ratio's median and range over the runs (each run's ratio from its own percentiles)."""
    qs = [_quantiles(s) for s in runs]
    print(f"\nOver {len(runs)} runs: median (min-max) of each run's ratio\n")
    print("| ratio | p50 | p99 |\n|---|---|---|")
    for num, den in RATIOS:
        if num not in qs[0] or den not in qs[0]:
            continue
        cells = []
        for k in (0, 1):
            r = [q[num][k] / q[den][k] for q in qs]
            cells.append(f"{np.median(r):.3f} ({min(r):.3f}-{max(r):.3f})")
        print(f"| {num}/{den} | {cells[0]} | {cells[1]} |")


def _print_run(arms: list[str], samples: dict[str, list[float]]) -> None:
    q = _quantiles(samples)
    names = {
        "a": "plain Ray Serve",
        "b": "shadowd, shadowing off",
        "c": "shadowd, 100% shadow, sleep candidate",
        "d": "shadowd, 100% shadow, CPU-bound candidate",
        "n": "as c, shadow worker and hub at production's priority (shadow_cpu normal)",
        "i": "as c, shadow worker and hub SCHED_IDLE (shadow_cpu idle)",
        "e": "shadowd, shadowing off, expectations on",
        "r": "remote model server (OIP v2), called directly",
        "f": "shadowd, remote production (kind http), shadowing off",
        "g": "shadowd, remote production, 100% shadow, sleep candidate",
        "m": "as c, three sleep candidates at once",
    }
    print("| arm | what | n | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for a in arms:
        print(f"| {a} | {names[a]} | {len(samples[a])} | {q[a][0]:.2f} | {q[a][1]:.2f} |")
    print()
    print("| ratio | p50 | p99 |\n|---|---|---|")
    for num, den in RATIOS:
        if num not in q or den not in q:
            continue
        print(f"| {num}/{den} | {q[num][0] / q[den][0]:.3f} | {q[num][1] / q[den][1]:.3f} |")


if __name__ == "__main__":
    main()

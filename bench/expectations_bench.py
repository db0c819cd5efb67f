"""Added cost of the request-path expectation checks, next to the production model call.

Pure Python, no Ray: the demo's production model (TorchScript, trained on
first use and cached) is called the way the ingress calls it, on the demo's
live requests, with and without ``check_request`` + ``check_output`` around
it. The two variants are interleaved request by request in a shuffled order,
so machine noise hits both alike. It prints per-request latency percentiles
and the ratios on/off (issue 7 target: p99 ratio <= 1.05), plus the cost of
``DriftMonitor.add`` on the hub for the same requests.

The end-to-end ratio through Ray Serve (HTTP, ingress) is the lead's bench;
this isolates what expectations add to the production model call.

    .venv/bin/python bench/expectations_bench.py [--requests 3000] [--data-dir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from shadowd.config import DriftConfig, ExpectationsConfig
from shadowd.demo.models import load_demo_data, train_demo_models
from shadowd.demo.traffic import demo_requests
from shadowd.expect import ExpectationSet
from shadowd.expect.drift import DriftMonitor
from shadowd.expect.profile import build_profile
from shadowd.models import TorchScriptModel
from shadowd.models.runtime import load_model
from shadowd.serving.protocol import parse_predict, read_json

# What a demo operator would declare: the request features the demo sends, pixel range, probabilities.
DEMO_EXPECTATIONS = {
    "features": {
        "brightness": {"type": "number", "required": True, "min": 0, "max": 1},
        "hour": {"type": "integer", "required": True, "min": 0, "max": 23},
        "new_user": {"type": "boolean"},
    },
    "inputs": {"shape": [64], "finite": True, "min": 0, "max": 1},
    "outputs": {"finite": True, "min": 0, "max": 1, "sum_to_one": True, "shape": [10]},
}


def _pcts(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1e6
    return {"p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)), "mean_us": float(a.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--data-dir", type=Path, default=None, help="Reuse cached demo models from here.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    model_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="shadowd-bench-"))
    paths = train_demo_models(model_dir / "models")
    model = load_model(
        TorchScriptModel(
            name="production", kind="torchscript", path=paths["production"], input_shape=[64], output="logits"
        )
    )
    exp = ExpectationSet(ExpectationsConfig.model_validate(DEMO_EXPECTATIONS))
    demo = list(demo_requests(args.requests))
    reqs = [(np.asarray(r.body["inputs"], dtype=np.float32), r.body["features"]) for r in demo]
    bodies = [json.dumps(r.body).encode() for r in demo]

    for x, _f in reqs[:200]:  # warm-up: torch's first calls are slow
        model.predict(x[None])

    rng = np.random.default_rng(0)
    perf = time.perf_counter

    def ingress_path(body: bytes, with_checks: bool) -> tuple[float, float, int]:
        """What the ingress does per request without Ray: parse, (check,) predict, (check,) answer."""
        t0 = perf()
        req = parse_predict(read_json(body, 1_000_000), "bench", (64,))
        tc = perf()
        vs = exp.check_request(req.features, req.inputs) if with_checks else []
        tc = perf() - tc
        out = model.predict(req.inputs[None])[0]
        t2 = perf()
        if with_checks:
            vs += exp.check_output("production", out)
        tc += perf() - t2
        json.dumps({"request_id": "bench", "outputs": out.tolist(), "prediction": int(out.argmax())})
        return perf() - t0, tc, len(vs)

    lat: dict[str, list[float]] = {"model_only": [], "model_with_checks": [], "ingress_off": [], "ingress_on": []}
    checks: list[float] = []
    violations = 0
    for k in rng.permutation(4 * len(reqs)):
        i, variant = divmod(int(k), 4)
        x, f = reqs[i]
        if variant == 0:
            t0 = perf()
            model.predict(x[None])[0]
            lat["model_only"].append(perf() - t0)
        elif variant == 1:
            t0 = perf()
            vs = exp.check_request(f, x)
            out = model.predict(x[None])[0]
            vs += exp.check_output("production", out)
            lat["model_with_checks"].append(perf() - t0)
            violations += len(vs)
        else:
            total, tc, nv = ingress_path(bodies[i], variant == 3)
            lat["ingress_on" if variant == 3 else "ingress_off"].append(total)
            if variant == 3:
                checks.append(tc)
                violations += nv

    # hub side: drift monitor over the same requests (inputs pixels + features), windows of 500
    data = load_demo_data()
    cols = {f"inputs[{i}]": data.x_train[:, i] for i in range(64)}
    cols["label"] = data.y_train
    prof = build_profile(cols, output_column="label")
    mon = DriftMonitor(DriftConfig(profile=Path("demo-profile.json"), window_size=500, window_s=None), prof)
    outs = [model.predict(x[None])[0] for x, _ in reqs]
    t0 = perf()
    for (x, f), o in zip(reqs, outs, strict=True):
        mon.add(f, {"production": o}, [], inputs=x)
    drift_us = (perf() - t0) / len(reqs) * 1e6

    pct = {name: _pcts(v) for name, v in lat.items()}
    res: dict[str, Any] = {
        "requests": len(reqs),
        "violations_on_clean_demo_traffic": violations,
        **pct,
        "checks_only": _pcts(checks),
        "ratio_model_p50": pct["model_with_checks"]["p50_us"] / pct["model_only"]["p50_us"],
        "ratio_model_p99": pct["model_with_checks"]["p99_us"] / pct["model_only"]["p99_us"],
        "ratio_ingress_p50": pct["ingress_on"]["p50_us"] / pct["ingress_off"]["p50_us"],
        "ratio_ingress_p99": pct["ingress_on"]["p99_us"] / pct["ingress_off"]["p99_us"],
        "drift_add_us_per_request_incl_window_tests": drift_us,
        "drift_windows_closed": mon.windows_closed,
    }
    print(f"{'':22}{'p50 us':>10}{'p99 us':>10}{'mean us':>10}")
    for name in (*lat, "checks_only"):
        p = res[name]
        print(f"{name:22}{p['p50_us']:10.1f}{p['p99_us']:10.1f}{p['mean_us']:10.1f}")
    print(f"ratio on/off, model call alone:        p50 {res['ratio_model_p50']:.3f}, p99 {res['ratio_model_p99']:.3f}")
    print(
        f"ratio on/off, ingress path (no Ray):   p50 {res['ratio_ingress_p50']:.3f}, p99 {res['ratio_ingress_p99']:.3f}"
        " (issue target: p99 <= 1.05 end to end)"
    )
    print(f"drift monitor on the hub: {drift_us:.1f} us per request ({mon.windows_closed} windows tested)")
    print(f"violations on clean demo traffic: {violations}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

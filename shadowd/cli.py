"""The ``shadowd`` command line: one entry point for people and pipelines.

Subcommands import their heavy modules (Ray, torch, Kafka) lazily so that
``shadowd validate-config`` and ``shadowd report`` start in well under a second.
Exit codes: 0 ok, 1 failed (e.g. gate FAIL), 2 usage or config error,
3 inconclusive.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from shadowd.errors import ConfigError

if TYPE_CHECKING:
    import requests

    from shadowd.config import ShadowdConfig

app = typer.Typer(add_completion=False, no_args_is_help=True)

EXIT_CONFIG = 2


@app.callback()
def _root() -> None:
    """Shadow-test ML models in production on Ray Serve."""


def _fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(path: Path) -> ShadowdConfig:
    from shadowd.config import load_config

    try:
        return load_config(path)
    except ConfigError as err:
        _fail(str(err))


@app.command("validate-config")
def validate_config(config: Path = typer.Argument(..., help="YAML config file.")) -> None:
    """Check a config file; exit 2 naming the file and key if it is wrong."""
    cfg = _load(config)
    names = [c.name for c in cfg.models.candidates]
    cand = f"candidate {names[0]}" if len(names) == 1 else f"candidates {', '.join(names)}" if names else ""
    typer.echo(
        f"{config}: ok ({cfg.task}; production {cfg.models.production.name}, "
        f"{cand or 'candidate none (shadowing off)'}; {len(cfg.slices)} slices)"
    )


@app.command("run")
def run(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config file."),
) -> None:
    """Start the daemon (Ray, Ray Serve app, comparator, sinks, metrics) and serve until SIGINT/SIGTERM."""
    import signal
    import threading

    cfg = _load(config)
    from shadowd.launcher import start_daemon

    stop = threading.Event()

    def handle_signals() -> None:
        # Replaces the handlers Ray installs, which would end the process without a flush.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    handle_signals()
    daemon = start_daemon(cfg, on_ray_started=handle_signals)  # a signal during deployment stops right after
    metrics = f", metrics on :{cfg.metrics.port}/metrics" if cfg.metrics.port else ""
    typer.echo(f"shadowd serving at {daemon.url} (POST /predict){metrics}; Ctrl-C to stop", err=True)
    stop.wait()
    typer.echo("shadowd: stopping (flushing comparator state and annotation queue) ...", err=True)
    daemon.stop()
    typer.echo("shadowd: stopped", err=True)


@app.command("demo")
def demo(
    data_dir: Path = typer.Option(Path("shadowd-data"), help="Where models, spool and state go."),
    requests: int = typer.Option(3000, min=1, help="Live requests to send."),
    port: int = typer.Option(8000, help="HTTP port for Ray Serve."),
    metrics_port: int = typer.Option(9100, help="Port of /metrics; 0 turns it off."),
    feedback_share: float = typer.Option(
        0.5, min=0.0, max=1.0, help="Share of requests that get delayed ground truth."
    ),
) -> None:
    """Train two real models, shadow one behind the other on live HTTP traffic, print the report."""
    from shadowd.demo.run import run_demo

    run_demo(data_dir, requests, port, metrics_port, feedback_share, typer.echo)


profile_app = typer.Typer(no_args_is_help=True, help="Reference profiles of training data, for drift checks.")
app.add_typer(profile_app, name="profile")


@profile_app.command("build")
def profile_build(
    data: Path = typer.Argument(..., help="Training data: .csv, .jsonl or .npz (2-D arrays become name\\[i] columns)."),
    out: Path = typer.Option(..., "--out", "-o", help="Profile JSON to write (expectations.drift.profile)."),
    output_column: str | None = typer.Option(
        None, help="Column holding class labels (or regression targets): profiled as the output distribution."
    ),
    output_kind: str = typer.Option("class", help="'class' (labels, categorical) or 'value' (regression targets)."),
    categorical: list[str] = typer.Option([], help="Treat this numeric column as categorical (repeatable)."),
    bins: int = typer.Option(10, min=1, max=1000, help="Quantile bins per numeric feature."),
    sample_size: int = typer.Option(2000, min=10, help="Values kept per numeric feature for two-sample tests."),
    seed: int = typer.Option(0, help="Seed of the sample."),
) -> None:
    """Profile training data (quantile bins, categories, summary stats, a sample) for drift checks."""
    from shadowd.expect.profile import build_profile, read_table, save_profile

    if output_kind not in ("class", "value"):
        _fail(f"--output-kind must be 'class' or 'value', got {output_kind!r}")
    try:
        columns = read_table(data)
        if not columns:
            _fail(f"{data}: no columns found")
        prof = build_profile(
            columns,
            source=str(data),
            output_column=output_column,
            output_kind=output_kind,  # type: ignore[arg-type]
            categorical=categorical,
            bins=bins,
            sample_size=sample_size,
            seed=seed,
        )
    except ConfigError as err:
        _fail(str(err))
    save_profile(prof, out)
    kinds = [f.kind for f in prof.features.values()]
    outputs = f"; outputs {prof.outputs.kind}" if prof.outputs is not None else ""
    typer.echo(
        f"{out}: profile of {prof.rows} rows, {kinds.count('numeric')} numeric and "
        f"{kinds.count('categorical')} categorical features{outputs}"
    )


dashboards_app = typer.Typer(no_args_is_help=True, help="Grafana dashboards: write the JSON, push it to Grafana.")
app.add_typer(dashboards_app, name="dashboards")


@dashboards_app.command("write")
def dashboards_write(
    out_dir: Path = typer.Option(Path("dashboards"), "--out-dir", "-o", help="Folder for the dashboard JSON files."),
) -> None:
    """Regenerate the Grafana dashboard JSON from shadowd/observe/dashboards.py (needs shadowd[grafana])."""
    try:
        from shadowd.observe.dashboards import write_dashboards
    except ImportError as err:
        _fail(str(err))

    for path in write_dashboards(out_dir):
        typer.echo(f"wrote {path}")


@dashboards_app.command("push")
def dashboards_push(
    grafana_url: str = typer.Option(..., envvar="GRAFANA_URL", help="Grafana base URL, e.g. http://grafana:3000."),
    token: str = typer.Option(
        ..., envvar="GRAFANA_TOKEN", help="Service-account token (Editor); or set GRAFANA_TOKEN."
    ),
    folder: str = typer.Option("shadowd", help="Folder title (and uid) the dashboards go into."),
    from_dir: Path | None = typer.Option(
        None, help="Push the *.json dashboards in this folder instead of the built-in ones."
    ),
) -> None:
    """Create or update the shadowd dashboards in a Grafana folder (exit 1 if Grafana refuses)."""
    import json

    from shadowd.errors import GrafanaError
    from shadowd.observe.grafana import connect, push_dashboards

    dashboards = None
    if from_dir is not None:
        files = sorted(from_dir.glob("*.json"))
        if not files:
            _fail(f"{from_dir}: no *.json dashboards")
        try:
            dashboards = [json.loads(f.read_text(encoding="utf-8")) for f in files]
        except json.JSONDecodeError as err:
            _fail(f"{from_dir}: not a dashboard JSON file: {err}")
    try:
        result = push_dashboards(connect(grafana_url, token), dashboards, folder_title=folder, folder_uid=folder)
    except GrafanaError as err:
        _fail(f"{grafana_url}: {err}", code=1)
    except ImportError as err:  # the built-in dashboards are generated, which needs shadowd[grafana]
        _fail(f"{err}; or push the committed JSON: --from-dir dashboards/")
    state = "created" if result.folder_created else "exists"
    typer.echo(f"folder {result.folder_uid} ({state})")
    for d in result.dashboards:
        typer.echo(f"{d.uid}: version {d.version} {grafana_url.rstrip('/')}{d.url}")


@app.command("annotate")
def annotate(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config file of the daemon."),
    as_: str | None = typer.Option(
        None,
        "--as",
        help="Annotator name; default: who is on call now (with --web and configured tokens: the token's name).",
    ),
    status: bool = typer.Option(False, "--status", help="Print on-call, backlog and oldest item age, then exit."),
    max_items: int | None = typer.Option(None, "--max-items", help="Stop after this many items."),
    wait_s: float = typer.Option(10.0, "--wait-s", help="How long to wait for an item before stopping."),
    web: bool = typer.Option(
        False, "--web", help="Serve the labelling page (annotations.web) until Ctrl-C, instead of the terminal."
    ),
    host: str | None = typer.Option(None, "--host", help="With --web: address to listen on (annotations.web.host)."),
    port: int | None = typer.Option(None, "--port", help="With --web: port (annotations.web.port); 0 picks one."),
    open_: bool = typer.Option(False, "--open", help="With --web: open the page in a browser, token included."),
) -> None:
    """Label the annotation queue as the on-call annotator: one item at a time in the terminal, or the page."""
    from shadowd.errors import AnnotateError

    cfg = _load(config)
    if status:
        _annotate_status(cfg)
        return
    if web:
        _annotate_web(cfg, as_, host, port, open_)
        return
    from rich.console import Console
    from rich.prompt import Prompt

    from shadowd.flywheel.annotate import Annotator
    from shadowd.flywheel.annotate_ui import annotate_session

    console = Console()
    try:
        annotator = Annotator(cfg, annotator=as_)
    except Exception as err:  # broker unreachable, bad credentials, the page holds the spool: say so, exit 1
        _fail(f"cannot open the annotation queue: {type(err).__name__}: {err}", code=1)
    try:
        done = annotate_session(annotator, console, lambda q: Prompt.ask(q, console=console), max_items, wait_s)
        typer.echo(f"{done} items handled")
    except AnnotateError as err:
        _fail(str(err), code=1)
    finally:
        annotator.close()


def _annotate_status(cfg: ShadowdConfig) -> None:
    """On call, backlog and oldest age, read without joining the queue (a page may be working it)."""
    import time

    from shadowd.flywheel.annotate import LANES
    from shadowd.flywheel.rotation import Rotation
    from shadowd.flywheel.transports import build_transport

    rot_cfg = cfg.annotations.rotation
    name = rot_cfg.name if rot_cfg is not None else "default"
    try:
        transport = build_transport(cfg.annotations.sink, cfg.data_dir)
        lanes = {lane: transport.backlog(name, lane, time.time) for lane in LANES}
    except Exception as err:
        _fail(f"cannot read the annotation queue: {type(err).__name__}: {err}", code=1)
    on_call = Rotation(rot_cfg, time.time).current_shift().describe() if rot_cfg else "-"
    typer.echo(f"rotation {name}; on call: {on_call}")
    items = sum(b.items for b in lanes.values())
    oldest = max(b.oldest_age_s for b in lanes.values())
    per_lane = ", ".join(f"{lane} {b.items}" for lane, b in lanes.items())
    typer.echo(f"backlog: {items} items ({per_lane}); oldest waiting {oldest:.0f} s")


def _annotate_web(cfg: ShadowdConfig, as_: str | None, host: str | None, port: int | None, open_: bool) -> None:
    import signal
    import threading
    import webbrowser

    from shadowd.config import is_loopback

    if host is not None and not cfg.auth.configured and not is_loopback(host):
        _fail(f"--host {host}: without configured API tokens (auth.tokens_file) the page serves loopback only")
    from shadowd.serving.annotate_web import open_link, serve_page

    try:
        server = serve_page(cfg, annotator=as_, host=host, port=port)
    except ConfigError as err:
        _fail(str(err))
    except Exception as err:  # the port is taken, a broker unreachable, another process holds the spool
        _fail(f"cannot serve the labelling page: {type(err).__name__}: {err}", code=1)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    token_hint = (
        f"token: {cfg.data_dir / 'auth' / 'token'}"
        if not cfg.auth.configured
        else "token: yours, with scope labels (auth.tokens_file)"
    )
    typer.echo(f"labelling page at {server.url} ({token_hint}); Ctrl-C to stop", err=True)
    if open_:
        link = open_link(cfg, server.url)
        webbrowser.open(link.as_uri() if link is not None else server.url)
    try:
        stop.wait()
    finally:
        server.close()
        server.queue.close()
        typer.echo("labelling page stopped; unanswered items went back to the queue", err=True)


@app.command("label-studio")
def label_studio(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config file of the daemon."),
    once: bool = typer.Option(False, "--once", help="Export what is queued, import what is annotated, then exit."),
) -> None:
    """Bridge the annotation queue and Label Studio (annotations.label_studio): queue items become tasks with
    both models' answers as predictions; completed annotations come back as labels."""
    import signal
    import threading

    from shadowd.errors import LabelStudioError
    from shadowd.flywheel.annotate import WorkQueue
    from shadowd.flywheel.labelstudio import LabelStudioBridge

    cfg = _load(config)
    ls = cfg.annotations.label_studio
    if ls is None:
        _fail(f"{config}: annotations.label_studio is not configured")
    try:
        queue = WorkQueue(cfg, lease_s=3600.0)
    except Exception as err:  # broker unreachable, the page holds the spool
        _fail(f"cannot open the annotation queue: {type(err).__name__}: {err}", code=1)
    receiver = None
    try:
        bridge = LabelStudioBridge(cfg, queue)
        bridge.start()
        typer.echo(f"label studio: project {bridge.project_id} at {ls.url}", err=True)
        if once:
            exported = bridge.export_pending()
            imported = bridge.import_labels()
            typer.echo(f"exported {exported} items, imported {imported} labels")
            return
        if ls.webhook_port is not None:
            from shadowd.serving.annotate_web import serve_webhook

            receiver = serve_webhook(cfg, bridge)
            typer.echo(f"label studio webhooks: POST {receiver.url}webhook (token of scope labels)", err=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        typer.echo("label studio bridge running; Ctrl-C to stop", err=True)
        bridge.run(stop, on_error=lambda err: typer.echo(f"label studio: {err} (retrying)", err=True))
    except ConfigError as err:
        _fail(str(err))
    except LabelStudioError as err:
        _fail(str(err), code=1)
    finally:
        if receiver is not None:
            receiver.close()
        queue.close()


@app.command("replay")
def replay(
    suites: list[str] = typer.Argument(..., help="Suite names (in the suites folder), suite folders, or 'all-suites'."),
    config: Path | None = typer.Option(
        None, "--config", "-c", "--model-config", help="Daemon config: suites folder, thresholds, models."
    ),
    role: str | None = typer.Option(None, "--role", help="Replay the config's 'candidate' or 'production' model."),
    model: Path | None = typer.Option(None, "--model", help="YAML file with one model config, instead of --role."),
    suites_dir: Path | None = typer.Option(None, "--suites-dir", help="Folder holding suites; default from config."),
    min_accuracy: float | None = typer.Option(None, help="Override labels.suite_thresholds.min_accuracy."),
    max_mean_loss: float | None = typer.Option(None, help="Override labels.suite_thresholds.max_mean_loss."),
    max_mae: float | None = typer.Option(None, help="Override labels.suite_thresholds.max_mae."),
    baseline: str | None = typer.Option(
        None, "--baseline", help="Judge against the config's 'production' (or 'candidate') model instead of thresholds."
    ),
    max_accuracy_drop: float = typer.Option(0.02, min=0.0, help="With --baseline: largest accuracy drop allowed."),
    max_mae_increase: float = typer.Option(0.0, min=0.0, help="With --baseline: largest MAE increase allowed."),
    include_own: bool = typer.Option(
        False,
        "--include-own",
        help="Keep the examples this model's own disagreements selected (left out by default: circular).",
    ),
) -> None:
    """Run a model offline over hard-example suites; exit 1 if a suite fails its thresholds (or, with
    --baseline, is worse than the baseline model on it). Examples that this same model's shadow test
    selected are left out (a model fails the inputs where it differed by construction); suites gate
    the next candidate."""
    from rich.console import Console

    from shadowd.errors import ShadowdError
    from shadowd.flywheel.flywheel import suites_dir as default_suites_dir
    from shadowd.flywheel.replay import against_baseline, load_model_file, render_results, replay_suites, thresholds_for

    cfg = _load(config) if config is not None else None
    if (role is None) == (model is None):
        _fail("give exactly one of --role (with --config) or --model")
    if model is not None:
        try:
            model_cfg = load_model_file(model)
        except ConfigError as err:
            _fail(str(err))
    else:
        if cfg is None or role not in ("candidate", "production"):
            _fail("--role needs --config and is 'candidate' or 'production'")
        model_cfg = getattr(cfg.models, role)
        if model_cfg is None:
            _fail(f"{config}: models.{role} is not configured")
    folder = suites_dir or (default_suites_dir(cfg) if cfg is not None else None)
    try:
        thresholds = thresholds_for(cfg, min_accuracy=min_accuracy, max_mean_loss=max_mean_loss, max_mae=max_mae)
        own = None if include_own else model_cfg.name
        results = replay_suites(suites, model_cfg, folder, thresholds, exclude_selected_by=own)
        if baseline is not None:
            base_cfg = (
                getattr(cfg.models, baseline, None)
                if cfg is not None and baseline in ("production", "candidate")
                else None
            )
            if base_cfg is None:
                _fail("--baseline needs --config and a configured 'production' or 'candidate' model")
            base = replay_suites(suites, base_cfg, folder, thresholds, exclude_selected_by=own)
            results = against_baseline(results, base, max_accuracy_drop, max_mae_increase)
    except (ShadowdError, ValueError) as err:
        _fail(str(err))
    Console().print(render_results(results, model_cfg.name))
    failed = [r.suite for r in results if not r.passed]
    if failed:
        typer.echo(f"FAIL: {', '.join(failed)}")
        raise typer.Exit(1)
    typer.echo(f"PASS: {len(results)} suites")


@app.command("report")
def report(
    url: str = typer.Option(
        "http://127.0.0.1:8000", "--url", help="Base URL of a running shadowd (route prefix included)."
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Report on the state persisted in this data dir instead of asking a daemon."
    ),
    config: Path | None = typer.Option(
        None,
        "-c",
        "--config",
        help="With --data-dir: run this config's checks (default: the config saved with the state). With --url: "
        "the daemon's config, to find its generated token when it has no configured tokens.",
    ),
    gate: bool = typer.Option(False, "--gate", help="Exit with the gate verdict: 0 PASS, 1 FAIL, 3 INCONCLUSIVE."),
    candidate: str | None = typer.Option(
        None,
        "--candidate",
        help="The candidate to report on and judge (several may be shadowed): exit 2, naming those shadowed, "
        "when there is no such one (a pipeline never promotes on another model's verdict). A candidate no longer "
        "shadowed gets the report kept when its window closed.",
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json or markdown."),
    reset: bool = typer.Option(False, "--reset", help="After printing, start a new test window (POST /shadow/reset)."),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="SHADOWD_TOKEN",
        show_default=False,
        help="API token (scope read; admin too for --reset). Prefer SHADOWD_TOKEN or --token-file: "
        "a command line is visible to other users.",
    ),
    token_file: Path | None = typer.Option(
        None, "--token-file", envvar="SHADOWD_TOKEN_FILE", help="File holding the API token."
    ),
) -> None:
    """Print the per-slice shadow report and gate verdict; --gate makes it a CI/CD step."""
    from shadowd.compare.render import FORMATS, render_report
    from shadowd.compare.report import ShadowReport
    from shadowd.errors import ShadowdError

    if fmt not in FORMATS:
        _fail(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    base = url.rstrip("/")
    if data_dir is not None:
        if reset:
            _fail("--reset starts a new window in a running daemon; use it with --url, not --data-dir")
        from shadowd.compare.comparator import report_from_data_dir

        cfg = _load(config) if config is not None else None
        try:
            rep = report_from_data_dir(data_dir, cfg, candidate)
        except ShadowdError as err:
            _fail(str(err))
    else:
        import requests

        cfg = _load(config) if config is not None else None
        headers = _bearer(_api_token(token, token_file, cfg))
        params = {"candidate": candidate} if candidate is not None else {}
        try:
            resp = requests.get(f"{base}/shadow/report", params=params, headers=headers, timeout=30)
            _refused(resp, f"{base}/shadow/report")
            if resp.status_code == 404 and candidate is not None:
                _fail(f"{base}/shadow/report: {resp.json().get('error', 'no such candidate')}")
            resp.raise_for_status()
            rep = ShadowReport.from_json(resp.json())
        except requests.RequestException as err:
            _fail(f"cannot fetch {base}/shadow/report: {err}")
        except ShadowdError as err:
            _fail(f"{base}/shadow/report: {err}")
        except ValueError:
            _fail(f"{base}/shadow/report did not answer JSON")
    shadowed = rep.models.get("candidate")
    if candidate is not None and shadowed != candidate:
        _fail(f"the report is about candidate {shadowed or 'none (shadowing is off)'}, not {candidate!r}: no verdict")
    others = rep.candidates or {}
    if gate and candidate is None and len(others) > 1:
        _fail(f"{len(others)} candidates are shadowed ({', '.join(others)}): name the one to judge with --candidate")
    typer.echo(render_report(rep, fmt), nl=False)
    if rep.window == "closed":
        typer.echo(
            f"candidate {shadowed}: no longer shadowed; this is the report kept when its window closed", err=True
        )
    if len(others) > 1 and fmt == "table":
        verdicts = ", ".join(f"{n} {v}" for n, v in others.items())
        typer.echo(f"candidates shadowed now: {verdicts} (shadowd report --candidate NAME for each)")
    if reset:
        try:
            resp = requests.post(f"{base}/shadow/reset", headers=headers, timeout=30)
            _refused(resp, f"{base}/shadow/reset")
            resp.raise_for_status()
        except requests.RequestException as err:
            _fail(f"cannot reset at {base}/shadow/reset: {err}")
        typer.echo("new test window started", err=True)
    if gate:
        raise typer.Exit(rep.gate.verdict.exit_code)


candidates_app = typer.Typer(
    no_args_is_help=True,
    help="The model lineup of a running shadowd: add, replace or remove candidates, promote one, roll back. "
    "Production keeps answering throughout; every change is audited (who, when, the verdict then).",
)
app.add_typer(candidates_app, name="candidates")

_URL = typer.Option("http://127.0.0.1:8000", "--url", help="Base URL of a running shadowd (route prefix included).")
_CONFIG = typer.Option(
    None, "-c", "--config", help="The daemon's config, to find its generated token when it has no configured tokens."
)
_TOKEN = typer.Option(
    None, "--token", envvar="SHADOWD_TOKEN", show_default=False, help="API token (scope admin; read for list)."
)
_TOKEN_FILE = typer.Option(None, "--token-file", envvar="SHADOWD_TOKEN_FILE", help="File holding the API token.")


def _lineup_call(
    url: str, body: dict[str, object] | None, token: str | None, token_file: Path | None, config: Path | None
) -> dict[str, object]:
    """GET (``body`` None) or POST /shadow/candidates; exits 2 with the daemon's reason on a 4xx or 5xx."""
    import requests

    cfg = _load(config) if config is not None else None
    target = f"{url.rstrip('/')}/shadow/candidates"
    headers = _bearer(_api_token(token, token_file, cfg))
    try:
        if body is None:
            resp = requests.get(target, headers=headers, timeout=30)
        else:  # a new candidate is loaded once by the daemon before it answers
            resp = requests.post(target, json=body, headers=headers, timeout=180)
        _refused(resp, target)
        answer: dict[str, object] = resp.json()
    except requests.RequestException as err:
        _fail(f"cannot reach {target}: {err}")
    except ValueError:
        _fail(f"{target} did not answer JSON (HTTP {resp.status_code})")
    if resp.status_code >= 400:
        _fail(f"{target}: HTTP {resp.status_code}: {answer.get('error', resp.reason)}")
    return answer


def _print_lineup(lineup: object) -> None:
    assert isinstance(lineup, dict)
    cands = lineup.get("candidates") or []
    typer.echo(f"lineup version {lineup['version']}: {lineup['served']} answers clients")
    if cands and lineup["live"] == "candidate":
        shadowed = ", ".join(lineup["shadowed"])
        typer.echo(
            f"  promoted: candidate {cands[0]['name']}; production {shadowed} runs in the shadow as the baseline"
        )
    for cand in cands if lineup["live"] == "production" else []:
        typer.echo(f"  shadowing candidate {cand['name']} ({cand['kind']})")
        schedule = cand.get("schedule") or {}
        if (schedule.get("start_at") or 0) > time.time():
            start = datetime.fromtimestamp(schedule["start_at"], UTC).isoformat(timespec="seconds")
            typer.echo(f"    its test starts at {start}")
        if schedule.get("max_duration_s") or schedule.get("stop_when_decided"):
            stops = [f"after {schedule['max_duration_s']:g} s"] if schedule.get("max_duration_s") else []
            stops += ["once decided"] if schedule.get("stop_when_decided") else []
            typer.echo(f"    its test stops by itself {' or '.join(stops)}")
    if not cands:
        typer.echo("  no candidate: shadowing is off")


@candidates_app.command("list")
def candidates_list(
    url: str = _URL,
    config: Path | None = _CONFIG,
    token: str | None = _TOKEN,
    token_file: Path | None = _TOKEN_FILE,
    fmt: str = typer.Option("table", "--format", "-f", help="table or json."),
) -> None:
    """The lineup, its recent changes (from the audit log) and the reports kept from closed windows."""
    import json

    answer = _lineup_call(url, None, token, token_file, config)
    if fmt == "json":
        typer.echo(json.dumps(answer, indent=2))
        return
    _print_lineup(answer["lineup"])
    changes = answer.get("changes") or []
    assert isinstance(changes, list)
    if changes:
        typer.echo("recent changes:")
    for c in changes:
        after = c.get("after") or {}
        shadowed_now = after.get("shadowed") or []
        shadowed = shadowed_now if isinstance(shadowed_now, str) else ", ".join(shadowed_now) or "nothing"
        evidence = c.get("evidence") or {}
        if "verdict" in evidence:  # a line written before several candidates: one window's evidence
            evidence = {((c.get("before") or {}).get("candidate") or {}).get("name", "-"): evidence}
        closed = "; ".join(
            f"{name} {e.get('verdict', '-')} on {e.get('pairs', 0)} pairs" for name, e in evidence.items()
        )
        typer.echo(
            f"  {c['time']}  {c['action']:<8} by {c['who']}: now serving {after.get('served', '-')}, shadowing "
            f"{shadowed}" + (f"; closed: {closed}" if closed else "")
        )


def _change(body: dict[str, object], url: str, config: Path | None, token: str | None, token_file: Path | None) -> None:
    answer = _lineup_call(url, body, token, token_file, config)
    _print_lineup(answer["lineup"])
    kept = answer.get("kept_reports") or {}
    assert isinstance(kept, dict)
    for name, file in kept.items():
        typer.echo(f"  {name}: closed window's report kept as {file}")


@candidates_app.command("set")
def candidates_set(
    model_file: Path = typer.Argument(
        ..., help="YAML file with the candidate's model config (keys of models.candidate)."
    ),
    max_duration: str | None = typer.Option(
        None, "--max-duration", help="Stop the test by itself after this long: seconds, or with a unit (90m, 6h, 2d)."
    ),
    stop_when_decided: bool = typer.Option(
        False, "--stop-when-decided", help="Stop the test by itself once the gate says PASS or FAIL."
    ),
    start_in: str | None = typer.Option(
        None, "--start-in", help="Start the test this long from now (90m, 6h): loaded now, called from then on."
    ),
    start_at: str | None = typer.Option(
        None, "--start-at", help="Start the test at this time, ISO 8601 with a time zone (2026-12-04T02:00:00Z)."
    ),
    replace: str | None = typer.Option(
        None, "--replace", help="The shadowed candidate this one replaces (its window closes); else it is added."
    ),
    url: str = _URL,
    config: Path | None = _CONFIG,
    token: str | None = _TOKEN,
    token_file: Path | None = _TOKEN_FILE,
) -> None:
    """Add a candidate (up to shadow.max_candidates), or with --replace take another's place: a new test window
    for it alone (a replaced one's report is kept; the other candidates' tests go on). Relative paths
    in the file are resolved against its folder; they must exist where the daemon runs. A test stopped by its
    schedule keeps its verdict readable: GET /shadow/verdict?candidate=NAME."""
    from shadowd.flywheel.replay import load_model_file

    try:
        model = load_model_file(model_file)
    except ConfigError as err:
        _fail(str(err))
    body: dict[str, object] = {"action": "set", "candidate": model.model_dump(mode="json")}
    if replace is not None:
        body["replace"] = replace
    if start_in is not None and start_at is not None:
        _fail("give --start-in or --start-at, not both")
    start = time.time() + _duration_s(start_in, "--start-in") if start_in is not None else None
    if start_at is not None:
        start = _time_s(start_at)
    if max_duration is not None or stop_when_decided or start is not None:
        seconds = _duration_s(max_duration) if max_duration is not None else None
        body["schedule"] = {"start_at": start, "max_duration_s": seconds, "stop_when_decided": stop_when_decided}
    _change(body, url, config, token, token_file)


def _duration_s(text: str, option: str = "--max-duration") -> float:
    import re

    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if found is None or float(found[1]) <= 0:
        _fail(f"{option} {text!r}: give a positive number of seconds, or one with a unit: 90m, 6h, 2d")
    return float(found[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[found[2]]


def _time_s(text: str) -> float:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        _fail(f"--start-at {text!r}: give an ISO 8601 time with a time zone, e.g. 2026-12-04T02:00:00Z")
    if when.tzinfo is None:
        _fail(f"--start-at {text!r}: give the time zone (Z, +01:00): the daemon's clock may be in another one")
    return when.timestamp()


@candidates_app.command("remove")
def candidates_remove(
    name: str | None = typer.Argument(None, help="Which candidate; may be left out when only one is shadowed."),
    url: str = _URL,
    config: Path | None = _CONFIG,
    token: str | None = _TOKEN,
    token_file: Path | None = _TOKEN_FILE,
) -> None:
    """Stop shadowing a candidate (its window's report is kept; the others' tests go on)."""
    body: dict[str, object] = {"action": "remove"}
    if name is not None:
        body["candidate"] = name
    _change(body, url, config, token, token_file)


@candidates_app.command("promote")
def candidates_promote(
    name: str = typer.Argument(..., help="The candidate's name: a check that it is the one you mean."),
    url: str = _URL,
    config: Path | None = _CONFIG,
    token: str | None = _TOKEN,
    token_file: Path | None = _TOKEN_FILE,
) -> None:
    """The candidate (the only one shadowed) answers clients; production stays in the shadow as the baseline, so
    a promoted model that degrades against its predecessor FAILs the gate (then: shadowd candidates rollback)."""
    _change({"action": "promote", "candidate": name}, url, config, token, token_file)


@candidates_app.command("rollback")
def candidates_rollback(
    url: str = _URL, config: Path | None = _CONFIG, token: str | None = _TOKEN, token_file: Path | None = _TOKEN_FILE
) -> None:
    """Undo a promotion: production answers again, the candidate goes back to the shadow."""
    _change({"action": "rollback"}, url, config, token, token_file)


@candidates_app.command("finish")
def candidates_finish(
    url: str = _URL, config: Path | None = _CONFIG, token: str | None = _TOKEN, token_file: Path | None = _TOKEN_FILE
) -> None:
    """Keep the promoted model as production and stop shadowing its predecessor."""
    _change({"action": "finish"}, url, config, token, token_file)


def _api_token(token: str | None, token_file: Path | None, cfg: ShadowdConfig | None) -> str | None:
    """--token / SHADOWD_TOKEN, else --token-file / SHADOWD_TOKEN_FILE, else the generated token of a
    daemon without configured tokens (from -c CONFIG's data dir), else None."""
    if token:
        return token.strip()
    if token_file is not None:
        try:
            return token_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            _fail(f"--token-file {token_file}: {err.strerror}")
    if cfg is not None and not cfg.auth.configured:
        from shadowd.serving.auth import generated_token_path

        path = generated_token_path(cfg.data_dir)
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    return None


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _refused(resp: requests.Response, what: str) -> None:
    """Exit 2 with the daemon's reason when it refused the token (the reason never holds one)."""
    if resp.status_code in (401, 403):
        try:
            reason = resp.json().get("error", resp.reason)
        except ValueError:
            reason = resp.reason
        _fail(f"{what}: HTTP {resp.status_code}: {reason}; give a token with --token-file, SHADOWD_TOKEN or --token")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

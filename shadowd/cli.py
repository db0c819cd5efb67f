"""The ``shadowd`` command line: one entry point for people and pipelines.

Subcommands import their heavy modules (Ray, torch, Kafka) lazily so that
``shadowd validate-config`` and ``shadowd report`` start in well under a second.
Exit codes: 0 ok, 1 failed (e.g. gate FAIL), 2 usage or config error,
3 inconclusive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from shadowd.errors import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n")[0])

EXIT_CONFIG = 2


@app.callback()
def _root() -> None:
    """Shadow-test ML models in production on Ray Serve."""


def _fail(message: str, code: int = EXIT_CONFIG) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(path: Path):
    from shadowd.config import load_config

    try:
        return load_config(path)
    except ConfigError as err:
        _fail(str(err))


@app.command("validate-config")
def validate_config(config: Path = typer.Argument(..., help="YAML config file.")) -> None:
    """Check a config file; exit 2 naming the file and key if it is wrong."""
    cfg = _load(config)
    cand = cfg.models.candidate.name if cfg.models.candidate else "none (shadowing off)"
    typer.echo(
        f"{config}: ok ({cfg.task}; production {cfg.models.production.name}, candidate {cand}; "
        f"{len(cfg.slices)} slices)"
    )


@app.command("run")
def run(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config file."),
) -> None:
    """Start the daemon (Ray, Ray Serve app, comparator, sinks, metrics) and serve until SIGINT/SIGTERM."""
    import signal
    import threading

    cfg = _load(config)
    from shadowd.serving.daemon import start_daemon

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    daemon = start_daemon(cfg)
    metrics = f", metrics on :{cfg.metrics.port}/metrics" if cfg.metrics.port else ""
    typer.echo(f"shadowd serving at {daemon.url} (POST /predict){metrics}; Ctrl-C to stop", err=True)
    stop.wait()
    typer.echo("shadowd: stopping (flushing comparator state and annotation queue) ...", err=True)
    daemon.stop()
    typer.echo("shadowd: stopped", err=True)


@app.command("demo")
def demo(
    data_dir: Path = typer.Option(Path("shadowd-data"), help="Where models, spool and state go."),
    requests: int = typer.Option(1500, min=1, help="Live requests to send."),
    port: int = typer.Option(8000, help="HTTP port for Ray Serve."),
    metrics_port: int = typer.Option(9100, help="Port of /metrics; 0 turns it off."),
    feedback_share: float = typer.Option(0.5, min=0.0, max=1.0, help="Share of requests that get delayed ground truth."),
) -> None:
    """Train two real models, shadow one behind the other on live HTTP traffic, print the report."""
    from shadowd.demo.run import run_demo

    run_demo(data_dir, requests, port, metrics_port, feedback_share, typer.echo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

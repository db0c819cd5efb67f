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


def main() -> None:
    app()


if __name__ == "__main__":
    main()

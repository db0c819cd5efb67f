"""``shadowd replay``: run a model offline over hard-example suites.

Data flow: suites written by the ``Flywheel`` (``SuiteStore``) -> a model
loaded from its config (``shadowd.models.load_model``) ->
``replay_suite`` per suite -> a table and an exit code (0 all passed, 1 a
suite failed): the regression test a candidate must pass before it sees
shadow traffic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError
from rich.table import Table

from shadowd.config import ShadowdConfig, SuiteThresholds, describe_error
from shadowd.errors import ConfigError
from shadowd.flywheel.suites import SuiteResult, replay_suite, resolve_suites
from shadowd.models import ModelBase, ModelConfig

__all__ = ["against_baseline", "load_model_file", "render_results", "replay_suites", "thresholds_for"]


def load_model_file(path: str | Path) -> ModelBase:
    """A YAML file holding one model's config (the same keys as ``models.candidate``)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read model config: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        cfg: ModelBase = TypeAdapter(ModelConfig).validate_python(data)
    except ValidationError as err:
        raise ConfigError(describe_error(err, str(path), data)) from None
    return cfg.with_base_dir(path.parent.resolve())


def replay_suites(
    specs: Sequence[str],
    model_cfg: ModelBase,
    suites_dir: Path | None,
    thresholds: SuiteThresholds,
    exclude_selected_by: str | None = None,
) -> list[SuiteResult]:
    """Replay a model over suites, leaving out the examples candidate ``exclude_selected_by`` selected."""
    from shadowd.models.runtime import load_model

    folders = resolve_suites(specs, suites_dir)
    model = load_model(model_cfg)
    try:
        return [
            replay_suite(f, model.predict, model_cfg.input_shape, thresholds, exclude_selected_by=exclude_selected_by)
            for f in folders
        ]
    finally:
        model.close()  # a remote model's connections


def against_baseline(
    results: Sequence[SuiteResult],
    baseline: Sequence[SuiteResult],
    max_accuracy_drop: float,
    max_mae_increase: float,
) -> list[SuiteResult]:
    """Judge each suite by how much worse than a baseline model (usually production) the model is.

    Suites hold production's own mistakes too (tag.production_wrong, tag.both_wrong), which no
    absolute threshold can ask a candidate to get right; "no worse than production" can."""
    judged = []
    for r, b in zip(results, baseline, strict=True):
        reasons = []
        if r.accuracy is not None and b.accuracy is not None and b.accuracy - r.accuracy > max_accuracy_drop:
            reasons.append(
                f"accuracy {r.accuracy:.3f} vs baseline {b.accuracy:.3f}: "
                f"drop {b.accuracy - r.accuracy:.3f} > {max_accuracy_drop}"
            )
        if r.mae is not None and b.mae is not None and r.mae - b.mae > max_mae_increase:
            reasons.append(
                f"mae {r.mae:.4g} vs baseline {b.mae:.4g}: increase {r.mae - b.mae:.4g} > {max_mae_increase}"
            )
        judged.append(r.model_copy(update={"passed": not reasons, "reasons": reasons}))
    return judged


def render_results(results: Sequence[SuiteResult], model_name: str) -> Table:
    table = Table(title=f"replay of {model_name}")
    for col in ("suite", "version", "examples (own, left out)", "accuracy", "mean loss", "mae", "verdict"):
        table.add_column(col, justify="left" if col in ("suite", "verdict") else "right")
    for r in results:
        if r.examples == 0:
            verdict = f"[yellow]SKIPPED[/yellow] {'; '.join(r.reasons)}"
        elif r.passed:
            verdict = "[green]PASS[/green]"
        else:
            verdict = f"[red]FAIL[/red] {'; '.join(r.reasons)}"
        table.add_row(
            r.suite,
            str(r.version),
            f"{r.examples} ({r.excluded_own})" if r.excluded_own else str(r.examples),
            "-" if r.accuracy is None else f"{r.accuracy:.3f}",
            f"{r.mean_loss:.4g}",
            "-" if r.mae is None else f"{r.mae:.4g}",
            verdict,
        )
    return table


def thresholds_for(config: ShadowdConfig | None, **overrides: float | None) -> SuiteThresholds:
    base = config.labels.suite_thresholds if config is not None else SuiteThresholds()
    return base.model_copy(update={k: v for k, v in overrides.items() if v is not None})

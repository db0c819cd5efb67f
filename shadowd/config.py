"""The one config tree: a YAML file validated by pydantic, failing fast.

Every later stage (app builder, comparator, sinks, CLI) takes a
``ShadowdConfig``; nothing reads YAML or environment variables on its own.
Errors name the file, the key path and what was expected, e.g.::

    shadowd.yaml: shadow.sample_share: got 1.5; must be <= 1
"""

from __future__ import annotations

import ipaddress
import math
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from shadowd.compare.checks import CheckConfig, default_checks
from shadowd.configbase import SECRET_ERROR, Scalar, Strict
from shadowd.errors import ConfigError
from shadowd.flywheel.transports import SpoolTransportConfig, TransportConfig
from shadowd.models import ModelConfig
from shadowd.records import OVERALL

__all__ = [
    "AnnotationConfig",
    "AnnotationPolicyConfig",
    "AuthConfig",
    "DivergenceConfig",
    "DriftConfig",
    "EvaluationConfig",
    "ExpectationsConfig",
    "FeatureExpectation",
    "GateConfig",
    "GrafanaConfig",
    "InputsExpectation",
    "LabelStudioConfig",
    "LabelsConfig",
    "LineupConfig",
    "MetricsConfig",
    "OutputsExpectation",
    "RedactionConfig",
    "RotationConfig",
    "ServingConfig",
    "ShadowConfig",
    "ShadowdConfig",
    "SliceConfig",
    "SuiteThresholds",
    "WebAnnotateConfig",
    "describe_error",
    "is_loopback",
    "load_config",
    "parse_config",
    "shard_config",
]


class ModelsConfig(Strict):
    production: ModelConfig = Field(description="The model whose answers clients get.")
    candidates: list[ModelConfig] = Field(
        default_factory=list,
        max_length=16,
        description="The models under test, shadowed at once (up to shadow.max_candidates): each on its own "
        "sample share (its sample_share, else shadow.sample_share) and timeout (its candidate_timeout_s, else "
        "shadow.candidate_timeout_s), with its own test window, checks, verdict and report; production runs once "
        "per request. Empty: shadowing off. At runtime: shadowd candidates set / remove.",
    )
    one_candidate: ModelConfig | None = Field(
        None,
        alias="candidate",
        exclude=True,
        description="One model under test: the same as candidates: [it].",
    )
    reference: ModelConfig | None = Field(
        None,
        description="Optional reference model: production's recipe retrained with another seed, or the previous "
        "production version. It runs on shadow.reference_share of mirrored requests; how much it disagrees with "
        "production per slice is the churn floor that divergence checks are judged against.",
    )
    live: Literal["production", "candidate"] = Field(
        "production",
        description="Which model answers clients. 'candidate' is a promotion of the one candidate that keeps the "
        "previous production in the shadow as the baseline: the candidate answers every request, production runs "
        "on the sampled share, and the checks go on asking whether the candidate is worse (a promoted model that "
        "degrades against its predecessor FAILs the gate). Back to 'production' is a rollback. At runtime: "
        "shadowd candidates promote / rollback.",
    )

    @model_validator(mode="after")
    def _lineup_holds(self) -> ModelsConfig:
        if self.one_candidate is not None:  # `candidate: {...}`: a list of one (the frozen model is still being built)
            if self.candidates:
                raise ValueError("give models.candidate (one) or models.candidates (several), not both")
            object.__setattr__(self, "candidates", [self.one_candidate])
            object.__setattr__(self, "one_candidate", None)
        if self.live == "candidate" and len(self.candidates) != 1:
            raise ValueError(
                "live is 'candidate' (a promotion) but "
                + ("no candidate is configured" if not self.candidates else "more than one candidate is configured")
            )
        return self

    @property
    def candidate(self) -> ModelConfig | None:
        """The first candidate (the only one for a config of one, and always while one is promoted)."""
        return self.candidates[0] if self.candidates else None

    def candidate_named(self, name: str) -> ModelConfig | None:
        return next((c for c in self.candidates if c.name == name), None)

    @property
    def served(self) -> ModelConfig:
        """The model that answers clients."""
        return self.candidates[0] if self.live == "candidate" and self.candidates else self.production

    @property
    def shadowed(self) -> list[ModelConfig]:
        """The models run on the mirrored shares (none: shadowing off): every candidate, or after a promotion
        the previous production."""
        if self.live == "candidate":
            return [self.production]
        return list(self.candidates)

    def only(self, name: str) -> ModelsConfig:
        """This lineup narrowed to the candidate ``name``: what that candidate's comparator is built from."""
        return self.model_copy(update={"candidates": [c for c in self.candidates if c.name == name]})

    def with_candidates(self, candidates: list[ModelConfig]) -> ModelsConfig:
        return self.model_copy(update={"candidates": list(candidates)})


class LineupConfig(Strict):
    """What a runtime change of the candidate (``shadowd candidates set``, scope admin) may load. By default only
    what the config's own models already use: a token of scope admin never widens what the daemon trusts (code it
    imports, files it reads, servers it sends production's inputs to, credentials it sends them)."""

    python_targets: list[Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")]] = Field(
        default_factory=list,
        description="Import paths 'module:attr' a runtime candidate of kind python may use, trusted with any "
        "kwargs (a factory whose kwargs name weights loads whatever they name); without this, only a target and "
        "kwargs exactly as one of the config's models has them.",
    )
    model_dirs: list[Path] = Field(
        default_factory=list,
        description="Folders a runtime candidate of kind torchscript may be loaded from, besides the folders of "
        "the config's TorchScript models; relative to the config file.",
    )
    http_urls: list[str] = Field(
        default_factory=list,
        description="URLs a runtime candidate of kind http may call: the same scheme, host and port, and a path "
        "at or below this one's (whole segments; dot segments are refused); besides the servers (scheme, host, "
        "port) of the config's http models.",
    )
    credentials: list[str] = Field(
        default_factory=list,
        description="Environment variables (headers_env) and files (headers_file, ca_file) a runtime http "
        "candidate may use with any allowed server; without this, only with the server the config's models use "
        "them with.",
    )


class ShadowConfig(Strict):
    """The shadow path beside production: sampling, timeouts, bounds."""

    sample_share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of requests mirrored to each candidate (a candidate's own sample_share overrides it), "
        "decided by a hash of the request id.",
    )
    reference_share: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Share of mirrored requests on which the reference model (models.reference) runs too.",
    )
    noise_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of mirrored requests on which production is run a second time to measure its own noise.",
    )
    candidate_timeout_s: float = Field(
        1.0,
        gt=0,
        le=600,
        description="Longest wait for one candidate batch (a candidate's own candidate_timeout_s overrides it).",
    )
    max_candidates: int = Field(
        4,
        ge=1,
        le=16,
        description="Most candidates shadowed at once (models.candidates, shadowd candidates set): each costs its "
        "model's CPU on its share of the traffic, its own pairs in the hub, and its own annotation items.",
    )
    max_in_flight: int = Field(
        2000,
        ge=1,
        description="Pairs buffered or in flight to the shadow worker; beyond this, pairs are dropped and counted.",
    )
    flush_interval_ms: float = Field(
        100.0,
        gt=0,
        le=10_000,
        description="How often buffered pairs are sent to the shadow worker; each send costs the ingress CPU, "
        "so fewer, larger sends keep production latency flat (bench/RESULTS.md).",
    )
    max_in_flight_bytes: int = Field(
        64 * 2**20,
        ge=2**16,
        description="Bytes (inputs and features, as the ingress estimates them) of the pairs buffered or in flight "
        "to the shadow worker, per ingress replica; beyond this, pairs are dropped and counted (reason bytes).",
    )
    max_flush_size: int = Field(256, ge=1, description="Most pairs sent in one call to the shadow worker.")
    store_inputs: bool = Field(
        True, description="Keep request inputs on pairs (needed for annotation items and replay)."
    )

    def share_of(self, model: ModelConfig) -> float:
        """The share of requests mirrored to ``model`` as a candidate."""
        return model.sample_share if model.sample_share is not None else self.sample_share

    def timeout_of(self, model: ModelConfig) -> float:
        """The longest wait for one batch of ``model`` in the shadow."""
        return model.candidate_timeout_s if model.candidate_timeout_s is not None else self.candidate_timeout_s

    def shares(self, models: ModelsConfig) -> dict[str, float]:
        """Each test's share of requests, by the candidate's name (after a promotion: the promoted one's test,
        with its share, runs the previous production in the shadow)."""
        return {c.name: self.share_of(c) for c in models.candidates}

    def enabled(self, models: ModelsConfig) -> bool:
        """Is the shadow path deployed: a share of requests may be mirrored (now, or by a runtime candidate)."""
        return self.sample_share > 0 or self.mirror_share(models) > 0

    def mirror_share(self, models: ModelsConfig) -> float:
        """The share the ingress mirrors: the largest test's (the hash makes each smaller share a subset)."""
        return max(self.shares(models).values(), default=0.0)


class ServingConfig(Strict):
    host: str = Field("127.0.0.1", description="HTTP host of the Ray Serve proxy.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the Ray Serve proxy.")
    route_prefix: str = Field("/", description="Route prefix of the shadowd application.")
    max_body_bytes: int = Field(1_000_000, ge=64, description="Larger request bodies get a 413.")
    max_feature_bytes: int = Field(
        8192,
        ge=2,
        description="Largest 'features' object of a request, as compact JSON (UTF-8 bytes); larger gets a 413. "
        "Features travel with every pair and annotation item.",
    )
    max_feature_keys: int = Field(
        64, ge=1, description="Most keys in a request's 'features', nested objects' keys included; more gets a 413."
    )
    max_feature_depth: int = Field(
        4,
        ge=1,
        le=32,
        description="Deepest nesting of objects and lists in 'features' ({'a': 1} is 1, {'a': {'b': [1]}} is 3); "
        "deeper gets a 422.",
    )
    allow_nonfinite_inputs: bool = Field(
        False,
        description="Accept NaN, Infinity and numbers beyond float range in 'inputs' and numeric features "
        "(for models that read NaN as missing); off: a 422 names the field.",
    )
    ingress_replicas: int = Field(1, ge=1, description="Replicas of the ingress (which also runs production).")
    ingress_cpus: float = Field(0.5, gt=0, description="CPUs reserved per ingress replica.")
    max_ongoing_requests: int = Field(256, ge=1, description="Requests one ingress replica works on at once.")
    max_queued_requests: int = Field(
        1024, ge=1, description="Requests waiting for an ingress replica; beyond this Ray Serve answers 503."
    )
    hub_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for the hub on /feedback, /shadow/report, /shadow/reset; then 503."
    )
    worker_replicas: int = Field(1, ge=1, description="Replicas of the shadow worker (candidate).")
    worker_cpus: float = Field(0.25, gt=0, description="CPUs reserved per shadow worker replica.")
    comparator_cpus: float = Field(
        0.25, gt=0, description="CPUs reserved for the hub (comparator, flywheel, /metrics)."
    )
    hub_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources the hub needs, e.g. {shadowd_state: 0.01} to place it on the node "
        "that mounts the persistent data dir.",
    )
    hub_shards: int = Field(
        1,
        ge=1,
        le=16,
        description="Hub shards: each counts the pairs and joins the labels of its share of request ids (a hash), "
        "the report merges them. More than 1 needs the kafka transport (annotations.sink); each shard keeps its "
        "files under <data_dir>/shards/<i>.",
    )
    hub_shard_resources: list[dict[str, float]] | None = Field(
        None,
        description="Custom Ray resources per hub shard (one mapping per shard, in shard order), e.g. to place "
        "each shard on its own node; instead of hub_resources.",
    )
    ingress_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each ingress replica needs (placement)."
    )
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each shadow worker replica needs (placement)."
    )
    torch_threads: int = Field(1, ge=1, description="torch threads per replica; keep 1 on small machines.")
    shadow_cpu: Literal["low", "idle", "normal"] = Field(
        "low",
        description="CPU priority of the shadow worker and hub processes where they share cores with the ingress "
        "and Ray Serve's proxy (Linux): low: the lowest nice (19; Ray starts workers at 15); idle: the SCHED_IDLE "
        "policy (they get a core only when production leaves it; under full load the shadow path drops and "
        "counts pairs); normal: as production.",
    )

    @model_validator(mode="after")
    def _shards_placed(self) -> ServingConfig:
        res = self.hub_shard_resources
        if res is not None and len(res) != self.hub_shards:
            raise ValueError(
                f"hub_shard_resources has {len(res)} entries for {self.hub_shards} hub_shards; give one per shard"
            )
        if res is not None and self.hub_resources:
            raise ValueError("give hub_resources (every shard) or hub_shard_resources (one per shard), not both")
        return self

    def hub_resources_of(self, shard: int) -> dict[str, float]:
        """The custom Ray resources hub shard ``shard`` needs."""
        return self.hub_shard_resources[shard] if self.hub_shard_resources is not None else self.hub_resources


class AuthConfig(Strict):
    """Bearer tokens for the HTTP API (shadowd/serving/auth.py): scopes labels, read, admin, predict."""

    tokens_file: Path | None = Field(
        None,
        description="YAML list of API tokens, each {name, token (32+ characters), scopes: [labels | read | admin | "
        "predict]}; relative to the config file. The Helm chart mounts the Secret auth.existingSecret here.",
    )
    tokens_env: str | None = Field(
        None,
        description="Environment variable holding the same YAML (a Secret exposed as env); with tokens_file, "
        "both count. Names the variable, never holds a token.",
    )
    predict_requires_token: bool = Field(
        False,
        description="POST /predict needs a token with scope predict. Off (default): /predict is open, like the "
        "model endpoint it stands for; every other route but /healthz always needs a token.",
    )

    @property
    def configured(self) -> bool:
        """Tokens are configured; otherwise shadowd serves on loopback only, with a generated token."""
        return self.tokens_file is not None or self.tokens_env is not None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- slices: a small declarative predicate language, never code ---


class Condition(Strict):
    field: str = Field(description="Request feature name.", min_length=1)
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "exists", "missing"] = Field(
        description="Comparison; a missing feature makes every op false except 'missing'."
    )
    value: Scalar | list[Scalar] = Field(None, description="Right-hand side; a list for 'in' / 'not_in'.")

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op '{self.op}' needs a list value, got {self.value!r}")
        if self.op in ("lt", "le", "gt", "ge") and not isinstance(self.value, (int, float)):
            raise ValueError(f"op '{self.op}' needs a number value, got {self.value!r}")
        return self


class AllOf(Strict):
    all: list[Predicate] = Field(min_length=1, description="True when every predicate is.")


class AnyOf(Strict):
    any: list[Predicate] = Field(min_length=1, description="True when one predicate is.")


class NotOf(Strict):
    not_: Predicate = Field(alias="not", description="True when the predicate is not.")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _predicate_kind(value: Any) -> str | None:
    keys = value.keys() if isinstance(value, dict) else vars(value).keys() if isinstance(value, BaseModel) else ()
    for key, tag in (("field", "condition"), ("all", "all"), ("any", "any"), ("not", "not"), ("not_", "not")):
        if key in keys:
            return tag
    return None


Predicate = Annotated[
    Annotated[Condition, Tag("condition")]
    | Annotated[AllOf, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[NotOf, Tag("not")],
    Discriminator(
        _predicate_kind,
        custom_error_type="predicate",
        custom_error_message="a predicate is {field, op, value} or one of {all: [...]}, {any: [...]}, {not: ...}",
    ),
]
AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()


class SliceConfig(Strict):
    name: str = Field(
        description="Slice name: used in reports and as a metrics label.", pattern=r"^[a-z][a-z0-9_]{0,39}$"
    )
    where: Predicate = Field(description="Which requests belong to the slice.")


class DivergenceConfig(Strict):
    """When a pair counts as divergent (and becomes an annotation item)."""

    tvd_threshold: float = Field(
        0.3, ge=0, le=1, description="Classification: total variation distance above which a pair is divergent."
    )
    flip_is_divergent: bool = Field(True, description="Classification: a changed top label is always divergent.")
    abs_threshold: float = Field(
        1.0,
        ge=0,
        description="Regression: |candidate - production| above this (and rel_threshold exceeded too) is divergent.",
    )
    rel_threshold: float = Field(
        0.2,
        ge=0,
        description="Regression: |candidate - production| / max(|production|, eps) above this "
        "(and abs_threshold exceeded too) is divergent.",
    )


class AnnotationPolicyConfig(Strict):
    """Budget and fairness before the sink, so a flood of divergences does not bury the annotators."""

    dedup_window_items: int = Field(
        10_000, ge=0, description="How many recent item fingerprints are remembered for dedup; 0 turns dedup off."
    )
    dedup_decimals: int = Field(
        2,
        ge=0,
        le=12,
        description="Numbers in inputs and features are rounded to this many decimals before "
        "fingerprinting, so near-identical items count as the same.",
    )
    rate_per_s: float = Field(10.0, gt=0, description="Global rate limit (token bucket refill), items per second.")
    burst_items: int = Field(100, ge=1, description="Token bucket size: items let through in one burst.")
    quota_window_s: float = Field(3600.0, gt=0, description="Window over which per-slice quotas are counted.")
    slice_quotas: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="Most items per slice name (or 'overall' for items in no slice) per window."
    )
    default_slice_quota: int | None = Field(
        None, ge=0, description="Quota for slices not named in slice_quotas; none means unlimited."
    )


class RedactionConfig(Strict):
    """Fields removed or hashed wherever request data rests: annotation items (spool, Kafka), the pair
    store, suites, dead letters, expectation messages in the report and the logs."""

    drop: list[str] = Field(
        default_factory=list,
        description="Dotted item paths removed, e.g. 'features.user_id' or 'inputs'.",
    )
    hash: list[str] = Field(
        default_factory=list,
        description="Dotted item paths replaced by 'sha256:<hex>' of their JSON value (salted), so equal values "
        "still match.",
    )
    salt_env: str | None = Field(
        None,
        description="Environment variable holding the hash salt (required when 'hash' lists paths: an unsalted "
        "hash of a small value space, such as a user id, is reversible by trying them all).",
    )

    @model_validator(mode="after")
    def _paths_ok(self) -> RedactionConfig:
        allowed = ("features", "inputs", "detail")
        for path in [*self.drop, *self.hash]:
            if path.split(".")[0] not in allowed:
                raise ValueError(f"redaction path {path!r} must start with one of {', '.join(allowed)}")
        both = sorted(set(self.drop) & set(self.hash))
        if both:
            raise ValueError(f"paths both dropped and hashed: {', '.join(both)}")
        if self.hash and not self.salt_env:
            raise ValueError(
                "salt_env is required when 'hash' lists paths: set it to an environment variable holding a secret salt"
            )
        return self

    def covers(self, field: str) -> bool:
        """Is any of ``field`` (a dotted path: 'features.email', 'inputs') dropped or hashed?"""
        return any(
            p == field or field.startswith(p + ".") or p.startswith(field + ".") for p in [*self.drop, *self.hash]
        )


class RotationConfig(Strict):
    """The on-call annotation rotation: who labels the queue right now."""

    name: str = Field(
        "default",
        description="Rotation name; the Kafka consumer group is 'shadowd.annotate.<name>'.",
        pattern=r"^[A-Za-z0-9_.-]{1,60}$",
    )
    annotators: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="Annotators in shift order; the rotation wraps around."
    )
    shift_s: float = Field(8 * 3600.0, gt=0, description="Length of one shift.")
    start: datetime = Field(description="When the first annotator's first shift began (ISO 8601 with time zone).")

    @model_validator(mode="after")
    def _aware(self) -> RotationConfig:
        if self.start.tzinfo is None:
            raise ValueError(f"start {self.start.isoformat()} needs a time zone, e.g. '2026-01-05T09:00:00Z'")
        return self


class EvaluationConfig(Strict):
    """The evaluation sample: a random share of disagreements with a known probability, labelled first.

    Its labels (and random feedback) decide the label-based quality checks;
    the rest of the queue is priority-ordered and feeds suites, not the gate.
    """

    share: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Share of flipped or divergent pairs drawn into the evaluation lane (by a hash of the "
        "request id, so the probability is known); slice_shares can raise it per slice.",
    )
    slice_shares: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict,
        description="Share per slice name; a pair in several slices is drawn with the largest of their shares.",
    )
    review_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share for slices under review (divergence beyond the noise or churn floor and quality not "
        "yet decided), so the labels go where the gate needs them.",
    )


class WebAnnotateConfig(Strict):
    """The labelling page (``shadowd annotate --web``): the on-call rotation labels in a browser."""

    host: str = Field(
        "127.0.0.1",
        description="Address the page listens on. Anything but loopback needs configured API tokens "
        "(auth.tokens_file / auth.tokens_env), each annotator with a token of scope labels.",
    )
    port: int = Field(8780, ge=0, le=65535, description="Port of the page; 0 picks a free one (printed at start).")
    input_kind: Literal["auto", "image", "table", "text"] = Field(
        "auto",
        description="How an item's inputs are shown: image (a grid of pixels, e.g. 8x8 digits), table (one row per "
        "input value, named by input_names), text (the inputs as JSON text); auto: image when image_shape is set or "
        "the inputs are a square of 4x4 to 64x64 values, table up to 256 values, text otherwise.",
    )
    image_shape: list[Annotated[int, Field(ge=1)]] | None = Field(
        None,
        min_length=2,
        max_length=3,
        description="[height, width] or [height, width, channels] (1 or 3) the inputs are drawn as; default: the "
        "square their size allows.",
    )
    input_names: list[str] | None = Field(
        None, description="Names of the input values in order, for the table kind; default x[0], x[1], ..."
    )
    lease_s: float = Field(
        900.0,
        gt=0,
        description="An item held by a page that stopped asking for this long (a closed tab, a sleeping laptop) "
        "goes to the next annotator; an open page renews its lease every 15 s.",
    )

    @model_validator(mode="after")
    def _channels(self) -> WebAnnotateConfig:
        if self.image_shape is not None and len(self.image_shape) == 3 and self.image_shape[2] not in (1, 3):
            raise ValueError(f"image_shape {self.image_shape}: channels (the third entry) must be 1 or 3")
        return self


class LabelStudioConfig(Strict):
    """The Label Studio bridge (``shadowd label-studio``): queue items out as tasks, annotations back as labels."""

    url: str = Field(description="Label Studio's base URL, e.g. http://label-studio:8080.", pattern=r"^https?://\S+$")
    token_env: str | None = Field(
        None,
        description="Environment variable holding a Label Studio API token: a personal access token (JWT; "
        "refreshed through /api/token/refresh) or a legacy token (sent as 'Token <key>').",
    )
    token_file: Path | None = Field(
        None, description="File holding the Label Studio API token (e.g. a mounted Secret); instead of token_env."
    )
    project_id: int | None = Field(
        None, ge=1, description="The project to export into; none: the project titled project_title (created if none)."
    )
    project_title: str = Field(
        "shadowd",
        min_length=3,
        max_length=50,
        description="Title of the project used (or created, with a labelling config for the task) when "
        "project_id is not set.",
    )
    poll_interval_s: float = Field(
        30.0,
        gt=0,
        description="How often completed annotations are fetched from Label Studio: the path that brings every "
        "label back at least once (a webhook only brings it sooner).",
    )
    export_interval_s: float = Field(
        5.0, gt=0, description="How long the bridge waits for new queue items before fetching annotations again."
    )
    timeout_s: float = Field(30.0, gt=0, le=600, description="Longest wait for one Label Studio API call.")
    webhook_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Listen for Label Studio's ANNOTATION_CREATED / ANNOTATION_UPDATED webhooks on this port "
        "(POST /webhook, with a shadowd API token of scope labels as the webhook's Authorization header) and "
        "import that task at once; none: polling only.",
    )
    webhook_host: str = Field(
        "127.0.0.1",
        description="Address the webhook receiver listens on; anything but loopback needs configured API tokens.",
    )

    @model_validator(mode="after")
    def _one_token(self) -> LabelStudioConfig:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("give exactly one of token_env or token_file (the Label Studio API token)")
        return self


class AnnotationConfig(Strict):
    sink: TransportConfig = Field(
        default_factory=SpoolTransportConfig,
        description="Where items go after the local spool: type 'spool' (the default; the spool is the queue) "
        "or type 'kafka' (topics on a broker).",
    )
    max_buffered_items: int = Field(10_000, ge=1, description="Items held in memory before the spool takes them.")
    batch_items: int = Field(
        500, ge=1, le=100_000, description="Most items per spool write (one fsync) and per Kafka send."
    )
    spool_segment_items: int = Field(
        1000, ge=1, description="Items per spool segment file; delivered segments are deleted."
    )
    spool_max_bytes: int = Field(
        1 << 30,
        ge=1 << 20,
        description="Cap on the spool's size on disk (1 GiB), e.g. while Kafka is down or nobody annotates: past it "
        "queuing pauses, new items are dropped and counted (shadowd_annotation_items_dropped_total), production "
        "is unaffected; it resumes when delivery or the rotation frees space.",
    )
    policy: AnnotationPolicyConfig = Field(
        default_factory=AnnotationPolicyConfig, description="Dedup, quotas, rate limit."
    )
    redaction: RedactionConfig = Field(default_factory=RedactionConfig, description="Fields dropped or hashed.")
    rotation: RotationConfig | None = Field(None, description="On-call rotation; none leaves items unassigned.")
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig, description="The evaluation sample (the lane annotators are served first)."
    )
    class_names: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        None,
        min_length=2,
        description="Classification: the classes' names in the models' output order, shown to annotators (the "
        "page, Label Studio's choices); default: the class indices 0, 1, ...",
    )
    web: WebAnnotateConfig = Field(
        default_factory=WebAnnotateConfig, description="The labelling page, `shadowd annotate --web`."
    )
    label_studio: LabelStudioConfig | None = Field(
        None, description="The Label Studio bridge, `shadowd label-studio`; none: not used."
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "kafka" in data:
            raise ValueError(
                "'annotations.kafka' is now 'annotations.sink' with 'type: kafka' and the same keys, "
                "e.g. sink: {type: kafka, bootstrap_servers: [...]}"
            )
        return data


class SuiteThresholds(Strict):
    min_accuracy: float = Field(0.9, ge=0, le=1, description="Classification: a suite fails below this accuracy.")
    max_mean_loss: float | None = Field(
        None, gt=0, description="A suite fails above this mean loss; none: not checked."
    )
    max_mae: float | None = Field(None, gt=0, description="Regression: a suite fails above this mean absolute error.")


class LabelsConfig(Strict):
    """Labels back: the pair store they are joined against, high-loss queueing, hard-example suites."""

    pair_retention_s: float = Field(7 * 86400.0, gt=0, description="Pairs older than this can no longer be labelled.")
    feedback_selection: Literal["random", "targeted"] = Field(
        "random",
        description="How POST /feedback labels are chosen: random (every request or a share independent of the "
        "models' answers; they enter the quality estimates) or targeted (e.g. complaints; kept for suites and "
        "high-loss queueing, never for the gate).",
    )
    max_pairs: int = Field(200_000, ge=1, description="Most pairs kept for label joins; the oldest go first.")
    max_pair_store_bytes: int = Field(
        2 * 2**30,
        ge=2**20,
        description="Most bytes of stored pairs (their JSON) kept for label joins; the oldest go first. A late "
        "label for an evicted pair is answered 410 (expired).",
    )
    high_loss_threshold: float | None = Field(
        None, gt=0, description="Queue a labelled input (reason high_loss) when a model's loss is above this."
    )
    high_loss_quantile: float = Field(
        0.95, gt=0, lt=1, description="Also queue inputs whose loss is above this quantile of recent losses."
    )
    high_loss_window: int = Field(1000, ge=10, description="Recent losses the quantile is taken over.")
    high_loss_min_labels: int = Field(50, ge=1, description="No quantile-based queueing before this many labels.")
    suites_dir: Path | None = Field(
        None, description="Where hard-example suites are written; default <data_dir>/suites."
    )
    suite_thresholds: SuiteThresholds = Field(
        default_factory=SuiteThresholds, description="Pass/fail thresholds for `shadowd replay`."
    )


class MetricsConfig(Strict):
    port: int = Field(9100, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 turns it off.")
    host: str = Field(
        "127.0.0.1",
        description="Host the metrics endpoint binds: loopback by default; 0.0.0.0 for a Prometheus on another "
        "machine (the Helm chart sets it, behind its NetworkPolicy).",
    )


class GrafanaConfig(Strict):
    """Grafana annotations of gate verdict changes (issue 5); dashboards are pushed by `shadowd dashboards push`."""

    url: str = Field(description="Grafana base URL, e.g. http://grafana:3000.", pattern=r"^https?://\S+$")
    token_env: str = Field(
        "GRAFANA_TOKEN",
        description="Environment variable holding a Grafana service-account token (never the token itself).",
    )
    annotate_verdicts: bool = Field(True, description="Write an annotation whenever the gate verdict changes.")
    timeout_s: float = Field(5.0, gt=0, le=60, description="Longest wait for one Grafana call.")


# --- expectations (issue 7): data invariants on live traffic, drift vs a training profile ---

FeatureType = Literal["number", "integer", "string", "boolean", "list", "any"]


def _check_range(lo: float | None, hi: float | None) -> None:
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"min {lo} is greater than max {hi}")


class FeatureExpectation(Strict):
    """What one request feature must look like; each rule is one named expectation."""

    type: FeatureType = Field("any", description="JSON type the value must have; 'number' accepts integers too.")
    required: bool = Field(False, description="The feature must be present in every request.")
    not_null: bool = Field(False, description="When present, the value must not be null (or NaN).")
    finite: bool = Field(True, description="A numeric value must not be NaN or +-inf.")
    min: float | None = Field(None, description="Smallest allowed numeric value (inclusive).")
    max: float | None = Field(None, description="Largest allowed numeric value (inclusive).")
    allowed: list[Scalar] | None = Field(None, min_length=1, description="The only values allowed (categorical).")
    shape: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="Shape of a list value, e.g. [3] or [2, 2]; needs type 'list'."
    )

    @model_validator(mode="after")
    def _rules_fit_type(self) -> FeatureExpectation:
        _check_range(self.min, self.max)
        if (self.min is not None or self.max is not None) and self.type not in ("number", "integer", "any"):
            raise ValueError(f"min/max need type 'number', 'integer' or 'any', got type '{self.type}'")
        if self.shape is not None and self.type != "list":
            raise ValueError(f"shape needs type 'list', got type '{self.type}'")
        return self


class InputsExpectation(Strict):
    """What the ``inputs`` array of every request must look like (checked vectorised)."""

    shape: list[Annotated[int, Field(gt=0)]] | None = Field(
        None, description="Exact shape of one request's inputs; none means any shape."
    )
    finite: bool = Field(True, description="No NaN or +-inf anywhere in the inputs.")
    min: float | None = Field(None, description="Smallest allowed element (inclusive).")
    max: float | None = Field(None, description="Largest allowed element (inclusive).")

    @model_validator(mode="after")
    def _range(self) -> InputsExpectation:
        _check_range(self.min, self.max)
        return self


class OutputsExpectation(Strict):
    """What every model output (production, candidate, noise) must look like: numerical stability."""

    finite: bool = Field(
        True, description="No NaN or +-inf in an output; counted per role in shadowd_nonfinite_outputs_total."
    )
    min: float | None = Field(None, description="Smallest allowed output value (inclusive), e.g. 0 for probabilities.")
    max: float | None = Field(None, description="Largest allowed output value (inclusive), e.g. 1 for probabilities.")
    sum_to_one: bool = Field(False, description="Each output row must sum to 1 (class probabilities).")
    sum_tolerance: float = Field(1e-3, gt=0, le=0.5, description="Allowed |sum - 1| when sum_to_one is on.")
    shape: list[Annotated[int, Field(gt=0)]] | None = Field(
        None, description="Shape of one example's output, e.g. [10]; none means any."
    )

    @model_validator(mode="after")
    def _range(self) -> OutputsExpectation:
        _check_range(self.min, self.max)
        return self


class DriftConfig(Strict):
    """Drift of live inputs and of both models' outputs against a reference profile of training data."""

    profile: Path = Field(
        description="Reference profile JSON written by 'shadowd profile build'; relative to the config file."
    )
    window_size: int = Field(1000, ge=10, description="A tumbling window closes after this many requests ...")
    window_s: float | None = Field(
        300.0, gt=0, description="... or this many seconds after it opened, whichever comes first; none: count only."
    )
    psi_threshold: float = Field(
        0.1, ge=0, description="Smallest population stability index that counts as drift (effect size floor)."
    )
    alpha: float = Field(
        0.01, gt=0, lt=1, description="False discovery rate per window across every feature x slice test."
    )
    correction: Literal["bh", "by", "holm"] = Field(
        "bh", description="Multiple-comparison correction: Benjamini-Hochberg, Benjamini-Yekutieli or Holm."
    )
    min_samples: int = Field(
        100, ge=5, description="A feature x slice with fewer values in a window is reported inconclusive."
    )
    features: list[str] = Field(
        default_factory=list,
        description="Profile features to monitor (request feature names or 'inputs[i]'); "
        "empty means all in the profile.",
    )
    outputs: bool = Field(True, description="Also check each model's output distribution against the profile's.")
    history_windows: int = Field(50, ge=1, description="Closed windows kept for the report.")


class ExpectationsConfig(Strict):
    """Data expectations checked on every request, numerical stability of outputs, and drift."""

    on_violation: Literal["answer", "reject"] = Field(
        "answer",
        description="answer: production still answers a violating request (violations are counted and queued); "
        "reject: the ingress answers 422 naming the failed expectation.",
    )
    features: dict[Annotated[str, Field(min_length=1, max_length=64)], FeatureExpectation] = Field(
        default_factory=dict, description="Expectations per request feature name."
    )
    inputs: InputsExpectation | None = Field(None, description="Expectations on the request's inputs array.")
    outputs: OutputsExpectation = Field(
        default_factory=OutputsExpectation, description="Expectations on every model output (finite by default)."
    )
    annotate_share: float = Field(
        1.0, ge=0, le=1, description="Share of violating requests sent to the annotation queue (hash of request id)."
    )
    drift: DriftConfig | None = Field(None, description="Drift checks against a training profile; none turns them off.")


# --- the promotion gate (compare/gate.py); check kinds live in compare/checks/ ---


class GateConfig(Strict):
    """How check results become a promotion verdict."""

    alpha: float = Field(
        0.05, gt=0, lt=0.5, description="False-alarm rate the gate keeps, however often the report is read."
    )
    correction: Literal["holm", "bonferroni"] = Field(
        "holm", description="Multiple-comparison control across slices x checks (family-wise error rate)."
    )
    noise_floor: bool = Field(
        True, description="Judge divergence checks against production's own noise when noise pairs exist."
    )
    tuning_samples: int = Field(
        2000, ge=10, description="Pairs at which the pair-based confidence sequences are tightest."
    )
    tuning_labels: int = Field(
        300, ge=10, description="Labels at which the label-based confidence sequences are tightest."
    )
    churn_floor: bool = Field(
        True, description="Judge divergence checks against production-vs-reference divergence when a reference runs."
    )
    max_wait_h: float = Field(
        168.0,
        gt=0,
        description="A check that would need longer than this at the current traffic and label rates is reported "
        "as undecidable in reasonable time (widen the margin or raise the evaluation share).",
    )


class ShadowdConfig(Strict):
    """The whole daemon."""

    task: Literal["classification", "regression"] = Field(description="What the models predict.")
    data_dir: Path = Field(
        Path("shadowd-data"), description="State that survives restarts: spool, pair store, gate state."
    )
    models: ModelsConfig = Field(description="The production model and the candidate under test.")
    shadow: ShadowConfig = Field(
        default_factory=ShadowConfig, description="Sampling, timeouts and bounds of the shadow path."
    )
    serving: ServingConfig = Field(default_factory=ServingConfig, description="HTTP, replicas and CPUs on Ray Serve.")
    slices: list[SliceConfig] = Field(
        default_factory=list, description="Named slices, reported and checked on their own."
    )
    divergence: DivergenceConfig = Field(
        default_factory=DivergenceConfig, description="When a pair counts as divergent (and is queued for a label)."
    )
    annotations: AnnotationConfig = Field(
        default_factory=AnnotationConfig, description="The annotation queue: spool, Kafka, policy, rotation."
    )
    labels: LabelsConfig = Field(
        default_factory=LabelsConfig, description="Label joins, high-loss queueing and hard-example suites."
    )
    lineup: LineupConfig = Field(
        default_factory=LineupConfig,
        description="What a runtime change of the candidate (shadowd candidates set) may load besides what the "
        "config's models use.",
    )
    auth: AuthConfig = Field(
        default_factory=AuthConfig,
        description="API tokens: who may send labels, read the report and reset the test. None configured: "
        "loopback only, with a generated token in <data_dir>/auth/token.",
    )
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="The Prometheus /metrics endpoint.")
    grafana: GrafanaConfig | None = Field(None, description="Annotate gate verdict changes in Grafana; none: off.")
    checks: list[CheckConfig] = Field(
        default_factory=default_checks,
        description="Statistical checks run overall and per slice; see docs/statistics.md. Without this key: "
        "the defaults for the task (loss is required for regression, accuracy for classification).",
    )
    gate: GateConfig = Field(default_factory=GateConfig, description="How check results become a promotion verdict.")
    expectations: ExpectationsConfig = Field(
        default_factory=ExpectationsConfig, description="Data expectations, output stability and drift checks."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ShadowdConfig:
        names = [s.name for s in self.slices]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"slice names must be unique; repeated: {', '.join(dupes)}")
        if OVERALL in names:
            raise ValueError("'overall' is reserved for the whole traffic; pick another slice name")
        m = self.models
        named = [x.name for x in (m.production, *m.candidates, m.reference) if x is not None]
        if len(set(named)) < len(named):
            raise ValueError(
                f"models need distinct names (reports, metrics and the lineup tell them apart by name); got {named}"
            )
        if len(m.candidates) > self.shadow.max_candidates:
            raise ValueError(
                f"models.candidates holds {len(m.candidates)} models; shadow.max_candidates allows "
                f"{self.shadow.max_candidates}"
            )
        for i, cand in enumerate(m.candidates):
            if cand.input_shape != m.production.input_shape:
                where = "models.candidate" if len(m.candidates) == 1 else f"models.candidates.{i}"
                raise ValueError(
                    f"{where}.input_shape {cand.input_shape} differs from "
                    f"models.production.input_shape {m.production.input_shape}"
                )
        ref = self.models.reference
        if ref is not None and ref.input_shape != self.models.production.input_shape:
            raise ValueError(
                f"models.reference.input_shape {ref.input_shape} differs from "
                f"models.production.input_shape {self.models.production.input_shape}"
            )
        unknown = sorted(set(self.annotations.evaluation.slice_shares) - set(names))
        if unknown:
            raise ValueError(f"annotations.evaluation.slice_shares names unknown slices {unknown}; known: {names}")
        if self.task == "regression" and self.models.production.output != "values":
            raise ValueError("task 'regression' needs models.production.output 'values'")
        ann = self.annotations
        for key, host in (
            ("annotations.web.host", ann.web.host),
            ("annotations.label_studio.webhook_host", ann.label_studio.webhook_host if ann.label_studio else None),
        ):
            if host is not None and not self.auth.configured and not is_loopback(host):
                raise ValueError(
                    f"{key} is {host!r} but no API tokens are configured (auth.tokens_file or auth.tokens_env): "
                    "labels would be accepted with no token anyone off this machine could hold. Configure tokens, "
                    f"or bind {key} to 127.0.0.1"
                )
        if ann.class_names is not None and self.task != "classification":
            raise ValueError("annotations.class_names is for task 'classification'")
        if ann.label_studio is not None and self.task == "classification" and ann.class_names is None:
            raise ValueError(
                "annotations.label_studio needs annotations.class_names for a classification task (Label Studio's "
                "choices are fixed when the project is created)"
            )
        if self.serving.hub_shards > 1 and ann.sink.type != "kafka":
            raise ValueError(
                f"serving.hub_shards is {self.serving.hub_shards}: a sharded hub needs annotations.sink type "
                f"'kafka' (the {ann.sink.type!r} transport's queue is one process's files)"
            )
        if not self.auth.configured and not is_loopback(self.serving.host):
            raise ValueError(
                f"serving.host is {self.serving.host!r} but no API tokens are configured (auth.tokens_file or "
                "auth.tokens_env): POST /feedback and /shadow/* would have no token anyone off this machine "
                "could use. Configure tokens, or bind serving.host to 127.0.0.1 (shadowd then generates a "
                "token in <data_dir>/auth/token)"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_checks_for_the_task(cls, data: Any) -> Any:
        if isinstance(data, dict) and "checks" not in data and isinstance(data.get("task"), str):
            return {**data, "checks": default_checks(data["task"])}
        return data

    @model_validator(mode="after")
    def _checks_consistent(self) -> ShadowdConfig:
        names = [c.name for c in self.checks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"check names must be unique; repeated: {', '.join(dupes)}")
        known = {OVERALL, *(s.name for s in self.slices)}
        for c in self.checks:
            unknown = sorted(set(c.slices or ()) - known)
            if unknown:
                raise ValueError(f"check '{c.name}' names unknown slices {unknown}; known: {sorted(known)}")
        return self


def shard_config(config: ShadowdConfig, shard: int) -> ShadowdConfig:
    """The config hub shard ``shard`` runs with: with several shards, its files under ``<data_dir>/shards/<i>``,
    its hard-example suites in ``<suites_dir>/shard-<i>`` (``shadowd replay`` reads them all), and its share of
    the annotation rate and quotas and of the spool's and pair store's caps (request ids reach the shards
    uniformly: together they admit and keep what one hub would; quotas rounded up, so at most n - 1 more)."""
    n = config.serving.hub_shards
    if n == 1:
        return config
    suites = config.labels.suites_dir or config.data_dir / "suites"
    policy = config.annotations.policy

    def share(quota: int) -> int:
        return math.ceil(quota / n)

    policy = policy.model_copy(
        update={
            "rate_per_s": policy.rate_per_s / n,
            "burst_items": share(policy.burst_items),
            "slice_quotas": {name: share(q) for name, q in policy.slice_quotas.items()},
            "default_slice_quota": None if policy.default_slice_quota is None else share(policy.default_slice_quota),
        }
    )
    ann, lab = config.annotations, config.labels
    return config.model_copy(
        update={
            "data_dir": config.data_dir / "shards" / str(shard),
            "labels": lab.model_copy(
                update={
                    "suites_dir": suites / f"shard-{shard}",
                    "max_pairs": share(lab.max_pairs),
                    "max_pair_store_bytes": max(2**20, lab.max_pair_store_bytes // n),
                }
            ),
            "annotations": ann.model_copy(
                update={"policy": policy, "spool_max_bytes": max(1 << 20, ann.spool_max_bytes // n)}
            ),
        }
    )


def _loc(loc: tuple[Any, ...], data: Any, missing: bool) -> str:
    """Dotted key path of an error, walking the input so that union tags pydantic
    puts in ``loc`` (a check's type, a predicate's kind) are left out."""
    parts: list[str] = []
    node = data
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        is_key = isinstance(node, dict) and item in node
        if not is_key and (i < len(loc) - 1 or not missing):
            continue  # a union tag, not a key the user wrote (only a missing key is absent from the input)
        parts.append(("." if parts else "") + str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def _may_hold_credential(value: Any) -> bool:
    """A mapping that may carry a remote model's headers or URL (e.g. a whole model config whose kind is
    mistyped): its value stays out of the message, as a credential in it would otherwise be echoed."""
    return isinstance(value, dict) and any(key in value for key in ("headers", "url"))


def describe_error(err: ValidationError, source: str, data: Any) -> str:
    """One line per error: file, key path, what is wrong and the value given."""
    lines = []
    for e in err.errors(include_url=False):
        missing = e["type"] == "missing"
        # the top level's input is the whole file; a credential's is the credential
        show_input = not missing and e["loc"] and e["type"] != SECRET_ERROR and not _may_hold_credential(e.get("input"))
        got = f" (got {e.get('input')!r})" if show_input else ""
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {_loc(e['loc'], data, missing)}: {msg}{got}")
    return "\n".join(dict.fromkeys(lines))


def _resolve_paths(cfg: ShadowdConfig, base: Path) -> ShadowdConfig:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    models: dict[str, Any] = {"candidates": [c.with_base_dir(base) for c in cfg.models.candidates]}
    for role in ("production", "reference"):
        m = getattr(cfg.models, role)
        models[role] = None if m is None else m.with_base_dir(base)
    exp = cfg.expectations
    if exp.drift is not None:
        exp = exp.model_copy(update={"drift": exp.drift.model_copy(update={"profile": fix(exp.drift.profile)})})
    labels = cfg.labels.model_copy(update={"suites_dir": fix(cfg.labels.suites_dir)})
    auth = cfg.auth.model_copy(update={"tokens_file": fix(cfg.auth.tokens_file)})
    lineup = cfg.lineup.model_copy(
        update={
            "model_dirs": [fix(d) for d in cfg.lineup.model_dirs],
            "credentials": [str(fix(Path(c))) if "/" in c else c for c in cfg.lineup.credentials],
        }
    )
    annotations = cfg.annotations
    if annotations.label_studio is not None:
        ls = annotations.label_studio.model_copy(update={"token_file": fix(annotations.label_studio.token_file)})
        annotations = annotations.model_copy(update={"label_studio": ls})
    return cfg.model_copy(
        update={
            "data_dir": fix(cfg.data_dir),
            "models": cfg.models.model_copy(update=models),
            "expectations": exp,
            "labels": labels,
            "auth": auth,
            "lineup": lineup,
            "annotations": annotations,
        }
    )


def parse_config(data: Any, source: str = "<config>", base_dir: Path | None = None) -> ShadowdConfig:
    """Validate an already-parsed mapping; relative paths resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        cfg = ShadowdConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_error(err, source, data)) from None
    return _resolve_paths(cfg, base_dir or Path.cwd())


def load_config(path: str | Path) -> ShadowdConfig:
    """Read and validate a YAML config file; ConfigError names the file and key on failure."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    return parse_config(data, str(path), path.parent.resolve())

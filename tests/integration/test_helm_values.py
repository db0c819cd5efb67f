"""values.schema.json: bad values fail `helm install` with a message naming the key.

Real Helm (helm-python-sdk) validates; its messages are what a platform
engineer sees. The `config:` part is generated from shadowd's pydantic
config tree, so the chart and `shadowd validate-config` agree on field rules.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from shadowd.config import parse_config
from shadowd.errors import ConfigError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "shadowd"


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as c:
        yield c


def _install_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    """What `helm install` says: render validates values against the schema first."""
    with pytest.raises(helm.HelmValuesError) as info:
        chart.render(values, name="shadow", namespace="ml", is_install=True)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    return str(info.value)


def test_default_values_pass(chart):
    chart.validate_schema(chart.merge_values({}))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"mode": "kubernetes"}, ["/mode", "rayservice", "deployment"]),
        ({"modes": "deployment"}, ["modes", "not allowed"]),
        ({"image": {"tag": 1.2}}, ["/image/tag", "want string"]),
        ({"image": {"pullPolicy": "Sometimes"}}, ["/image/pullPolicy"]),
        (
            {"rayService": {"head": {"rayStartParams": {"num-cpus": 0}}}},
            ["/rayService/head/rayStartParams/num-cpus", "want string"],
        ),
        ({"rayService": {"workers": {"replicas": -1}}}, ["/rayService/workers/replicas", "minimum"]),
        ({"rayService": {"upgradeStrategy": "Rolling"}}, ["/rayService/upgradeStrategy"]),
        ({"rayService": {"rayVersion": "latest"}}, ["/rayService/rayVersion"]),
        ({"persistence": {"size": "ten gigs"}}, ["/persistence/size"]),
        ({"persistence": {"accessModes": ["ReadWriteAlways"]}}, ["/persistence/accessModes/0"]),
        ({"persistence": {"mountPath": "data"}}, ["/persistence/mountPath"]),
        ({"securityContext": {"runAsUser": 0}}, ["/securityContext/runAsUser", "minimum"]),
        ({"service": {"httpPort": 70000}}, ["/service/httpPort", "maximum"]),
        ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, ["/metrics/serviceMonitor/interval"]),
        ({"kafka": {"sasl": {"existingSecret": 7}}}, ["/kafka/sasl/existingSecret", "want string"]),
        ({"deployment": {"resources": {"limit": {"memory": "8Gi"}}}}, ["/deployment/resources", "limit"]),
        ({"extraEnv": [{"value": "1"}]}, ["/extraEnv/0", "name"]),
        ({"fullnameOverride": "Shadow_D"}, ["/fullnameOverride"]),
        # the shadowd config, by the rules of shadowd/config.py
        ({"config": {"task": "ranking"}}, ["/config/task", "classification", "regression"]),
        ({"config": {"shadow": {"sample_share": 1.5}}}, ["/config/shadow/sample_share", "maximum"]),
        ({"config": {"shadow": {"sample_rate": 0.5}}}, ["/config/shadow", "sample_rate", "not allowed"]),
        ({"config": {"models": {"production": {"kind": "onnx"}}}}, ["/config/models/production/kind"]),
        ({"config": {"models": {"production": {"input_shape": [0]}}}}, ["/config/models/production/input_shape/0"]),
        (
            {"config": {"annotations": {"sink": {"type": "kafka", "bootstrap_servers": []}}}},
            ["/config/annotations/sink"],
        ),
    ],
    ids=lambda v: "" if isinstance(v, list) else next(iter(v)),
)
def test_bad_values_fail_install_naming_the_key(chart, values, expected):
    message = _install_error(chart, values)
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"


def test_values_cannot_null_out_required_config(chart):
    message = _install_error(chart, {"config": {"models": None}})
    assert "/config" in message and "models" in message


@pytest.mark.parametrize(
    "config_patch",
    [
        {"task": "ranking"},
        {"shadow": {"noise_share": -0.1}},
        {"serving": {"ingress_replicas": 0}},
        {"slices": [{"name": "Night Time", "where": {"field": "hour", "op": "ge", "value": 20}}]},
        {"divergence": {"unknown": 1}},
    ],
)
def test_chart_schema_and_shadowd_reject_the_same_config(chart, config_patch):
    """Field rules are generated from the pydantic tree: what shadowd refuses, Helm refuses."""
    values = chart.merge_values({"config": config_patch})
    with pytest.raises(ConfigError):
        parse_config(values["config"], "values.yaml config")
    _install_error(chart, {"config": config_patch})


def test_good_config_passes_both(chart):
    patch = {
        "task": "classification",
        "slices": [{"name": "night", "where": {"field": "hour", "op": "ge", "value": 20}}],
        "serving": {"ingress_replicas": 3, "worker_replicas": 2},
        "annotations": {
            "sink": {"type": "kafka", "bootstrap_servers": ["kafka:9092"], "security_protocol": "SASL_SSL"}
        },
    }
    values = chart.merge_values({"config": patch})
    parse_config(values["config"], "values.yaml config")
    chart.validate_schema(values)


def test_values_schema_is_in_sync_with_the_config_tree():
    spec = importlib.util.spec_from_file_location("gen_values_schema", CHART / "hack" / "gen_values_schema.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.main(["--check"]) == 0, (
        "helm/shadowd/values.schema.json is stale: run .venv/bin/python helm/shadowd/hack/gen_values_schema.py"
    )


def _readme_values_blocks() -> list[str]:
    text = (ROOT / "deploy" / "README.md").read_text()
    return [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]


def test_install_guide_values_examples_install(chart):
    """Every values snippet in deploy/README.md passes the schema and renders: the first is the
    guide's my-values.yaml, each later one is added to it."""
    import yaml

    blocks = [yaml.safe_load(block) for block in _readme_values_blocks()]
    assert len(blocks) >= 3
    base = blocks[0]
    for block in blocks:
        chart.validate_schema(block)
        rendered = chart.render({**base, **block}, name="shadowd", namespace="ml", is_install=True)
        assert any("kind: ConfigMap" in text for text in rendered.values())

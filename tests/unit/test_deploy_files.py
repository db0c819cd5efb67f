"""deploy/serve and deploy/grafana: each file checked by the code that will read it.

Ray Serve's own config schema reads serve-config.yaml; shadowd's parser reads
the example config; the Grafana provisioning files are checked against the
keys Grafana's provisioning docs require (no Grafana server runs here) and
against the dashboards they provision. No Ray is started.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml

from shadowd.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SERVE = ROOT / "deploy" / "serve"
GRAFANA = ROOT / "deploy" / "grafana" / "provisioning"


@pytest.fixture(scope="module")
def serve_config():
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(yaml.safe_load((SERVE / "serve-config.yaml").read_text()))


def test_serve_config_deploys_the_shadowd_app_builder(serve_config):
    (app,) = serve_config.applications
    module, _, attr = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module), attr)
    assert builder is importlib.import_module("shadowd.app").app_builder
    assert app.args == {"config_path": "/etc/shadowd/config.yaml"}
    assert serve_config.http_options.host == "0.0.0.0"


def test_app_builder_refuses_args_without_a_config_path():
    from shadowd.app import app_builder

    with pytest.raises(ValueError, match="config_path"):
        app_builder({})


def test_example_config_is_valid_and_matches_the_serve_config(serve_config):
    cfg = load_config(SERVE / "shadowd.yaml")
    (app,) = serve_config.applications
    assert cfg.serving.port == serve_config.http_options.port
    assert cfg.serving.route_prefix == app.route_prefix
    assert cfg.serving.host == "0.0.0.0" and cfg.metrics.host == "0.0.0.0", "reachable from outside the pod/node"
    assert str(cfg.data_dir) == "/var/lib/shadowd"  # the image's VOLUME


def test_kafka_example_in_comments_is_valid_too():
    """The commented-out Kafka block must work when uncommented."""
    lines = (SERVE / "shadowd.yaml").read_text().splitlines()
    start = lines.index("# annotations:")
    block = "\n".join(line.removeprefix("# ") for line in lines[start:] if line.startswith("# "))
    data = yaml.safe_load((SERVE / "shadowd.yaml").read_text())
    data.update(yaml.safe_load(block))
    from shadowd.config import parse_config

    kafka = parse_config(data, "shadowd.yaml (kafka block uncommented)").annotations.sink
    assert kafka.type == "kafka"
    assert kafka.sasl_username_env and kafka.sasl_password_env and kafka.ssl_cafile


def _dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((ROOT / "dashboards").glob("*.json"))}


def test_datasource_provisioning_serves_the_dashboards_datasource_variable():
    doc = yaml.safe_load((GRAFANA / "datasources" / "shadowd-prometheus.yaml").read_text())
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert {"name", "type", "access", "url"} <= ds.keys()
    assert ds["access"] in ("proxy", "direct") and ds["isDefault"] is True
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert ds["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]
    dashboards = _dashboards()
    assert dashboards, "dashboards/*.json is empty"
    for name, dash in dashboards.items():
        variables = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
        assert [v["query"] for v in variables] == [ds["type"]], (
            f"{name}: its datasource variable must list {ds['type']}"
        )


def test_dashboard_provider_points_at_the_dashboards_folder():
    doc = yaml.safe_load((GRAFANA / "dashboards" / "shadowd.yaml").read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert provider["folder"] == "shadowd"
    uids = [d["uid"] for d in _dashboards().values()]
    assert len(uids) == len(set(uids)), "one folder of file-provisioned dashboards needs distinct uids"

"""Kafka client settings from the config: client certificates, and credentials from env or files.

No broker: what is under test is what shadowd hands kafka-python and what it says when a
credential is missing (the key, never the value)."""

from __future__ import annotations

import pytest

from shadowd.config import parse_config
from shadowd.errors import ConfigError
from shadowd.flywheel.transports.kafka import KafkaTransportConfig, delivery_error, kafka_client_config

BASE = {
    "task": "classification",
    "models": {"production": {"name": "p", "kind": "python", "target": "m:f", "input_shape": [2]}},
}


def sink(**kwargs) -> KafkaTransportConfig:
    return KafkaTransportConfig.model_validate({"type": "kafka", "bootstrap_servers": ["k:9093"], **kwargs})


def config_error(**kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "annotations": {"sink": {"type": "kafka", "bootstrap_servers": ["k:9093"], **kwargs}}})
    return str(err.value)


def test_sasl_credentials_and_key_password_from_files(tmp_path):
    (tmp_path / "user").write_text("shadowd\n")  # as `kubectl create secret --from-file` leaves it
    (tmp_path / "pass").write_text("s3cr3t-pass\n")
    (tmp_path / "keypass").write_text("key-pass")
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("PEM")
    kafka = sink(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username_file=str(tmp_path / "user"),
        sasl_password_file=str(tmp_path / "pass"),
        ssl_cafile=str(tmp_path / "ca.pem"),
        ssl_certfile=str(tmp_path / "client.pem"),
        ssl_keyfile=str(tmp_path / "client.key"),
        ssl_password_file=str(tmp_path / "keypass"),
    )
    cfg = kafka_client_config(kafka)
    assert (cfg["sasl_plain_username"], cfg["sasl_plain_password"], cfg["ssl_password"]) == (
        "shadowd",
        "s3cr3t-pass",
        "key-pass",
    )
    assert (cfg["ssl_cafile"], cfg["ssl_certfile"], cfg["ssl_keyfile"]) == tuple(
        str(tmp_path / n) for n in ("ca.pem", "client.pem", "client.key")
    )
    assert cfg["security_protocol"] == "SASL_SSL" and cfg["sasl_mechanism"] == "SCRAM-SHA-512"


def test_credentials_from_env(monkeypatch):
    monkeypatch.setenv("KUSER", "shadowd")
    monkeypatch.setenv("KPASS", "s3cr3t")
    kafka = sink(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username_env="KUSER",
        sasl_password_env="KPASS",
    )
    cfg = kafka_client_config(kafka)
    assert (cfg["sasl_plain_username"], cfg["sasl_plain_password"]) == ("shadowd", "s3cr3t")
    assert "ssl_password" not in cfg


def test_a_missing_credential_names_the_key_at_start_never_the_value(tmp_path, monkeypatch):
    monkeypatch.setenv("KUSER", "user-7f3a")
    kafka = sink(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username_env="KUSER",
        sasl_password_file=str(tmp_path / "missing"),
    )
    with pytest.raises(ConfigError) as err:
        kafka.build(tmp_path)  # the hub (and `shadowd annotate`) fail at start, not at the first send
    assert "annotations.sink.sasl_password_file" in str(err.value) and "missing" in str(err.value)
    assert "user-7f3a" not in str(err.value)
    monkeypatch.delenv("KUSER")
    with pytest.raises(ConfigError, match=r"annotations\.sink\.sasl_username_env: environment variable KUSER"):
        kafka_client_config(kafka)
    with pytest.raises(ConfigError, match=r"annotations\.sink\.ssl_certfile: .* is not a readable file"):
        kafka_client_config(sink(security_protocol="SSL", ssl_certfile=str(tmp_path / "nope.pem")))
    # a credential that went missing later is a setup error: kept and retried slowly, not hammered
    assert (
        delivery_error(ConfigError("annotations.sink.sasl_password_file: gone"), of_a_record=False).retriable is False
    )


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username_env": "U"},
            "needs the user name and password",
        ),
        ({"sasl_password_env": "P", "sasl_password_file": "/p"}, "sasl_password_env or sasl_password_file, not both"),
        ({"security_protocol": "SSL", "ssl_keyfile": "/k.pem"}, "ssl_keyfile needs ssl_certfile"),
        ({"ssl_certfile": "/c.pem"}, "need security_protocol SSL or SASL_SSL, not PLAINTEXT"),
    ],
)
def test_inconsistent_kafka_security_is_a_config_error(kwargs, words):
    message = config_error(**kwargs)
    assert "annotations.sink" in message and words in message

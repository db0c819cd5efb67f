"""Shared fixtures. Unit tests (tests/unit) start no Ray, no broker, no server;
integration tests (tests/integration) use the real ones, started once per session."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.kafka",
    "tests.fixtures.prometheus",
    "tests.fixtures.grafana",
    "tests.fixtures.ray_serve",
    "tests.fixtures.label_studio",
]

"""Observability: what the on-call engineer sees.

``metrics`` declares every Prometheus metric once (each process builds one
``ShadowdMetrics``); ``dashboards`` generates the Grafana dashboards in
``dashboards/``; ``grafana`` pushes them and annotates gate verdict changes.
Alert rules live in ``deploy/prometheus/rules``; docs/observability.md explains
every panel and alert.
"""

__all__: list[str] = []

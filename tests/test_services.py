"""The shared launchers of the real Prometheus and Alertmanager."""

from __future__ import annotations

import pytest

from monitor.services import Alertmanager, Prometheus, ServiceError, StaticMetrics
from tests.needs import needs_alertmanager, needs_prometheus


@needs_prometheus
def test_prometheus_scrapes_a_static_target_and_answers_queries() -> None:
    body = b"# TYPE mlmon_demo gauge\nmlmon_demo{model=\"m\"} 3\n"
    with StaticMetrics(body) as target, Prometheus([target.target], interval="200ms") as prom:
        result = prom.wait_for('mlmon_demo{model="m"}', timeout=20)
        assert float(result[0]["value"][1]) == 3.0
        with pytest.raises(ServiceError):
            prom.query("sum(")


@needs_alertmanager
def test_alertmanager_starts_without_a_cluster_port() -> None:
    with Alertmanager({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}) as am:
        assert am.alerts() == []

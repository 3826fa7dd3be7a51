"""The shared launchers of the real Prometheus and Alertmanager."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from monitor.services import (
    Alertmanager,
    Prometheus,
    ServiceError,
    StaticMetrics,
    binary,
    prometheus_builds,
    version,
)
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


# --- the Prometheus builds: Debian's 2.42 and 3.x (scripts/build_prometheus.sh) ---------------------------
BUILDS = prometheus_builds()
every_build = pytest.mark.parametrize("build", sorted(BUILDS) or [pytest.param("none", marks=pytest.mark.skip(
    reason="no prometheus/promtool on PATH and no 3.x build (scripts/build_prometheus.sh)"))])


def test_binary_overrides_win_and_a_wrong_one_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    exe = tmp_path / "prometheus"
    exe.write_text("#!/bin/sh\necho 'prometheus, version 9.9.9 (branch: x)'\n")
    exe.chmod(0o755)
    monkeypatch.setenv("MLMON_PROMETHEUS", str(exe))
    assert binary("prometheus") == str(exe)
    assert version(str(exe)) == "9.9.9"
    monkeypatch.setenv("MLMON_PROMETHEUS", str(tmp_path / "missing"))
    with pytest.raises(ServiceError, match="MLMON_PROMETHEUS"):
        binary("prometheus")


def test_a_3x_build_is_available_or_the_skip_says_why() -> None:
    if "3.x" not in BUILDS:
        pytest.skip("no Prometheus 3.x build: run scripts/build_prometheus.sh (needs Go)")
    assert version(BUILDS["3.x"]["MLMON_PROMETHEUS"]).startswith("3.")


@every_build
def test_every_build_scrapes_the_exporter_and_the_relay(build: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prometheus 3 refuses a scrape without a valid Content-Type: the worker and the relay serve
    prometheus_client's CONTENT_TYPE_LATEST with the text exposition; every build must ingest it."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from monitor.exporter import prometheus_text
    from monitor.inputs import load_inputs
    from monitor.relay import server as relay_server
    from monitor.replay import run_replay
    from monitor.stream import web

    assert web.CONTENT_TYPE_LATEST == CONTENT_TYPE_LATEST == relay_server.CONTENT_TYPE_LATEST
    for key, value in BUILDS[build].items():
        monkeypatch.setenv(key, value)
    inputs = load_inputs(None, None, None, None)
    body = prometheus_text(run_replay(inputs.config, inputs.predictions, inputs.ground_truth)[1])
    with StaticMetrics(body, content_type=CONTENT_TYPE_LATEST) as target, \
            Prometheus([target.target], interval="200ms") as prom:
        prom.wait_for('up{job="mlmon"} == 1', timeout=30)
        result = prom.wait_for('mlmon_label_outcomes_total{label="violence",outcome="tp"}', timeout=30)
        assert float(result[0]["value"][1]) > 0


@every_build
def test_generated_rules_pass_promtool_under_every_build(build: str, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    from monitor.config import parse_config
    from monitor.rules.check import check
    from monitor.rules.generate import TESTS_FILE, generate, write

    for key, value in BUILDS[build].items():
        monkeypatch.setenv(key, value)
    # A small config: the example's own rules are checked under both builds by tests/test_rules.py; this
    # checks that each build is the one that runs, on rules with every kind of alert and an SLO.
    config = parse_config({"models": [{"name": "m", "labels": ["a", "b"], "features": {"numeric": ["x"]},
                                       "slos": [{"label": "a", "objective": "recall", "target": 0.9,
                                                 "severity": "page"}]}]})
    write(generate(config), tmp_path)
    # One case per alert (and the recording rules' case): each build runs every kind of rule, a fifth of
    # the cases (all of them pass both builds in tests/test_rules.py).
    tests_file = tmp_path / TESTS_FILE
    doc = yaml.safe_load(tests_file.read_text())
    firsts = {case["name"].split(" ")[0].rstrip(":"): case for case in reversed(doc["tests"])}
    assert len(firsts) >= 10
    doc["tests"] = list(firsts.values())
    tests_file.write_text(yaml.safe_dump(doc, sort_keys=False, width=1 << 30))
    results = check(tmp_path)
    assert results and results[0].command[0] == BUILDS[build]["MLMON_PROMTOOL"]
    assert len(results) == 2 and all(r.ok for r in results), results[-1].output[-3000:]

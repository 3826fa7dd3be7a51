"""docker-compose.yml: valid for Compose, every mounted file exists, versions match what the tests use,
and every service runs a command this build has. (No Docker engine here: the stack itself is exercised
by tests/test_demo.py through monitor.stack, with the same configs.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from monitor.config import load_config
from monitor.dashboards.common import GRAFANA_VERSION
from monitor.rules import ALERTS_FILE, RECORDING_FILE
from monitor.rules.options import DEFAULT_JOB
from monitor.stream.broker import KAFKA_VERSION
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="apt-get install docker-compose")
def test_compose_file_validates() -> None:
    res = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr


def test_mounted_files_exist_and_versions_match() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):  # else a named volume, declared at the top level
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose()["volumes"], f"{name}: volume {source} is not declared"
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert services["grafana"]["image"] == f"grafana/grafana:{GRAFANA_VERSION}"


def test_service_commands_exist() -> None:
    services = compose()["services"]
    for name in ("worker", "relay"):
        verb = services[name]["command"][0]
        res = subprocess.run([sys.executable, "-m", "monitor.cli", verb, "--help"], capture_output=True, cwd=ROOT)
        assert res.returncode == 0, f"{name}: monitor {verb} --help failed"
    for name in ("traffic", "receiver"):
        module = services[name]["entrypoint"][2]
        res = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, cwd=ROOT)
        assert res.returncode == 0, f"{name}: python -m {module} --help failed"


def test_compose_config_is_valid_and_points_at_the_services() -> None:
    cfg = load_config(ROOT / "deploy" / "compose" / "config.yaml")
    services = compose()["services"]
    assert cfg.kafka.bootstrap_servers.split(":")[0] in services
    assert cfg.retraining is not None and urlparse(cfg.retraining.url).hostname in services
    assert cfg.metrics.bind == "0.0.0.0"
    am = yaml.safe_load((ROOT / "deploy" / "alertmanager.yml").read_text())
    for receiver in am["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            assert urlparse(hook["url"]).hostname in services, hook["url"]
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    for target in targets:
        assert target.split(":")[0] in services, target
    assert cfg.models[0].reference is not None
    assert Path(cfg.models[0].reference).name in {p.name for p in (ROOT / "monitor/examples/reference").iterdir()}


@pytest.mark.prometheus
@pytest.mark.skipif(shutil.which("promtool") is None, reason="apt-get install prometheus")
def test_deploy_prometheus_config_loads_the_generated_rules(tmp_path: Path) -> None:
    """The compose layout: prometheus.yml beside alert_rules/; the rules glob takes the two rule files
    and never the promtool tests; the worker job is the one the rules watch."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs[DEFAULT_JOB]["static_configs"] == [{"targets": ["worker:9108"]}]
    assert config["alerting"]["alertmanagers"] == [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]
    shutil.copy(ROOT / "deploy" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copytree(ROOT / "alert_rules", tmp_path / "alert_rules")
    result = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout
    assert RECORDING_FILE in result.stdout and ALERTS_FILE in result.stdout and "test.yml" not in result.stdout

"""`monitor demo --fast --no-tui` runs to its end, as a user runs it (its own local Kafka), and what it
promises happens: a burn-rate page, feature drift, one signed retraining request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor import conventions as c
from monitor.cli import main
from monitor.demo import DEMO_RULES, demo_config, timeline
from monitor.rules import tiers_for
from monitor.services import binary
from tests.conftest import ROOT


def test_demo_scenario_is_sound() -> None:
    """The short windows keep the properties docs/demo.md relies on."""
    cfg = demo_config()
    assert 60 not in cfg.windows  # a 1m window holds 0-60 s (the current minute bucket only) and flaps
    for slo in cfg.models[0].slos:
        for tier in tiers_for(slo, cfg.windows):
            assert tier.threshold > 1, tier  # no tier fires while the SLO is met
    windows = DEMO_RULES.windows(cfg)
    assert windows.drift == windows.slow == "2m"
    assert cfg.join.ttl > timeline(True, None).history  # no join expires while the history is read
    fast = timeline(True, None)
    assert fast.stop_when_done and fast.drift_at < fast.degrade_at < fast.duration


def test_demo_help_lists_the_options() -> None:
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0
    for option in ("--fast", "--duration", "--no-tui", "--keep"):
        assert option in result.output


@pytest.mark.kafka
@pytest.mark.prometheus
@pytest.mark.slow
@pytest.mark.skipif(binary("prometheus") is None or binary("prometheus-alertmanager", "alertmanager") is None,
                    reason="apt-get install prometheus prometheus-alertmanager")
@pytest.mark.timeout(400)
def test_fast_demo_runs_to_its_end_and_everything_promised_fires(tmp_path: Path) -> None:
    """With --keep: once the story is told the stack stays up, its URLs printed, until SIGTERM/Ctrl-C."""
    summary_path = tmp_path / "summary.json"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "demo", "--fast", "--no-tui", "--keep", "--json-summary",
         str(summary_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "the stack keeps running" in line:
                break
        kept = "".join(lines)
        assert "the stack keeps running" in kept, kept[-4000:]
        elapsed = time.monotonic() - started
        urls: list[str] = []  # printed again, and they answer
        while not urls or not urls[-1].strip().startswith("config (short windows)"):
            urls.append(proc.stdout.readline())
            assert urls[-1], "the demo ended instead of keeping the stack"
        lines += urls
        prometheus = next(x.split()[-1] for x in urls if x.strip().startswith("Prometheus"))
        with urllib.request.urlopen(prometheus.removesuffix("/alerts") + "/-/ready", timeout=10) as ready:
            assert ready.status == 200
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output[-4000:]

    summary = json.loads(summary_path.read_text())
    assert summary["missing"] == []
    assert {c.ALERT_LABEL_ERROR_BUDGET_BURN, c.ALERT_FEATURE_DRIFT, c.ALERT_RETRAINING_RECOMMENDED} \
        <= set(summary["fired"])
    assert summary["retraining_requests"] == 1 and summary["retraining_verified"]
    assert summary["retraining_signals"] == ["feature_drift"]
    assert summary["page_after_injection"] > 0 and summary["retraining_after_injection"] > 0
    # It tells the user where to look and what happened.
    for text in ("where to look", "worker metrics", "Prometheus", "Alertmanager", "relay",
                 "page at the pager: [FIRING", "retraining request at the webhook", "signature verified",
                 "everything the demo promised happened"):
        assert text in output, text
    # The closing summary counts what the event log lists (Alertmanager's re-deliveries counted apart).
    assert summary["pages"] == output.count("page at the pager: ") >= 1
    assert summary["tickets"] == output.count("  ticket: ") >= 1
    assert summary["pager_deliveries"] >= summary["pages"]
    print(f"\ndemo --fast: {elapsed:.0f} s; page {summary['page_after_injection']} s after the degradation, "
          f"retraining request {summary['retraining_after_injection']} s after the feature shift")

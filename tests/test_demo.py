"""`monitor demo --fast --no-tui` runs to its end, as a user runs it (its own local Kafka), and what it
promises happens: a burn-rate page, feature drift, one signed retraining request."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

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


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
    return json.loads(body) if response.headers.get_content_type() == "application/json" else body.decode()


def _query(prometheus: str, expr: str, at: float) -> list[dict[str, Any]]:
    """An instant query evaluated at `at` (epoch seconds) by the demo's Prometheus."""
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    return _get(url)["data"]["result"]


def _relay_counters(relay_metrics: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(_get(relay_metrics)):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


@pytest.mark.kafka
@pytest.mark.prometheus
@pytest.mark.slow
@pytest.mark.skipif(binary("prometheus") is None or binary("prometheus-alertmanager", "alertmanager") is None,
                    reason="apt-get install prometheus prometheus-alertmanager")
@pytest.mark.timeout(400)
def test_fast_demo_runs_to_its_end_and_everything_promised_fires(tmp_path: Path) -> None:
    """The end-to-end proof on real components (docs/e2e.md): Kafka -> worker -> Prometheus (rules generated
    from the config) -> Alertmanager (deploy/alertmanager.yml's routing) -> pager | tickets | relay ->
    a retraining receiver that checks the HMAC signature.

    Healthy traffic raises nothing; a violence degradation pages (only violence, on the pager route); a
    feature shift fires the drift alert and exactly one signed retraining request, while Alertmanager's
    repeats reach the relay as duplicates. With --keep the stack then stays up, its URLs printed, until
    SIGTERM/Ctrl-C: what Prometheus and the relay recorded is read from there."""
    summary_path = tmp_path / "summary.json"
    started = time.monotonic()
    launched = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "demo", "--fast", "--no-tui", "--keep", "--json-summary",
         str(summary_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    lines: list[str] = []
    shift_seen: float | None = None  # when the demo announced the feature shift (epoch seconds)
    try:
        for line in proc.stdout:
            lines.append(line)
            if shift_seen is None and "injected: feature shift" in line:
                shift_seen = time.time()
            if "the stack keeps running" in line:
                break
        kept = "".join(lines)
        assert "the stack keeps running" in kept, kept[-4000:]
        assert shift_seen is not None, kept[-4000:]
        elapsed = time.monotonic() - started
        urls: list[str] = []  # printed again, and they answer
        while not urls or not urls[-1].strip().startswith("config (short windows)"):
            urls.append(proc.stdout.readline())
            assert urls[-1], "the demo ended instead of keeping the stack"
        lines += urls
        prometheus = next(x.split()[-1] for x in urls if x.strip().startswith("Prometheus")).removesuffix("/alerts")
        relay = next(x.split()[-1] for x in urls if x.strip().startswith("relay"))
        assert _get(prometheus + "/-/ready")
        now = time.time()
        # Healthy: no alert pending or firing at any evaluation before the shift (the poll that announces it
        # comes at most a second after it). MLMonitorDown is pending until Prometheus' first scrape (its
        # `absent(up)` is true until then); its 15 s `for:` keeps it from firing.
        before, since = shift_seen - 1.5, f"[{math.floor(shift_seen - 1.5 - launched)}s]"
        healthy = _query(prometheus, f'max_over_time(ALERTS{{alertname!="{c.ALERT_DOWN}"}}{since}) or '
                                     f'max_over_time(ALERTS{{alertstate="firing"}}{since})', before)
        assert healthy == [], [a["metric"] for a in healthy]
        run = f"[{math.ceil(now - launched)}s]"
        burn = _query(prometheus, f'max_over_time(ALERTS{{alertname="{c.ALERT_LABEL_ERROR_BUDGET_BURN}", '
                                  f'severity="page", alertstate="firing"}}{run})', now)
        assert {a["metric"][c.L_LABEL] for a in burn} == {"violence"}, [a["metric"] for a in burn]
        drift = _query(prometheus, f'max_over_time(ALERTS{{alertname="{c.ALERT_FEATURE_DRIFT}", '
                                   f'alertstate="firing"}}{run})', now)
        assert {a["metric"][c.L_FEATURE] for a in drift} >= {"text_length"}, [a["metric"] for a in drift]
        # Alertmanager kept repeating the retraining group; the relay took the repeats as duplicates.
        relayed = _relay_counters(relay)
        assert relayed["mlmon_relay_webhooks_received_total"] >= 2, relayed
        assert relayed.get("mlmon_relay_duplicates_total", 0) + relayed.get(
            "mlmon_relay_cooldown_suppressions_total", 0) >= 1, relayed
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
    assert min(summary["fired"].values()) >= summary["injected"]["feature shift"]
    assert summary["retraining_requests"] == 1 and summary["retraining_verified"]
    assert summary["retraining_signals"] == ["feature_drift"]
    # Pages go to the pager route only (with deploy/alertmanager.yml's routing key), never as tickets.
    assert summary["routing_keys"] == ["local-routing-key"]
    assert not any("(page)" in t for t in summary["ticketed"]), summary["ticketed"]
    # Bounds that follow from the config, not from this machine's speed: ground truth arrives 30 s after
    # its prediction at the earliest, and the drift must fill about a third of a 2m window.
    assert 30 < summary["page_after_injection"] < 90, summary["page_after_injection"]
    assert 10 < summary["retraining_after_injection"] < 90, summary["retraining_after_injection"]
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
          f"retraining request {summary['retraining_after_injection']} s after the feature shift; "
          f"relay {relayed}")

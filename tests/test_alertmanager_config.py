"""deploy/alertmanager.yml: amtool validation, routing of every generated alert, and a real Alertmanager
delivering each kind to its receiver with the burn-tier inhibitions applied."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from monitor import conventions as c
from monitor.rules import ALERTS_FILE
from monitor.services import Alertmanager, binary
from tests.needs import needs_alertmanager, needs_amtool

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "alertmanager.yml"
RULES = ROOT / "alert_rules" / ALERTS_FILE
AMTOOL = binary("amtool")

PAGER, TICKET, RELAY = "pager", "ticket", "retraining-relay"


def expected_receiver(labels: dict[str, str]) -> str:
    if labels["alertname"] == c.ALERT_RETRAINING_RECOMMENDED:
        return RELAY
    return PAGER if labels[c.L_SEVERITY] == "page" else TICKET


def generated_alert_labels() -> list[dict[str, str]]:
    """One label set per distinct generated alert rule: its static labels plus typical dynamic ones."""
    seen: dict[str, dict[str, str]] = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            labels = {"alertname": rule["alert"], c.L_MODEL: "moderation", c.L_LABEL: "violence", **rule["labels"]}
            seen[json.dumps(labels, sort_keys=True)] = labels
    return list(seen.values())


@needs_amtool
def test_amtool_check_config() -> None:
    proc = subprocess.run([AMTOOL, "check-config", str(CONFIG)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 templates" in proc.stdout and "FAILED" not in proc.stdout


@needs_amtool
@pytest.mark.parametrize("labels", generated_alert_labels(),
                         ids=lambda d: "-".join(v for k, v in sorted(d.items()) if k not in (c.L_MODEL, c.L_LABEL)))
def test_every_generated_alert_routes_to_its_receiver(labels: dict[str, str]) -> None:
    want = expected_receiver(labels)
    proc = subprocess.run(
        [AMTOOL, "config", "routes", "test", f"--config.file={CONFIG}", f"--verify.receivers={want}",
         *(f"{k}={v}" for k, v in sorted(labels.items()))],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == want, proc.stdout + proc.stderr


def test_every_alert_kind_is_covered_by_the_routing_test() -> None:
    kinds = {(d["alertname"], expected_receiver(d)) for d in generated_alert_labels()}
    assert {name for name, _ in kinds} == set(c.ALL_ALERTS)
    assert {receiver for _, receiver in kinds} == {PAGER, TICKET, RELAY}


# --- a real Alertmanager ---------------------------------------------------------------------------------

class _Capture(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, Any]]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def capture() -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    handler = type("Handler", (_Capture,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.received
    server.shutdown()
    server.server_close()


def _test_config(base: str, tmp: Path) -> Path:
    """deploy/alertmanager.yml with receivers pointed at the capture server and 1s grouping timers."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["templates"] = [str(CONFIG.parent / t) for t in cfg["templates"]]
    key = tmp / "pagerduty-key"
    key.write_text("test-routing-key\n")
    for route in [cfg["route"], *cfg["route"]["routes"]]:
        route["group_wait"] = route["group_interval"] = "1s"
    for receiver in cfg["receivers"]:
        for pd in receiver.get("pagerduty_configs", []):
            pd["routing_key_file"] = str(key)
            pd["url"] = f"{base}/pagerduty"
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = base + urlparse(hook["url"]).path
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _alert(**labels: str) -> dict[str, Any]:
    return {"labels": labels, "annotations": {"summary": f"{labels['alertname']} test", "description": "d",
                                              "runbook_url": "https://example.com/rb"}}


def _wait(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


@needs_alertmanager
def test_alertmanager_delivers_each_kind_and_inhibits_slow_tiers(
        tmp_path: Path, capture: tuple[str, list[tuple[str, dict[str, Any]]]]) -> None:
    base, received = capture
    with Alertmanager(_test_config(base, tmp_path), workdir=tmp_path) as am:
        burn = {"alertname": c.ALERT_LABEL_ERROR_BUDGET_BURN, c.L_MODEL: "moderation", c.L_LABEL: "violence",
                c.L_SLO: "violence-recall"}
        alerts = [
            _alert(**burn, severity="page", burnrate_tier="page_fast"),
            _alert(**burn, severity="page", burnrate_tier="page_slow"),
            _alert(**burn, severity="ticket", burnrate_tier="ticket_slow"),
            _alert(**{**burn, c.L_LABEL: "spam", c.L_SLO: "spam-precision"}, severity="ticket",
                   burnrate_tier="ticket_fast"),
            _alert(alertname=c.ALERT_RETRAINING_RECOMMENDED, severity="info", model="moderation", signal="slo_burn"),
            _alert(alertname=c.ALERT_DOWN, severity="page", job="mlmon"),
            _alert(alertname=c.ALERT_DOWN, severity="ticket", job="mlmon", instance="w1"),
            # Per-segment SLOs' alerts: a value's fast tier mutes that value's slow tier only.
            *(_alert(**{**burn, c.L_LABEL: label, c.L_SLO: f"{label}-recall"}, severity="page", burnrate_tier=tier,
                     segment="country", segment_value=value)
              for label, value, tier in (("hate", "DE", "page_fast"), ("hate", "DE", "page_slow"),
                                         ("nudity", "FR", "page_fast"), ("nudity", "DE", "page_slow"))),
        ]
        am.post_alerts(alerts)

        paths = {"/pagerduty", "/alertmanager/tickets", "/alertmanager"}
        expected_pages = ["MLMonitorLabelErrorBudgetBurn moderation/violence (page_fast)", "MLMonitorDown",
                          "[FIRING:1] MLMonitorLabelErrorBudgetBurn moderation/hate country=DE (page_fast)",
                          "[FIRING:2] MLMonitorLabelErrorBudgetBurn moderation/nudity"]

        def page_summaries() -> str:
            return " | ".join(body["payload"]["summary"] for path, body in received if path == "/pagerduty")

        # Each alert group is notified on its own once its group_wait ends, so the first page to arrive
        # says nothing about the others: wait for every kind and every expected page (on a timeout the
        # asserts below say what is missing).
        with contextlib.suppress(AssertionError):
            _wait(lambda: paths <= {p for p, _ in received} and all(e in page_summaries() for e in expected_pages))
        status = {json.dumps(a["labels"], sort_keys=True): a["status"] for a in am.alerts()}
        inhibited = {(json.loads(k).get("burnrate_tier") or json.loads(k).get("instance"),
                      json.loads(k).get(c.L_LABEL), json.loads(k).get(c.L_SEGMENT_VALUE))
                     for k, s in status.items() if s["inhibitedBy"]}
        assert inhibited == {("page_slow", "violence", None), ("ticket_slow", "violence", None), ("w1", None, None),
                             ("page_slow", "hate", "DE")}

        pages = [body for path, body in received if path == "/pagerduty"]
        assert all(p["routing_key"] == "test-routing-key" and p["event_action"] == "trigger" for p in pages)
        summaries = page_summaries()
        assert all(e in summaries for e in expected_pages), summaries

        def delivered(path: str) -> list[dict[str, str]]:
            return [a["labels"] for p, body in received if p == path for a in body["alerts"]]

        tickets = delivered("/alertmanager/tickets")
        assert [t.get("burnrate_tier") for t in tickets] == ["ticket_fast"]  # the inhibited ones never arrive
        relayed = delivered("/alertmanager")
        assert [r["alertname"] for r in relayed] == [c.ALERT_RETRAINING_RECOMMENDED]
        assert relayed[0][c.L_MODEL] == "moderation"

"""Issue 5: every panel query of the dashboards returns data from the real Prometheus, fed by the real
worker on the real broker (monitor.stack.LocalStack), with delayed ground truth.

Two sets of dashboards:
- the checked-in dashboards/*.json (generated from the bundled example), queried for `moderation`: every
  query of every panel must return data;
- the dashboards generated for the test config, which adds a multiclass model `router` so that the
  multiclass panels (accuracy, confusion matrix) exist: every panel must return data for at least one of
  the two models (a multilabel-only panel is empty for `router`, a multiclass-only one for `moderation`).

The test config is the bundled example (its windows and SLOs, so the checked-in dashboards' hard-coded
windows exist) with a 1m join TTL and the `router` model. Traffic: 50 s of history produced at once, then
live, with event times at the wall clock: `moderation` v7 from monitor.simulate with its inputs drifted
(so an alert is active for the alert panels), a canary v8 for the version panels, one invalid event per
second for the invalid-input panel, and `router` events from a small generator here. The history is
shorter than the TTL (the worker expires joins per batch, docs/e2e.md); predictions that never get ground
truth expire from about 10 s into the live part, which the join-expiry panel needs.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import orjson
import pytest
import yaml

from monitor.config import MonitorConfig, parse_config
from monitor.dashboards import generate, panel_queries
from monitor.rules import RuleOptions
from monitor.services import ServiceError, binary
from monitor.simulate import TrafficSpec
from monitor.stack import Event, Feeder, LocalStack, simulated_events
from tests.conftest import EXAMPLE_CONFIG, ROOT
from tests.kafka_fixtures import kafka_bootstrap  # noqa: F401

pytestmark = [
    pytest.mark.kafka, pytest.mark.prometheus, pytest.mark.slow,
    pytest.mark.skipif(binary("prometheus") is None or binary("prometheus-alertmanager", "alertmanager") is None,
                       reason="apt-get install prometheus prometheus-alertmanager"),
]

ROUTER_CLASSES = ["billing", "tech", "account", "other"]
HISTORY = 50.0
LIVE = 150.0  # the feeder's horizon; the test stops as soon as every panel has data
VARIABLES: dict[str, dict[str, Any]] = {
    "moderation": {"model": "moderation", "label": ["violence", "spam"], "window": "1h", "__rate_interval": "1m"},
    "router": {"model": "router", "label": ["billing", "tech"], "window": "1h", "__rate_interval": "1m"},
}
# Panels that may stay empty, with the reason. None today: a live pipeline feeds every panel.
EXEMPT: dict[str, str] = {}


def live_config() -> MonitorConfig:
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data["join"] = {"ttl": "1m"}
    data["models"][0]["reference"] = str((EXAMPLE_CONFIG.parent / data["models"][0]["reference"]).resolve())
    data["models"].append({"name": "router", "task": "multiclass", "labels": ROUTER_CLASSES, "min_events": 20})
    return parse_config(data)


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def router_events(start: float, seconds: float, rate: float, seed: int = 1) -> list[Event]:
    """A 4-class router: right about 80% of the time, ground truth 30-60 s later for 90% of requests."""
    rng = np.random.default_rng(seed)
    out: list[Event] = []
    for i in range(int(seconds * rate)):
        ts = start + i / rate
        actual = int(rng.integers(len(ROUTER_CLASSES)))
        logits = rng.normal(0, 1, len(ROUTER_CLASSES))
        logits[actual] += 2.0
        scores = np.exp(logits) / np.exp(logits).sum()
        pid = f"router-{seed}-{i}"
        out.append((ts, "prediction", orjson.dumps({
            "prediction_id": pid, "model": "router", "model_version": "r1", "timestamp": _rfc3339(ts),
            "scores": {c: round(float(s), 6) for c, s in zip(ROUTER_CLASSES, scores, strict=True)},
            "latency_ms": round(float(rng.gamma(3.0, 5.0)), 3)})))
        if rng.random() < 0.9:
            gt = ts + 30 + rng.exponential(5.0)
            out.append((gt, "ground_truth", orjson.dumps({
                "prediction_id": pid, "model": "router", "timestamp": _rfc3339(gt),
                "labels": [ROUTER_CLASSES[actual]]})))
    return out


def invalid_events(start: float, seconds: float) -> list[Event]:
    """One prediction per second with a score outside [0, 1]: dead-lettered and counted by reason."""
    scores = {label: 0.1 for label in ("violence", "hate", "spam", "nudity", "self_harm", "harassment")}
    raw = {"model": "moderation", "model_version": "v7", "scores": {**scores, "violence": 1.5}}
    return [(start + i, "prediction", orjson.dumps({**raw, "prediction_id": f"bad-{i}", "timestamp": start + i}))
            for i in range(int(seconds))]


def traffic(t0: float) -> list[Event]:
    span = HISTORY + LIVE
    events = simulated_events(TrafficSpec(n=int(30 * span), start=t0 - HISTORY, rate=30, mean_delay=5.0,
                                          drift_at=0.0, seed=21))
    events += simulated_events(TrafficSpec(n=int(5 * span), start=t0 - HISTORY, rate=5, mean_delay=5.0,
                                           drift_at=0.0, seed=22, version="v8"))
    events += router_events(t0 - HISTORY, span, rate=10)
    events += invalid_events(t0 - HISTORY, span)
    events.sort(key=lambda e: e[0])
    return events


def panels_with_queries(dashboard: dict[str, Any], variables: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """[("#id title", its expanded queries)] per panel, through the public panel_queries on a dashboard
    holding only that panel (and its row, which may carry a repeat). Titles are not unique, ids are."""
    out = []
    row: dict[str, Any] | None = None
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel
            continue
        single = {**dashboard, "panels": [p for p in (row, panel) if p is not None]}
        queries = panel_queries(single, variables)
        out.append((f"#{panel['id']} {panel['title']}", [expr for _, expr in queries]))
    return out


def _has_data(stack: LocalStack, expr: str) -> bool:
    """A result; for rates and increases a non-zero one, since a flat counter also gives a (zero) result
    and would pass a panel that never sees its counter move (`or vector(0)` fallbacks included)."""
    try:
        result = stack.query(expr)
    except (OSError, ServiceError):
        return False
    if "rate(" in expr or "increase(" in expr:
        return any(float(r["value"][1]) > 0 for r in result)
    return bool(result)


def test_every_panel_returns_data_from_the_live_pipeline(kafka_bootstrap: str) -> None:  # noqa: F811
    cfg = live_config()
    checked_in = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "dashboards").glob("*.json"))}
    generated = generate.build_all(cfg)
    assert set(generated) == set(checked_in)
    # The second model is there for these: without it they would not exist to be checked.
    router_titles = {t.split(" ", 1)[1] for t, _ in panels_with_queries(generated["mlmon-debug"], VARIABLES["router"])}
    assert {"Accuracy", "Confusion matrix"} <= router_titles

    began = time.monotonic()
    with LocalStack(cfg, bootstrap=kafka_bootstrap, rule_options=RuleOptions(for_overrides={"*": "0s"})) as stack:
        t0 = time.time()
        feeder = Feeder(stack.producer(), traffic(t0)).start()
        try:
            # Pending checks per (set, dashboard, panel): the queries of each model that may satisfy it.
            pending: dict[tuple[str, str, str], list[list[str]]] = {}
            for uid, dashboard in checked_in.items():
                for title, exprs in panels_with_queries(dashboard, VARIABLES["moderation"]):
                    pending[("checked-in", uid, title)] = [exprs]
            for uid, dashboard in generated.items():
                for variables in VARIABLES.values():
                    for title, exprs in panels_with_queries(dashboard, variables):
                        pending.setdefault(("generated", uid, title), []).append(exprs)
            total = len(pending)
            while pending and time.time() < t0 + LIVE - 10:
                assert feeder.error is None, feeder.error
                for key, alternatives in list(pending.items()):
                    if any(all(_has_data(stack, e) for e in exprs) for exprs in alternatives):
                        del pending[key]
                time.sleep(1.0)
            elapsed = time.time() - t0
        finally:
            feeder.stop()
        empty = {key: alts for key, alts in pending.items() if key[2].split(" ", 1)[1] not in EXEMPT}
        assert not empty, f"panels without data after {elapsed:.0f} s: " + "\n".join(
            f"{key}: {alts}" for key, alts in empty.items()) + "\n" + stack.logs()
        print(f"\n{total} panels (checked-in for moderation; generated for moderation or router) all returned "
              f"data {elapsed:.0f} s into the live traffic; test {time.monotonic() - began:.0f} s; "
              f"events sent {dict(feeder.sent)}")


def test_exemptions_name_real_panels() -> None:
    titles = {p["title"] for path in (ROOT / "dashboards").glob("*.json")
              for p in json.loads(path.read_text())["panels"]}
    assert set(EXEMPT) <= titles

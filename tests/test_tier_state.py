"""The burn tiers the terminal summary and the report say would fire are the ones Prometheus fires.

Oracle: promtool evaluating the generated recording and alert rules (`for:` set to 0s, a snapshot has no
history) on the engine's own exported figures. The scenario sits where the rules' statistical conditions
decide: a burn above the slower tiers' thresholds that is sampling noise on 50 events (the Wilson lower
bound under the budget: silent), and a collapse whose short window holds only 10 labelled events with 2
errors (a burn under the thresholds, but its Wilson upper bound does not show recovery: fires). Comparing
burn rates with the thresholds alone, as both views once did, gets both wrong.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import yaml

from monitor import conventions as c
from monitor.config import parse_config
from monitor.replay import run_replay
from monitor.report.model import build_report
from monitor.rules import ALERTS_FILE, RECORDING_FILE, RuleOptions, generate, tiers_for, write
from monitor.rules.collapse_state import collapse
from monitor.rules.generate import read_rule_options
from monitor.rules.names import L_COLLAPSE
from monitor.rules.promql import series
from monitor.services import binary
from monitor.summary import summarize
from tests.events import BASE, ground_truth, prediction
from tests.needs import needs_promtool

HIT, MISS, NEG = 0.9, 0.1, 0.05


def _config() -> object:
    return parse_config({
        "windows": ["5m", "30m", "1h", "2h", "6h", "1d"], "join": {"ttl": "3d"},
        "models": [{"name": "m", "task": "multilabel", "labels": ["a", "b"], "threshold": 0.5, "min_events": 20,
                    "slos": [{"label": "a", "objective": "recall", "target": 0.85, "period": "1d",
                              "severity": "page"},
                             {"label": "b", "objective": "recall", "target": 0.85, "period": "1d",
                              "severity": "page"}]}],
    })


def _events() -> tuple[list[bytes], list[bytes], float]:
    """Label a: 50 positives over the hour, 12 missed (recall 0.76, burn 1.6). Label b: 200 positives over
    the first 55 minutes, 150 missed; then 10 over the last 5 minutes, 2 missed (burn 1.33)."""
    preds, truths = [], []
    cases = [("a", i * 70.0, i < 12) for i in range(50)]
    cases += [("b", i * 16.0, i < 150) for i in range(200)]
    cases += [("b", 3330.0 + i * 25.0, i < 2) for i in range(10)]
    for k, (label, t, missed) in enumerate(cases):
        other = "b" if label == "a" else "a"
        pid = f"p{k}"
        preds.append(prediction(pid, BASE + t, {label: MISS if missed else HIT, other: NEG}))
        truths.append(ground_truth(pid, BASE + t + 1, [label]))
    return preds, truths, BASE + 3599.0


@needs_promtool
def test_summary_and_report_fire_the_tiers_prometheus_fires(tmp_path: Path) -> None:
    cfg = _config()
    preds, truths, at = _events()
    engine, figures = run_replay(cfg, preds, truths, at=at)  # type: ignore[arg-type]

    summary = summarize(cfg, figures, at, [])  # type: ignore[arg-type]
    (sm,) = summary.models
    from_summary = {(s.name, t.name) for s in sm.slos for t in s.firing}
    report = build_report(cfg, engine, figures, at)  # type: ignore[arg-type]
    (rm,) = report.models
    from_report = {(s.name, t.name) for s in rm.slos for t in s.tiers if t.fires}
    assert from_summary == from_report

    # The scenario exercises both statistical conditions (else the comparison below proves little).
    tiers = {(s.name, t.name): t for s in rm.slos for t in s.tiers}
    a_slo, b_slo = (s.name for s in cfg.models[0].slos)  # type: ignore[attr-defined]
    assert any(t.reason == "noise" and t.long_burn is not None and t.long_burn > t.threshold
               for (slo, _), t in tiers.items() if slo == a_slo)
    assert any(t.fires and t.short_burn is not None and t.short_burn <= t.threshold
               for (slo, _), t in tiers.items() if slo == b_slo)

    # promtool: the generated rules on the same exported figures must fire exactly those tiers.
    _assert_prometheus_fires(cfg, figures, RuleOptions(for_overrides={"*": "0s"}), from_report, tmp_path)


@needs_promtool
def test_report_judges_with_the_options_the_rules_were_generated_with(tmp_path: Path) -> None:
    """Rules generated with a looser Wilson z (1.0) fire label a's ticket tiers, which the default z calls
    noise: the report given those rules (their header) must fire what Prometheus fires with them."""
    cfg = _config()
    preds, truths, at = _events()
    engine, figures = run_replay(cfg, preds, truths, at=at)  # type: ignore[arg-type]
    opts = RuleOptions(for_overrides={"*": "0s"}, burn_z=1.0)
    write(generate(cfg, opts), tmp_path / "rules")  # type: ignore[arg-type]
    read = read_rule_options(tmp_path / "rules")
    assert read == opts

    def firing(view_opts: RuleOptions | None) -> set[tuple[str, str]]:
        (rm,) = build_report(cfg, engine, figures, at, opts=view_opts).models  # type: ignore[arg-type]
        return {(s.name, t.name) for s in rm.slos for t in s.tiers if t.fires}

    custom = firing(read)
    assert custom != firing(None)  # else this test shows nothing about the options
    summary = summarize(cfg, figures, at, [], read)  # type: ignore[arg-type]
    assert {(s.name, t.name) for s in summary.models[0].slos for t in s.firing} == custom
    _assert_prometheus_fires(cfg, figures, read, custom, tmp_path)


def _assert_prometheus_fires(cfg: object, figures: object, opts: RuleOptions, firing: set[tuple[str, str]],
                             tmp_path: Path) -> None:
    """promtool evaluating the rules generated with `opts` on the exported figures fires exactly `firing`."""
    write({k: v for k, v in generate(cfg, opts).items() if k in (RECORDING_FILE, ALERTS_FILE)}, tmp_path)  # type: ignore[arg-type]
    slos = {s.name: s for s in cfg.models[0].slos}  # type: ignore[attr-defined]
    expected = []
    for slo, tier in sorted(firing):
        severity = next(t.severity for t in tiers_for(slos[slo], cfg.windows) if t.name == tier)  # type: ignore[attr-defined]
        labels = {"alertname": c.ALERT_LABEL_ERROR_BUDGET_BURN, "alertstate": "firing", c.L_MODEL: "m",
                  c.L_LABEL: slos[slo].label, c.L_SLO: slo, c.L_SEVERITY: severity, c.L_BURNRATE_TIER: tier}
        expected.append({"labels": series("ALERTS", labels), "value": 1})
    _promtool(tmp_path, figures, c.ALERT_LABEL_ERROR_BUDGET_BURN, expected)


def _promtool(rules_dir: Path, figures: object, alert: str, expected: list[dict[str, object]]) -> None:
    """promtool on the rules in `rules_dir`, fed the figures as constant series: after 3 minutes the firing
    series of `alert` are exactly `expected`."""
    rule_files = [rules_dir / RECORDING_FILE, rules_dir / ALERTS_FILE]
    groups = [g["name"] for f in rule_files for g in yaml.safe_load(f.read_text())["groups"]]
    inputs = [{"series": series(s.metric.name, dict(zip(s.metric.labels, s.labels, strict=True))),
               "values": f"{s.value!r}x5"} for s in figures.samples if not math.isnan(s.value)]  # type: ignore[attr-defined]
    test_file = rules_dir / "views.test.yml"
    test_file.write_text(yaml.safe_dump({
        "rule_files": [str(p) for p in rule_files], "evaluation_interval": "1m", "group_eval_order": groups,
        "tests": [{"interval": "1m", "input_series": inputs, "promql_expr_test": [{
            "expr": f'ALERTS{{alertname="{alert}", alertstate="firing"}}',
            "eval_time": "3m", "exp_samples": expected}]}],
    }, sort_keys=False, width=math.inf))
    promtool = binary("promtool")
    assert promtool is not None
    proc = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


@needs_promtool
@pytest.mark.parametrize("factor", [0.1, 0.2])
def test_collapse_is_the_alert_prometheus_fires(tmp_path: Path, factor: float) -> None:
    """monitor.rules.collapse_state on each collapse window's figures fires the MLMonitorLabelCollapse
    series promtool fires on the same figures, with rules generated for the same collapse factor. Reference
    rates a 0.3, b 0.5, c 0.2; over the last hour a is predicted for 2% (nothing at either factor), b for 98%
    (everything), c for 3% (nothing only at 0.2)."""
    ref = tmp_path / "reference.jsonl"
    ref.write_bytes(b"\n".join(prediction(f"r{i}", BASE - 86400 + i, {
        "a": HIT if i % 10 < 3 else NEG, "b": HIT if i % 2 else NEG, "c": HIT if i % 5 == 0 else NEG})
        for i in range(1000)) + b"\n")
    cfg = parse_config({
        "windows": ["5m", "30m", "1h", "6h"], "join": {"ttl": "1d"},
        "models": [{"name": "m", "task": "multilabel", "labels": ["a", "b", "c"], "threshold": 0.5,
                    "reference": str(ref)}],
    })
    preds = [prediction(f"p{i}", BASE + i * 6.0, {"a": HIT if i % 50 == 0 else NEG,
                                                  "b": NEG if i % 50 == 0 else HIT,
                                                  "c": HIT if i % 100 in (0, 33, 66) else NEG})
             for i in range(600)]
    at = BASE + 3599.0
    _, figures = run_replay(cfg, preds, [], at=at)  # type: ignore[arg-type]
    opts = RuleOptions(for_overrides={"*": "0s"}, collapse_factor=factor)
    windows = opts.windows(cfg).collapse  # type: ignore[arg-type]
    positives = figures.by_name(c.PREDICTED_POSITIVES.name)
    predictions = figures.by_name(c.WINDOW_PREDICTIONS.name)
    reference = figures.by_name(c.REFERENCE_POSITIVE_RATE.name)
    firing = set()
    for label in ("a", "b", "c"):
        for w in windows:
            n_pred = predictions[("m", "v1", w)]
            kind = collapse(opts, positives[("m", "v1", label, w)] / n_pred, reference[("m", label)], n_pred)
            if kind is not None:
                firing.add((label, kind))
    assert {label for label, _ in firing} == ({"a", "b", "c"} if factor == 0.2 else {"a", "b"})

    write({k: v for k, v in generate(cfg, opts).items() if k in (RECORDING_FILE, ALERTS_FILE)}, tmp_path)  # type: ignore[arg-type]
    expected = [{"labels": series("ALERTS", {
        "alertname": c.ALERT_LABEL_COLLAPSE, "alertstate": "firing", c.L_MODEL: "m", c.L_VERSION: "v1",
        c.L_LABEL: label, L_COLLAPSE: kind, c.L_SEVERITY: "page"}), "value": 1} for label, kind in sorted(firing)]
    _promtool(tmp_path, figures, c.ALERT_LABEL_COLLAPSE, expected)

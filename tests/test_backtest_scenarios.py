"""The scenario generator's traffic is what the suite claims, and a short scenario runs end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from bench.scenarios import Job, run_one
from monitor.backtest import scenarios as sc
from monitor.rules.generate import ALERTS_FILE, RECORDING_FILE, generate, write
from tests.needs import needs_prometheus


@pytest.fixture(scope="module")
def day() -> sc.Traffic:
    return sc.healthy(5, sc.START, sc.DAY)


def test_healthy_traffic_has_the_stated_shape(day: sc.Traffic) -> None:
    hours = ((day.t - sc.START) // 3600).astype(int)
    per_hour = np.bincount(hours, minlength=24) / 3600
    assert 0.4 < per_hour[4] < 0.65 and 2.7 < per_hour[16] < 3.3  # 0.5/s at 04:00, 3/s at 16:00
    assert abs(day.version.mean() - 0.10) < 0.01
    assert abs(day.reviewed.mean() - 0.60) < 0.01
    assert abs(np.median(day.delay) / 60 - 45) < 2
    assert abs(day.actual[:, sc.LABELS.index("self_harm")].mean() - 0.01) < 0.002
    for label, threshold in (("violence", 0.7), ("self_harm", 0.5)):
        j = sc.LABELS.index(label)
        pos = day.actual[:, j]
        recall = (pos & (day.scores[:, j] >= threshold)).sum() / pos.sum()
        assert abs(recall - sc.HEALTHY_RECALL[label]) < 0.04, (label, recall)


def test_failures_change_only_what_follows_the_onset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sc, "HORIZON", 0.2 * sc.DAY)  # the same for every scenario, as in the suite
    healthy = sc.generate(sc.HEALTHY, healthy_days=0.15)
    onset_iso = None
    for scenario in sc.SCENARIOS:
        gen = sc.generate(scenario, healthy_days=0.1, failure_hours=0.5)
        assert gen.onset is not None
        onset_iso = gen.onset
        before = [p for p in gen.predictions if _t(p) < gen.onset]
        assert before == [p for p in healthy.predictions if _t(p) < gen.onset], scenario.name
    assert onset_iso is not None


def test_rare_recall_and_canary_failures_hit_their_targets() -> None:
    tr = sc.healthy(5, sc.START, sc.DAY)
    bad = tr.t >= sc.START + 6 * sc.HOUR
    sc.rare_recall(tr, bad, np.random.default_rng(1))
    sc.canary_recall(tr, bad, np.random.default_rng(2))
    j = sc.LABELS.index("self_harm")
    pos = tr.actual[:, j] & bad
    assert abs((pos & (tr.scores[:, j] >= 0.5)).sum() / pos.sum() - 0.22) < 0.05
    j = sc.LABELS.index("violence")
    pos = tr.actual[:, j] & bad & tr.version
    assert abs((pos & (tr.scores[:, j] >= 0.7)).sum() / pos.sum() - 0.19) < 0.05
    stable = tr.actual[:, j] & bad & ~tr.version
    assert (stable & (tr.scores[:, j] >= 0.7)).sum() / stable.sum() > 0.85


def _t(raw: bytes) -> float:
    from monitor.events import parse_timestamp

    return parse_timestamp(orjson.loads(raw)["timestamp"])


@needs_prometheus
def test_a_short_latency_scenario_is_detected_in_the_backtest(tmp_path: Path) -> None:
    config = sc.write_config(tmp_path / "config")
    from monitor.config import load_config

    write({k: v for k, v in generate(load_config(config)).items() if k in (RECORDING_FILE, ALERTS_FILE)},
          tmp_path / "rules")
    rules = (tmp_path / "rules" / RECORDING_FILE, tmp_path / "rules" / ALERTS_FILE)
    row = run_one(Job("latency", tmp_path, config, rules, healthy_days=0.1, failure_hours=0.6, lead_in_s=1200,
                      seed=11, workers=2))
    (expected,) = row["expected"]
    # p95 over 5m passes 3x the SLO within a few minutes of the onset; `for: 10m` follows.
    assert expected["detected"] and expected["highest_severity"] == "ticket"
    assert 10 <= expected["minutes_from_onset"] <= 20
    assert row["false_alerts"] == []
    assert (tmp_path / "latency.json").exists()


def test_score_drop_pushes_violence_recall_under_its_threshold() -> None:
    tr = sc.healthy(5, sc.START, sc.DAY)
    bad = tr.t >= sc.START + 6 * sc.HOUR
    sc.score_drop(tr, bad, np.random.default_rng(1))
    j = sc.LABELS.index("violence")
    pos = tr.actual[:, j] & bad
    assert (pos & (tr.scores[:, j] >= 0.7)).sum() / pos.sum() < 0.05
    before = tr.actual[:, j] & ~bad
    assert (before & (tr.scores[:, j] >= 0.7)).sum() / before.sum() > 0.85


def test_score_drop_lowers_the_estimated_recall_bound_before_the_labels_arrive(tmp_path: Path) -> None:
    """40 minutes after violence scores drop, few of the affected predictions have ground truth (a median
    delay of 45 minutes), yet the upper bound the estimated-quality alert tests, from the exported counts of
    the main version, is under the 0.85 target; 40 minutes before the onset it was above it."""
    from monitor.config import load_config
    from monitor.replay import run_replay
    from monitor.rules import stats
    from monitor.rules.options import RuleOptions

    config = load_config(sc.write_config(tmp_path / "config"))
    scenario = next(s for s in sc.SCENARIOS if s.name == "score_drop")
    gen = sc.generate(scenario, healthy_days=0.5, failure_hours=3.0)  # 3h: nearly every review rendered
    assert gen.onset is not None
    key = ("moderation", sc.STABLE, "violence", "1h")

    def upper(at: float) -> float:
        _, figures = run_replay(config, gen.predictions, gen.ground_truth, at=at)
        tp = figures.by_name("mlmon_estimated_label_true_positives")[key]
        fn = figures.by_name("mlmon_estimated_label_false_negatives")[key]
        return 1 - stats.wilson_cc_lower(fn, tp + fn, RuleOptions().burn_z)

    predicted_at = {e["prediction_id"]: _t(p) for p in gen.predictions for e in (orjson.loads(p),)}
    affected = [g for g in map(orjson.loads, gen.ground_truth) if "violence" in g["labels"]
                and gen.onset <= predicted_at[g["prediction_id"]] <= gen.onset + 2400]
    arrived = [g for g in affected if _t(orjson.dumps(g)) <= gen.onset + 2400]
    assert upper(gen.onset - 2400) > 0.85
    assert upper(gen.onset + 2400) < 0.85
    assert len(arrived) < len(affected) / 3  # most reviews of the affected predictions still pending

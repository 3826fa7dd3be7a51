"""The failure-scenario suite: seeded histories of the six-label moderation model, healthy for a day, then
one failure each; plus days of healthy traffic from an empty state.

Traffic: diurnal, 0.5 predictions/s at 04:00 UTC to 3/s at 16:00 (a Poisson process); 10% of it from a
canary version; 60% of predictions reviewed, the review arriving after a lognormal delay of median 45
minutes. Labels co-occur (hate follows violence), self_harm is a 1% label. Every random draw of the
healthy traffic comes from one generator in a fixed order, so all scenarios share the same healthy day
and differ only from the onset on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

from monitor.simulate import BASE_RATES, LABELS, LANG_P, LANG_P_DRIFTED, LANGS, _rfc3339

HOUR = 3600.0
DAY = 24 * HOUR
MODEL = "moderation"
STABLE, CANARY = "v7", "v8"
CANARY_SHARE = 0.10
REVIEWED = 0.60
DELAY_MEDIAN = 45 * 60.0
DELAY_SIGMA = 0.8
RATE_MIN, RATE_MAX = 0.5, 3.0
START = datetime(2026, 11, 2, tzinfo=UTC).timestamp()
# Healthy recall at the served thresholds: every positive scores high except a share that the model misses
# (scored like a negative); the share gives these recalls.
HEALTHY_RECALL = {"violence": 0.91, "self_harm": 0.89}
LATENCY_SLO_S = 0.5
HORIZON = 4 * DAY


@dataclass
class Traffic:
    """Columns of a generated history, before rendering to JSON."""

    t: np.ndarray  # prediction times
    version: np.ndarray  # True: canary
    actual: np.ndarray  # bool [n, labels]
    scores: np.ndarray
    text_length: np.ndarray
    num_links: np.ndarray
    lang: np.ndarray
    latency_ms: np.ndarray
    missing: np.ndarray  # text_length missing
    reviewed: np.ndarray
    delay: np.ndarray
    invalid: np.ndarray  # the prediction is sent broken (no scores)

    def subset(self, keep: np.ndarray) -> Traffic:
        return Traffic(**{name: value[keep] for name, value in vars(self).items()})


def diurnal_rate(t: np.ndarray) -> np.ndarray:
    hour = (t % DAY) / HOUR
    return RATE_MIN + (RATE_MAX - RATE_MIN) * 0.5 * (1 - np.cos(2 * np.pi * (hour - 4) / 24))


def _times(rng: np.random.Generator, start: float, duration: float) -> np.ndarray:
    """An inhomogeneous Poisson process by thinning a homogeneous one at the peak rate."""
    n = rng.poisson(RATE_MAX * duration)
    t = np.sort(rng.uniform(start, start + duration, n))
    return t[rng.random(n) < diurnal_rate(t) / RATE_MAX]


def _positive_scores(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.beta(20, 1.5, n)  # P(score < 0.7) about 0.002: a detected positive clears every threshold


def _negative_scores(rng: np.random.Generator, shape: Any) -> np.ndarray:
    return rng.beta(1, 12, shape)


def healthy(seed: int, start: float, duration: float) -> Traffic:
    rng = np.random.default_rng(seed)
    t = _times(rng, start, duration)
    n, nl = len(t), len(LABELS)
    actual = rng.random((n, nl)) < BASE_RATES
    actual[:, 1] |= actual[:, 0] & (rng.random(n) < 0.5)  # hate follows violence
    scores = np.where(actual, _positive_scores(rng, (n, nl)), _negative_scores(rng, (n, nl)))
    miss_draw = rng.random((n, nl))
    for label, recall in HEALTHY_RECALL.items():
        j = LABELS.index(label)
        missed = actual[:, j] & (miss_draw[:, j] > recall)
        scores[missed, j] = _negative_scores(rng, int(missed.sum()))
    return Traffic(
        t=t, version=rng.random(n) < CANARY_SHARE, actual=actual, scores=scores,
        text_length=np.round(rng.lognormal(5.0, 0.6, n)), num_links=rng.poisson(np.where(actual[:, 2], 3.0, 0.3)),
        lang=rng.choice(len(LANGS), n, p=LANG_P), latency_ms=rng.gamma(4.0, 8.0, n),
        missing=rng.random(n) < 0.01, reviewed=rng.random(n) < REVIEWED,
        delay=rng.lognormal(np.log(DELAY_MEDIAN), DELAY_SIGMA, n), invalid=np.zeros(n, dtype=bool),
    )


# --- failures: each changes what happens from `onset` on, with its own generator ---------------------------
Failure = Callable[[Traffic, np.ndarray, np.random.Generator], None]


def _label(name: str) -> int:
    return LABELS.index(name)


def label_collapse(tr: Traffic, bad: np.ndarray, rng: np.random.Generator) -> None:
    j = _label("spam")
    tr.scores[bad, j] *= 0.1


def rare_recall(tr: Traffic, bad: np.ndarray, rng: np.random.Generator) -> None:
    _set_recall(tr, bad, "self_harm", 0.22, HEALTHY_RECALL["self_harm"], rng)


def canary_recall(tr: Traffic, bad: np.ndarray, rng: np.random.Generator) -> None:
    _set_recall(tr, bad & tr.version, "violence", 0.19, HEALTHY_RECALL["violence"], rng)


def _set_recall(tr: Traffic, sel: np.ndarray, label: str, recall: float, healthy_recall: float,
                rng: np.random.Generator) -> None:
    """Of the detected positives in `sel`, miss enough that recall goes from `healthy_recall` to `recall`."""
    j = _label(label)
    detected = sel & tr.actual[:, j] & (tr.scores[:, j] >= 0.5)
    lose = detected & (rng.random(len(tr.t)) > recall / healthy_recall)
    tr.scores[lose, j] = _negative_scores(rng, int(lose.sum()))


def score_drop(tr: Traffic, bad: np.ndarray, rng: np.random.Generator) -> None:
    """Violence scores x0.6: the model loses confidence, its positives (about 0.93) now score about 0.56,
    under the 0.7 threshold, so recall falls to near 0 at once, while labels take 45 minutes to arrive."""
    tr.scores[bad, _label("violence")] *= 0.6


def cooccurrence_break(tr: Traffic, bad: np.ndarray, rng: np.random.Generator) -> None:
    """Violence and hate become independent: hate is redrawn at its own marginal rate."""
    j_v, j_h = _label("violence"), _label("hate")
    marginal = float(tr.actual[~bad, j_h].mean())
    hate = rng.random(len(tr.t)) < marginal
    tr.actual[bad, j_h] = hate[bad]
    tr.scores[bad, j_h] = np.where(hate[bad], _positive_scores(rng, int(bad.sum())),
                                   _negative_scores(rng, int(bad.sum())))
    del j_v


def ground_truth_stops(tr: Traffic, bad: np.ndarray, rng: np.random.Generator) -> None:
    """No review arrives after the onset, also for earlier predictions."""
    if bad.any():
        onset = float(tr.t[bad][0])
        tr.reviewed &= tr.t + tr.delay < onset


def score_shift(tr: Traffic, bad: np.ndarray, rng: np.random.Generator) -> None:
    j = _label("nudity")
    tr.scores[bad, j] = np.minimum(tr.scores[bad, j] + 0.2, 1.0)


def latency(tr: Traffic, bad: np.ndarray, rng: np.random.Generator) -> None:
    tr.latency_ms[bad] = rng.gamma(16.0, 3 * LATENCY_SLO_S * 1000 / 16.0, int(bad.sum()))


def missing_feature(tr: Traffic, bad: np.ndarray, rng: np.random.Generator) -> None:
    tr.missing[bad] = rng.random(int(bad.sum())) < 0.30


def feature_shift(tr: Traffic, bad: np.ndarray, rng: np.random.Generator) -> None:
    tr.text_length[bad] = np.round(tr.text_length[bad] * 2.5)
    tr.lang[bad] = rng.choice(len(LANGS), int(bad.sum()), p=LANG_P_DRIFTED)


def invalid_input(tr: Traffic, bad: np.ndarray, rng: np.random.Generator) -> None:
    tr.invalid[bad] = rng.random(int(bad.sum())) < 0.05


@dataclass(frozen=True)
class Expected:
    """The alert a scenario must raise: its name (or one of the alternatives in `also`), severity and labels
    it must carry."""

    alert: str
    severity: str
    labels: dict[str, str] = field(default_factory=dict)
    also: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.alert, *self.also)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    failure: Failure | None
    expected: tuple[Expected, ...]
    # For label-quality failures: (label, canary only) whose post-onset ground truth is counted to find
    # when enough labels had arrived (the model's min_events positive reviews).
    labels_needed: tuple[str, bool] | None = None


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("label_collapse", "spam scores x0.1 (normal volume: 20% of predictions)", label_collapse,
             (Expected("MLMonitorLabelCollapse", "page", {"label": "spam"}),)),
    Scenario("rare_label_recall", "self_harm (1%) recall 0.89 -> 0.22", rare_recall,
             (Expected("MLMonitorLabelErrorBudgetBurn", "page", {"label": "self_harm"},
                       also=("MLMonitorEstimatedQualityLow",)),), ("self_harm", False)),
    Scenario("cooccurrence_break", "violence and hate become independent", cooccurrence_break,
             (Expected("MLMonitorLabelCooccurrenceDrift", "ticket"),)),
    Scenario("ground_truth_stops", "no review arrives after the onset", ground_truth_stops,
             (Expected("MLMonitorGroundTruthStalled", "ticket"),)),
    Scenario("score_shift", "nudity scores +0.2", score_shift,
             (Expected("MLMonitorScoreDrift", "ticket", {"label": "nudity"}),)),
    Scenario("canary_recall", "canary v8 (10%) violence recall 0.91 -> 0.19", canary_recall,
             (Expected("MLMonitorLabelErrorBudgetBurn", "page", {"label": "violence"},
                       also=("MLMonitorVersionRegression", "MLMonitorEstimatedQualityLow")),), ("violence", True)),
    Scenario("score_drop", "violence scores x0.6 (positives under the 0.7 threshold)", score_drop,
             (Expected("MLMonitorEstimatedQualityLow", "ticket", {"label": "violence"}),
              Expected("MLMonitorLabelErrorBudgetBurn", "page", {"label": "violence"},
                       also=("MLMonitorLabelCollapse",))), ("violence", False)),
    Scenario("latency", "serving latency 3x the 0.5 s SLO", latency,
             (Expected("MLMonitorLatencyHigh", "ticket"),)),
    Scenario("missing_feature", "30% of predictions lack text_length", missing_feature,
             (Expected("MLMonitorMissingFeatures", "ticket", {"feature": "text_length"}),)),
    Scenario("feature_shift", "text_length x2.5 and more German", feature_shift,
             (Expected("MLMonitorFeatureDrift", "ticket"),)),
    Scenario("invalid_input", "5% of predictions invalid (no scores)", invalid_input,
             (Expected("MLMonitorInvalidInput", "ticket"),)),
)
HEALTHY = Scenario("healthy", "healthy traffic from an empty state", None, ())


@dataclass(frozen=True)
class Generated:
    predictions: list[bytes]
    ground_truth: list[bytes]
    onset: float | None
    end: float
    enough_labels_at: float | None


def generate(scenario: Scenario, *, healthy_days: float = 1.0, failure_hours: float = 6.0, seed: int = 11,
             min_events: int = 50) -> Generated:
    """A scenario's history: `healthy_days` of healthy traffic, then `failure_hours` with the failure (the
    healthy scenario: healthy_days only)."""
    duration = healthy_days * DAY + (failure_hours * HOUR if scenario.failure else 0.0)
    # Drawn over a fixed horizon and cut, so every scenario (and the healthy run) has the same traffic up
    # to its onset.
    tr = healthy(seed, START, max(HORIZON, duration))
    tr = tr.subset(tr.t < START + duration)
    onset = START + healthy_days * DAY if scenario.failure else None
    if scenario.failure is not None and onset is not None:
        scenario.failure(tr, tr.t >= onset, np.random.default_rng([seed, 1]))
    preds, truths = render(tr)
    enough = None
    if scenario.labels_needed and onset is not None:
        label, canary = scenario.labels_needed
        j = _label(label)
        sel = (tr.t >= onset) & tr.reviewed & tr.actual[:, j] & (tr.version if canary else True)
        arrivals = np.sort(tr.t[sel] + tr.delay[sel])
        enough = float(arrivals[min_events - 1]) if len(arrivals) >= min_events else None
    return Generated(preds, truths, onset, START + duration, enough)


def render(tr: Traffic) -> tuple[list[bytes], list[bytes]]:
    """(predictions, ground truth) as JSON lines, each in time order; reviews after the history's end are
    left out (they had not arrived)."""
    end = float(tr.t[-1]) if len(tr.t) else 0.0
    preds: list[bytes] = []
    truths: list[tuple[float, bytes]] = []
    scores = np.round(tr.scores, 6).tolist()
    for i in range(len(tr.t)):
        pid = f"{MODEL}-{i}"
        features: dict[str, object] = {"num_links": int(tr.num_links[i]), "lang": LANGS[tr.lang[i]]}
        if not tr.missing[i]:
            features["text_length"] = float(tr.text_length[i])
        event: dict[str, object] = {
            "prediction_id": pid, "model": MODEL, "model_version": CANARY if tr.version[i] else STABLE,
            "timestamp": _rfc3339(float(tr.t[i])), "features": features,
            "latency_ms": round(float(tr.latency_ms[i]), 3),
        }
        if not tr.invalid[i]:
            event["scores"] = dict(zip(LABELS, scores[i], strict=True))
        preds.append(orjson.dumps(event))
        gt_t = float(tr.t[i] + tr.delay[i])
        if tr.reviewed[i] and not tr.invalid[i] and gt_t <= end:
            labels = [LABELS[j] for j in range(len(LABELS)) if tr.actual[i, j]]
            truths.append((gt_t, orjson.dumps({"prediction_id": pid, "model": MODEL, "timestamp": _rfc3339(gt_t),
                                               "labels": labels})))
    truths.sort(key=lambda x: x[0])
    return preds, [raw for _, raw in truths]


def write_config(directory: Path, seed: int = 11) -> Path:
    """The scenario config (the bundled example's windows and SLOs, plus a self_harm recall SLO) and its
    drift reference, frozen from 6 hours of healthy traffic of another seed (frozen once: freezing a
    JSON-lines sample on every engine start would cost more than a short backtest)."""
    from monitor.config import MonitorConfig
    from monitor.reference import reference_from_lines

    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "kafka": {"bootstrap_servers": "localhost:9092"},
        "join": {"ttl": "72h"},
        "windows": ["5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"],
        "models": [{
            "name": MODEL, "task": "multilabel", "labels": list(LABELS), "threshold": 0.5,
            "thresholds": {"violence": 0.7}, "reference": "reference.json",
            "features": {"numeric": ["text_length", "num_links"], "categorical": ["lang"]},
            "min_events": 50, "latency_slo_seconds": LATENCY_SLO_S,
            "slos": [
                {"label": "violence", "objective": "recall", "target": 0.85, "period": "30d", "severity": "page"},
                {"label": "self_harm", "objective": "recall", "target": 0.80, "period": "30d", "severity": "page"},
                {"label": "spam", "objective": "precision", "target": 0.90, "period": "30d", "severity": "ticket"},
            ],
        }],
    }
    ref_preds, _ = render(healthy(seed + 1000, START - 2 * DAY, 6 * HOUR))
    reference, _ = reference_from_lines(MonitorConfig.model_validate({**config, "models": [
        {**config["models"][0], "reference": None}]}), MODEL, ref_preds)
    (directory / "reference.json").write_bytes(orjson.dumps(reference.to_json()))
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path

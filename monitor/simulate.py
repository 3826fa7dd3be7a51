"""Synthetic traffic for the example model: predictions, delayed ground truth, optional degradation.

Used to build the bundled example stream, by the demo's traffic simulator and by the benchmarks, so all
three see the same kind of data. Labels are correlated (violence and hate co-occur), one label is rare
(self_harm), scores are roughly calibrated, and from `degrade_at` on the model misses most violence
while from `drift_at` on the inputs shift (longer texts, more German).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson

LABELS = ("violence", "hate", "spam", "nudity", "self_harm", "harassment")
BASE_RATES = np.array([0.10, 0.06, 0.20, 0.05, 0.01, 0.10])
LANGS = ("en", "de", "fr", "es", "pt")
LANG_P = np.array([0.6, 0.15, 0.1, 0.1, 0.05])
LANG_P_DRIFTED = np.array([0.3, 0.45, 0.1, 0.1, 0.05])


@dataclass
class TrafficSpec:
    n: int = 20_000
    start: float = datetime(2026, 11, 20, tzinfo=UTC).timestamp()
    rate: float = 2.0  # predictions per second
    label_share: float = 0.8  # predictions that ever get ground truth
    partial_share: float = 0.1  # ground truths that state only some labels
    mean_delay: float = 2 * 3600.0
    degrade_at: float | None = None  # seconds after start
    drift_at: float | None = None
    missing_share: float = 0.01
    seed: int = 7
    model: str = "moderation"
    version: str = "v7"


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generate(spec: TrafficSpec) -> tuple[list[tuple[float, bytes]], list[tuple[float, bytes]]]:
    """(predictions, ground truth), each a time-sorted list of (event time, JSON bytes)."""
    rng = np.random.default_rng(spec.seed)
    n, nl = spec.n, len(LABELS)
    t = spec.start + np.arange(n) / spec.rate
    rel = t - spec.start
    actual = rng.random((n, nl)) < BASE_RATES
    actual[:, 1] |= actual[:, 0] & (rng.random(n) < 0.5)  # hate follows violence
    scores = np.where(actual, rng.beta(6, 2, (n, nl)), rng.beta(1, 9, (n, nl)))
    # Violence is served at threshold 0.7 in the example: its positives score higher, so the healthy model
    # meets its 0.85 recall SLO (recall about 0.94) until the degradation.
    scores[:, 0] = np.where(actual[:, 0], rng.beta(10, 1.5, n), scores[:, 0])
    if spec.degrade_at is not None:
        bad = rel >= spec.degrade_at
        scores[bad, 0] = np.where(actual[bad, 0], rng.beta(1, 6, bad.sum()), scores[bad, 0])
    drifted = rel >= spec.drift_at if spec.drift_at is not None else np.zeros(n, dtype=bool)
    text_length = np.round(rng.lognormal(5.0, 0.6, n) * np.where(drifted, 2.5, 1.0))
    num_links = rng.poisson(np.where(actual[:, 2], 3.0, 0.3))
    lang_idx = np.where(drifted, rng.choice(5, n, p=LANG_P_DRIFTED), rng.choice(5, n, p=LANG_P))
    latency = rng.gamma(4.0, 8.0, n)
    missing = rng.random(n) < spec.missing_share
    labelled = rng.random(n) < spec.label_share
    partial = rng.random(n) < spec.partial_share
    delay = rng.exponential(spec.mean_delay, n) + 30.0

    preds: list[tuple[float, bytes]] = []
    truths: list[tuple[float, bytes]] = []
    for i in range(n):
        pid = f"{spec.model}-{spec.seed}-{i}"
        features: dict[str, object] = {"num_links": int(num_links[i]), "lang": LANGS[lang_idx[i]]}
        if not missing[i]:
            features["text_length"] = float(text_length[i])
        event = {
            "prediction_id": pid, "model": spec.model, "model_version": spec.version,
            "timestamp": _rfc3339(t[i]),
            "scores": {label: round(float(scores[i, j]), 6) for j, label in enumerate(LABELS)},
            "features": features, "latency_ms": round(float(latency[i]), 3),
        }
        preds.append((t[i], orjson.dumps(event)))
        if labelled[i]:
            gt_t = t[i] + delay[i]
            if partial[i]:
                known = rng.random(nl) < 0.5
                known[rng.integers(nl)] = True
                labels: object = {LABELS[j]: int(actual[i, j]) for j in range(nl) if known[j]}
            else:
                labels = [LABELS[j] for j in range(nl) if actual[i, j]]
            truths.append((gt_t, orjson.dumps({"prediction_id": pid, "model": spec.model,
                                               "timestamp": _rfc3339(gt_t), "labels": labels})))
    truths.sort(key=lambda x: x[0])
    return preds, truths


def merged(preds: list[tuple[float, bytes]], truths: list[tuple[float, bytes]]) -> Iterator[tuple[str, bytes]]:
    """Both streams interleaved by event time, as (topic, raw) for the engine."""
    items = [(ts, 0, "predictions", raw) for ts, raw in preds] + [(ts, 1, "ground_truth", raw) for ts, raw in truths]
    items.sort(key=lambda x: (x[0], x[1]))
    for _, _, topic, raw in items:
        yield topic, raw


def write_jsonl(path: str, events: list[tuple[float, bytes]]) -> None:
    with open(path, "wb") as fh:
        for _, raw in events:
            fh.write(raw + b"\n")

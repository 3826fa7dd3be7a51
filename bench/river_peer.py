"""River's join-and-count: the peer `monitor replay` is measured against (see docs/benchmarks.md).

A standalone script, run as its own process exactly like `monitor replay` is:

    python bench/river_peer.py --config monitor/examples/config.yaml \
        --predictions P.jsonl --ground-truth G.jsonl

It does what a team would write with river to get the same headline numbers from the same two files:

1. read both JSON-lines files and parse every line with orjson;
2. merge them by event time exactly like monitor/replay.py (a stable sort on (time, side), predictions
   first on ties);
3. join by prediction_id in a dict, either side first (no TTL, no corrections: a repeated id on the same
   side is ignored);
4. derive predicted labels from the scores with the config thresholds (the served `predicted` list if an
   event has one), and the truth from `labels` (a list = every configured label known; an object = only
   the listed labels known);
5. update river's online metrics once per joined event: per-label precision, recall and F1
   (`multioutput.PerOutput`), micro F1 (`MicroAverage(F1)`), macro F1 (`MacroAverage(F1)`), subset
   accuracy (`ExactMatch`, full ground truth only, as the monitor defines it) and hamming loss
   (river 0.26 has no Hamming metric: 1 - `MicroAverage(Accuracy)` is the same per-label-slot error rate);
6. print the final values as one JSON object.

River has no windows, intervals, calibration, drift, estimation, SLOs or invalid-event accounting: the
monitor does strictly more work per event than this script.
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import datetime

import orjson
import yaml
from river import metrics
from river.metrics import multioutput

_MILLIS_CUTOFF = 1e11  # same rule as monitor.events.parse_timestamp


def event_time(value: object) -> float | None:
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
        return dt.timestamp() if dt.tzinfo is not None else None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value / 1000.0 if value >= _MILLIS_CUTOFF else float(value)
    return None


def load_model(path: str, name: str | None) -> tuple[list[str], dict[str, float]]:
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    models = cfg["models"]
    model = next((m for m in models if m["name"] == name), None) if name else models[0]
    if model is None:
        raise SystemExit(f"{path}: no model named {name!r}")
    labels = list(model["labels"])
    default = float(model.get("threshold", 0.5))
    overrides = model.get("thresholds") or {}
    return labels, {label: float(overrides.get(label, default)) for label in labels}


def read_events(path: str | None, side: int) -> tuple[list[tuple[float, int, dict]], int]:
    """[(event time, side, event)] for the readable lines of a file, and how many lines were skipped."""
    if not path:
        return [], 0
    out: list[tuple[float, int, dict]] = []
    skipped = 0
    loads = orjson.loads
    with open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = loads(line)
            except orjson.JSONDecodeError:
                skipped += 1
                continue
            ts = event_time(obj.get("timestamp")) if isinstance(obj, dict) else None
            if ts is None or not isinstance(obj.get("prediction_id"), str):
                skipped += 1
                continue
            out.append((ts, side, obj))
    return out, skipped


def run(config: str, predictions: str | None, ground_truth: str | None, model: str | None) -> dict:
    labels, thresholds = load_model(config, model)
    label_set = set(labels)
    model_name = model

    preds, bad_p = read_events(predictions, 0)
    truths, bad_g = read_events(ground_truth, 1)
    events = preds + truths
    events.sort(key=lambda e: (e[0], e[1]))  # stable: file order within equal keys, as in replay

    per_precision = multioutput.PerOutput(metrics.Precision())
    per_recall = multioutput.PerOutput(metrics.Recall())
    per_f1 = multioutput.PerOutput(metrics.F1())
    micro_f1 = multioutput.MicroAverage(metrics.F1())
    macro_f1 = multioutput.MacroAverage(metrics.F1())
    micro_acc = multioutput.MicroAverage(metrics.Accuracy())  # 1 - hamming loss
    exact = multioutput.ExactMatch()
    every = (per_precision, per_recall, per_f1, micro_f1, macro_f1, micro_acc)

    waiting_pred: dict[str, dict[str, bool]] = {}
    waiting_truth: dict[str, tuple[dict[str, bool], bool]] = {}
    seen_pred: set[str] = set()
    joined = skipped = 0

    def update(y_pred: dict[str, bool], y_true: dict[str, bool], full: bool) -> None:
        for m in every:
            m.update(y_true, y_pred)
        if full:
            exact.update(y_true, y_pred)

    for _, side, obj in events:
        if model_name is not None and obj.get("model") != model_name:
            skipped += 1
            continue
        pid = obj["prediction_id"]
        if side == 0:
            if pid in seen_pred:
                continue
            scores = obj.get("scores")
            if not isinstance(scores, dict):
                skipped += 1
                continue
            served = obj.get("predicted")
            if served is not None:
                y_pred = {label: label in served for label in labels}
            else:
                try:
                    y_pred = {label: scores[label] >= thresholds[label] for label in labels}
                except (KeyError, TypeError):
                    skipped += 1
                    continue
            seen_pred.add(pid)
            truth = waiting_truth.pop(pid, None)
            if truth is None:
                waiting_pred[pid] = y_pred
            else:
                joined += 1
                update(y_pred, truth[0], truth[1])
        else:
            raw = obj.get("labels")
            if isinstance(raw, list):
                y_true = {label: label in raw for label in labels}
                full = True
            elif isinstance(raw, dict) and raw:
                y_true = {label: bool(v) for label, v in raw.items() if label in label_set}
                full = len(y_true) == len(labels)
            else:
                skipped += 1
                continue
            y_pred = waiting_pred.pop(pid, None)
            if y_pred is None:
                waiting_truth.setdefault(pid, (y_true, full))
            else:
                joined += 1
                update(y_pred, y_true, full)

    def value(m: metrics.base.Metric) -> float | None:
        try:
            v = m.get()
        except Exception:  # an empty MacroAverage has nothing to average
            return None
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    per_label = {
        label: {"precision": value(per_precision.metrics[label]), "recall": value(per_recall.metrics[label]),
                "f1": value(per_f1.metrics[label])}
        for label in labels if label in per_f1.metrics
    }
    accuracy = value(micro_acc)
    return {
        "predictions": len(preds), "ground_truth": len(truths), "joined": joined,
        "pending_predictions": len(waiting_pred), "pending_ground_truth": len(waiting_truth),
        "skipped": bad_p + bad_g + skipped,
        "micro_f1": value(micro_f1), "macro_f1": value(macro_f1),
        "subset_accuracy": value(exact) if exact._mean.n else None,
        "hamming_loss": None if accuracy is None else 1.0 - accuracy,
        "labels": per_label,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="River's online multilabel metrics over a prediction/"
                                             "ground-truth JSON-lines stream (the bench peer).")
    ap.add_argument("--config", required=True, help="monitor config (labels and thresholds)")
    ap.add_argument("--predictions", help="JSON lines of predictions")
    ap.add_argument("--ground-truth", help="JSON lines of ground truth")
    ap.add_argument("--model", help="model name (default: the first configured model)")
    args = ap.parse_args(argv)
    result = run(args.config, args.predictions, args.ground_truth, args.model)
    sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")


if __name__ == "__main__":
    main()

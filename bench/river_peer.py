"""River's join-and-count: the peer `monitor replay` is measured against (see docs/benchmarks.md).

A standalone script, run as its own process exactly like `monitor replay` is:

    python bench/river_peer.py --config monitor/examples/config.yaml \
        --predictions P.jsonl --ground-truth G.jsonl

It does what a team would write with river to get the same headline numbers from the same two files:

1. read both JSON-lines files and parse every line with orjson;
2. merge them by event time exactly like monitor/replay.py (a stable sort on (time, side), predictions
   first on ties);
3. join by prediction_id in a dict per model, either side first (no TTL, no corrections: a repeated id on
   the same side is ignored);
4. derive predicted labels from the served `predicted` list when an event has one, else from the scores
   with the config thresholds (multiclass: the top class), and the truth from `labels` (a list = every
   configured label known; an object = only the listed labels known);
5. update river's online metrics once per joined event: per-label precision, recall and F1
   (`multioutput.PerOutput`), micro F1 (`MicroAverage(F1)`), macro F1 (`MacroAverage(F1)`), subset
   accuracy (`ExactMatch`, full ground truth only, as the monitor defines it) and hamming loss
   (river 0.26 has no Hamming metric: 1 - `MicroAverage(Accuracy)` is the same per-label-slot error rate),
   and for a multiclass model also `Accuracy` and `ConfusionMatrix` over the class names;
6. print the final values per model as one JSON object.

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


class Model:
    """One configured model: its labels, thresholds and task, and river's metrics for it."""

    def __init__(self, cfg: dict) -> None:
        self.name = cfg["name"]
        self.labels = list(cfg["labels"])
        self.label_set = set(self.labels)
        self.multiclass = cfg.get("task", "multilabel") == "multiclass"
        default = float(cfg.get("threshold", 0.5))
        overrides = cfg.get("thresholds") or {}
        self.thresholds = {label: float(overrides.get(label, default)) for label in self.labels}
        self.per_precision = multioutput.PerOutput(metrics.Precision())
        self.per_recall = multioutput.PerOutput(metrics.Recall())
        self.per_f1 = multioutput.PerOutput(metrics.F1())
        self.micro_f1 = multioutput.MicroAverage(metrics.F1())
        self.macro_f1 = multioutput.MacroAverage(metrics.F1())
        self.micro_acc = multioutput.MicroAverage(metrics.Accuracy())  # 1 - hamming loss
        self.exact = multioutput.ExactMatch()
        self.every = (self.per_precision, self.per_recall, self.per_f1, self.micro_f1, self.macro_f1, self.micro_acc)
        # Multiclass: river's own accuracy and confusion matrix over the class names too (the monitor has both).
        self.accuracy = metrics.Accuracy()
        self.confusion = metrics.ConfusionMatrix()
        self.waiting_pred: dict[str, dict[str, bool]] = {}
        self.waiting_truth: dict[str, tuple[dict[str, bool], bool]] = {}
        self.seen_pred: set[str] = set()
        self.joined = 0

    def predicted(self, obj: dict) -> dict[str, bool] | None:
        scores = obj.get("scores")
        if not isinstance(scores, dict):
            return None
        served = obj.get("predicted")
        if served is not None:
            return {label: label in served for label in self.labels}
        try:
            if self.multiclass:
                top = max(self.labels, key=scores.__getitem__)  # the first of equal maxima, as numpy's argmax
                return {label: label == top for label in self.labels}
            return {label: scores[label] >= self.thresholds[label] for label in self.labels}
        except (KeyError, TypeError):
            return None

    def actual(self, obj: dict) -> tuple[dict[str, bool], bool] | None:
        raw = obj.get("labels")
        if isinstance(raw, list):
            return {label: label in raw for label in self.labels}, True
        if isinstance(raw, dict) and raw:
            y_true = {label: bool(v) for label, v in raw.items() if label in self.label_set}
            return y_true, len(y_true) == len(self.labels)
        return None

    def update(self, y_pred: dict[str, bool], y_true: dict[str, bool], full: bool) -> None:
        self.joined += 1
        for m in self.every:
            m.update(y_true, y_pred)
        if full:
            self.exact.update(y_true, y_pred)
            if self.multiclass:
                p = next(label for label, v in y_pred.items() if v)
                t = next(label for label, v in y_true.items() if v)
                self.accuracy.update(t, p)
                self.confusion.update(t, p)

    def result(self) -> dict:
        per_label = {
            label: {"precision": value(self.per_precision.metrics[label]),
                    "recall": value(self.per_recall.metrics[label]), "f1": value(self.per_f1.metrics[label])}
            for label in self.labels if label in self.per_f1.metrics
        }
        accuracy = value(self.micro_acc)
        out = {
            "joined": self.joined, "pending_predictions": len(self.waiting_pred),
            "pending_ground_truth": len(self.waiting_truth),
            "micro_f1": value(self.micro_f1), "macro_f1": value(self.macro_f1),
            "subset_accuracy": value(self.exact) if self.exact._mean.n else None,
            "hamming_loss": None if accuracy is None else 1.0 - accuracy,
            "labels": per_label,
        }
        if self.multiclass:
            out["accuracy"] = value(self.accuracy)
        return out


def value(m: metrics.base.Metric) -> float | None:
    try:
        v = m.get()
    except Exception:  # an empty MacroAverage has nothing to average
        return None
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def load_models(path: str, name: str | None) -> dict[str, Model]:
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    models = {m["name"]: Model(m) for m in cfg["models"] if name is None or m["name"] == name}
    if not models:
        raise SystemExit(f"{path}: no model named {name!r}")
    return models


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
    models = load_models(config, model)
    preds, bad_p = read_events(predictions, 0)
    truths, bad_g = read_events(ground_truth, 1)
    events = preds + truths
    events.sort(key=lambda e: (e[0], e[1]))  # stable: file order within equal keys, as in replay

    skipped = 0
    for _, side, obj in events:
        m = models.get(obj.get("model"))  # type: ignore[arg-type]
        if m is None:
            skipped += 1
            continue
        pid = obj["prediction_id"]
        if side == 0:
            if pid in m.seen_pred:
                continue
            y_pred = m.predicted(obj)
            if y_pred is None:
                skipped += 1
                continue
            m.seen_pred.add(pid)
            truth = m.waiting_truth.pop(pid, None)
            if truth is None:
                m.waiting_pred[pid] = y_pred
            else:
                m.update(y_pred, truth[0], truth[1])
        else:
            truth = m.actual(obj)
            if truth is None:
                skipped += 1
                continue
            y_pred = m.waiting_pred.pop(pid, None)
            if y_pred is None:
                m.waiting_truth.setdefault(pid, truth)
            else:
                m.update(y_pred, *truth)

    return {
        "predictions": len(preds), "ground_truth": len(truths), "joined": sum(m.joined for m in models.values()),
        "skipped": bad_p + bad_g + skipped,
        "models": {name: m.result() for name, m in models.items()},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="River's online multilabel metrics over a prediction/"
                                             "ground-truth JSON-lines stream (the bench peer).")
    ap.add_argument("--config", required=True, help="monitor config (labels and thresholds)")
    ap.add_argument("--predictions", help="JSON lines of predictions")
    ap.add_argument("--ground-truth", help="JSON lines of ground truth")
    ap.add_argument("--model", help="only this model (default: every configured model)")
    args = ap.parse_args(argv)
    result = run(args.config, args.predictions, args.ground_truth, args.model)
    sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")


if __name__ == "__main__":
    main()

"""`monitor init`: a commented starter config from a sample of one's own predictions (and ground truth).

Three steps, each replaceable: `survey` looks at events in the native shape (labels from the scores, the
task, features by value type); `render_config` writes the YAML with a comment on every guess; the
reference is frozen with `monitor reference`'s own code and the SLO suggestions come from the sample's
own quality. Events in another shape only need a step before `survey` that maps them to the native shape.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import orjson

from monitor.conventions import Reason
from monitor.events import InvalidEvent, parse_json
from monitor.inputs import InputLines, read_lines
from monitor.rejections import summarize, tell

MULTICLASS_SUM_TOLERANCE = 0.01
MIN_SLO_SUPPORT = 30  # positives in the sample below which no target is suggested
MAX_CATEGORY_SHARE = 0.5  # a "categorical" feature with more distinct values than this share is an id or free text
NATIVE_FIELDS = ("prediction_id", "model", "model_version", "timestamp", "scores", "predicted", "features",
                 "latency_ms")


@dataclass
class Survey:
    """What a sample of prediction events says about the model that produced them."""

    model: str
    labels: list[str]
    task: str
    task_reason: str
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    skipped_features: dict[str, str] = field(default_factory=dict)  # name -> why it is not watched
    partial_labels: list[str] = field(default_factory=list)  # score keys missing from some events
    other_fields: list[str] = field(default_factory=list)  # top-level fields the native shape does not read
    events: int = 0


@dataclass(frozen=True)
class SLOSuggestion:
    label: str
    objective: str
    target: float | None  # None: too little evidence, written commented out
    observed: float | None
    support: int
    precision: float | None


def native_objects(lines: InputLines, max_bytes: int = 1 << 20) -> tuple[dict[int, dict[str, Any]],
                                                                          dict[int, InvalidEvent]]:
    """Index -> JSON object with a scores object; the other lines with why they cannot be surveyed."""
    objects: dict[int, dict[str, Any]] = {}
    rejected: dict[int, InvalidEvent] = {}
    for i, raw in enumerate(lines):
        try:
            obj = parse_json(raw, max_bytes)
            scores = obj.get("scores")
            if scores is None:
                raise InvalidEvent(Reason.MISSING_FIELD, "scores is missing")
            if not isinstance(scores, dict) or not scores:
                raise InvalidEvent(Reason.WRONG_TYPE, "scores must be an object of label: score")
        except InvalidEvent as exc:
            rejected[i] = exc
            continue
        objects[i] = obj
    return objects, rejected


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def survey(objects: Iterable[dict[str, Any]], model: str | None = None,
           ground_truth: Iterable[dict[str, Any]] = ()) -> Survey:
    objs = list(objects)
    models: Counter[str] = Counter(o["model"] for o in objs if isinstance(o.get("model"), str))
    if model is None:
        if len(models) > 1:
            raise click.UsageError(f"the sample holds {len(models)} models ({', '.join(sorted(models))}): "
                                   "choose one with --model")
        if not models:
            raise click.ClickException("no event names its model (the `model` field)")
        model = next(iter(models))
    objs = [o for o in objs if o.get("model") == model]
    if not objs:
        raise click.ClickException(f"no prediction event of model {model!r} in the sample")

    seen: dict[str, int] = {}
    for o in objs:
        for key in o["scores"]:
            seen[key] = seen.get(key, 0) + 1
    labels = [k for k, n in seen.items() if n == len(objs)] or list(seen)
    partial = [k for k in seen if k not in labels]

    task, reason = _guess_task(objs, labels, list(ground_truth))
    out = Survey(model, labels, task, reason, partial_labels=partial, events=len(objs))
    out.other_fields = sorted({k for o in objs for k in o if k not in NATIVE_FIELDS})
    _features(objs, out)
    return out


def _guess_task(objs: list[dict[str, Any]], labels: list[str], truths: list[dict[str, Any]]) -> tuple[str, str]:
    if len(labels) == 1:
        return "binary", "the scores hold one label"
    sums = [sum(v for k, v in o["scores"].items() if k in labels and _number(v)) for o in objs]
    sum_to_one = np.mean([abs(s - 1) <= MULTICLASS_SUM_TOLERANCE for s in sums]) >= 0.95
    served = [o["predicted"] for o in objs if isinstance(o.get("predicted"), list)]
    one_served = all(len(p) == 1 for p in served)
    truth_lists = [t["labels"] for t in truths if isinstance(t.get("labels"), list | dict)]
    one_truth = all(isinstance(t, list) and len(t) == 1 for t in truth_lists)
    if sum_to_one and one_served and one_truth:
        return "multiclass", "every event's scores sum to 1" + (" and name one class" if served or truth_lists else "")
    if not sum_to_one:
        return "multilabel", "the scores do not sum to 1 (independent per-label scores)"
    return "multilabel", "some events predict or are labelled with several labels"


def _features(objs: list[dict[str, Any]], out: Survey) -> None:
    values: dict[str, list[Any]] = {}
    for o in objs:
        feats = o.get("features")
        if isinstance(feats, dict):
            for k, v in feats.items():
                values.setdefault(k, []).append(v)
    for name, vals in values.items():
        present = [v for v in vals if v is not None]
        if not present:
            out.skipped_features[name] = "always null"
        elif all(_number(v) for v in present):
            out.numeric.append(name)
        elif all(isinstance(v, str | bool) or (isinstance(v, int) and not isinstance(v, bool)) for v in present):
            distinct = len({str(v) for v in present})
            if distinct > max(20, MAX_CATEGORY_SHARE * len(present)):
                out.skipped_features[name] = f"{distinct} distinct values in {len(present)} events: an id or free text"
            else:
                out.categorical.append(name)
        else:
            out.skipped_features[name] = "mixed or nested values (watch a numeric or categorical field instead)"


def suggest_slos(config: Any, model: str, prediction_lines: InputLines,
                 truth_lines: InputLines) -> tuple[list[SLOSuggestion], dict[int, InvalidEvent]]:
    """One recall SLO per label, its target the sample's own recall less its uncertainty (the Wilson 95%
    lower bound, rounded down to 0.01): met by the model as it is today, so a later drop burns budget."""
    from monitor.engine.metrics.classification import precision_recall_f1, wilson_interval
    from monitor.events import Decoder, Prediction

    decoder = Decoder(config)
    preds: dict[str, Prediction] = {}
    for raw in prediction_lines:
        try:
            p = decoder.decode_prediction(raw)
        except InvalidEvent:
            continue
        if p.model == model:
            preds[p.prediction_id] = p
    cfg = config.model(model)
    n = len(cfg.labels)
    tp, fp, fn = np.zeros(n), np.zeros(n), np.zeros(n)
    rejected: dict[int, InvalidEvent] = {}
    for i, raw in enumerate(truth_lines):
        try:
            t = decoder.decode_ground_truth(raw)
        except InvalidEvent as exc:
            rejected[i] = exc
            continue
        joined = preds.get(t.prediction_id)
        if joined is None or t.model != model:
            continue
        known, actual, predicted = t.known, t.actual, joined.predicted
        tp += known & actual & predicted
        fp += known & ~actual & predicted
        fn += known & actual & ~predicted
    precision, recall, _ = precision_recall_f1(tp, fp, fn)
    lower, _ = wilson_interval(tp, tp + fn)
    out = []
    for i, label in enumerate(cfg.labels):
        support = int(tp[i] + fn[i])
        observed = None if math.isnan(recall[i]) else float(recall[i])
        prec = None if math.isnan(precision[i]) else float(precision[i])
        target = None
        if support >= MIN_SLO_SUPPORT and observed is not None:
            target = min(0.99, math.floor(float(lower[i]) * 100) / 100)
            if target <= 0:
                target = None
        out.append(SLOSuggestion(label, "recall", target, observed, support, prec))
    return out, rejected


def _q(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar, quoting whatever needs it


def _flow(values: list[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def render_config(s: Survey, reference: str, sample: str, slos: list[SLOSuggestion] | None,
                  truth: str | None) -> str:
    lines = [
        f"# Starter config written by `monitor init` from {s.events:,} prediction events of {sample}.",
        "# Every guess is commented: check each, then `monitor check-config` this file and",
        "# `monitor replay --config` it on your files. Keys: docs/configuration.md.",
        "kafka:",
        '  bootstrap_servers: "localhost:9092"   # where your predictions are logged',
        "  predictions_topic: predictions",
        "  ground_truth_topic: ground-truth",
        "join: {ttl: 72h}        # how long a prediction waits for its ground truth",
        "windows: [5m, 30m, 1h, 2h, 6h, 1d, 3d, 30d]",
        "models:",
        f"  - name: {_q(s.model)}",
        f"    task: {s.task}        # guessed: {s.task_reason}",
        f"    labels: {_flow(s.labels)}",
    ]
    if s.partial_labels:
        lines.append(f"    # left out, missing from some events' scores: {', '.join(s.partial_labels)}")
    lines += [
        ("    threshold: 0.5        # unused for multiclass: without `predicted`, the highest score is the class"
         if s.task == "multiclass" else
         "    threshold: 0.5        # score >= threshold is a positive when an event has no `predicted` list"),
        f"    reference: {_q(reference)}   # frozen from this sample: drift is measured against it",
        "    features:",
        f"      numeric: {_flow(s.numeric)}",
        f"      categorical: {_flow(s.categorical)}",
    ]
    for name, why in s.skipped_features.items():
        lines.append(f"      # not watched: {name} ({why})")
    if s.other_fields:
        lines.append(f"    # top-level fields not read: {', '.join(s.other_fields)}")
    lines.append("    min_events: 50        # no quality alert on fewer labelled events")
    if slos is None:
        lines += ["    # No ground truth was given: add SLOs once you know the quality you need, e.g.",
                  f"    # slos:\n    #   - {{label: {_q(s.labels[0])}, objective: recall, target: 0.9, period: 30d, "
                  "severity: ticket}"]
    else:
        active = [x for x in slos if x.target is not None]
        lines.append(f"    # SLOs suggested from {truth}: target = the sample's recall less its uncertainty "
                     "(Wilson 95% lower bound).")
        lines.append("    slos:" if active else "    # slos:")
        for x in slos:
            seen = f"sample recall {x.observed:.3f}" if x.observed is not None else "no positives"
            seen += f", precision {x.precision:.3f}" if x.precision is not None else ""
            entry = (f"{{label: {_q(x.label)}, objective: recall, target: {x.target or 0.9:.2f}, period: 30d, "
                     "severity: ticket}")
            if x.target is not None:
                lines.append(f"      - {entry}   # {seen}, {x.support} positives")
            else:
                lines.append(f"      # - {entry}   # {seen}, {x.support} positives: too few to suggest a target")
    return "\n".join(lines) + "\n"


def _config_for(s: Survey) -> Any:
    from monitor.config import parse_config

    return parse_config({"models": [{"name": s.model, "task": s.task, "labels": s.labels,
                                     "features": {"numeric": s.numeric, "categorical": s.categorical}}]})


def _merge(*parts: Mapping[int, InvalidEvent]) -> dict[int, InvalidEvent]:
    out: dict[int, InvalidEvent] = {}
    for part in parts:
        for i, exc in part.items():
            out.setdefault(i, exc)
    return out


def run_init(predictions: str, ground_truth: str | None, model: str | None, output: Path, force: bool) -> None:
    """`monitor init` (the command line is monitor/init_cli.py)."""
    from monitor.config import check_config
    from monitor.reference import build_reference, decode_sample

    if predictions == "-" and ground_truth == "-":
        raise click.UsageError("only one of PREDICTIONS and --ground-truth can read standard input ('-')")
    pred_lines = read_lines(predictions)
    truth_lines = read_lines(ground_truth) if ground_truth else None
    objects, unusable = native_objects(pred_lines)
    truth_objs = ([o for raw in truth_lines if isinstance(o := _loads(raw), dict)] if truth_lines else [])
    if not objects:
        tell([summarize(pred_lines, "prediction", unusable)])
        raise click.ClickException(f"nothing usable in {pred_lines.source}")
    s = survey(objects.values(), model, truth_objs)
    config = _config_for(s)
    preds, rejected = decode_sample(config, s.model, pred_lines)
    reports = [summarize(pred_lines, "prediction", _merge(unusable, rejected))]
    slos = None
    if truth_lines is not None:
        slos, truth_rejected = suggest_slos(config, s.model, pred_lines, truth_lines)
        reports.append(summarize(truth_lines, "ground-truth", truth_rejected))
    tell(reports)

    ref_rel = f"reference/{s.model}.json"
    ref_path = output.parent / ref_rel
    for path in (output, ref_path):
        if path.exists() and not force:
            raise click.ClickException(f"{path} exists (use --force to overwrite)")
    cfg = config.model(s.model)
    reference = build_reference(cfg, preds)
    ref_path.parent.mkdir(parents=True, exist_ok=True)
    ref_path.write_bytes(orjson.dumps(reference.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    output.write_text(render_config(s, ref_rel, pred_lines.source, slos, truth_lines.source if truth_lines else None),
                      encoding="utf-8")
    problems = check_config(output)
    if problems:  # a bug here, never the user's: say so plainly
        raise click.ClickException("the written config does not pass check-config:\n" + "\n".join(problems))
    click.echo(f"wrote {output} (model {s.model}, {s.task}, {len(s.labels)} labels, "
               f"{len(s.numeric) + len(s.categorical)} features) and {ref_path} ({reference.n:,} predictions)")
    files = f"--predictions {predictions}" + (f" --ground-truth {ground_truth}" if ground_truth else "")
    click.echo(f"next: monitor check-config {output} && monitor replay --config {output} {files}")


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None

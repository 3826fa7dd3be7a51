"""Drift baselines: bins frozen from a reference sample of prediction events.

`monitor reference` writes one as JSON; a model's `reference:` may name that JSON or a JSON-lines sample
(bins are then frozen on load). Bin edges and counts are the whole baseline: current windows are binned
by the same edges and compared count to count.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import orjson

from monitor.config import ConfigError, ModelConfig, MonitorConfig, load_config
from monitor.conventions import Reason
from monitor.engine.metrics.drift import category_values, decile_edges, numeric_bins
from monitor.events import Decoder, InvalidEvent, Prediction
from monitor.inputs import read_bytes, read_lines, split_lines
from monitor.rejections import summarize, tell

FORMAT_VERSION = 1


@dataclass
class Binning:
    """Frozen bins of one numeric or categorical quantity, with the reference's counts per bin."""

    kind: str  # numeric | categorical
    counts: np.ndarray
    edges: np.ndarray | None = None
    values: list[str] | None = None

    def __post_init__(self) -> None:
        self._lookup = {v: i for i, v in enumerate(self.values or [])}

    @property
    def size(self) -> int:
        return int(self.counts.size)

    def bin_numeric(self, values: np.ndarray) -> np.ndarray:
        assert self.edges is not None
        return numeric_bins(values, self.edges)

    def bin_category(self, value: Any) -> int:
        # The last bin is "other": anything the reference did not list.
        return self._lookup.get(str(value), self.size - 1)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "counts": self.counts.astype(int).tolist()}
        if self.edges is not None:
            out["edges"] = self.edges.tolist()
        if self.values is not None:
            out["values"] = self.values
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Binning:
        edges = np.asarray(data["edges"], dtype=np.float64) if "edges" in data else None
        return cls(data["kind"], np.asarray(data["counts"], dtype=np.float64), edges, data.get("values"))


def numeric_binning(values: np.ndarray) -> Binning:
    values = np.asarray(values, dtype=np.float64)
    edges = decile_edges(values)
    counts = np.bincount(numeric_bins(values, edges), minlength=edges.size + 1).astype(np.float64)
    return Binning("numeric", counts, edges=edges)


def categorical_binning(values: list[Any]) -> Binning:
    cats = category_values(values)
    b = Binning("categorical", np.zeros(len(cats) + 1), values=cats)
    for v in values:
        b.counts[b.bin_category(v)] += 1
    return b


@dataclass
class Reference:
    model: str
    n: int
    labels: list[str]
    scores: list[Binning]  # one per label, config order
    features: dict[str, Binning]
    positive_rate: np.ndarray  # [L]
    pair_labels: int  # co-occurrence tracked among the first k labels
    pair_counts: np.ndarray  # [k*(k-1)/2 + 1]: each label pair, then "fewer than two labels"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "model": self.model,
            "n": self.n,
            "labels": self.labels,
            "scores": {label: b.to_json() for label, b in zip(self.labels, self.scores, strict=True)},
            "features": {name: b.to_json() for name, b in self.features.items()},
            "predicted_positive_rate": dict(zip(self.labels, self.positive_rate.tolist(), strict=True)),
            "cooccurrence": {"labels": self.pair_labels, "counts": self.pair_counts.astype(int).tolist()},
        }

    @classmethod
    def from_json(cls, data: Any, cfg: ModelConfig) -> Reference:
        problems = reference_problems(data, cfg)
        if problems:
            raise ValueError("; ".join(problems))
        cooc = data["cooccurrence"]
        features = {name: Binning.from_json(b) for name, b in data["features"].items()}
        return cls(
            model=data["model"],
            n=int(data["n"]),
            labels=list(data["labels"]),
            scores=[Binning.from_json(data["scores"][label]) for label in cfg.labels],
            features={name: features[name] for name in cfg.features.all},
            positive_rate=np.asarray([data["predicted_positive_rate"][x] for x in cfg.labels], dtype=np.float64),
            pair_labels=int(cooc["labels"]),
            pair_counts=np.asarray(cooc["counts"], dtype=np.float64),
        )


def _count_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, int | float) and not isinstance(x, bool)
                                           and math.isfinite(x) and x >= 0 for x in value)


def binning_problems(data: Any, where: str) -> list[str]:
    """What makes one frozen binning unusable (empty when it is usable)."""
    if not isinstance(data, dict):
        return [f"{where}: must be an object with kind and counts"]
    kind, counts = data.get("kind"), data.get("counts")
    if kind not in ("numeric", "categorical"):
        return [f"{where}.kind: must be numeric or categorical, got {kind!r}"]
    if not _count_list(counts) or not counts:
        return [f"{where}.counts: must be a non-empty list of non-negative numbers"]
    if kind == "numeric":
        edges = data.get("edges")
        if not isinstance(edges, list) or not all(isinstance(x, int | float) and not isinstance(x, bool)
                                                  and math.isfinite(x) for x in edges):
            return [f"{where}.edges: must be a list of finite numbers"]
        if any(b < a for a, b in itertools.pairwise(edges)):
            return [f"{where}.edges: must be sorted"]
        if len(counts) != len(edges) + 1:
            return [f"{where}: {len(edges)} edges need {len(edges) + 1} counts, got {len(counts)}"]
    else:
        values = data.get("values")
        if not isinstance(values, list) or not all(isinstance(x, str) for x in values):
            return [f"{where}.values: must be a list of strings"]
        if len(counts) != len(values) + 1:
            return [f"{where}: {len(values)} values need {len(values) + 1} counts (the last is 'other'), "
                    f"got {len(counts)}"]
    return []


def reference_problems(data: Any, cfg: ModelConfig) -> list[str]:
    """Every reason a frozen reference (the JSON `monitor reference` writes) cannot serve this model."""
    if not isinstance(data, dict):
        return ["not a reference: the JSON must be an object (write one with `monitor reference`)"]
    if data.get("format") != FORMAT_VERSION:
        got = "no format field" if "format" not in data else f"format {data.get('format')!r}"
        return [f"not a reference this version can read ({got}; expected format {FORMAT_VERSION}); "
                "rebuild it with `monitor reference`"]
    problems = []
    if not isinstance(data.get("model"), str):
        problems.append("model: must be the model's name")
    n = data.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        problems.append("n: must be a positive whole number of predictions")
    if data.get("labels") != list(cfg.labels):
        problems.append(f"labels: built for {data.get('labels')!r}, the model's labels are {list(cfg.labels)}")
    scores = data.get("scores")
    if not isinstance(scores, dict):
        problems.append("scores: must map each label to its score bins")
    else:
        for label in cfg.labels:
            if label not in scores:
                problems.append(f"scores: no bins for label {label!r}")
            else:
                problems += [p for p in binning_problems(scores[label], f"scores.{label}")]
                if isinstance(scores[label], dict) and scores[label].get("kind") == "categorical":
                    problems.append(f"scores.{label}.kind: score bins must be numeric")
    features = data.get("features")
    if not isinstance(features, dict):
        problems.append("features: must map each watched feature to its bins")
    else:
        for name in cfg.features.all:
            if name not in features:
                problems.append(f"features: no bins for feature {name!r} (rebuild the reference after adding it)")
            else:
                problems += binning_problems(features[name], f"features.{name}")
    rates = data.get("predicted_positive_rate")
    if not isinstance(rates, dict):
        problems.append("predicted_positive_rate: must map each label to a rate")
    else:
        for label in cfg.labels:
            rate = rates.get(label)
            if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
                problems.append(f"predicted_positive_rate.{label}: must be a number in [0, 1]")
    cooc = data.get("cooccurrence")
    if not isinstance(cooc, dict) or not _count_list(cooc.get("counts")):
        problems.append("cooccurrence: must hold labels (a count) and counts (a list)")
    else:
        k = cooc.get("labels")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= len(cfg.labels):
            problems.append(f"cooccurrence.labels: must be a whole number from 0 to {len(cfg.labels)}")
        elif len(cooc["counts"]) != k * (k - 1) // 2 + 1:
            problems.append(f"cooccurrence.counts: {k} labels need {k * (k - 1) // 2 + 1} counts, "
                            f"got {len(cooc['counts'])}")
    return problems


def pair_counts(predicted: np.ndarray, k: int) -> np.ndarray:
    """[pairs + 1] counts: co-occurrences of each label pair among the first k labels, then events with
    fewer than two of those labels."""
    p = predicted[:, :k].astype(np.float64)
    iu = np.triu_indices(k, 1)
    pairs = (p.T @ p)[iu]
    few = float(np.sum(p.sum(axis=1) < 2))
    return np.append(pairs, few)


def build_reference(cfg: ModelConfig, predictions: list[Prediction]) -> Reference:
    if not predictions:
        raise ValueError(f"no valid prediction events for model {cfg.name!r} in the sample")
    scores = np.stack([p.scores for p in predictions])
    predicted = np.stack([p.predicted for p in predictions])
    features: dict[str, Binning] = {}
    for name in cfg.features.numeric:
        vals = [p.features.get(name) if p.features else None for p in predictions]
        features[name] = numeric_binning(np.array([v for v in vals if v is not None], dtype=np.float64))
    for name in cfg.features.categorical:
        vals = [p.features.get(name) if p.features else None for p in predictions]
        features[name] = categorical_binning([v for v in vals if v is not None])
    k = min(cfg.cooccurrence_max_labels, len(cfg.labels))
    return Reference(
        model=cfg.name,
        n=len(predictions),
        labels=list(cfg.labels),
        scores=[numeric_binning(scores[:, i]) for i in range(len(cfg.labels))],
        features=features,
        positive_rate=predicted.mean(axis=0),
        pair_labels=k,
        pair_counts=pair_counts(predicted, k),
    )


def decode_sample(config: MonitorConfig, model: str,
                  lines: Iterable[bytes]) -> tuple[list[Prediction], dict[int, InvalidEvent]]:
    """The sample's prediction events for `model`, and why each other line was left out (by index)."""
    if config.model(model) is None:
        raise ValueError(f"model {model!r} is not in the config (models: {', '.join(m.name for m in config.models)})")
    decoder = Decoder(config)
    preds: list[Prediction] = []
    rejected: dict[int, InvalidEvent] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            p = decoder.decode_prediction(line)
        except InvalidEvent as exc:
            rejected[i] = exc
            continue
        if p.model != model:
            rejected[i] = InvalidEvent(Reason.UNKNOWN_MODEL, f"the event is for another model than {model!r}")
            continue
        preds.append(p)
    return preds, rejected


def reference_from_lines(config: MonitorConfig, model: str, lines: Iterable[bytes]) -> tuple[Reference, int]:
    """(reference, number of lines skipped as invalid or for another model)."""
    preds, rejected = decode_sample(config, model, lines)
    cfg = config.model(model)
    assert cfg is not None
    return build_reference(cfg, preds), len(rejected)


SAMPLE_SUFFIXES = (".jsonl", ".ndjson")


def is_sample(path: Path) -> bool:
    """A JSON-lines sample of prediction events (bins frozen on load), possibly compressed; else a frozen
    reference as `monitor reference` writes it."""
    name = path.name.lower().removesuffix(".gz").removesuffix(".zst")
    return name.endswith(SAMPLE_SUFFIXES)


def load_reference(config: MonitorConfig, cfg: ModelConfig) -> Reference | None:
    """The model's reference: a JSON baseline, or a JSON-lines sample frozen now. None if not configured."""
    path = cfg.reference
    if path is None:
        return None
    where = f"models[{cfg.name}].reference"
    if not Path(path).exists():
        raise ConfigError([f"{where}: file {str(path)!r} does not exist"])
    try:
        raw = read_bytes(path)
    except click.ClickException as exc:
        raise ConfigError([f"{where}: {exc.message}"]) from None
    try:
        if is_sample(Path(path)):
            return reference_from_lines(config, cfg.name, split_lines(raw, str(path)))[0]
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ValueError("not valid JSON (a sample of prediction events must be named *.jsonl)") from None
        problems = reference_problems(data, cfg)
        if problems:
            raise ConfigError([f"{where}: {str(path)!r}: {p}" for p in problems])
        return Reference.from_json(data, cfg)
    except click.ClickException as exc:  # an unreadable sample (UTF-16, ...)
        raise ConfigError([f"{where}: {exc.message}"]) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError([f"{where}: {str(path)!r} is not usable: {exc}"]) from None


def write_reference(config_path: str, model: str, output: str, sample: str) -> None:
    """`monitor reference` (the command line is monitor/reference_cli.py)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    lines = read_lines(sample)
    try:
        preds, rejected = decode_sample(config, model, lines)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    tell([summarize(lines, "sample", rejected)])
    cfg = config.model(model)
    assert cfg is not None
    ref, skipped = build_reference(cfg, preds), len(rejected)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_bytes(orjson.dumps(ref.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    click.echo(f"reference for {model}: {ref.n} predictions, {skipped} lines skipped -> {output}")

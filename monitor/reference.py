"""Drift baselines: bins frozen from a reference sample of prediction events.

`monitor reference` writes one as JSON; a model's `reference:` may name that JSON or a JSON-lines sample
(bins are then frozen on load). Bin edges and counts are the whole baseline: current windows are binned
by the same edges and compared count to count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import orjson

from monitor.config import ConfigError, ModelConfig, MonitorConfig, load_config
from monitor.engine.metrics.drift import category_values, decile_edges, numeric_bins
from monitor.events import Decoder, InvalidEvent, Prediction

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
    def from_json(cls, data: dict[str, Any], cfg: ModelConfig) -> Reference:
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported reference format {data.get('format')!r}")
        if data.get("labels") != list(cfg.labels):
            raise ValueError("the reference was built for other labels than the model's")
        features = {name: Binning.from_json(b) for name, b in data["features"].items()}
        for name in cfg.features.all:
            if name not in features:
                raise ValueError(f"the reference has no bins for feature {name!r}")
        cooc = data["cooccurrence"]
        return cls(
            model=data["model"],
            n=int(data["n"]),
            labels=list(data["labels"]),
            scores=[Binning.from_json(data["scores"][label]) for label in cfg.labels],
            features={name: features[name] for name in cfg.features.all},
            positive_rate=np.asarray([data["predicted_positive_rate"][x] for x in cfg.labels]),
            pair_labels=int(cooc["labels"]),
            pair_counts=np.asarray(cooc["counts"], dtype=np.float64),
        )


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


def reference_from_lines(config: MonitorConfig, model: str, lines: Iterable[bytes]) -> tuple[Reference, int]:
    """(reference, number of lines skipped as invalid or for another model)."""
    cfg = config.model(model)
    if cfg is None:
        raise ValueError(f"model {model!r} is not in the config")
    decoder = Decoder(config)
    preds, skipped = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            p = decoder.decode_prediction(line)
        except InvalidEvent:
            skipped += 1
            continue
        if p.model != model:
            skipped += 1
            continue
        preds.append(p)
    return build_reference(cfg, preds), skipped


def load_reference(config: MonitorConfig, cfg: ModelConfig) -> Reference | None:
    """The model's reference: a JSON baseline, or a JSON-lines sample frozen now. None if not configured."""
    path = cfg.reference
    if path is None:
        return None
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"models[{cfg.name}].reference: cannot read {str(path)!r}: {exc.strerror}"]) from None
    try:
        if Path(path).suffix == ".jsonl":
            return reference_from_lines(config, cfg.name, raw.splitlines())[0]
        return Reference.from_json(orjson.loads(raw), cfg)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError([f"models[{cfg.name}].reference: {str(path)!r} is not usable: {exc}"]) from None


@click.command("reference")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--model", required=True, help="Model name from the config.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.argument("sample", type=click.Path(dir_okay=False, exists=True))
def reference_command(config_path: str, model: str, output: str, sample: str) -> None:
    """Freeze drift bins from SAMPLE (JSON lines of prediction events) into OUTPUT."""
    try:
        config = load_config(config_path)
        with open(sample, "rb") as fh:
            ref, skipped = reference_from_lines(config, model, fh)
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_bytes(orjson.dumps(ref.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    click.echo(f"reference for {model}: {ref.n} predictions, {skipped} lines skipped -> {output}")

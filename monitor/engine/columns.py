"""Decoded events as columns: what the decoders produce and the join and statistics consume.

One `PredictionColumns` / `GroundTruthColumns` holds one model's valid events of one decoded batch,
row by row in input order. The native decoder (docs/native.md) fills them directly; events it leaves to
the exact Python decoder are converted here (`from_predictions`, `from_ground_truth`) and appended, so
everything after decoding sees one shape whichever decoder ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor.events import GroundTruth, InvalidEvent, Prediction
from monitor.reference import Reference
from monitor.spans import TextSpans


@dataclass
class PredictionColumns:
    # The native decoder's are spans of one buffer (monitor.spans.TextSpans: no str per id), the exact
    # decoder's a list.
    ids: Sequence[str]
    version_names: list[str]  # distinct versions of this batch
    version_code: np.ndarray  # int64[k]: index into version_names
    ts: np.ndarray  # float64[k]
    scores: np.ndarray  # float64[k, L]
    predicted: np.ndarray  # bool[k, L]
    latency: np.ndarray  # float64[k], seconds; NaN when not reported
    ignored: np.ndarray  # int64[k]: score keys beyond the configured labels
    numeric: np.ndarray  # float64[k, numeric features]; NaN when missing
    categorical: np.ndarray  # int64[k, categorical features]: reference bin, -1 when missing
    # object[k, segments]: each row's segment values (monitor.segments); None for a model without segments.
    segments: np.ndarray | None = None
    # The model's version index per row, filled by ModelState as rows are applied (-1: not yet).
    version: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.version = np.full(len(self.ids), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class GroundTruthColumns:
    ids: Sequence[str]  # as PredictionColumns.ids
    ts: np.ndarray  # float64[k]
    known: np.ndarray  # bool[k, L]: labels whose truth the event states
    actual: np.ndarray  # bool[k, L]
    full: np.ndarray  # bool[k]: every label known

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class FeatureSpec:
    """How a model's features become columns: names, and the reference bins of categorical values."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    reference: Reference | None

    def category_bin(self, name: str, value: Any) -> int:
        return 0 if self.reference is None else self.reference.features[name].bin_category(value)


def from_predictions(events: Sequence[Prediction], n_labels: int, spec: FeatureSpec) -> PredictionColumns:
    n = len(events)
    names: dict[str, int] = {}
    code = np.fromiter((names.setdefault(e.version, len(names)) for e in events), dtype=np.int64, count=n)
    numeric = np.full((n, len(spec.numeric)), np.nan)
    categorical = np.full((n, len(spec.categorical)), -1, dtype=np.int64)
    for i, e in enumerate(events):
        if not e.features:
            continue
        for j, name in enumerate(spec.numeric):
            v = e.features.get(name)
            if v is not None:
                numeric[i, j] = v
        for j, name in enumerate(spec.categorical):
            v = e.features.get(name)
            if v is not None:
                categorical[i, j] = spec.category_bin(name, v)
    return PredictionColumns(
        ids=[e.prediction_id for e in events],
        version_names=list(names),
        version_code=code,
        ts=np.array([e.ts for e in events], dtype=np.float64),
        scores=np.stack([e.scores for e in events]) if n else np.empty((0, n_labels)),
        predicted=np.stack([e.predicted for e in events]) if n else np.empty((0, n_labels), dtype=bool),
        latency=np.array([np.nan if e.latency_s is None else e.latency_s for e in events], dtype=np.float64),
        ignored=np.array([e.ignored_scores for e in events], dtype=np.int64),
        numeric=numeric,
        categorical=categorical,
        segments=segment_array([e.segments for e in events]) if n and events[0].segments else None,
    )


def segment_array(rows: list[tuple[str, ...]]) -> np.ndarray:
    """Segment values as an object array [rows, segments]."""
    out = np.empty((len(rows), len(rows[0]) if rows else 0), dtype=object)
    for i, row in enumerate(rows):
        out[i] = row
    return out


def from_ground_truth(events: Sequence[GroundTruth], n_labels: int) -> GroundTruthColumns:
    n = len(events)
    return GroundTruthColumns(
        ids=[e.prediction_id for e in events],
        ts=np.array([e.ts for e in events], dtype=np.float64),
        known=np.stack([e.known for e in events]) if n else np.empty((0, n_labels), dtype=bool),
        actual=np.stack([e.actual for e in events]) if n else np.empty((0, n_labels), dtype=bool),
        full=np.array([e.full for e in events], dtype=bool),
    )


def concat_ids(a: Sequence[str], b: Sequence[str]) -> Sequence[str]:
    """Both blocks' ids in order: spans stay spans of one buffer, anything else becomes a list."""
    if isinstance(a, TextSpans) and isinstance(b, TextSpans):
        return TextSpans.concat(a, b)
    return [*a, *b]


def concat_predictions(a: PredictionColumns, b: PredictionColumns) -> PredictionColumns:
    if not len(b):
        return a
    if not len(a):
        return b
    names = {name: i for i, name in enumerate(a.version_names)}
    remap = np.array([names.setdefault(name, len(names)) for name in b.version_names], dtype=np.int64)
    return PredictionColumns(
        ids=concat_ids(a.ids, b.ids),
        version_names=list(names),
        version_code=np.concatenate([a.version_code, remap[b.version_code]]),
        ts=np.concatenate([a.ts, b.ts]),
        scores=np.concatenate([a.scores, b.scores]),
        predicted=np.concatenate([a.predicted, b.predicted]),
        latency=np.concatenate([a.latency, b.latency]),
        ignored=np.concatenate([a.ignored, b.ignored]),
        numeric=np.concatenate([a.numeric, b.numeric]),
        categorical=np.concatenate([a.categorical, b.categorical]),
        segments=(np.concatenate([a.segments, b.segments])
                  if a.segments is not None and b.segments is not None else None),
    )


def concat_ground_truth(a: GroundTruthColumns, b: GroundTruthColumns) -> GroundTruthColumns:
    if not len(b):
        return a
    if not len(a):
        return b
    return GroundTruthColumns(
        ids=concat_ids(a.ids, b.ids),
        ts=np.concatenate([a.ts, b.ts]),
        known=np.concatenate([a.known, b.known]),
        actual=np.concatenate([a.actual, b.actual]),
        full=np.concatenate([a.full, b.full]),
    )


@dataclass
class DecodedTopic:
    """One topic's decoded batch: per event its model and row (or its rejection), per model the columns."""

    topic: str
    raws: list[bytes]
    model: np.ndarray  # int64[n]: model index, -1 when rejected
    row: np.ndarray  # int64[n]: row in that model's columns
    blocks: list[Any]  # per model: PredictionColumns or GroundTruthColumns
    rejected: dict[int, InvalidEvent]

    def __len__(self) -> int:
        return len(self.raws)

    def times(self) -> np.ndarray:
        """Event time per event; -inf for rejected events (they carry no usable time)."""
        out = np.full(len(self.raws), -np.inf)
        for m, block in enumerate(self.blocks):
            if block is None:
                continue
            sel = np.nonzero(self.model == m)[0]
            out[sel] = block.ts[self.row[sel]]
        return out

    def reject(self, index: int, exc: InvalidEvent) -> None:
        self.model[index] = -1
        self.row[index] = -1
        self.rejected[index] = exc

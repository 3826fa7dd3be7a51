"""Population stability index over bins frozen from a reference (docs/semantics.md).

Numeric values are binned by the reference deciles (duplicate edges collapse, so a feature with few
distinct values gets fewer bins); categorical values by the reference's most frequent values plus
"other". Both sides are smoothed the same way, share = (count + alpha) / (total + alpha * bins), so an
empty bin never yields ln(0) and Prometheus can recompute the figure from the exported bin counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from monitor.conventions import PSI_ALPHA

DECILES = np.linspace(0.1, 0.9, 9)
MAX_CATEGORIES = 20


def decile_edges(values: np.ndarray) -> np.ndarray:
    """Inner bin edges at the reference deciles, duplicates removed (at most 9 edges -> 10 bins)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(values, DECILES, method="linear"))


def numeric_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index per value: bin i holds edges[i-1] <= v < edges[i] (first and last bins are open)."""
    return np.searchsorted(edges, values, side="right")


def category_values(values: Sequence[Any], limit: int = MAX_CATEGORIES) -> list[str]:
    """The reference's most frequent categories (ties broken by value, so the result is stable)."""
    counts: dict[str, int] = {}
    for v in values:
        key = str(v)
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [k for k, _ in ranked[:limit]]


def psi(reference: np.ndarray, current: np.ndarray, alpha: float = PSI_ALPHA) -> float:
    """PSI = sum (cur_i - ref_i) * ln(cur_i / ref_i) over smoothed shares; NaN when a side is empty."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.shape != cur.shape:
        raise ValueError(f"bin counts differ in shape: {ref.shape} vs {cur.shape}")
    k = ref.size
    if k == 0 or ref.sum() <= 0 or cur.sum() <= 0:
        return float("nan")
    r = (ref + alpha) / (ref.sum() + alpha * k)
    c = (cur + alpha) / (cur.sum() + alpha * k)
    return float(np.sum((c - r) * np.log(c / r)))


def band(value: float, moderate: float, significant: float) -> str:
    if not np.isfinite(value):
        return "unknown"
    if value >= significant:
        return "significant"
    if value >= moderate:
        return "moderate"
    return "none"


def pair_index(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row/column indices of the label pairs (i < j) among the first k labels, in a fixed order."""
    return np.triu_indices(k, 1)


def exported_pairs(pair_counts: np.ndarray, k: int, limit: int) -> list[tuple[int, int, int]]:
    """(label i, label j, index in the pair vector) of the pairs that get additive pair counts: the
    `limit` pairs the reference predicts together most often (ties by index), never one it never does.

    The pair vector is the upper triangle of the first k labels in row order, then "fewer than two".
    """
    if k < 2:
        return []
    rows, cols = np.triu_indices(k, 1)
    counts = np.asarray(pair_counts, dtype=np.float64)[:rows.size]
    order = sorted((i for i in range(rows.size) if counts[i] > 0), key=lambda i: (-counts[i], i))[:limit]
    return [(int(rows[i]), int(cols[i]), i) for i in sorted(order)]

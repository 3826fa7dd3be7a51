"""Expected calibration error from reliability-diagram bin sums (docs/semantics.md)."""

from __future__ import annotations

import numpy as np

from monitor.conventions import CALIBRATION_BINS


def score_bins(scores: np.ndarray, n_bins: int = CALIBRATION_BINS) -> np.ndarray:
    """Equal-width bin index in [0, n_bins); a score of exactly 1.0 falls in the last bin."""
    return np.minimum((np.asarray(scores) * n_bins).astype(np.int64), n_bins - 1)


def ece(count: np.ndarray, score_sum: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """ECE per label from [..., bins] arrays: sum_b |positives_b - score_sum_b| / N; NaN when N == 0."""
    n = np.sum(count, axis=-1)
    gap = np.sum(np.abs(np.asarray(positives) - np.asarray(score_sum)), axis=-1)
    out = np.full(np.shape(n), np.nan)
    np.divide(gap, n, out=out, where=n > 0)
    return out

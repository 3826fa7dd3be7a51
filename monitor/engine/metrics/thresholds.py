"""Threshold advice per label: the decision threshold that meets the label's SLO objective, or that
maximises F1, on recent joined events, with an interval (docs/semantics.md).

Inputs are per-label score histograms of joined events with known truth: counts of negatives and
positives in THRESHOLD_BINS equal-width score bins. Candidate threshold k / bins predicts positive every
event whose score bin is >= k, so TP(k), FP(k) and FN(k) are suffix and prefix sums, exact for the binned
scores (resolution 1 / bins).

- recall objective, target t: the highest threshold whose recall is >= t (the most precise one that
  still meets the target); interval: from the highest threshold whose Wilson lower bound of recall is
  >= t (surely meets it) to the highest whose upper bound is (may still meet it);
- precision objective: the lowest threshold whose precision is >= t (the best recall that meets the
  target); interval: from the lowest whose precision upper bound is >= t to the lowest whose lower bound
  is (1.0 when none is sure);
- no SLO: the threshold with the highest F1 (ties to the lowest); interval: every threshold whose F1
  upper bound reaches the best one's lower bound (not significantly worse), lowest to highest.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from monitor.engine.metrics.classification import f1_interval, wilson_interval


class Advice(NamedTuple):
    threshold: float
    lower: float
    upper: float


def _counts(negatives: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN for each candidate threshold k = 0 .. bins - 1."""
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    tp = np.cumsum(pos[::-1])[::-1]
    fp = np.cumsum(neg[::-1])[::-1]
    fn = pos.sum() - tp
    return tp, fp, fn


def advise(negatives: np.ndarray, positives: np.ndarray, objective: str, target: float | None) -> Advice | None:
    """None when the events cannot say (no positives, or no threshold meets a precision target)."""
    bins = len(positives)
    tp, fp, fn = _counts(negatives, positives)
    if tp[0] <= 0:
        return None
    k = np.arange(bins)
    if objective == "recall" and target is not None:
        lo, hi = wilson_interval(tp, tp + fn)
        recall = tp / (tp + fn)
        best = int(k[recall >= target].max())
        sure = k[lo >= target]
        maybe = k[hi >= target]
        return Advice(best / bins, (int(sure.max()) if sure.size else 0) / bins, int(maybe.max()) / bins)
    if objective == "precision" and target is not None:
        n = tp + fp
        lo, hi = wilson_interval(tp, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(n > 0, tp / np.where(n > 0, n, 1), np.nan)
        meets = k[precision >= target]
        if not meets.size:
            return None
        sure = k[lo >= target]
        maybe = k[hi >= target]
        return Advice(int(meets.min()) / bins, int(maybe.min()) / bins, int(sure.min()) / bins if sure.size else 1.0)
    f1 = 2 * tp / (2 * tp + fp + fn)
    best = int(np.argmax(f1))
    lo, hi = f1_interval(tp, fp, fn)
    close = k[hi >= lo[best]]
    return Advice(best / bins, int(close.min()) / bins, int(close.max()) / bins)

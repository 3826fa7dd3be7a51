"""Precision, recall, F1 and friends from TP/FP/FN/TN counts (docs/semantics.md)."""

from __future__ import annotations

import numpy as np

Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_recall_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-label precision, recall and F1; 0/0 is NaN (absent), never 0."""
    return _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)


def wilson_interval(successes: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion; NaN where n == 0."""
    s = np.asarray(successes, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    safe_n = np.where(n > 0, n, 1.0)
    p = s / safe_n
    z2 = z * z
    centre = (p + z2 / (2 * safe_n)) / (1 + z2 / safe_n)
    half = z * np.sqrt(p * (1 - p) / safe_n + z2 / (4 * safe_n * safe_n)) / (1 + z2 / safe_n)
    # At p = 0 or 1 the bound is exactly 0 or 1; computed, it carries float residue like 7e-18.
    lower = np.where(n > 0, np.where(s <= 0, 0.0, np.clip(centre - half, 0.0, 1.0)), np.nan)
    upper = np.where(n > 0, np.where(s >= n, 1.0, np.clip(centre + half, 0.0, 1.0)), np.nan)
    return lower, upper


def f1_interval(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F1 = TP / (TP + (FP+FN)/2): a Wilson interval on that proportion with n = TP + (FP+FN)/2.

    An approximation (F1 is not a binomial proportion) that reduces to the precision or recall interval
    when FN or FP is zero; docs/semantics.md says more."""
    tp = np.asarray(tp, dtype=np.float64)
    n = tp + (np.asarray(fp, dtype=np.float64) + np.asarray(fn, dtype=np.float64)) / 2
    return wilson_interval(tp, n)


def micro_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    return float(_ratio(2 * np.sum(tp), 2 * np.sum(tp) + np.sum(fp) + np.sum(fn)))


def macro_f1(f1: np.ndarray) -> float:
    """Mean over labels whose F1 is defined; NaN when none is."""
    defined = f1[~np.isnan(f1)]
    return float(defined.mean()) if defined.size else float("nan")


def hamming_loss(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> float:
    return float(_ratio(np.sum(fp) + np.sum(fn), np.sum(tp) + np.sum(fp) + np.sum(fn) + np.sum(tn)))


def ratio(num: float, den: float) -> float:
    return float(_ratio(np.float64(num), np.float64(den)))

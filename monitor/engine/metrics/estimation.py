"""Estimated precision and recall for predictions still waiting for ground truth.

NannyML's CBPE idea applied per label: if scores are calibrated, a pending prediction with score p is a
true positive with probability p when predicted positive, and a false negative with probability p when
predicted negative. Scores are first recalibrated by histogram binning on the joined events (the
positive rate of each score bin); a bin with fewer than `min_bin_count` joined events keeps the raw
scores. All inputs are additive bin sums, so a pending prediction is added when it arrives and reverted
when its ground truth lands.
"""

from __future__ import annotations

import numpy as np

# pending[..., bin, k] with k:
PEND_POS_COUNT, PEND_POS_SCORE, PEND_NEG_COUNT, PEND_NEG_SCORE = range(4)
PENDING_STATS = 4


def estimate_precision_recall(
    pending: np.ndarray,
    calib_count: np.ndarray,
    calib_positives: np.ndarray,
    min_bin_count: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """pending: [L, bins, 4]; calib_*: [L, bins]. Returns (precision, recall) per label, NaN if undefined."""
    pos_n = pending[..., PEND_POS_COUNT]
    neg_n = pending[..., PEND_NEG_COUNT]
    calibrated = calib_count >= min_bin_count
    rate = np.divide(calib_positives, calib_count, out=np.zeros_like(calib_positives, dtype=np.float64),
                     where=calibrated)
    exp_tp = np.where(calibrated, rate * pos_n, pending[..., PEND_POS_SCORE]).sum(axis=-1)
    exp_fn = np.where(calibrated, rate * neg_n, pending[..., PEND_NEG_SCORE]).sum(axis=-1)
    predicted_pos = pos_n.sum(axis=-1)
    # Tiny negative residues can appear after many add/revert pairs of float score sums.
    exp_tp = np.maximum(exp_tp, 0.0)
    exp_fn = np.maximum(exp_fn, 0.0)
    precision = np.full(exp_tp.shape, np.nan)
    recall = np.full(exp_tp.shape, np.nan)
    np.divide(exp_tp, predicted_pos, out=precision, where=predicted_pos > 0.5)
    np.divide(exp_tp, exp_tp + exp_fn, out=recall, where=(exp_tp + exp_fn) > 1e-12)
    return precision, recall


def alert_counts(
    pending: np.ndarray,
    calib_count: np.ndarray,
    calib_positives: np.ndarray,
    min_bin_count: int = 20,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, false negatives, predicted positives) expected among pending predictions per label,
    with every bin too thin to calibrate taken at its most favourable: its predicted positives all true
    positives, its predicted negatives no false negatives.

    The estimate above falls back to raw scores in such bins, and raw scores of an uncalibrated model can
    be far off (a missed positive scored 0.1 among negatives scored 0.08 counts every negative as 0.08 of
    a miss): on a fresh start nearly every bin is thin and the estimate says nothing. The alert rule
    bounds the quality from these counts (a Wilson bound, summed over workers), so what the scores cannot
    vouch for never makes the quality look worse than the calibrated bins show. All three are additive.
    """
    pos_n = pending[..., PEND_POS_COUNT]
    neg_n = pending[..., PEND_NEG_COUNT]
    calibrated = calib_count >= min_bin_count
    rate = np.divide(calib_positives, calib_count, out=np.zeros_like(calib_positives, dtype=np.float64),
                     where=calibrated)
    predicted_pos = pos_n.sum(axis=-1)
    tp = np.minimum(np.where(calibrated, rate * pos_n, pos_n).sum(axis=-1), predicted_pos)
    fn = np.where(calibrated, rate * neg_n, 0.0).sum(axis=-1)
    return np.maximum(tp, 0.0), np.maximum(fn, 0.0), np.maximum(predicted_pos, 0.0)

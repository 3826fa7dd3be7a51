"""Error-budget burn rates for label SLOs (docs/semantics.md)."""

from __future__ import annotations

import math


def error_ratio(objective: str, tp: float, fp: float, fn: float) -> tuple[float, float]:
    """(error ratio, events it is computed over); recall errors are FN among TP+FN, precision FP among TP+FP."""
    if objective == "recall":
        events, errors = tp + fn, fn
    elif objective == "precision":
        events, errors = tp + fp, fp
    else:
        raise ValueError(f"unknown SLO objective {objective!r}")
    return (errors / events if events > 0 else math.nan), events


def burn_rate(error: float, target: float) -> float:
    """How many times faster than sustainable the budget burns; 1.0 spends it exactly in one period."""
    return error / (1.0 - target)


def budget_remaining(period_error: float, target: float) -> float:
    """Share of the period's error budget still unspent; negative when overspent."""
    return 1.0 - period_error / (1.0 - target)

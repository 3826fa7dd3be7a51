"""The statistics the alert rules compute in PromQL, as plain Python (the promtool tests' expectations).

Each function is the exact formula its recording rule evaluates, so a generated test can say what
Prometheus must produce. docs/alerting.md explains the choices and their false-alarm arithmetic.
"""

from __future__ import annotations

import math


def wilson_cc_lower(errors: float, events: float, z: float) -> float:
    """Continuity-corrected Wilson lower bound of a binomial proportion (Newcombe 1998, method 4).

    The plain Wilson bound is anti-conservative for a handful of successes (1 error in 50 gives a lower
    bound of 0.0018 at z = 3.09, above a 0.999 target's whole budget); the corrected one is not.
    """
    if errors <= 0:
        return 0.0
    n, e, z2 = events, errors, z * z
    root = math.sqrt(z2 - 2 - 1 / n + 4 * e * (n - e + 1) / n)
    return max(0.0, (2 * e + z2 - 1 - z * root) / (2 * (n + z2)))


def poisson_lower(errors: float, events: float, z: float) -> float:
    """Lower bound of the error ratio treating the error count as Poisson: the Wilson-Hilferty
    approximation of the Poisson (gamma) lower confidence bound of the count, over the events.

    The Wilson bound is a normal approximation, anti-conservative for a skewed count (a small error ratio,
    or few events): a label exactly on a 0.01 budget shows a Wilson lower bound above it in 0.8-1.4% of
    windows. The Poisson count's variance is at least the binomial's, so this bound is the conservative
    one there (and wider than Wilson's at large ratios); the tiers demand both above the budget.
    Wilson-Hilferty is within 0.05 errors of the exact gamma quantile from 2 errors up, and below it.
    """
    if errors <= 0 or events <= 0:
        return 0.0
    base = max(0.0, 1 - 1 / (9 * errors) - z / 3 / math.sqrt(errors))
    return errors * base ** 3 / events


def wilson_cc_upper(errors: float, events: float, z: float) -> float:
    if errors >= events:
        return 1.0
    n, e, z2 = events, errors, z * z
    root = math.sqrt(z2 + 2 - 1 / n + 4 * e * (n - e - 1) / n)
    return min(1.0, (2 * e + z2 + 1 + z * root) / (2 * (n + z2)))


def two_proportion_z(e1: float, n1: float, e2: float, n2: float) -> float | None:
    """Pooled two-proportion z statistic of e1/n1 against e2/n2 (positive when the first is worse)."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (e1 + e2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var <= 0:
        return None
    return (e1 / n1 - e2 / n2) / math.sqrt(var)


def log_odds_ratio(n: float, a: float, b: float, ab: float) -> tuple[float, float]:
    """(log odds ratio, its variance) of the 2x2 table of two labels, Haldane's +0.5 on every cell.

    Cells from additive counts: both = ab, only A = a - ab, only B = b - ab, neither = n - a - b + ab.
    """
    cells = (ab + 0.5, a - ab + 0.5, b - ab + 0.5, n - a - b + ab + 0.5)
    return (math.log(cells[0] * cells[3] / (cells[1] * cells[2])), sum(1 / x for x in cells))


def ece_noise(bins: list[tuple[float, float]], total: float) -> float:
    """sum over bins of sqrt(count * mean * (1 - mean)) / N: the scale of a calibrated model's ECE.

    bins are (count, score_sum); empty bins add nothing. A calibrated bin's gap |positives - score_sum|
    has standard deviation at most sqrt(count * mean (1 - mean)) (Jensen), and mean about 0.8 of it.
    """
    out = 0.0
    for count, score_sum in bins:
        if count > 0:
            out += math.sqrt(max(0.0, score_sum * (count - score_sum) / count))
    return out / total


def poisson_lower_tail_bound(observed: float, expected: float) -> float:
    """Chernoff bound on P(X <= observed) for X ~ Poisson(expected), observed <= expected."""
    if observed <= 0:
        return math.exp(-expected)
    return math.exp(-(expected - observed + observed * math.log(observed / expected)))

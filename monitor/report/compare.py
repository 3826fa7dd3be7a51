"""Do two model versions differ? A two-proportion test per label and metric, corrected for the number of
comparisons in the table.

Precision and recall are proportions (TP among predicted positives, TP among actual positives), so two
versions' values are compared with the pooled two-proportion z-test (equal to Pearson's chi-squared test
on the 2x2 table without continuity correction). A table asks many such questions at once (labels x
metrics x versions), so the flag uses Benjamini-Hochberg adjusted p-values: at 5% at most about one flag
in twenty is a false alarm, instead of one comparison in twenty.

scipy is imported inside the functions: `monitor report --help` must stay light.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ALPHA = 0.05


def two_proportion_p(successes_a: float, n_a: float, successes_b: float, n_b: float) -> float | None:
    """Two-sided p-value that both proportions are equal; None when undefined (an empty side, or both
    sides all successes or all failures: no variance to test against)."""
    from scipy.stats import norm  # type: ignore[import-untyped]

    if n_a <= 0 or n_b <= 0:
        return None
    pooled = (successes_a + successes_b) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if variance <= 0:
        return None
    z = (successes_a / n_a - successes_b / n_b) / math.sqrt(variance)
    return float(2 * norm.sf(abs(z)))


def adjusted(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg adjusted p-values over the defined ones (None stays None)."""
    defined = [p for p in p_values if p is not None]
    if not defined:  # one version: nothing tested, and scipy.stats (half a second to import) stays unloaded
        return [None] * len(p_values)
    from scipy.stats import false_discovery_control  # type: ignore[import-untyped]

    q = iter(false_discovery_control(defined, method="bh").tolist())
    return [None if p is None else float(next(q)) for p in p_values]

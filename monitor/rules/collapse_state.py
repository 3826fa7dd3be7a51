"""Whether a label has collapsed on one window: the label-collapse alert's condition in Python.

The one owner of that decision for every view that shows it without Prometheus: the terminal summary
(`monitor replay`) and the HTML report (its label table, headline and timeline). The alert itself is
monitor.rules.alerts.collapse_rules; tests/test_tier_state.py checks this function against Prometheus
evaluating that rule on the same numbers. The alert judges each of its collapse windows (RuleOptions.
collapse_windows) and fires on any; a view judges the window it shows.
"""

from __future__ import annotations

from monitor.rules.names import COLLAPSE_EVERYTHING, COLLAPSE_NOTHING
from monitor.rules.options import RuleOptions


def collapse(opts: RuleOptions, rate: float | None, reference: float | None, predictions: float) -> str | None:
    """The alert's `collapse` label: 'nothing' when the label is predicted for under collapse_factor of
    its reference rate where the reference expects at least collapse_min_expected positives over the
    window's `predictions`; 'everything' for the mirror (negatives); None otherwise or without a rate or
    reference."""
    if rate is None or reference is None:
        return None
    f, k = opts.collapse_factor, opts.collapse_min_expected
    if rate <= f * reference and predictions * reference >= k:
        return COLLAPSE_NOTHING
    if rate >= 1 - f * (1 - reference) and predictions * (1 - reference) >= k:
        return COLLAPSE_EVERYTHING
    return None

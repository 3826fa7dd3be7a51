"""Prometheus's alert state machine over a range query's result: `for:` and `keep_firing_for:`.

Mirrors rules/alerting.go of Prometheus: a series present at evaluation t becomes pending (active since t);
it fires at the first evaluation where t - active_since >= for (at once with `for: 0`); when the series is
absent, a firing alert with `keep_firing_for` stays firing until that long after it was first missing,
anything else resolves (a pending alert is dropped, never fired).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Rounding slack when comparing float seconds of evaluation times.
_EPS = 1e-6


@dataclass(frozen=True)
class Interval:
    """Firing from `start` (the first evaluation at which it fired) to `end` (the first evaluation at which
    it no longer fired, or None when still firing at the end of the history)."""

    start: float
    end: float | None
    peak: float  # highest expression value while firing
    active_since: float  # when the condition first held (the pending phase began)


def firing_intervals(times: Sequence[float], present: Mapping[float, float], for_s: float,
                     keep_firing_for_s: float = 0.0) -> list[Interval]:
    """Intervals over the evaluation `times` (increasing) of one alert series, `present` mapping each time
    the expression returned the series to its value."""
    out: list[Interval] = []
    active_since: float | None = None
    firing_since: float | None = None
    missing_since: float | None = None
    peak = float("-inf")
    for t in times:
        value = present.get(t)
        if value is not None:
            missing_since = None
            if active_since is None:
                active_since = t
            if firing_since is None and t - active_since >= for_s - _EPS:
                firing_since, peak = t, value
            elif firing_since is not None:
                peak = max(peak, value)
            continue
        if firing_since is not None and keep_firing_for_s > 0:
            if missing_since is None:
                missing_since = t
            if t - missing_since < keep_firing_for_s - _EPS:
                continue
        if firing_since is not None:
            assert active_since is not None
            out.append(Interval(firing_since, t, peak, active_since))
        active_since = firing_since = missing_since = None
        peak = float("-inf")
    if firing_since is not None:
        assert active_since is not None
        out.append(Interval(firing_since, None, peak, active_since))
    return out

"""Generator settings that the monitor config does not carry: `for:` durations, windows, fixed thresholds.

Defaults suit production. Tests and the demo shorten the `for:` durations with overrides; the windows
named here are ideals, and the rules use the configured window nearest to each (so a config with short
test windows still yields valid rules).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from monitor import conventions as c
from monitor.config import DAY, HOUR, MINUTE, MonitorConfig, format_duration, parse_duration
from monitor.rules.tiers import TIER_NAMES, nearest_window

# Where the runbooks live relative to a checkout of this repository: true wherever the rules are used. Point
# it at the place your team serves docs/runbooks/ from with `monitor rules --runbook-base URL`.
DEFAULT_RUNBOOK_BASE: Final = "docs/runbooks/"
DEFAULT_JOB: Final = "mlmon"
WILDCARD: Final = "*"

# How long a condition must hold before the alert fires. The burn tiers need little: their short window
# already filters blips (the SRE workbook uses none); drift and health alerts ride out a scrape hiccup.
DEFAULT_FOR: Final[Mapping[str, str]] = {
    f"{c.ALERT_LABEL_ERROR_BUDGET_BURN}:page_fast": "2m",
    f"{c.ALERT_LABEL_ERROR_BUDGET_BURN}:page_slow": "15m",
    f"{c.ALERT_LABEL_ERROR_BUDGET_BURN}:ticket_fast": "30m",
    f"{c.ALERT_LABEL_ERROR_BUDGET_BURN}:ticket_slow": "1h",
    c.ALERT_FEATURE_DRIFT: "30m",
    c.ALERT_SCORE_DRIFT: "30m",
    c.ALERT_LABEL_COLLAPSE: "10m",
    c.ALERT_CALIBRATION_DRIFT: "1h",
    c.ALERT_MISSING_FEATURES: "15m",
    c.ALERT_LATENCY_HIGH: "10m",
    c.ALERT_LABEL_COOCCURRENCE_DRIFT: "30m",
    c.ALERT_GROUND_TRUTH_STALLED: "30m",
    c.ALERT_CONSUMER_LAG: "15m",
    c.ALERT_INVALID_INPUT: "15m",
    c.ALERT_DOWN: "5m",
    c.ALERT_RETRAINING_RECOMMENDED: "1h",
}


def valid_for_keys() -> set[str]:
    return {WILDCARD, *c.ALL_ALERTS, *(f"{c.ALERT_LABEL_ERROR_BUDGET_BURN}:{t}" for t in TIER_NAMES)}


@dataclass(frozen=True)
class Windows:
    """Window label values the non-SLO alerts evaluate, picked from the configured windows."""

    fast: str  # missing features: a broken pipeline shows at once
    drift: str  # PSI, label collapse, co-occurrence: enough predictions for a stable distribution
    slow: str  # calibration and retraining: needs labelled events and persistence


@dataclass(frozen=True)
class RuleOptions:
    runbook_base: str = DEFAULT_RUNBOOK_BASE
    job: str = DEFAULT_JOB  # the Prometheus scrape job of the workers (MLMonitorDown)
    for_overrides: Mapping[str, str] = field(default_factory=dict)  # key: alert, alert:tier or "*"
    fast_window: int = 30 * MINUTE
    drift_window: int = HOUR
    slow_window: int = DAY
    # Above a stable model's usual miscalibration (the bundled example's labels sit at 0.10-0.12), so the
    # alert means "scores stopped meaning what they did". TODO(config): a per-model drift.ece_alert key.
    ece_threshold: float = 0.15
    collapse_factor: float = 0.1  # collapse: predicted rate below 1/10 of the reference rate (or mirror)
    collapse_min_expected: float = 20.0  # ... where the reference rate expects at least 20 events
    ground_truth_stall: int = 6 * HOUR
    consumer_lag_threshold: float = 100_000
    invalid_ratio: float = 0.01

    def __post_init__(self) -> None:
        unknown = sorted(set(self.for_overrides) - valid_for_keys())
        if unknown:
            raise ValueError(f"unknown alert in for overrides: {', '.join(unknown)}")
        for value in self.for_overrides.values():
            if value not in ("0", "0s"):
                parse_duration(value)

    def for_duration(self, alert: str, tier: str | None = None) -> str:
        keys = ([f"{alert}:{tier}"] if tier else []) + [alert]
        for key in keys:
            if key in self.for_overrides:
                return self.for_overrides[key]
        if WILDCARD in self.for_overrides:
            return self.for_overrides[WILDCARD]
        return next(DEFAULT_FOR[k] for k in keys if k in DEFAULT_FOR)

    def runbook_url(self, alert: str) -> str:
        return f"{self.runbook_base}{alert}.md"

    def windows(self, cfg: MonitorConfig) -> Windows:
        def pick(ideal: int) -> str:
            return format_duration(nearest_window(cfg.windows, ideal))

        return Windows(pick(self.fast_window), pick(self.drift_window), pick(self.slow_window))


def duration_seconds(value: str) -> int:
    """`for:` values back to seconds (the promtool tests schedule evaluations after them)."""
    return 0 if value in ("0", "0s") else parse_duration(value)


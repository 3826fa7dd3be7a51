"""Generator settings that the monitor config does not carry: `for:` durations, windows, fixed thresholds.

Defaults suit production. Tests and the demo shorten the `for:` durations with overrides; the windows
named here are ideals, and the rules use the configured window nearest to each (so a config with short
test windows still yields valid rules).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
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
    c.ALERT_CALIBRATION_DRIFT: "30m",
    c.ALERT_MISSING_FEATURES: "15m",
    c.ALERT_LATENCY_HIGH: "10m",
    c.ALERT_LABEL_COOCCURRENCE_DRIFT: "30m",
    c.ALERT_GROUND_TRUTH_STALLED: "15m",
    c.ALERT_CONSUMER_LAG: "15m",
    c.ALERT_INVALID_INPUT: "15m",
    c.ALERT_DOWN: "5m",
    c.ALERT_RETRAINING_RECOMMENDED: "1h",
    c.ALERT_VERSION_REGRESSION: "15m",
    c.ALERT_ESTIMATED_QUALITY_LOW: "30m",
}

# How long an alert stays up after its condition last held (Prometheus >= 2.42): a thin short window or a
# quiet night-time volume guard can drop the condition for an evaluation or two during a real incident;
# holding on keeps one firing per incident instead of resolve-and-refire. Alerts not named keep none.
DEFAULT_KEEP_FIRING: Final[Mapping[str, str]] = {
    f"{c.ALERT_LABEL_ERROR_BUDGET_BURN}:page_fast": "30m",
    f"{c.ALERT_LABEL_ERROR_BUDGET_BURN}:page_slow": "1h",
    f"{c.ALERT_LABEL_ERROR_BUDGET_BURN}:ticket_fast": "2h",
    f"{c.ALERT_LABEL_ERROR_BUDGET_BURN}:ticket_slow": "6h",
    c.ALERT_LABEL_COLLAPSE: "1h",
    c.ALERT_VERSION_REGRESSION: "1h",
    c.ALERT_GROUND_TRUTH_STALLED: "1h",
    c.ALERT_CALIBRATION_DRIFT: "2h",
    c.ALERT_LABEL_COOCCURRENCE_DRIFT: "1h",
    c.ALERT_ESTIMATED_QUALITY_LOW: "1h",
}


def valid_for_keys() -> set[str]:
    return {WILDCARD, *c.ALL_ALERTS, *(f"{c.ALERT_LABEL_ERROR_BUDGET_BURN}:{t}" for t in TIER_NAMES)}


@dataclass(frozen=True)
class Windows:
    """Window label values the non-SLO alerts evaluate, picked from the configured windows."""

    fast: str  # missing features: a broken pipeline shows at once
    drift: str  # PSI, label collapse, co-occurrence: enough predictions for a stable distribution
    slow: str  # calibration and retraining: needs labelled events and persistence
    calibration: tuple[str, ...] = ()  # ECE: each judged, beyond its sampling scale
    collapse: tuple[str, ...] = ()  # label collapse: each judged, the shortest with volume fires first
    stall: tuple[str, ...] = ()  # ground truth stall (counter ranges), against the baseline's ratio
    stall_baseline: str = ""


@dataclass(frozen=True)
class RuleOptions:
    runbook_base: str = DEFAULT_RUNBOOK_BASE
    job: str = DEFAULT_JOB  # the Prometheus scrape job of the workers (MLMonitorDown)
    for_overrides: Mapping[str, str] = field(default_factory=dict)  # key: alert, alert:tier or "*"
    fast_window: int = 30 * MINUTE
    drift_window: int = HOUR
    slow_window: int = DAY
    # ECE is judged on each (the 1h window sees a recent shift that longer ones still dilute).
    calibration_windows: tuple[int, ...] = (HOUR, 6 * HOUR, DAY)
    # The ECE minus its sampling scale (mlmon:label_ece:noise) must exceed this, so a true ECE of 0.15
    # fires on a few thousand labelled events while a calibrated label's sampling ECE (about 0.8 to 1.2
    # times the scale) stays far below.
    ece_threshold: float = 0.12
    ece_noise_factor: float = 1.0
    collapse_factor: float = 0.1  # collapse: predicted rate below 1/10 of the reference rate (or mirror)
    collapse_min_expected: float = 20.0  # ... where the reference rate expects at least 20 events
    # Every configured window nearest to these is judged; the shortest with enough volume fires first.
    collapse_windows: tuple[int, ...] = (5 * MINUTE, 30 * MINUTE, HOUR)
    ground_truth_stall: int = 6 * HOUR  # streams that never had ground truth: none for this long
    # Ground truth judged against its own recent rate: none over a window where the day's labels-per-
    # prediction ratio expects at least stall_min_expected (P(0 | Poisson(15)) = 3e-7).
    stall_windows: tuple[int, ...] = (30 * MINUTE, 2 * HOUR, 6 * HOUR)
    stall_baseline: int = DAY
    stall_min_expected: float = 15.0
    # One-sided z of the continuity-corrected Wilson bounds of SLO error ratios: 3.09 = 0.1% per window.
    burn_z: float = 3.09
    # A version significantly worse than the rest of its model: one-sided 1e-4.
    regression_z: float = 3.72
    # Label pairs: |z| of the log-odds-ratio change, and the smallest change that matters (a factor 2).
    pair_z: float = 5.0
    pair_min_log_odds_change: float = 0.693147
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

    def keep_firing_for(self, alert: str, tier: str | None = None) -> str | None:
        keys = ([f"{alert}:{tier}"] if tier else []) + [alert]
        return next((DEFAULT_KEEP_FIRING[k] for k in keys if k in DEFAULT_KEEP_FIRING), None)

    def runbook_url(self, alert: str) -> str:
        return f"{self.runbook_base}{alert}.md"

    def windows(self, cfg: MonitorConfig) -> Windows:
        def pick(ideal: int) -> str:
            return format_duration(nearest_window(cfg.windows, ideal))

        def picks(ideals: tuple[int, ...]) -> tuple[str, ...]:
            chosen = sorted({nearest_window(cfg.windows, i) for i in ideals})
            return tuple(format_duration(x) for x in chosen)

        return Windows(pick(self.fast_window), pick(self.drift_window), pick(self.slow_window),
                       picks(self.calibration_windows), picks(self.collapse_windows),
                       tuple(format_duration(x) for x in self.stall_windows),
                       format_duration(self.stall_baseline))


def duration_seconds(value: str) -> int:
    """`for:` values back to seconds (the promtool tests schedule evaluations after them)."""
    return 0 if value in ("0", "0s") else parse_duration(value)



# The generated rule files carry the options they were generated with on one header line, so that every
# view judging alerts without Prometheus (`monitor report --rules`) uses the same numbers as the rules.
OPTIONS_HEADER: Final = "Rule options (those not at their defaults): "


def options_json(opts: RuleOptions) -> str:
    """The options that differ from the defaults as one line of JSON ({} for the defaults)."""
    default = RuleOptions()
    changed = {f.name: getattr(opts, f.name) for f in fields(RuleOptions)
               if getattr(opts, f.name) != getattr(default, f.name)}
    return json.dumps({k: dict(v) if isinstance(v, Mapping) else v for k, v in changed.items()},
                      sort_keys=True, separators=(", ", ": "))


def options_from_json(text: str) -> RuleOptions:
    """The inverse of options_json; ValueError on an unknown option or a value of the wrong kind."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("rule options: expected a JSON object")
    default = RuleOptions()
    known = {f.name for f in fields(RuleOptions)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown rule option(s): {', '.join(unknown)}")
    values: dict[str, object] = {}
    for name, value in data.items():
        kind = getattr(default, name)
        if isinstance(kind, tuple):
            value = tuple(value)
        elif isinstance(kind, float) and isinstance(value, int):
            value = float(value)
        if isinstance(kind, Mapping) != isinstance(value, Mapping) or (
                not isinstance(kind, Mapping) and type(value) is not type(kind)):
            raise ValueError(f"rule option {name}: {value!r} is not a {type(kind).__name__}")
        values[name] = value
    return RuleOptions(**values)  # type: ignore[arg-type]

"""Multi-window multi-burn-rate tiers for label SLOs, and why they are capped (docs/alerting.md).

The SRE workbook's tiers for a 30d period spend 2% of the budget in 1h (14.4x), 5% in 6h (6x), 10% in 1d
(3x) and 10% in 3d (1x), each confirmed over a short window of 1/12 of the long one. A burn rate cannot
exceed 1/(1 - target) (every event an error): at target 0.85 that is 6.67x, so a 14.4x tier would never
fire and a label that stops working entirely would page no one. Each threshold is therefore capped at
COLLAPSE_SHARE of that maximum: a collapse (error ratio >= COLLAPSE_SHARE) fires every tier at any target,
while targets above ~0.94 keep the workbook's numbers unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from monitor.config import SLOConfig

COLLAPSE_SHARE: Final = 0.9
SHORT_WINDOW_DIVISOR: Final = 12


@dataclass(frozen=True)
class TierSpec:
    name: str  # the burnrate_tier label value
    severity: str
    budget_share: float  # of the period's error budget spent over the long window before firing
    period_divisor: int  # long window = period / divisor (1h for a 30d period at 720)


TIER_SPECS: Final = (
    TierSpec("page_fast", "page", 0.02, 720),
    TierSpec("page_slow", "page", 0.05, 120),
    TierSpec("ticket_fast", "ticket", 0.10, 30),
    TierSpec("ticket_slow", "ticket", 0.10, 10),
)
TIER_NAMES: Final = tuple(t.name for t in TIER_SPECS)


@dataclass(frozen=True)
class Tier:
    name: str
    severity: str
    long_window: int  # seconds, one of the configured windows
    short_window: int
    nominal: float  # the workbook's burn rate for this budget share over the actual long window
    threshold: float  # min(nominal, COLLAPSE_SHARE * max burn rate), rounded for the rule text


def max_burn_rate(target: float) -> float:
    """The burn rate when every event is an error."""
    return 1.0 / (1.0 - target)


def capped_threshold(nominal: float, target: float) -> float:
    return float(f"{min(nominal, COLLAPSE_SHARE * max_burn_rate(target)):.6g}")


def nearest_window(windows: Sequence[int], ideal: float) -> int:
    """The configured window closest to `ideal` on a log scale (ties go to the shorter window)."""
    return min(windows, key=lambda w: (abs(math.log(w / ideal)), w))


def tiers_for(slo: SLOConfig, windows: Sequence[int]) -> list[Tier]:
    """The tiers of one SLO over the configured windows; ticket SLOs get only the ticket tiers."""
    out = []
    for spec in TIER_SPECS:
        if slo.severity == "ticket" and spec.severity == "page":
            continue
        long_w = nearest_window(windows, slo.period / spec.period_divisor)
        short_w = nearest_window(windows, long_w / SHORT_WINDOW_DIVISOR)
        nominal = spec.budget_share * slo.period / long_w
        out.append(Tier(spec.name, spec.severity, long_w, short_w, nominal, capped_threshold(nominal, slo.target)))
    return out

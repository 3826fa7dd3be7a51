"""Multi-window multi-burn-rate tiers for label SLOs, and why they are capped (docs/alerting.md).

The SRE workbook's tiers for a 30d period spend 2% of the budget in 1h (14.4x), 5% in 6h (6x), 10% in 1d
(3x) and 10% in 3d (1x), each confirmed over a short window of 1/12 of the long one. A burn rate cannot
exceed 1/(1 - target) (every event an error): at target 0.85 that is 6.67x, so a 14.4x tier would never
fire and a label that stops working entirely would page no one. Each threshold is therefore capped at a
share of the way from burn rate 1 (exactly on budget) to that maximum: 0.9 for the fast page tier, 0.5
for the slower ones, whose long windows are mostly filled with events from before an incident (at 0.9 a
6h tier would wait 5.4h on a total collapse). The cap never drops below 1, so no tier fires while the SLO
is met, and a collapse fires every tier at any target; targets from about 0.94 up keep the workbook's
numbers unchanged.

page_slow also judges a mid window (the configured window nearest to the geometric mean of its short and
long windows: 2h for 6h and 30m). After an onset its 6h window stays diluted by hours of events from before
it; a thin label (a 1% label gets about a dozen labelled positives an hour at night) would page only when
the 6h window had turned over, long after the evidence was in. The mid window pages on that evidence
instead: its error ratio above the budget beyond noise, with the tier's own error ratio inside its
interval (monitor.rules.alerts.burn_rules).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from monitor.config import SLOConfig

SHORT_WINDOW_DIVISOR: Final = 12


@dataclass(frozen=True)
class TierSpec:
    name: str  # the burnrate_tier label value
    severity: str
    budget_share: float  # of the period's error budget spent over the long window before firing
    period_divisor: int  # long window = period / divisor (1h for a 30d period at 720)
    cap_share: float  # threshold <= 1 + cap_share * (max burn rate - 1)
    mid: bool = False  # also judged on a window between the short and the long one


TIER_SPECS: Final = (
    TierSpec("page_fast", "page", 0.02, 720, 0.9),
    TierSpec("page_slow", "page", 0.05, 120, 0.5, mid=True),
    TierSpec("ticket_fast", "ticket", 0.10, 30, 0.5),
    TierSpec("ticket_slow", "ticket", 0.10, 10, 0.5),
)
TIER_NAMES: Final = tuple(t.name for t in TIER_SPECS)


@dataclass(frozen=True)
class Tier:
    name: str
    severity: str
    long_window: int  # seconds, one of the configured windows
    short_window: int
    nominal: float  # the workbook's burn rate for this budget share over the actual long window
    cap: float  # 1 + cap_share * (max burn rate - 1)
    threshold: float  # min(nominal, cap), rounded for the rule text
    mid_window: int | None = None  # strictly between short and long, when the tier has one


def max_burn_rate(target: float) -> float:
    """The burn rate when every event is an error."""
    return 1.0 / (1.0 - target)


def burn_cap(target: float, share: float) -> float:
    """The burn rate `share` of the way from 1 (on budget) to every event an error."""
    return 1.0 + share * (max_burn_rate(target) - 1.0)


def capped_threshold(nominal: float, target: float, share: float) -> float:
    # Never below 1: a tier must not fire while the SLO is met. The nominal burn (budget share x period /
    # long window) drops under 1 when the configured windows are far from the workbook's ideal ones.
    return float(f"{max(1.0, min(nominal, burn_cap(target, share))):.6g}")


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
        cap = burn_cap(slo.target, spec.cap_share)
        mid_w = nearest_window(windows, math.sqrt(long_w * short_w)) if spec.mid else None
        out.append(Tier(spec.name, spec.severity, long_w, short_w, nominal, cap,
                        capped_threshold(nominal, slo.target, spec.cap_share),
                        mid_w if mid_w is not None and short_w < mid_w < long_w else None))
    return out

"""Whether an SLO burn tier's alert would fire on one evaluation: the generated rule's condition in Python.

The one owner of that decision for everything that shows it without Prometheus: the terminal summary
(`monitor replay`), the HTML report (its tier table, headline and timeline strips) and the expectations of
the generated promtool tests, which is how Prometheus itself checks this code against the rule text of
monitor.rules.alerts.burn_rules. Only the `for:` and `keep_firing_for:` durations are left out: a snapshot
has no history.

The rule, over the counts of all versions together: the long window burns above the tier's threshold on
at least min_events events and the Wilson and Poisson lower bounds of its error ratio are above the
budget. Or, for a tier with a mid window: the mid window shows the same violation beyond noise and its
Wilson upper bound is above threshold x budget. Unless the short window's Wilson upper bound is at or
under threshold x budget (recovered beyond doubt; a short window without events does not veto).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from monitor import conventions as c
from monitor.config import ModelConfig, SLOConfig, format_duration
from monitor.engine.figures import Figures
from monitor.rules import alerts as a
from monitor.rules import stats
from monitor.rules.options import RuleOptions
from monitor.rules.promql import num
from monitor.rules.tiers import tiers_for

# Why a tier is quiet, for views that style each reason; "fires" when it is not.
Reason = Literal["fires", "no_data", "below_threshold", "few_events", "noise", "recovered"]


class WindowCounts(NamedTuple):
    """An SLO's counts over one window, all versions together: events (TP+FN for recall, TP+FP for
    precision) and errors among them (FN, FP)."""

    events: float
    errors: float


NO_EVENTS = WindowCounts(0.0, 0.0)


@dataclass(frozen=True)
class Verdict:
    fires: bool
    reason: Reason
    why: str  # one line a person can check against the numbers


@dataclass(frozen=True)
class TierState:
    name: str
    severity: str
    long_window: str
    short_window: str
    mid_window: str | None
    threshold: float
    long_burn: float | None
    short_burn: float | None
    long_events: float
    fires: bool
    reason: Reason
    why: str


def burn_rate(counts: WindowCounts, target: float) -> float | None:
    """The error ratio over the budget as the recording rule writes it (the target as printed there);
    None without events."""
    if counts.events <= 0:
        return None
    return counts.errors / counts.events / (1 - float(num(target)))


def _noise(opts: RuleOptions, target: float, counts: WindowCounts) -> str | None:
    """Why `counts` do not show the SLO violated beyond noise (monitor.rules.alerts.violated), or None
    when they do."""
    budget = a.budget(target)
    lower = stats.wilson_cc_lower(counts.errors, counts.events, opts.burn_z)
    if lower <= budget:
        return f"its error ratio's lower bound {lower:.3g} ≤ the budget {budget:g}"
    poisson = stats.poisson_lower(counts.errors, counts.events, opts.burn_z)
    if poisson <= budget:
        return f"its error ratio's Poisson lower bound {poisson:.3g} ≤ the budget {budget:g}"
    return None


def verdict(opts: RuleOptions, target: float, threshold: float, min_events: int, long: WindowCounts,
            short: WindowCounts, long_window: str = "long", short_window: str = "short",
            mid: WindowCounts | None = None, mid_window: str = "mid") -> Verdict:
    """The burn alert's expression (monitor.rules.alerts.burn_rules) on one evaluation, and why. `mid`:
    the counts of the tier's mid window, for a tier that has one."""
    long_burn, short_burn = burn_rate(long, target), burn_rate(short, target)
    limit = a.ratio_threshold(target, threshold)
    quiet: Verdict | None = None
    if long_burn is None:
        quiet = Verdict(False, "no_data", f"no labelled events over {long_window}")
    elif long_burn <= threshold:
        quiet = Verdict(False, "below_threshold", f"{long_window} burn {_x(long_burn)} ≤ {_x(threshold)}")
    elif long.events < min_events:
        quiet = Verdict(False, "few_events",
                        f"{long_window} holds {long.events:,.0f} events < min_events {min_events}")
    elif (why := _noise(opts, target, long)) is not None:
        quiet = Verdict(False, "noise", f"{long_window} burn {_x(long_burn)}, but {why} (sampling noise)")
    fired = f"{long_window} burn {_x(long_burn)} > {_x(threshold)}"
    if quiet is not None and mid is not None and mid.events > 0 and _noise(opts, target, mid) is None:
        upper = stats.wilson_cc_upper(mid.errors, mid.events, opts.burn_z)
        if upper > limit:
            quiet = None
            fired = (f"{mid_window} error ratio {mid.errors / mid.events:.3g} on {mid.events:,.0f} events: over the "
                     f"budget beyond noise, {limit:g} within its bounds ({long_window} burn {_x(long_burn)})")
    if quiet is not None:
        return quiet
    if short.events > 0:
        upper = stats.wilson_cc_upper(short.errors, short.events, opts.burn_z)
        if upper <= limit:
            return Verdict(False, "recovered", f"{short_window} burn {_x(short_burn)}, its error ratio's upper "
                                               f"bound {upper:.3g} ≤ {limit:g} (recovered)")
    return Verdict(True, "fires", fired + (
        f", {short_window} {_x(short_burn)}" if short_burn is not None else f", {short_window} empty (no veto)"))


def fired_value(opts: RuleOptions, target: float, threshold: float, min_events: int, long: WindowCounts,
                mid: WindowCounts | None) -> float | None:
    """The alert's value when it fires: the long window's burn when the long-window condition holds, else
    the mid window's (PromQL's `or` keeps the left side's series)."""
    v = verdict(opts, target, threshold, min_events, long, NO_EVENTS)
    return burn_rate(long, target) if v.fires else burn_rate(mid, target) if mid is not None else None


def slo_counts(figures: Figures, model: ModelConfig) -> dict[tuple[str, str], WindowCounts]:
    """(SLO name, window) -> its counts, summed over versions from the label outcome counts, as the
    recording rules sum them."""
    outcomes: dict[tuple[str, str, str], float] = defaultdict(float)
    for s in figures.samples:
        if s.metric.name == c.LABEL_OUTCOMES.name and s.labels[0] == model.name:
            _, _, label, outcome, window = s.labels
            outcomes[(label, outcome, window)] += s.value
    tp, fp, fn, _ = c.OUTCOMES
    windows = {k[2] for k in outcomes}
    out = {}
    for slo in model.slos:
        error = fn if slo.objective == "recall" else fp
        for w in windows:
            errors = outcomes.get((slo.label, error, w), 0.0)
            out[(slo.name, w)] = WindowCounts(outcomes.get((slo.label, tp, w), 0.0) + errors, errors)
    return out


def tier_states(opts: RuleOptions, windows: Sequence[int], model: ModelConfig, slo: SLOConfig,
                counts: Mapping[str, WindowCounts]) -> list[TierState]:
    """Every tier of one SLO on one evaluation; `counts` by window name (a missing window: no events)."""
    out = []
    for t in tiers_for(slo, windows):
        lw, sw = format_duration(t.long_window), format_duration(t.short_window)
        mw = format_duration(t.mid_window) if t.mid_window is not None else None
        long, short = counts.get(lw, NO_EVENTS), counts.get(sw, NO_EVENTS)
        mid = counts.get(mw, NO_EVENTS) if mw is not None else None
        v = verdict(opts, slo.target, t.threshold, model.min_events, long, short, lw, sw, mid, mw or "mid")
        out.append(TierState(t.name, t.severity, lw, sw, mw, t.threshold, burn_rate(long, slo.target),
                             burn_rate(short, slo.target), long.events, v.fires, v.reason, v.why))
    return out


def _x(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.2f}×"

"""promtool unit tests for every generated alert, generated from the same config.

Each scenario feeds two workers' series (so every test also checks that the rules sum across workers)
and asserts the alert fires with the exact labels and annotation text when it should, and stays silent
on a healthy series and below its sample-size guard. A recording case checks the recomputed ratios
against the same formulas evaluated here in Python.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from monitor import conventions as c
from monitor.config import ModelConfig, MonitorConfig, SLOConfig, format_duration
from monitor.rules import alerts as a
from monitor.rules import names as n
from monitor.rules import stats, texts
from monitor.rules.options import RuleOptions, Windows, duration_seconds
from monitor.rules.promql import num, series
from monitor.rules.tier_state import WindowCounts, burn_rate, fired_value, verdict
from monitor.rules.tiers import Tier, tiers_for

WORKERS: Final = ("w0", "w1")
VERSION: Final = "v1"
MARGIN_MINUTES: Final = 10
# Rules are evaluated every 5 minutes of test time (samples stay 1 minute apart): `for:` and the windows
# behave as in production, and the whole suite runs five times faster than at Prometheus' usual 1m.
EVAL_MINUTES: Final = 5
TP, FP, FN, TN = c.OUTCOMES
COUNT, SCORE_SUM, POSITIVES = c.CALIBRATION_STATS
BINS: Final = tuple(str(b) for b in range(10))
# Not uniform, so that summing the reference across workers (instead of deduplicating it) changes the PSI.
REFERENCE: Final = (40.0, 60.0, 80.0, 100.0, 120.0, 120.0, 100.0, 80.0, 60.0, 40.0)
PAGE, TICKET, INFO = c.SEVERITIES


# --- the reference formulas ------------------------------------------------------------------------------

def psi(reference: Sequence[float], current: Sequence[float], alpha: float = c.PSI_ALPHA) -> float:
    k = len(reference)
    rt, ct = sum(reference) + alpha * k, sum(current) + alpha * k
    return sum(((x + alpha) / ct - (r + alpha) / rt) * math.log(((x + alpha) / ct) / ((r + alpha) / rt))
               for r, x in zip(reference, current, strict=True))


def burn(errors: float, events: float, target: float) -> float | None:
    return burn_rate(WindowCounts(events, errors), target)


# --- series ------------------------------------------------------------------------------------------------

def _value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _split(v: float) -> tuple[float, float]:
    """60/40 between the two workers, integers kept integral."""
    if float(v).is_integer():
        first = float(round(v * 0.6))
        return first, float(v) - first
    return v * 0.6, v - v * 0.6


@dataclass
class Case:
    name: str
    alert: str
    minutes: int  # evaluation time; series run a minute beyond it
    job: str
    expected: list[dict[str, Any]] = field(default_factory=list)
    checks: list[tuple[str, Mapping[str, str], float]] = field(default_factory=list)  # (recorded, labels, value)
    lines: dict[str, str] = field(default_factory=dict)

    def _put(self, name: str, labels: Mapping[str, str], worker: str, values: str) -> None:
        self.lines[series(name, {**labels, n.L_INSTANCE: worker, n.L_JOB: self.job})] = values

    def gauge(self, metric: c.MetricDef, labels: Mapping[str, str], value: float, additive: bool = True) -> None:
        """An additive gauge split across the workers, or a constant every worker exports in full."""
        shares = _split(value) if additive else (value,) * len(WORKERS)
        for worker, share in zip(WORKERS, shares, strict=True):
            self._put(metric.name, labels, worker, f"{_value(share)}x{self.minutes + 1}")

    def per_worker(self, metric: c.MetricDef, labels: Mapping[str, str], values: Sequence[float]) -> None:
        for worker, v in zip(WORKERS, values, strict=True):
            self._put(metric.name, labels, worker, f"{_value(v)}x{self.minutes + 1}")

    def counter(self, name: str, labels: Mapping[str, str], per_minute: float, start: float = 0) -> None:
        for worker, share in zip(WORKERS, _split(per_minute), strict=True):
            self._put(name, labels, worker, f"{_value(start)}+{_value(share)}x{self.minutes + 1}")

    def expect(self, labels: Mapping[str, str], text_key: str, runbook: str, fixed: Mapping[str, str],
               value: float | None = None) -> None:
        self.expected.append({
            "exp_labels": dict(sorted(labels.items())),
            "exp_annotations": texts.render(text_key, runbook, fixed, labels, value),
        })

    def render(self) -> dict[str, Any]:
        at = f"{self.minutes}m"
        out: dict[str, Any] = {
            "name": self.name,
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in self.lines.items()],
        }
        if self.alert:
            expected = sorted(self.expected, key=lambda e: sorted(e["exp_labels"].items()))
            out["alert_rule_test"] = [{"eval_time": at, "alertname": self.alert, "exp_alerts": expected}]
        if self.checks:
            # Tolerance instead of exact floats: PromQL and Python may sum in a different order.
            out["promql_expr_test"] = [
                {"expr": f"abs({series(name, labels)} - {value!r}) < bool 1e-9", "eval_time": at,
                 "exp_samples": [{"labels": series("", labels), "value": 1}]}
                for name, labels, value in self.checks
            ]
        return out


def _minutes(opts: RuleOptions, alert: str, tier: str | None = None) -> int:
    """Evaluation time: past the `for:` duration, on the evaluation grid (promtool checks only there)."""
    minutes = math.ceil(duration_seconds(opts.for_duration(alert, tier)) / 60) + MARGIN_MINUTES
    return EVAL_MINUTES * math.ceil(minutes / EVAL_MINUTES)


# --- SLO burn ---------------------------------------------------------------------------------------------

WindowState = Mapping[int, tuple[float, float]]  # window seconds -> (events, errors)


def _burn_series(case: Case, model: ModelConfig, slo: SLOConfig, state: WindowState) -> None:
    error_outcome = FN if slo.objective == "recall" else FP
    other = FP if slo.objective == "recall" else FN
    for window, (events, errors) in state.items():
        w = format_duration(window)
        counts = {TP: events - errors, error_outcome: errors, other: 0.0, TN: events}
        for outcome, value in counts.items():
            labels = {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_LABEL: slo.label, c.L_OUTCOME: outcome,
                      c.L_WINDOW: w}
            case.gauge(c.LABEL_OUTCOMES, labels, value)
        case.gauge(c.SLO_EVENTS, {c.L_MODEL: model.name, c.L_LABEL: slo.label, c.L_SLO: slo.name, c.L_WINDOW: w},
                   events)


def tier_fires(opts: RuleOptions, tier: Tier, slo: SLOConfig, min_events: int, state: WindowState) -> float | None:
    """The rule's condition in Python (monitor.rules.tier_state, which the summary and the report show):
    the long-window burn when the tier fires, else None."""
    long, short = WindowCounts(*state[tier.long_window]), WindowCounts(*state[tier.short_window])
    mid = WindowCounts(*state[tier.mid_window]) if tier.mid_window is not None else None
    if not verdict(opts, slo.target, tier.threshold, min_events, long, short, mid=mid).fires:
        return None
    return fired_value(opts, slo.target, tier.threshold, min_events, long, mid)


def _burn_cases(opts: RuleOptions, cfg: MonitorConfig, model: ModelConfig, slo: SLOConfig) -> Iterator[Case]:
    alert = c.ALERT_LABEL_ERROR_BUDGET_BURN
    tiers = tiers_for(slo, cfg.windows)
    events = float(max(2000, 2 * model.min_events))
    budget = 1 - slo.target
    healthy_errors = math.floor(events * budget / 2)
    collapse = {w: (events, events) for w in cfg.windows}
    first, second = tiers[0], tiers[min(1, len(tiers) - 1)]
    few = float(max(50, model.min_events))
    scenarios: list[tuple[str, WindowState]] = [
        ("total collapse", collapse),
        ("healthy at half the budget", {w: (events, healthy_errors) for w in cfg.windows}),
        # Noise: a healthy label measured on few events (a 0.91 recall on 50 events at target 0.85), and an
        # error ratio above the budget that the sample cannot tell from it. A fixed min_events fired these.
        (f"healthy at 0.6 of the budget measured on {few:.0f} events (noise)",
         {w: (few, float(round(0.6 * budget * few))) for w in cfg.windows}),
        (f"error ratio 1.2x the budget measured on {few:.0f} events (noise)",
         {w: (few, float(max(1, round(1.2 * budget * few)))) for w in cfg.windows}),
        # A rare label's collapse: its windows hold a few dozen labelled events. Over the budget beyond
        # noise, and the measured burn above the page thresholds at low targets.
        ("error ratio 0.7 on 60 events (a rare label's collapse)", {w: (60.0, 42.0) for w in cfg.windows}),
        # 3 errors in 300 events: 10x the budget of a 0.999 target, which the Wilson bound cannot tell
        # from a label on budget (it expects 0.3 errors): silent.
        ("3 errors in 300 events (noise at a high target)", {w: (300.0, 3.0) for w in cfg.windows}),
        (f"collapse on {model.min_events - 1} events (below min_events)",
         {w: (model.min_events - 1.0, model.min_events - 1.0) for w in cfg.windows}),
        (f"collapse on {model.min_events} events, min_events reached only summed over the workers",
         {w: (float(model.min_events), float(model.min_events)) for w in cfg.windows}),
        (f"collapse, recovered over the last {format_duration(first.short_window)}",
         {**collapse, first.short_window: (events, 0.0)}),
        (f"collapse, no labelled events over the last {format_duration(first.short_window)}",
         {**collapse, first.short_window: (0.0, 0.0)}),
        (f"collapse, the last {format_duration(second.short_window)} with 2 errors in 10 events (a rare label)",
         {**collapse, second.short_window: (10.0, 2.0)}),
    ]
    mid = next((t for t in tiers if t.mid_window is not None), None)
    if mid is not None and mid.mid_window is not None:
        # A thin label hours after an onset: the long window still mostly from before it (error ratio 1.5x
        # the budget on 150 events), the mid window mostly after (3x on 49; 10 events of the short window
        # with 5 errors). The mid window pages. A busy label halfway between the budget and the tier's error
        # ratio, with 100 errors per window (its Wilson interval excludes the tier's error ratio), does not.
        thin = {w: (150.0, float(round(1.5 * budget * 150))) for w in cfg.windows}
        halfway = (budget + a.ratio_threshold(slo.target, mid.threshold)) / 2
        busy = float(math.ceil(100 / halfway))
        scenarios += [
            (f"a thin label's onset: {format_duration(mid.mid_window)} at 3x the budget on 49 events",
             {**thin, mid.mid_window: (49.0, float(min(49, round(3 * budget * 49)))), mid.short_window: (10.0, 5.0)}),
            (f"a busy label halfway to the {mid.name} error ratio on {busy:,.0f} events",
             {w: (busy, 100.0) for w in cfg.windows}),
        ]
    minutes = max(_minutes(opts, alert, t.name) for t in tiers)
    for title, state in scenarios:
        case = Case(f"{alert} {model.name}/{slo.name}: {title}", alert, minutes, opts.job)
        _burn_series(case, model, slo, state)
        for tier in tiers:
            value = tier_fires(opts, tier, slo, model.min_events, state)
            if value is not None:
                labels = {c.L_MODEL: model.name, c.L_LABEL: slo.label, c.L_SLO: slo.name,
                          c.L_SEVERITY: tier.severity, c.L_BURNRATE_TIER: tier.name}
                case.expect(labels, a.burn_text_key(tier), opts.runbook_url(alert),
                            a.burn_fixed(opts, model, slo, tier), value)
        yield case


def _segment_burn_series(case: Case, model: ModelConfig, slo: SLOConfig, value: str, state: WindowState) -> None:
    """One segment value's outcome counts (the exported mlmon_segment_label_outcomes) per window."""
    assert slo.per_segment is not None
    error_outcome = FN if slo.objective == "recall" else FP
    other = FP if slo.objective == "recall" else FN
    metric = c.SEGMENT_TWINS[c.LABEL_OUTCOMES.name]
    for window, (events, errors) in state.items():
        counts = {TP: events - errors, error_outcome: errors, other: 0.0, TN: events}
        for outcome, count in counts.items():
            case.gauge(metric, {c.L_MODEL: model.name, c.L_SEGMENT: slo.per_segment, c.L_SEGMENT_VALUE: value,
                                c.L_LABEL: slo.label, c.L_OUTCOME: outcome, c.L_WINDOW: format_duration(window)},
                       count)


def _segment_burn_cases(opts: RuleOptions, cfg: MonitorConfig, model: ModelConfig, slo: SLOConfig) -> Iterator[Case]:
    """A per-segment SLO: one value burning, the others healthy. The whole model's counts are the sum of
    its values', so its own tiers are judged too (diluted by the healthy values, they stay silent where
    the burning value is small); each value's alert carries its segment and value."""
    alert = c.ALERT_LABEL_ERROR_BUDGET_BURN
    tiers = tiers_for(slo, cfg.windows)
    budget = 1 - slo.target
    small = float(max(200, 2 * model.min_events))
    # Enough healthy events (at half the budget) that the whole model's error ratio stays at 3/4 of it.
    big = float(max(5000, math.ceil(4 * small * slo.target / budget)))
    healthy = (big, float(math.floor(big * budget / 2)))
    thin = model.min_events - 1.0
    values = ("v0", "v1", c.SEGMENT_OTHER, c.SEGMENT_MISSING)
    scenarios = [  # (title, {value: (events, errors)} in every window)
        (f"v0 collapsed on {small:.0f} events, the whole model under its budget",
         {"v0": (small, small), "v1": healthy, c.SEGMENT_OTHER: (small, 0.0), c.SEGMENT_MISSING: (small, 0.0)}),
        (f"{c.SEGMENT_OTHER} collapsed on {small:.0f} events (evaluated like any value)",
         {"v0": healthy, "v1": (small, 0.0), c.SEGMENT_OTHER: (small, small), c.SEGMENT_MISSING: (small, 0.0)}),
        (f"v1 collapsed on {thin:.0f} events (below min_events: only a mid window's bounds can page)",
         {"v0": healthy, "v1": (thin, thin), c.SEGMENT_OTHER: (small, 0.0), c.SEGMENT_MISSING: (small, 0.0)}),
        ("every value collapsed", {v: (small, small) for v in values}),
    ]
    minutes = max(_minutes(opts, alert, t.name) for t in tiers)
    for title, per_value in scenarios:
        case = Case(f"{alert} {model.name}/{slo.name} per {slo.per_segment}: {title}", alert, minutes, opts.job)
        whole = (sum(e for e, _ in per_value.values()), sum(x for _, x in per_value.values()))
        _burn_series(case, model, slo, {w: whole for w in cfg.windows})
        states: list[tuple[dict[str, str], WindowState]] = [({}, {w: whole for w in cfg.windows})]
        for value, counts in per_value.items():
            state = {w: counts for w in cfg.windows}
            _segment_burn_series(case, model, slo, value, state)
            segment = {c.L_SEGMENT: slo.per_segment, c.L_SEGMENT_VALUE: value}
            states.append((segment, state))
            value_burn = burn(counts[1], counts[0], slo.target)
            assert value_burn is not None
            case.checks.append((n.SEGMENT_ERROR_BUDGET_BURN_RATE, {
                c.L_MODEL: model.name, c.L_LABEL: slo.label, c.L_SLO: slo.name, **segment,
                c.L_WINDOW: format_duration(cfg.windows[0])}, value_burn))
        for segment, state in states:
            for tier in tiers:
                fired = tier_fires(opts, tier, slo, model.min_events, state)
                if fired is not None:
                    labels = {c.L_MODEL: model.name, c.L_LABEL: slo.label, c.L_SLO: slo.name,
                              c.L_SEVERITY: tier.severity, c.L_BURNRATE_TIER: tier.name, **segment}
                    case.expect(labels, a.burn_text_key(tier, bool(segment)), opts.runbook_url(alert),
                                a.burn_fixed(opts, model, slo, tier), fired)
        yield case


def _regression_cases(opts: RuleOptions, cfg: MonitorConfig, model: ModelConfig, slo: SLOConfig) -> Iterator[Case]:
    """A canary (10% of the traffic) against the main version, on the SLO's regression windows."""
    alert = c.ALERT_VERSION_REGRESSION
    windows = a.regression_windows(cfg, slo)
    budget = 1 - slo.target
    main_n, canary_n = 900.0, 100.0
    healthy = 0.6 * budget
    scenarios = [  # (title, canary events, canary errors, main errors)
        ("canary collapsed", canary_n, canary_n * 0.8, round(main_n * healthy)),
        ("canary as good as the main version", canary_n, round(canary_n * healthy), round(main_n * healthy)),
        ("canary worse on 8 events (noise)", 8.0, min(8.0, float(max(1, round(8 * 3 * budget)))),
         round(main_n * healthy)),
    ]
    error_outcome = FN if slo.objective == "recall" else FP
    for title, cn, ce, me in scenarios:
        case = Case(f"{alert} {model.name}/{slo.name}: {title}", alert, _minutes(opts, alert), opts.job)
        for window in windows:
            for version, (events, errors) in (("main", (main_n, float(me))), ("canary", (cn, float(ce)))):
                for outcome, value in ((TP, events - errors), (error_outcome, errors)):
                    case.gauge(c.LABEL_OUTCOMES, {c.L_MODEL: model.name, c.L_VERSION: version, c.L_LABEL: slo.label,
                                                  c.L_OUTCOME: outcome, c.L_WINDOW: window}, value)
        z = stats.two_proportion_z(ce, cn, me, main_n)
        fires = (z is not None and z >= opts.regression_z
                 and stats.wilson_cc_lower(ce, cn, opts.burn_z) > 1 - float(num(slo.target)))
        if fires:
            labels = {c.L_MODEL: model.name, c.L_VERSION: "canary", c.L_LABEL: slo.label, c.L_SLO: slo.name,
                      c.L_SEVERITY: slo.severity}
            case.expect(labels, alert, opts.runbook_url(alert), a.regression_fixed(opts, slo, windows), z)
        yield case


def estimated_upper(objective: str, tp: float, fn: float, pp: float, z: float) -> float | None:
    """The recorded upper bound of the estimated recall (precision) in Python; None when absent."""
    misses, events = (fn, tp + fn) if objective == "recall" else (pp - tp, pp)
    return None if events < 1 else 1 - stats.wilson_cc_lower(misses, events, z)


def _estimated_cases(opts: RuleOptions, model: ModelConfig, slo: SLOConfig, w: Windows) -> Iterator[Case]:
    alert = c.ALERT_ESTIMATED_QUALITY_LOW
    low = slo.target - 0.2
    scenarios = [  # (title, expected true positives, false negatives, predicted positives)
        ("estimated far under the target on 400 expected positives", 400 * low, 400 * (1 - low), 400.0),
        ("estimated under the target on 10 expected positives (noise)", 10 * (slo.target - 0.1),
         10 * (1.1 - slo.target), 10.0),
        ("estimated at the target on 400 expected positives", 400 * slo.target, 400 * (1 - slo.target), 400.0),
        ("nothing calibrated yet (thin bins count as true positives, no misses)", 300.0, 0.0, 300.0),
    ]
    for title, tp, fn, pp in scenarios:
        case = Case(f"{alert} {model.name}/{slo.name}: {title}", alert, _minutes(opts, alert), opts.job)
        key = {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_LABEL: slo.label, c.L_WINDOW: w.drift}
        for metric, value in ((c.ESTIMATED_TRUE_POSITIVES, tp), (c.ESTIMATED_FALSE_NEGATIVES, fn),
                              (c.PENDING_PREDICTED_POSITIVES, pp)):
            case.gauge(metric, key, value)
        upper = estimated_upper(slo.objective, tp, fn, pp, opts.burn_z)
        if upper is not None and upper < float(num(slo.target)):
            labels = {**key, c.L_SLO: slo.name, c.L_SEVERITY: TICKET}
            case.expect(labels, alert, opts.runbook_url(alert), a.estimated_fixed(opts, slo, w), upper)
        yield case


# --- drift --------------------------------------------------------------------------------------------------

def _drift_cases(opts: RuleOptions, model: ModelConfig, w: Windows, *, alert: str, item_label: str, item: str,
                 bin_metric: c.MetricDef, ref_metric: c.MetricDef, window: str) -> Iterator[Case]:
    """Every current value in one reference decile (drifted), spread like the reference, or too few."""
    minimum = model.drift.min_samples
    big = float(max(1000, 2 * minimum))
    reference = list(REFERENCE)
    scenarios = [
        ("drifted", [big] + [0.0] * (len(BINS) - 1), True),
        ("spread like the reference", [big * r / sum(reference) for r in reference], False),
        (f"drifted on {minimum - 1} values (below min_samples)", [minimum - 1.0] + [0.0] * (len(BINS) - 1), False),
    ]
    for scenario, current, fires in scenarios:
        case = Case(f"{alert} {model.name}/{item}: {scenario}", alert, _minutes(opts, alert), opts.job)
        key = {c.L_MODEL: model.name, c.L_VERSION: VERSION, item_label: item, c.L_WINDOW: window}
        for b, (ref, cur) in enumerate(zip(reference, current, strict=True)):
            case.gauge(bin_metric, {**key, c.L_BIN: BINS[b]}, cur)
            case.gauge(ref_metric, {c.L_MODEL: model.name, item_label: item, c.L_BIN: BINS[b]}, ref, additive=False)
        case.gauge(c.WINDOW_PREDICTIONS, {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_WINDOW: window},
                   sum(current))
        value = psi(reference, current)
        recorded = n.FEATURE_PSI if bin_metric is c.FEATURE_BIN else n.SCORE_PSI
        case.checks.append((recorded, key, value))
        if fires:
            case.expect({**key, c.L_SEVERITY: TICKET}, alert, opts.runbook_url(alert), a.drift_fixed(model, window),
                        value)
        yield case


def _collapse_cases(opts: RuleOptions, model: ModelConfig, w: Windows) -> Iterator[Case]:
    """Series on every collapse window, volumes proportional to the window's length."""
    alert = c.ALERT_LABEL_COLLAPSE
    label, ref_rate = model.labels[0], 0.3
    windows = [(window, duration_seconds(window)) for window in w.collapse]
    shortest = windows[0][1]
    big = float(max(1000, math.ceil(opts.collapse_min_expected * 10 / ref_rate)))
    small = float(math.floor((opts.collapse_min_expected - 1) / ref_rate))
    night = float(math.ceil(opts.collapse_min_expected / ref_rate * shortest / windows[-1][1]))
    scenarios = [  # (title, predictions in the shortest window, positives there, kind)
        ("predicted for nothing", big, 0.0, n.COLLAPSE_NOTHING),
        ("predicted for everything", big, big, n.COLLAPSE_EVERYTHING),
        ("predicted at the reference rate", big, big * ref_rate, None),
        ("predicted at twice the collapse threshold", big, 2 * opts.collapse_factor * ref_rate * big, None),
        ("not predicted at twice the collapse threshold", big,
         big - 2 * opts.collapse_factor * (1 - ref_rate) * big, None),
    ]
    if len(windows) > 1:
        scenarios.append((f"predicted for nothing at night ({night:.0f} predictions in {windows[0][0]}: only the "
                          f"{windows[-1][0]} window expects enough)", night, 0.0, n.COLLAPSE_NOTHING))
    total_small = small * shortest / windows[-1][1]
    scenarios.append((f"predicted for nothing on {small:.0f} predictions in {windows[-1][0]} (reference expects "
                      "too few)", total_small, 0.0, None))
    for scenario, total, positives, kind in scenarios:
        case = Case(f"{alert} {model.name}/{label}: {scenario}", alert, _minutes(opts, alert), opts.job)
        for window, seconds in windows:
            scale = seconds / shortest
            key = {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_LABEL: label, c.L_WINDOW: window}
            case.gauge(c.PREDICTED_POSITIVES, key, positives * scale)
            case.gauge(c.WINDOW_PREDICTIONS, {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_WINDOW: window},
                       total * scale)
        case.gauge(c.REFERENCE_POSITIVE_RATE, {c.L_MODEL: model.name, c.L_LABEL: label}, ref_rate, additive=False)
        if kind:
            key = {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_LABEL: label}
            case.expect({**key, c.L_SEVERITY: PAGE, n.L_COLLAPSE: kind}, f"{alert}:{kind}", opts.runbook_url(alert),
                        a.collapse_fixed(opts, w), positives / total)
        yield case


def _calibration_cases(opts: RuleOptions, model: ModelConfig, w: Windows) -> Iterator[Case]:
    alert = c.ALERT_CALIBRATION_DRIFT
    label = (model.detail_labels or model.labels)[0] if model.detail_labels != [] else None
    if label is None:
        return
    big = float(20 * math.ceil(max(100, 2 * model.min_events) / 20))
    many, some = 4000.0, 100.0
    target_ece = 0.15
    scenarios = [  # (title, bin, count, mean score, positives)
        ("overconfident", 9, big, 0.95, 0.0),
        ("calibrated", 9, big, 0.95, 0.95 * big),
        ("miscalibrated by half the threshold", 9, big, 0.95, (0.95 - opts.ece_threshold / 2) * big),
        (f"overconfident on {model.min_events - 1} events (below min_events)", 9, model.min_events - 1.0, 0.95, 0.0),
        (f"ECE {target_ece} on {many:.0f} events", 5, many, 0.5, (0.5 - target_ece) * many),
        (f"ECE {target_ece} on {some:.0f} events (within noise of the threshold)", 5, some, 0.5,
         (0.5 - target_ece) * some),
    ]
    for scenario, top, count, mean, positives in scenarios:
        case = Case(f"{alert} {model.name}/{label}: {scenario}", alert, _minutes(opts, alert), opts.job)
        key = {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_LABEL: label, c.L_WINDOW: w.calibration[0]}
        for b in BINS:
            stats_ = {COUNT: count, SCORE_SUM: mean * count, POSITIVES: positives} if b == BINS[top] else \
                {COUNT: 0.0, SCORE_SUM: 0.0, POSITIVES: 0.0}
            for stat, value in stats_.items():
                case.gauge(c.CALIBRATION_BIN, {**key, c.L_BIN: b, c.L_STAT: stat}, value)
        ece = abs(positives - mean * count) / count
        noise = stats.ece_noise([(count, mean * count)], count)
        case.checks += [(n.LABEL_ECE, key, ece), (n.LABEL_ECE_NOISE, key, noise)]
        if ece > opts.ece_threshold + opts.ece_noise_factor * noise and count >= model.min_events:
            labels = {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_LABEL: label, c.L_SEVERITY: TICKET}
            case.expect(labels, alert, opts.runbook_url(alert), a.calibration_fixed(opts, model, w), ece)
        yield case


def _missing_cases(opts: RuleOptions, model: ModelConfig, w: Windows) -> Iterator[Case]:
    alert = c.ALERT_MISSING_FEATURES
    feature = model.features.all[0]
    big = float(2 * max(500, model.drift.min_samples))
    small = model.drift.min_samples - 1.0
    for scenario, total, missing, fires in (("half missing", big, big / 2, True), ("none missing", big, 0.0, False),
                                            (f"all missing in {small:.0f} predictions (below min_samples)",
                                             small, small, False)):
        case = Case(f"{alert} {model.name}/{feature}: {scenario}", alert, _minutes(opts, alert), opts.job)
        key = {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_FEATURE: feature, c.L_WINDOW: w.fast}
        case.gauge(c.FEATURE_MISSING, key, missing)
        case.gauge(c.WINDOW_PREDICTIONS, {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_WINDOW: w.fast}, total)
        if total:
            case.checks.append((n.FEATURE_MISSING_RATIO, key, missing / total))
        if fires:
            case.expect({**key, c.L_SEVERITY: TICKET}, alert, opts.runbook_url(alert), a.missing_fixed(model, w),
                        missing / total)
        yield case


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _latency_cases(opts: RuleOptions, model: ModelConfig) -> Iterator[Case]:
    """All observations in one histogram bucket: above the SLO (fires) or in the first bucket (silent)."""
    alert = c.ALERT_LATENCY_HIGH
    bounds = (*c.LATENCY_BUCKETS, math.inf)
    slo = model.latency_slo_seconds
    slow = next((i for i in range(1, len(c.LATENCY_BUCKETS)) if c.LATENCY_BUCKETS[i - 1] >= slo), None)
    scenarios = []
    if slow is not None:  # an SLO at or beyond the last finite bucket cannot be measured by this histogram
        scenarios.append(("p95 above the SLO", slow, True))
    if 0.95 * c.LATENCY_BUCKETS[0] < slo:
        scenarios.append(("p95 in the first bucket", 0, False))
    for scenario, bucket, fires in scenarios:
        case = Case(f"{alert} {model.name}: {scenario}", alert, _minutes(opts, alert), opts.job)
        key = {c.L_MODEL: model.name, c.L_VERSION: VERSION}
        for i, bound in enumerate(bounds):
            case.counter(f"{c.PREDICTION_LATENCY_SECONDS.name}_bucket", {**key, n.L_LE: _le(bound)},
                         60.0 if i >= bucket else 0.0)
        if fires:
            lower = c.LATENCY_BUCKETS[bucket - 1]
            p95 = lower + (c.LATENCY_BUCKETS[bucket] - lower) * 0.95
            case.expect({**key, c.L_SEVERITY: TICKET}, alert, opts.runbook_url(alert), a.latency_fixed(model), p95)
        yield case


def _cooccurrence_cases(opts: RuleOptions, model: ModelConfig, w: Windows) -> Iterator[Case]:
    """Two labels each on 20% of the predictions; in the reference they co-occur on 15% (P(B|A) = 0.75), so
    85% of the reference carries fewer than two labels."""
    alert = c.ALERT_LABEL_COOCCURRENCE_DRIFT
    first, second = model.labels[0], model.labels[1]
    ref_n, ref_rate, ref_both = 10000.0, 0.2, 1500.0
    big = float(max(2000, 10 * model.drift.min_samples))
    small = float(model.drift.min_samples)
    scenarios = [  # (title, predictions, each label's positives, both)
        ("the pair became independent", big, 0.2 * big, 0.04 * big),
        ("the pair co-occurs as in the reference", big, 0.2 * big, 0.15 * big),
        (f"the pair weaker on {small:.0f} predictions (noise)", small, 0.2 * small, round(0.12 * small)),
        (f"the pair independent on {small - 1:.0f} predictions (below min_samples)", small - 1, 0.2 * (small - 1),
         round(0.04 * (small - 1))),
    ]
    for scenario, total, each, both in scenarios:
        case = Case(f"{alert} {model.name}: {scenario}", alert, _minutes(opts, alert), opts.job)
        mvw = {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_WINDOW: w.drift}
        case.gauge(c.WINDOW_PREDICTIONS, mvw, total)
        for label in (first, second):
            case.gauge(c.PREDICTED_POSITIVES, {**mvw, c.L_LABEL: label}, each)
            case.gauge(c.REFERENCE_POSITIVE_RATE, {c.L_MODEL: model.name, c.L_LABEL: label}, ref_rate, additive=False)
        pair = {**mvw, c.L_LABEL: first, c.L_LABEL_B: second}
        case.gauge(c.LABEL_PAIR_PREDICTED, pair, both)
        case.gauge(c.REFERENCE_LABEL_PAIR, {c.L_MODEL: model.name, c.L_LABEL: first, c.L_LABEL_B: second}, ref_both,
                   additive=False)
        case.gauge(c.REFERENCE_PREDICTIONS, {c.L_MODEL: model.name}, ref_n, additive=False)
        lor, var = stats.log_odds_ratio(total, each, each, both)
        ref_lor, ref_var = stats.log_odds_ratio(ref_n, ref_n * ref_rate, ref_n * ref_rate, ref_both)
        z = (lor - ref_lor) / math.sqrt(var + ref_var)
        case.checks += [(n.LABEL_PAIR_LOG_ODDS, pair, lor), (n.LABEL_PAIR_DEPENDENCY_Z, pair, z)]
        if abs(z) >= opts.pair_z and abs(lor - ref_lor) >= opts.pair_min_log_odds_change \
                and total >= model.drift.min_samples:
            case.expect({**pair, c.L_SEVERITY: TICKET}, alert, opts.runbook_url(alert),
                        a.cooccurrence_fixed(opts, model, w), abs(z))
        yield case


# --- health ----------------------------------------------------------------------------------------------------

def _stalled_cases(opts: RuleOptions, model: ModelConfig, w: Windows) -> Iterator[Case]:
    """Counters over two hours: ground truth that stops after 40 minutes, keeps flowing, trickles, or never
    existed."""
    alert = c.ALERT_GROUND_TRUTH_STALLED
    minutes = 120
    stop = 40
    scenarios = [  # (title, predictions per minute, ground truth per minute until `stop` (None: never), after)
        (f"ground truth stopped after {stop} minutes", 100.0, 60.0, 0.0, True),
        ("both flowing", 100.0, 60.0, 60.0, False),
        (f"a trickle of ground truth, none after {stop} minutes (its rate expects too few)", 10.0, 0.1, 0.0, False),
        ("predictions without any ground truth", 100.0, None, None, True),
        ("idle", 0.0, 0.0, 0.0, False),
    ]
    for scenario, predictions, before, after, fires in scenarios:
        case = Case(f"{alert} {model.name}: {scenario}", alert, minutes, opts.job)
        case.counter(c.PREDICTIONS_TOTAL.name, {c.L_MODEL: model.name, c.L_VERSION: VERSION}, predictions, 1000)
        if before is not None and after is not None:
            for worker, b, aft in zip(WORKERS, _split(before), _split(after), strict=True):
                reached = 1000 + b * stop
                case._put(c.GROUND_TRUTH_TOTAL.name, {c.L_MODEL: model.name}, worker,
                          f"1000+{_value(b)}x{stop} {_value(reached)}+{_value(aft)}x{minutes - stop}")
        if fires:
            case.expect({c.L_MODEL: model.name, c.L_SEVERITY: TICKET}, alert, opts.runbook_url(alert),
                        a.stalled_fixed(opts, w))
        yield case


def _lag_cases(opts: RuleOptions, cfg: MonitorConfig) -> Iterator[Case]:
    alert = c.ALERT_CONSUMER_LAG
    topic, limit = cfg.kafka.predictions_topic, opts.consumer_lag_threshold
    scenarios = [  # ((partition, worker-0 lag, worker-1 lag), ...): a partition reported twice counts once
        ("two partitions behind", (("0", limit, 0.0), ("1", 0.0, limit)), 2 * limit),
        ("one partition reported by both workers during a rebalance", (("0", 0.6 * limit, 0.6 * limit),), None),
    ]
    for scenario, partitions, value in scenarios:
        case = Case(f"{alert}: {scenario}", alert, _minutes(opts, alert), opts.job)
        for partition, *lags in partitions:
            case.per_worker(c.CONSUMER_LAG, {c.L_TOPIC: topic, c.L_PARTITION: partition}, lags)
        if value is not None:
            case.expect({c.L_TOPIC: topic, c.L_SEVERITY: TICKET}, alert, opts.runbook_url(alert),
                        {"threshold": num(limit)}, value)
        yield case


def _invalid_cases(opts: RuleOptions, model: ModelConfig) -> Iterator[Case]:
    alert = c.ALERT_INVALID_INPUT
    fixed = {"range": n.INVALID_RANGE, "threshold": num(opts.invalid_ratio)}
    valid_series = {c.TOPIC_PREDICTIONS: (c.PREDICTIONS_TOTAL, {c.L_MODEL: model.name, c.L_VERSION: VERSION}),
                    c.TOPIC_GROUND_TRUTH: (c.GROUND_TRUTH_TOTAL, {c.L_MODEL: model.name})}
    scenarios = [  # (topic, invalid per minute, valid per minute)
        ("a tenth of the predictions invalid", c.TOPIC_PREDICTIONS, 10.0, 100.0, 10 / 110),
        ("a tenth of the ground truth invalid", c.TOPIC_GROUND_TRUTH, 10.0, 100.0, 10 / 110),
        ("no invalid input", c.TOPIC_PREDICTIONS, 0.0, 100.0, None),
    ] + [(f"every event on {topic} invalid (no valid series at all)", topic, 10.0, None, 1.0)
         for topic in valid_series]
    for scenario, topic, invalid, valid, value in scenarios:
        case = Case(f"{alert}: {scenario}", alert, _minutes(opts, alert), opts.job)
        case.counter(c.INVALID_EVENTS_TOTAL.name, {c.L_TOPIC: topic, c.L_REASON: c.Reason.INVALID_JSON}, invalid)
        if valid is not None:
            metric, labels = valid_series[topic]
            case.counter(metric.name, labels, valid)
        if value is not None:
            case.expect({c.L_TOPIC: topic, c.L_SEVERITY: TICKET}, alert, opts.runbook_url(alert), fixed, value)
        yield case


def _down_cases(opts: RuleOptions) -> Iterator[Case]:
    alert = c.ALERT_DOWN
    for scenario, ups in (("one worker down", (0.0, 1.0)), ("every worker down", (0.0, 0.0)),
                          ("never scraped", None), ("all up", (1.0, 1.0))):
        case = Case(f"{alert}: {scenario}", alert, _minutes(opts, alert), opts.job)
        if ups is not None:
            for worker, up in zip(WORKERS, ups, strict=True):
                case.lines[series("up", {n.L_INSTANCE: worker, n.L_JOB: opts.job})] = f"{up:.0f}x{case.minutes + 1}"
                if not up:
                    case.expect({n.L_INSTANCE: worker, n.L_JOB: opts.job, c.L_SEVERITY: TICKET},
                                f"{alert}:instance", opts.runbook_url(alert), {})
        if ups is None or not any(ups):
            case.expect({n.L_JOB: opts.job, c.L_SEVERITY: PAGE}, f"{alert}:all", opts.runbook_url(alert),
                        {"job": opts.job})
        yield case


# --- retraining ------------------------------------------------------------------------------------------------

def _retraining_cases(opts: RuleOptions, cfg: MonitorConfig, model: ModelConfig, w: Windows) -> Iterator[Case]:
    alert = c.ALERT_RETRAINING_RECOMMENDED
    url = opts.runbook_url(alert)
    minutes = _minutes(opts, alert)
    big = float(max(1000, 2 * model.drift.min_samples))
    reference = list(REFERENCE)
    for drifted in (True, False):
        title = "every feature drifted" if drifted else "no feature drifted"
        case = Case(f"{alert} {model.name}: {title}", alert if model.features.all else "", minutes, opts.job)
        current = [big] + [0.0] * (len(BINS) - 1) if drifted else [big * r / sum(reference) for r in reference]
        for feature in model.features.all:
            key = {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_FEATURE: feature, c.L_WINDOW: w.slow}
            for b, (ref, cur) in enumerate(zip(reference, current, strict=True)):
                case.gauge(c.FEATURE_BIN, {**key, c.L_BIN: BINS[b]}, cur)
                case.gauge(c.REFERENCE_FEATURE_BIN, {c.L_MODEL: model.name, c.L_FEATURE: feature, c.L_BIN: BINS[b]},
                           ref, additive=False)
        if drifted and model.features.all:
            labels = {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_SEVERITY: INFO,
                      n.L_SIGNAL: n.SIGNAL_FEATURE_DRIFT}
            case.expect(labels, f"{alert}:{n.SIGNAL_FEATURE_DRIFT}", url, a.retrain_drift_fixed(model, w),
                        float(len(model.features.all)))
        if case.alert:
            yield case
    for slo in model.slos:
        slowest = tiers_for(slo, cfg.windows)[-1]
        events = float(max(2000, 2 * model.min_events))
        for title, errors in (("burning for days", events), ("healthy", math.floor(events * (1 - slo.target) / 2))):
            case = Case(f"{alert} {model.name}/{slo.name}: {title}", alert, minutes, opts.job)
            _burn_series(case, model, slo, {slowest.long_window: (events, errors)})
            value = burn(errors, events, slo.target)
            if value is not None and value > slowest.threshold:
                labels = {c.L_MODEL: model.name, c.L_LABEL: slo.label, c.L_SLO: slo.name, c.L_SEVERITY: INFO,
                          n.L_SIGNAL: n.SIGNAL_SLO_BURN}
                case.expect(labels, f"{alert}:{n.SIGNAL_SLO_BURN}", url, a.retrain_burn_fixed(slowest), value)
            yield case


# --- recorded ratios ---------------------------------------------------------------------------------------------

def _recording_case(opts: RuleOptions, cfg: MonitorConfig, model: ModelConfig) -> Case:
    """Precision, recall, F1, coverage, positive rate and burn rate from counts split across two workers."""
    case = Case(f"recording rules {model.name}: ratios from summed counts", "", MARGIN_MINUTES, opts.job)
    window = format_duration(cfg.windows[0])
    # Uneven between the workers, so that only a sum (not a max, nor a per-worker ratio) gives the figures.
    per_worker = {TP: (25.0, 5.0), FP: (2.0, 8.0), FN: (5.0, 15.0), TN: (30.0, 10.0)}
    counts = {outcome: sum(values) for outcome, values in per_worker.items()}
    for label in model.labels:
        for outcome, values in per_worker.items():
            case.per_worker(c.LABEL_OUTCOMES, {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_LABEL: label,
                                               c.L_OUTCOME: outcome, c.L_WINDOW: window}, values)
        case.gauge(c.PREDICTED_POSITIVES, {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_LABEL: label,
                                           c.L_WINDOW: window}, 50.0)
    mvw = {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_WINDOW: window}
    case.gauge(c.WINDOW_PREDICTIONS, mvw, 200.0)
    case.gauge(c.WINDOW_JOINED, mvw, 100.0)
    key = {c.L_MODEL: model.name, c.L_VERSION: VERSION, c.L_LABEL: model.labels[0], c.L_WINDOW: window}
    tp, fp, fn = counts[TP], counts[FP], counts[FN]
    case.checks += [
        (n.LABEL_PRECISION, key, tp / (tp + fp)),
        (n.LABEL_RECALL, key, tp / (tp + fn)),
        (n.LABEL_F1, key, 2 * tp / (2 * tp + fp + fn)),
        (n.PREDICTED_POSITIVE_RATE, key, 50.0 / 200.0),
        (n.LABEL_COVERAGE, mvw, 100.0 / 200.0),
    ]
    for slo in model.slos:
        errors = fn if slo.objective == "recall" else fp
        value = burn(errors, tp + errors, slo.target)
        assert value is not None
        case.checks.append((n.ERROR_BUDGET_BURN_RATE, {c.L_MODEL: model.name, c.L_LABEL: slo.label,
                                                       c.L_SLO: slo.name, c.L_WINDOW: window}, value))
    return case


# --- the file ----------------------------------------------------------------------------------------------------

def cases(cfg: MonitorConfig, opts: RuleOptions) -> list[Case]:
    w = opts.windows(cfg)
    out: list[Case] = []
    per_model: list[Callable[[ModelConfig], Iterator[Case]]] = [
        lambda m: (case for slo in m.slos for case in _burn_cases(opts, cfg, m, slo)),
        lambda m: (case for slo in m.slos if slo.per_segment is not None
                   for case in _segment_burn_cases(opts, cfg, m, slo)),
        lambda m: (case for slo in m.slos for case in _regression_cases(opts, cfg, m, slo)),
        lambda m: (case for slo in m.slos for case in _estimated_cases(opts, m, slo, w)),
        lambda m: _calibration_cases(opts, m, w),
        lambda m: _latency_cases(opts, m),
        lambda m: _drift_cases(opts, m, w, alert=c.ALERT_FEATURE_DRIFT, item_label=c.L_FEATURE,
                               item=m.features.all[0], bin_metric=c.FEATURE_BIN, ref_metric=c.REFERENCE_FEATURE_BIN,
                               window=w.drift) if m.features.all else iter(()),
        lambda m: _drift_cases(opts, m, w, alert=c.ALERT_SCORE_DRIFT, item_label=c.L_LABEL, item=m.labels[0],
                               bin_metric=c.SCORE_BIN, ref_metric=c.REFERENCE_SCORE_BIN, window=w.drift),
        lambda m: _missing_cases(opts, m, w) if m.features.all else iter(()),
        lambda m: _cooccurrence_cases(opts, m, w) if len(m.labels) > 1 and m.task == "multilabel" else iter(()),
        lambda m: _retraining_cases(opts, cfg, m, w),
    ]
    for model in cfg.models:
        out.append(_recording_case(opts, cfg, model))
        for build in per_model:
            out.extend(build(model))
    first = cfg.models[0]
    out += [*_collapse_cases(opts, first, w), *_stalled_cases(opts, first, w), *_lag_cases(opts, cfg),
            *_invalid_cases(opts, first), *_down_cases(opts)]
    return out


def promtool_test_file(cfg: MonitorConfig, opts: RuleOptions, rule_files: list[str],
                       group_order: list[str]) -> dict[str, Any]:
    return {
        "rule_files": rule_files,
        "evaluation_interval": f"{EVAL_MINUTES}m",
        # Recording rules first, so an alert at time t reads the ratios recorded at t.
        "group_eval_order": group_order,
        "tests": [case.render() for case in cases(cfg, opts)],
    }

"""Alert rules: one builder per alert of conventions.ALL_ALERTS, thresholds from the config.

Every builder returns plain rule dicts. The `fixed` annotation fields each one computes are exposed as
functions so the promtool test generator renders exactly the text the rule will produce.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from monitor import conventions as c
from monitor.config import ModelConfig, MonitorConfig, SLOConfig, format_duration
from monitor.rules import names as n
from monitor.rules import texts
from monitor.rules.options import RuleOptions, Windows
from monitor.rules.promql import by, labels, num, sel
from monitor.rules.recording import MLS, MSS, MVFW, MVLSW, MVLW, MVW
from monitor.rules.tiers import Tier, tiers_for

Rule = dict[str, Any]
PAGE, TICKET, INFO = c.SEVERITIES


def alert_rule(opts: RuleOptions, alert: str, expr: str, severity: str, fixed: dict[str, str],
               text_key: str | None = None, tier: str | None = None, extra: dict[str, str] | None = None,
               model: ModelConfig | None = None) -> Rule:
    # A static `model` label repeats what the expression yields; it keeps the per-model copies of a rule
    # distinct for promtool's duplicate-rule lint.
    rule_labels = {c.L_SEVERITY: severity, **({c.L_MODEL: model.name} if model else {}), **(extra or {})}
    rule: Rule = {"alert": alert, "expr": expr, "for": opts.for_duration(alert, tier)}
    keep = opts.keep_firing_for(alert, tier)
    if keep:
        rule["keep_firing_for"] = keep
    rule["labels"] = dict(sorted(rule_labels.items()))
    rule["annotations"] = texts.render(text_key or alert, opts.runbook_url(alert), fixed)
    return rule


# --- SLO burn -------------------------------------------------------------------------------------------

def burn_fixed(opts: RuleOptions, model: ModelConfig, slo: SLOConfig, tier: Tier) -> dict[str, str]:
    return {
        "slo": slo.name, "target": num(slo.target), "burnrate_tier": tier.name,
        "long_window": format_duration(tier.long_window), "short_window": format_duration(tier.short_window),
        "threshold": num(tier.threshold), "min_events": str(model.min_events),
        "error_ratio": num(ratio_threshold(slo.target, tier.threshold)), "budget": num(budget(slo.target)),
        **({"mid_window": format_duration(tier.mid_window)} if tier.mid_window is not None else {}),
    }


def burn_text_key(tier: Tier, segmented: bool = False) -> str:
    key = f"{c.ALERT_LABEL_ERROR_BUDGET_BURN}:mid" if tier.mid_window is not None else c.ALERT_LABEL_ERROR_BUDGET_BURN
    return f"{key}:{texts.SEGMENT}" if segmented else key


def ratio_threshold(target: float, burn_threshold: float) -> float:
    """The error ratio a burn threshold stands for: threshold x budget (as the rules write it)."""
    return float(num(burn_threshold * (1 - float(num(target)))))


def budget(target: float) -> float:
    return float(num(1 - float(num(target))))


@dataclass(frozen=True)
class BurnSeries:
    """What the burn tiers of an SLO read, and what one alert is per: the whole model (one alert per SLO
    and tier) or, for a per-segment SLO, each value of its segment (one per value, tier and SLO)."""

    burn: str
    events: str
    lower: str
    poisson: str
    upper: str
    group: tuple[str, ...]
    matchers: Mapping[str, str] = field(default_factory=dict)

    def window(self, model: ModelConfig, slo: SLOConfig, window: int) -> dict[str, str]:
        return {c.L_MODEL: model.name, c.L_SLO: slo.name, **self.matchers, c.L_WINDOW: format_duration(window)}

    @property
    def and_on(self) -> str:
        return f"and on ({labels(self.group)})"


WHOLE_MODEL = BurnSeries(n.ERROR_BUDGET_BURN_RATE, n.SLO_EVENTS, n.SLO_ERROR_RATIO_LOWER,
                         n.SLO_ERROR_RATIO_POISSON_LOWER, n.SLO_ERROR_RATIO_UPPER, MLS)


def per_segment(slo: SLOConfig) -> BurnSeries:
    """A per-segment SLO's inputs: the same statistics per value of its segment (recording.segment_slo_rules)."""
    assert slo.per_segment is not None
    return BurnSeries(n.SEGMENT_ERROR_BUDGET_BURN_RATE, n.SEGMENT_SLO_EVENTS, n.SEGMENT_SLO_ERROR_RATIO_LOWER,
                      n.SEGMENT_SLO_ERROR_RATIO_POISSON_LOWER, n.SEGMENT_SLO_ERROR_RATIO_UPPER, MSS,
                      {c.L_SEGMENT: slo.per_segment})


def burn_condition(opts: RuleOptions, model: ModelConfig, slo: SLOConfig, window: int, threshold: float,
                   inputs: BurnSeries = WHOLE_MODEL) -> str:
    """Burn over `window` above threshold, and the SLO violated beyond sampling noise: the Wilson lower
    bound of the error ratio (summed counts) above the budget, on at least min_events events.

    The threshold (how fast) is judged on the measured burn, as the SRE workbook's tiers are; the bound
    answers whether the budget is being overspent at all. Demanding the bound itself above threshold x
    budget asked a rare label (a few dozen labelled events per window) for a window almost entirely after
    the onset before paging, on top of the threshold: its recall collapse did not page within 8 hours.
    The bound is a normal approximation, anti-conservative where the window expects only a few errors at
    the budget (a 0.999 target on a few hundred events): there it must clear threshold x budget, as
    before, so the false-alarm bound of docs/alerting.md holds for every label that meets its SLO.
    monitor.rules.tier_state evaluates this condition in Python (summary, report, promtool tests): change
    both together."""
    match = inputs.window(model, slo, window)
    burn = by("max", inputs.group, sel(inputs.burn, match))
    expr = f"{burn} > {num(threshold)}\n{inputs.and_on}\n{violated(opts, model, slo, window, threshold, inputs)}"
    events = by("max", inputs.group, sel(inputs.events, match))
    return f"{expr}\n{inputs.and_on}\n{events} >= {num(model.min_events)}"


def violated(opts: RuleOptions, model: ModelConfig, slo: SLOConfig, window: int, threshold: float,
             inputs: BurnSeries = WHOLE_MODEL) -> str:
    """The SLO violated beyond sampling noise over `window`: the Wilson and the Poisson lower bounds of its
    error ratio above the budget. The Wilson bound is a normal approximation, anti-conservative for a
    skewed count (a small budget, a few events: a label exactly on a 0.999 target's budget showed it above
    the budget in 1.4% of windows); the Poisson bound is the conservative one there, and together they
    keep a label exactly on budget under 0.1% per window at every target and window size
    (docs/alerting.md). Its value: the Wilson lower bound."""
    match = inputs.window(model, slo, window)
    lower = by("max", inputs.group, sel(inputs.lower, match))
    poisson = by("max", inputs.group, sel(inputs.poisson, match))
    return f"{lower} > {num(budget(slo.target))}\n{inputs.and_on}\n{poisson} > {num(budget(slo.target))}"


def mid_condition(opts: RuleOptions, model: ModelConfig, slo: SLOConfig, window: int, threshold: float,
                  inputs: BurnSeries = WHOLE_MODEL) -> str:
    """A tier's evidence over its mid window, before its long window has turned over after an onset: the
    SLO violated beyond noise there (`violated`), and the tier's own error ratio (threshold x budget) not
    excluded by the window's Wilson upper bound. On a busy label the interval is narrow and this is the
    burn above the threshold over the mid window; on a thin one it pages on a violation the sample proves,
    whose size it cannot pin down yet. No min_events: the bounds are the guard (docs/alerting.md gives
    the false-alarm arithmetic). Its value: the mid window's burn rate."""
    match = inputs.window(model, slo, window)
    burn = by("max", inputs.group, sel(inputs.burn, match))
    upper = by("max", inputs.group, sel(inputs.upper, match))
    and_on = inputs.and_on
    return (f"{burn}\n{and_on}\n{upper} > {num(ratio_threshold(slo.target, threshold))}\n{and_on}\n"
            f"{violated(opts, model, slo, window, threshold, inputs)}")


def burn_rules(opts: RuleOptions, cfg: MonitorConfig, model: ModelConfig) -> list[Rule]:
    """Every SLO's tiers over the whole model, and a per-segment SLO's tiers per value of its segment too."""
    rules = []
    for slo in model.slos:
        rules += _tier_rules(opts, cfg, model, slo, WHOLE_MODEL)
        if slo.per_segment is not None:
            rules += _tier_rules(opts, cfg, model, slo, per_segment(slo))
    return rules


def _tier_rules(opts: RuleOptions, cfg: MonitorConfig, model: ModelConfig, slo: SLOConfig,
                inputs: BurnSeries) -> list[Rule]:
    rules = []
    segmented = inputs is not WHOLE_MODEL
    for tier in tiers_for(slo, cfg.windows):
        short = sel(inputs.upper, inputs.window(model, slo, tier.short_window))
        # The short window only vetoes, and only once it shows recovery beyond doubt (the Wilson upper
        # bound of its error ratio under the threshold): a thin short window (a rare label's 10
        # labelled events) neither hides a collapse nor makes the alert flap.
        fires = burn_condition(opts, model, slo, tier.long_window, tier.threshold, inputs)
        if tier.mid_window is not None:
            # Parenthesised as a whole: `or` binds looser than `unless`.
            fires = (f"(\n(\n{fires}\n)\nor\n(\n"
                     f"{mid_condition(opts, model, slo, tier.mid_window, tier.threshold, inputs)}\n)\n)")
        expr = (f"{fires}\nunless on ({labels(inputs.group)})\n{by('max', inputs.group, short)} <= "
                f"{num(ratio_threshold(slo.target, tier.threshold))}")
        rules.append(alert_rule(opts, c.ALERT_LABEL_ERROR_BUDGET_BURN, expr, tier.severity,
                                burn_fixed(opts, model, slo, tier), burn_text_key(tier, segmented), tier=tier.name,
                                model=model,
                                extra={c.L_BURNRATE_TIER: tier.name, c.L_SLO: slo.name, **inputs.matchers}))
    return rules


def regression_fixed(opts: RuleOptions, slo: SLOConfig, windows: list[str]) -> dict[str, str]:
    return {"slo": slo.name, "target": num(slo.target), "windows": " / ".join(windows),
            "z": num(opts.regression_z)}


def regression_windows(cfg: MonitorConfig, slo: SLOConfig) -> list[str]:
    """The long windows of the SLO's two fastest tiers (1h and 6h for a 30d page SLO)."""
    return list(dict.fromkeys(format_duration(t.long_window) for t in tiers_for(slo, cfg.windows)[:2]))


def regression_rules(opts: RuleOptions, cfg: MonitorConfig, model: ModelConfig) -> list[Rule]:
    """A version (a canary) significantly worse than the rest of its model on an SLO label: its error
    ratio's two-proportion z against the other versions' >= regression_z, and its own Wilson lower bound
    above the budget, so a canary within its SLO does not page even if it is a little worse."""
    rules = []
    group = (c.L_MODEL, c.L_VERSION, c.L_LABEL, c.L_SLO)
    for slo in model.slos:
        windows = regression_windows(cfg, slo)
        parts = []
        for window in windows:
            match = {c.L_MODEL: model.name, c.L_SLO: slo.name, c.L_WINDOW: window}
            parts.append(f"(\n{sel(n.VERSION_REGRESSION_Z, match)} >= {num(opts.regression_z)}\n"
                         f"and on ({labels(MVLSW)})\n{sel(n.SLO_ERROR_RATIO_LOWER_BY_VERSION, match)} > "
                         f"{num(1 - float(num(slo.target)))}\n)")
        rules.append(alert_rule(opts, c.ALERT_VERSION_REGRESSION, by("max", group, "\nor\n".join(parts)),
                                slo.severity, regression_fixed(opts, slo, windows), model=model,
                                extra={c.L_SLO: slo.name}))
    return rules


def estimated_fixed(opts: RuleOptions, slo: SLOConfig, w: Windows) -> dict[str, str]:
    return {"slo": slo.name, "objective": slo.objective, "target": num(slo.target), "window": w.drift,
            "z": num(opts.burn_z)}


def estimated_rules(opts: RuleOptions, model: ModelConfig, w: Windows) -> list[Rule]:
    """Early warning before ground truth lands: even the upper Wilson bound of the estimated (CBPE)
    precision or recall of predictions still waiting for labels is under the SLO's target.

    The bound is computed from expected counts summed over workers, with score bins too thin to calibrate
    at their most favourable (monitor.engine.metrics.estimation.alert_counts): a fresh start's raw scores
    and a canary's handful of expected positives are what a point estimate under the target came from on
    healthy traffic."""
    rules = []
    for slo in model.slos:
        upper = n.ESTIMATED_RECALL_UPPER if slo.objective == "recall" else n.ESTIMATED_PRECISION_UPPER
        match = {c.L_MODEL: model.name, c.L_LABEL: slo.label, c.L_WINDOW: w.drift}
        expr = f"{sel(upper, match)} < {num(slo.target)}"
        rules.append(alert_rule(opts, c.ALERT_ESTIMATED_QUALITY_LOW, expr, TICKET, estimated_fixed(opts, slo, w),
                                model=model, extra={c.L_SLO: slo.name}))
    return rules


# --- drift -----------------------------------------------------------------------------------------------

def drift_fixed(model: ModelConfig, window: str) -> dict[str, str]:
    return {"window": window, "significant": num(model.drift.significant),
            "min_samples": str(model.drift.min_samples)}


def feature_drift_rules(opts: RuleOptions, model: ModelConfig, w: Windows) -> list[Rule]:
    if not model.features.all:
        return []
    match = {c.L_MODEL: model.name, c.L_WINDOW: w.drift}
    # Guard on the values actually binned (missing ones are not), as the engine does.
    values = by("sum", MVFW, sel(n.FEATURE_BIN_SUM, match))
    expr = (f"{sel(n.FEATURE_PSI, match)} >= {num(model.drift.significant)}\n"
            f"and on ({labels(MVFW)})\n{values} >= {num(model.drift.min_samples)}")
    return [alert_rule(opts, c.ALERT_FEATURE_DRIFT, expr, TICKET, drift_fixed(model, w.drift), model=model)]


def score_drift_rules(opts: RuleOptions, model: ModelConfig, w: Windows) -> list[Rule]:
    match = {c.L_MODEL: model.name, c.L_WINDOW: w.drift}
    expr = (f"{sel(n.SCORE_PSI, match)} >= {num(model.drift.significant)}\n"
            f"and on ({labels(MVW)})\n{sel(n.WINDOW_PREDICTIONS_SUM, match)} >= {num(model.drift.min_samples)}")
    return [alert_rule(opts, c.ALERT_SCORE_DRIFT, expr, TICKET, drift_fixed(model, w.drift), model=model)]


def cooccurrence_fixed(opts: RuleOptions, model: ModelConfig, w: Windows) -> dict[str, str]:
    return {"window": w.drift, "z": num(opts.pair_z), "change": num(opts.pair_min_log_odds_change),
            "min_samples": str(model.drift.min_samples)}


def cooccurrence_rules(opts: RuleOptions, model: ModelConfig, w: Windows) -> list[Rule]:
    """F7: a label pair's dependency (log odds ratio of its 2x2 table) moved from the reference's, both
    beyond sampling noise (|z| >= pair_z) and by at least a factor e^change in odds."""
    if len(model.labels) < 2 or model.task != "multilabel":
        return []
    match = {c.L_MODEL: model.name, c.L_WINDOW: w.drift}
    pair = (c.L_MODEL, c.L_VERSION, c.L_LABEL, c.L_LABEL_B, c.L_WINDOW)
    ref_on = f"on ({c.L_MODEL}, {c.L_LABEL}, {c.L_LABEL_B}) group_left ()"
    change = f"abs({sel(n.LABEL_PAIR_LOG_ODDS, match)} - {ref_on} {n.REFERENCE_LABEL_PAIR_LOG_ODDS})"
    expr = (f"abs({sel(n.LABEL_PAIR_DEPENDENCY_Z, match)}) >= {num(opts.pair_z)}\n"
            f"and on ({labels(pair)})\n{change} >= {num(opts.pair_min_log_odds_change)}\n"
            f"and on ({labels(pair)})\n{sel(n.LABEL_PAIR_TOTAL, match)} >= {num(model.drift.min_samples)}")
    return [alert_rule(opts, c.ALERT_LABEL_COOCCURRENCE_DRIFT, expr, TICKET, cooccurrence_fixed(opts, model, w),
                       model=model)]


def collapse_fixed(opts: RuleOptions, w: Windows) -> dict[str, str]:
    return {"windows": " / ".join(w.collapse), "factor": num(opts.collapse_factor),
            "min_expected": num(opts.collapse_min_expected)}


def collapse_rules(opts: RuleOptions, w: Windows) -> list[Rule]:
    """F2: predicted rate near 0 (or 1) where the reference rate makes that implausible.

    "Near" is relative to the reference (under collapse_factor of its positives, or of its negatives) and
    judged on every collapse window where the reference rate expects at least collapse_min_expected
    events: the shortest window with that volume fires first, longer ones keep the alert up when the
    short one's volume dips (at night), so the alert neither waits for an hour nor flaps. By the Chernoff
    bound, P(Poisson(20) <= 2) < 1.5e-6 per window.
    """
    ref = f"on ({c.L_MODEL}, {c.L_LABEL}) group_left ()"
    f, k = num(opts.collapse_factor), num(opts.collapse_min_expected)
    group = (c.L_MODEL, c.L_VERSION, c.L_LABEL)

    def any_window(condition: Callable[[dict[str, str]], str], op: str) -> str:
        parts = [f"(\n{condition({c.L_WINDOW: window})}\n)" for window in w.collapse]
        return by(op, group, "\nor\n".join(parts))

    def nothing(window: dict[str, str]) -> str:
        return (f"{sel(n.PREDICTED_POSITIVE_RATE, window)} <= {ref} ({f} * {n.REFERENCE_POSITIVE_RATE_MAX})\n"
                f"and {sel(n.PREDICTED_POSITIVES_EXPECTED, window)} >= {k}")

    def everything(window: dict[str, str]) -> str:
        return (f"{sel(n.PREDICTED_POSITIVE_RATE, window)} >= {ref} (1 - {f} * (1 - {n.REFERENCE_POSITIVE_RATE_MAX}))\n"
                f"and {sel(n.PREDICTED_NEGATIVES_EXPECTED, window)} >= {k}")

    fixed = collapse_fixed(opts, w)
    # The value shown is the most extreme rate among the windows that qualify.
    return [alert_rule(opts, c.ALERT_LABEL_COLLAPSE, any_window(cond, op), PAGE, fixed,
                       f"{c.ALERT_LABEL_COLLAPSE}:{kind}", extra={n.L_COLLAPSE: kind})
            for kind, cond, op in ((n.COLLAPSE_NOTHING, nothing, "min"), (n.COLLAPSE_EVERYTHING, everything, "max"))]


def calibration_fixed(opts: RuleOptions, model: ModelConfig, w: Windows) -> dict[str, str]:
    windows = " / ".join(w.calibration)
    return {"windows": windows, "threshold": num(opts.ece_threshold), "noise_factor": num(opts.ece_noise_factor),
            "min_events": str(model.min_events)}


def calibration_rules(opts: RuleOptions, model: ModelConfig, w: Windows) -> list[Rule]:
    """F1: ECE above the threshold by more than noise_factor x its sampling scale (mlmon:label_ece:noise)."""
    parts = []
    for window in w.calibration:
        match = {c.L_MODEL: model.name, c.L_WINDOW: window}
        events = by("sum", MVLW, sel(n.CALIBRATION_BIN_SUM, {**match, c.L_STAT: c.CALIBRATION_STATS[0]}))
        parts.append(f"(\n{sel(n.LABEL_ECE, match)}\n> on ({labels(MVLW)}) "
                     f"({num(opts.ece_threshold)} + {num(opts.ece_noise_factor)} * {sel(n.LABEL_ECE_NOISE, match)})"
                     f"\nand on ({labels(MVLW)})\n{events} >= {num(model.min_events)}\n)")
    expr = by("max", (c.L_MODEL, c.L_VERSION, c.L_LABEL), "\nor\n".join(parts))
    return [alert_rule(opts, c.ALERT_CALIBRATION_DRIFT, expr, TICKET, calibration_fixed(opts, model, w), model=model)]


def missing_fixed(model: ModelConfig, w: Windows) -> dict[str, str]:
    return {"window": w.fast, "threshold": num(model.drift.missing_ratio_alert),
            "min_samples": str(model.drift.min_samples)}


def missing_rules(opts: RuleOptions, model: ModelConfig, w: Windows) -> list[Rule]:
    if not model.features.all:
        return []
    match = {c.L_MODEL: model.name, c.L_WINDOW: w.fast}
    expr = (f"{sel(n.FEATURE_MISSING_RATIO, match)} > {num(model.drift.missing_ratio_alert)}\n"
            f"and on ({labels(MVW)})\n{sel(n.WINDOW_PREDICTIONS_SUM, match)} >= {num(model.drift.min_samples)}")
    return [alert_rule(opts, c.ALERT_MISSING_FEATURES, expr, TICKET, missing_fixed(model, w), model=model)]


def latency_fixed(model: ModelConfig) -> dict[str, str]:
    return {"range": n.LATENCY_RANGE, "threshold": num(model.latency_slo_seconds)}


def latency_rules(opts: RuleOptions, model: ModelConfig) -> list[Rule]:
    expr = f"{sel(n.PREDICTION_LATENCY_P95, {c.L_MODEL: model.name})} > {num(model.latency_slo_seconds)}"
    return [alert_rule(opts, c.ALERT_LATENCY_HIGH, expr, TICKET, latency_fixed(model), model=model)]


# --- the monitor's own health ---------------------------------------------------------------------------

def stalled_fixed(opts: RuleOptions, w: Windows) -> dict[str, str]:
    return {"windows": " / ".join(w.stall), "baseline": w.stall_baseline,
            "min_expected": num(opts.stall_min_expected), "stall": format_duration(opts.ground_truth_stall)}


def stalled_expr(opts: RuleOptions, w: Windows) -> str:
    """Ground truth judged against the stream's own rate: none over a window in which the baseline's
    ground truth per prediction expects at least stall_min_expected (P(0 | Poisson(15)) = 3e-7), or,
    for a stream with no ground truth over the whole baseline, none for ground_truth_stall."""
    def increase(metric: c.MetricDef, window: str) -> str:
        return f"sum by ({c.L_MODEL}) (increase({metric.name}[{window}]))"

    base = w.stall_baseline
    per_prediction = (f"({increase(c.GROUND_TRUTH_TOTAL, base)}\n/ on ({c.L_MODEL}) "
                      f"({increase(c.PREDICTIONS_TOTAL, base)} > 0))")
    parts = [f"(\n{increase(c.PREDICTIONS_TOTAL, window)}\n* on ({c.L_MODEL}) {per_prediction}\n"
             f">= {num(opts.stall_min_expected)}\nunless on ({c.L_MODEL})\n"
             f"{increase(c.GROUND_TRUTH_TOTAL, window)} > 0\n)" for window in w.stall]
    stall = format_duration(opts.ground_truth_stall)
    # `unless`, not `== 0`: a worker that never accepted ground truth has no such series at all.
    never = (f"(\n{increase(c.PREDICTIONS_TOTAL, stall)} > 0\nunless on ({c.L_MODEL})\n"
             f"{increase(c.GROUND_TRUTH_TOTAL, base)} > 0\n)")
    # One label set ({model}) for every branch: one alert per stall, whichever branch holds.
    return by("max", (c.L_MODEL,), "\nor\n".join([*parts, never]))


def health_rules(opts: RuleOptions, w: Windows) -> list[Rule]:
    # A partition is owned by one worker, but during a rebalance two may report it: count it once.
    lag = f"sum by ({c.L_TOPIC}) (max by ({c.L_TOPIC}, {c.L_PARTITION}) ({c.CONSUMER_LAG.name}))"
    up = sel("up", {n.L_JOB: opts.job})
    job = {"job": opts.job}
    return [
        alert_rule(opts, c.ALERT_GROUND_TRUTH_STALLED, stalled_expr(opts, w), TICKET, stalled_fixed(opts, w)),
        alert_rule(opts, c.ALERT_CONSUMER_LAG, f"{lag} > {num(opts.consumer_lag_threshold)}", TICKET,
                   {"threshold": num(opts.consumer_lag_threshold)}),
        alert_rule(opts, c.ALERT_INVALID_INPUT, f"{n.INVALID_EVENTS_RATIO} > {num(opts.invalid_ratio)}", TICKET,
                   {"range": n.INVALID_RANGE, "threshold": num(opts.invalid_ratio)}),
        alert_rule(opts, c.ALERT_DOWN, f"sum by ({n.L_JOB}) ({up}) == 0\nor\nabsent({up})", PAGE, job,
                   f"{c.ALERT_DOWN}:all"),
        alert_rule(opts, c.ALERT_DOWN, f"{up} == 0", TICKET, {}, f"{c.ALERT_DOWN}:instance"),
    ]


# --- retraining --------------------------------------------------------------------------------------------

def retrain_drift_fixed(model: ModelConfig, w: Windows) -> dict[str, str]:
    return {"window": w.slow, "significant": num(model.drift.significant)}


def retrain_burn_fixed(tier: Tier) -> dict[str, str]:
    return {"window": format_duration(tier.long_window), "threshold": num(tier.threshold)}


def retraining_rules(opts: RuleOptions, cfg: MonitorConfig, model: ModelConfig, w: Windows) -> list[Rule]:
    """Persistent drift or a burn that lasts days: signals a new model, not an incident, would fix."""
    alert = c.ALERT_RETRAINING_RECOMMENDED
    rules = []
    if model.features.all:
        match = {c.L_MODEL: model.name, c.L_WINDOW: w.slow}
        values = by("sum", MVFW, sel(n.FEATURE_BIN_SUM, match))
        drifted = (f"{sel(n.FEATURE_PSI, match)} >= {num(model.drift.significant)}\n"
                   f"and on ({labels(MVFW)})\n{values} >= {num(model.drift.min_samples)}")
        rules.append(alert_rule(
            opts, alert, by("count", (c.L_MODEL, c.L_VERSION), f"\n{drifted}\n"), INFO,
            retrain_drift_fixed(model, w), f"{alert}:{n.SIGNAL_FEATURE_DRIFT}", model=model,
            extra={n.L_SIGNAL: n.SIGNAL_FEATURE_DRIFT},
        ))
    for slo in model.slos:
        slowest = tiers_for(slo, cfg.windows)[-1]
        rules.append(alert_rule(
            opts, alert, burn_condition(opts, model, slo, slowest.long_window, slowest.threshold), INFO,
            retrain_burn_fixed(slowest), f"{alert}:{n.SIGNAL_SLO_BURN}", model=model,
            extra={n.L_SIGNAL: n.SIGNAL_SLO_BURN, c.L_SLO: slo.name},
        ))
    return rules


# --- groups -------------------------------------------------------------------------------------------------

def alert_groups(cfg: MonitorConfig, opts: RuleOptions) -> list[dict[str, Any]]:
    w = opts.windows(cfg)
    per_model: list[tuple[str, Callable[[ModelConfig], list[Rule]]]] = [
        ("slo", lambda m: burn_rules(opts, cfg, m) + regression_rules(opts, cfg, m)
         + estimated_rules(opts, m, w)),
        ("quality", lambda m: calibration_rules(opts, m, w) + latency_rules(opts, m)),
        ("drift", lambda m: feature_drift_rules(opts, m, w) + score_drift_rules(opts, m, w)
         + missing_rules(opts, m, w) + cooccurrence_rules(opts, m, w)),
        ("retraining", lambda m: retraining_rules(opts, cfg, m, w)),
    ]
    groups = []
    for model in cfg.models:
        for kind, build in per_model:
            rules = build(model)
            if rules:
                groups.append({"name": f"mlmon.{kind}.{model.name}", "rules": rules})
    groups.append({"name": "mlmon.collapse", "rules": collapse_rules(opts, w)})
    groups.append({"name": "mlmon.health", "rules": health_rules(opts, w)})
    return groups

"""Alert rules: one builder per alert of conventions.ALL_ALERTS, thresholds from the config.

Every builder returns plain rule dicts. The `fixed` annotation fields each one computes are exposed as
functions so the promtool test generator renders exactly the text the rule will produce.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monitor import conventions as c
from monitor.config import ModelConfig, MonitorConfig, SLOConfig, format_duration
from monitor.rules import names as n
from monitor.rules import texts
from monitor.rules.options import RuleOptions, Windows
from monitor.rules.promql import by, labels, num, sel
from monitor.rules.recording import MLS, MVFW, MVLW, MVW
from monitor.rules.tiers import Tier, tiers_for

Rule = dict[str, Any]
PAGE, TICKET, INFO = c.SEVERITIES


def alert_rule(opts: RuleOptions, alert: str, expr: str, severity: str, fixed: dict[str, str],
               text_key: str | None = None, tier: str | None = None, extra: dict[str, str] | None = None,
               model: ModelConfig | None = None) -> Rule:
    # A static `model` label repeats what the expression yields; it keeps the per-model copies of a rule
    # distinct for promtool's duplicate-rule lint.
    rule_labels = {c.L_SEVERITY: severity, **({c.L_MODEL: model.name} if model else {}), **(extra or {})}
    return {
        "alert": alert,
        "expr": expr,
        "for": opts.for_duration(alert, tier),
        "labels": dict(sorted(rule_labels.items())),
        "annotations": texts.render(text_key or alert, opts.runbook_url(alert), fixed),
    }


# --- SLO burn -------------------------------------------------------------------------------------------

def burn_fixed(model: ModelConfig, slo: SLOConfig, tier: Tier) -> dict[str, str]:
    return {
        "slo": slo.name, "target": num(slo.target), "burnrate_tier": tier.name,
        "long_window": format_duration(tier.long_window), "short_window": format_duration(tier.short_window),
        "threshold": num(tier.threshold), "min_events": str(model.min_events),
    }


def burn_condition(model: ModelConfig, slo: SLOConfig, window: int, threshold: float) -> str:
    """Burn over `window` above threshold, on at least min_events events (summed across workers)."""
    match = {c.L_MODEL: model.name, c.L_SLO: slo.name, c.L_WINDOW: format_duration(window)}
    burn = by("max", MLS, sel(n.ERROR_BUDGET_BURN_RATE, match))
    events = by("max", MLS, sel(n.SLO_EVENTS_SUM, match))
    return f"{burn} > {num(threshold)}\nand on ({labels(MLS)})\n{events} >= {num(model.min_events)}"


def burn_rules(opts: RuleOptions, cfg: MonitorConfig, model: ModelConfig) -> list[Rule]:
    rules = []
    for slo in model.slos:
        for tier in tiers_for(slo, cfg.windows):
            short = sel(n.ERROR_BUDGET_BURN_RATE, {c.L_MODEL: model.name, c.L_SLO: slo.name,
                                                   c.L_WINDOW: format_duration(tier.short_window)})
            # The short window only vetoes: it stops the alert once it shows recovery, but a short window
            # with no labelled events at all (a rare label) does not hide a collapse over the long one.
            expr = (f"{burn_condition(model, slo, tier.long_window, tier.threshold)}\n"
                    f"unless on ({labels(MLS)})\n{by('max', MLS, short)} <= {num(tier.threshold)}")
            rules.append(alert_rule(opts, c.ALERT_LABEL_ERROR_BUDGET_BURN, expr, tier.severity,
                                    burn_fixed(model, slo, tier), tier=tier.name, model=model,
                                    extra={c.L_BURNRATE_TIER: tier.name, c.L_SLO: slo.name}))
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


def cooccurrence_rules(opts: RuleOptions, model: ModelConfig, w: Windows) -> list[Rule]:
    if len(model.labels) < 2 or model.task != "multilabel":
        return []
    match = {c.L_MODEL: model.name, c.L_WINDOW: w.drift}
    expr = f"{sel(n.LABEL_COOCCURRENCE_DRIFT, match)} >= {num(model.drift.significant)}"
    return [alert_rule(opts, c.ALERT_LABEL_COOCCURRENCE_DRIFT, expr, TICKET, drift_fixed(model, w.drift), model=model)]


def collapse_fixed(opts: RuleOptions, w: Windows) -> dict[str, str]:
    return {"window": w.drift, "factor": num(opts.collapse_factor), "min_expected": num(opts.collapse_min_expected)}


def collapse_rules(opts: RuleOptions, w: Windows) -> list[Rule]:
    """F2: predicted rate near 0 (or 1) where the reference rate makes that implausible.

    "Near" is relative to the reference (under collapse_factor of its positives, or of its negatives) and
    only judged when the reference rate expects collapse_min_expected events in the window, so rare
    labels and small windows do not page on sampling noise.
    """
    window = {c.L_WINDOW: w.drift}
    rate = sel(n.PREDICTED_POSITIVE_RATE, window)
    ref = f"on ({c.L_MODEL}, {c.L_LABEL}) group_left ()"
    f, k = num(opts.collapse_factor), num(opts.collapse_min_expected)
    nothing = (f"{rate} <= {ref} ({f} * {n.REFERENCE_POSITIVE_RATE_MAX})\n"
            f"and {sel(n.PREDICTED_POSITIVES_EXPECTED, window)} >= {k}")
    everything = (f"{rate} >= {ref} (1 - {f} * (1 - {n.REFERENCE_POSITIVE_RATE_MAX}))\n"
                  f"and {sel(n.PREDICTED_NEGATIVES_EXPECTED, window)} >= {k}")
    fixed = collapse_fixed(opts, w)
    return [alert_rule(opts, c.ALERT_LABEL_COLLAPSE, expr, PAGE, fixed, f"{c.ALERT_LABEL_COLLAPSE}:{kind}",
                       extra={n.L_COLLAPSE: kind})
            for kind, expr in ((n.COLLAPSE_NOTHING, nothing), (n.COLLAPSE_EVERYTHING, everything))]


def calibration_fixed(opts: RuleOptions, model: ModelConfig, w: Windows) -> dict[str, str]:
    return {"window": w.slow, "threshold": num(opts.ece_threshold), "min_events": str(model.min_events)}


def calibration_rules(opts: RuleOptions, model: ModelConfig, w: Windows) -> list[Rule]:
    match = {c.L_MODEL: model.name, c.L_WINDOW: w.slow}
    events = by("sum", MVLW, sel(n.CALIBRATION_BIN_SUM, {**match, c.L_STAT: c.CALIBRATION_STATS[0]}))
    expr = (f"{sel(n.LABEL_ECE, match)} > {num(opts.ece_threshold)}\n"
            f"and on ({labels(MVLW)})\n{events} >= {num(model.min_events)}")
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

def stalled_fixed(opts: RuleOptions) -> dict[str, str]:
    return {"stall": format_duration(opts.ground_truth_stall)}


def health_rules(opts: RuleOptions) -> list[Rule]:
    stall = format_duration(opts.ground_truth_stall)

    def flowing(metric: c.MetricDef) -> str:
        return f"sum by ({c.L_MODEL}) (increase({metric.name}[{stall}])) > 0"

    # `unless`, not `== 0`: a worker that never accepted ground truth has no such series at all.
    stalled = f"{flowing(c.PREDICTIONS_TOTAL)}\nunless on ({c.L_MODEL})\n{flowing(c.GROUND_TRUTH_TOTAL)}"
    # A partition is owned by one worker, but during a rebalance two may report it: count it once.
    lag = f"sum by ({c.L_TOPIC}) (max by ({c.L_TOPIC}, {c.L_PARTITION}) ({c.CONSUMER_LAG.name}))"
    up = sel("up", {n.L_JOB: opts.job})
    job = {"job": opts.job}
    return [
        alert_rule(opts, c.ALERT_GROUND_TRUTH_STALLED, stalled, TICKET, stalled_fixed(opts)),
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
            opts, alert, burn_condition(model, slo, slowest.long_window, slowest.threshold), INFO,
            retrain_burn_fixed(slowest), f"{alert}:{n.SIGNAL_SLO_BURN}", model=model,
            extra={n.L_SIGNAL: n.SIGNAL_SLO_BURN, c.L_SLO: slo.name},
        ))
    return rules


# --- groups -------------------------------------------------------------------------------------------------

def alert_groups(cfg: MonitorConfig, opts: RuleOptions) -> list[dict[str, Any]]:
    w = opts.windows(cfg)
    per_model: list[tuple[str, Callable[[ModelConfig], list[Rule]]]] = [
        ("slo", lambda m: burn_rules(opts, cfg, m)),
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
    groups.append({"name": "mlmon.health", "rules": health_rules(opts)})
    return groups

"""On-call dashboard: what is paging, how fast the budget burns, and whether the pipeline itself is sound.

For the engineer holding the pager. The SLO rows are generated per SLO in the config (its label, objective
and target baked in), so the panels an alert points to exist without any variable juggling. The rest
follows the model / version / label / window variables.
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import timeseries

from monitor import conventions as C
from monitor.config import ModelConfig, MonitorConfig, SLOConfig, format_duration
from monitor.dashboards import common as k
from monitor.dashboards import promql as q
from monitor.dashboards.common import Q
from monitor.rules.tiers import tiers_for

UID = "mlmon-oncall"
TITLE = "ML monitor / On-call"

_ML = [C.L_MODEL, C.L_LABEL]
_FILTERS = (q.F_MODEL, q.F_VERSION, q.F_LABEL, q.F_WINDOW)

LOWER = "95% lower"
UPPER = "95% upper"


def _interval_band(panel: timeseries.Panel) -> timeseries.Panel:
    # The bounds as thin dashed lines in one colour, so the estimate stays the solid line in between.
    return panel.with_override(
        k.by_names(LOWER, UPPER),
        [
            k.prop("custom.lineStyle", {"fill": "dash", "dash": [4, 4]}),
            k.prop("color", {"mode": "fixed", "fixedColor": "text"}),
        ],
    )


def _slo_objective_panel(model: ModelConfig, slo: SLOConfig) -> timeseries.Panel:
    filters = (q.eq(C.L_MODEL, model.name), q.F_VERSION, q.eq(C.L_LABEL, slo.label), q.F_WINDOW)
    point = q.recall if slo.objective == "recall" else q.precision
    bound = q.recall_bound if slo.objective == "recall" else q.precision_bound
    panel = k.timeseries_panel(
        f"{model.name} · {slo.label} {slo.objective} (SLO {slo.target:.0%} over "
        f"{format_duration(slo.period)})",
        f"{slo.objective.capitalize()} of label {slo.label!r} over the selected rolling window, from outcome "
        f"counts summed over versions and workers, with its Wilson 95% interval as dashed lines. The dashed "
        f"threshold is the SLO target {slo.target:g}; a wide interval means too few labelled events to judge "
        f"(rare-label instability) rather than a breach. Severity: {slo.severity}.",
        k.UNIT_RATIO,
        Q(point(_ML, *filters), slo.objective),
        Q(bound(_ML, *filters, upper=False), LOWER),
        Q(bound(_ML, *filters, upper=True), UPPER),
    )
    return _interval_band(k.dashed_thresholds(panel, k.green_above(slo.target)))


def _slo_burn_panel(config: MonitorConfig, model: ModelConfig, slo: SLOConfig) -> timeseries.Panel:
    tiers = tiers_for(slo, config.windows)
    names = {w: format_duration(w) for t in tiers for w in (t.long_window, t.short_window)}
    windows = [names[w] for w in sorted(names)]
    expr = q.max_by(
        [C.L_WINDOW],
        q.sel(
            q.R_BURN_RATE,
            q.eq(C.L_MODEL, model.name),
            q.eq(C.L_SLO, slo.name),
            q.one_of(C.L_WINDOW, windows or config.window_names),
        ),
    )
    tier_text = "; ".join(f"{t.severity} {t.threshold:g}x over {format_duration(t.long_window)} and "
                          f"{format_duration(t.short_window)}" for t in tiers)
    panel = k.timeseries_panel(
        f"{model.name} · {slo.name} burn rate by window",
        f"Error-budget burn rate of SLO {slo.name} for each window the alert tiers use: error ratio / "
        f"(1 - {slo.target:g}). Tiers: {tier_text or 'none'}. A tier fires when its long window's burn is "
        f"above its factor (with at least min_events={model.min_events} labelled events) and the window's "
        "error ratio is above the budget beyond sampling noise (Wilson and Poisson lower bounds), unless "
        "its short window shows recovery beyond noise; page_slow also fires on a mid window "
        "(docs/alerting.md). Computed from outcome counts summed over workers, as the alerts do.",
        k.UNIT_FACTOR,
        Q(expr, "{{window}}"),
    ).min(0)
    return k.dashed_thresholds(panel, k.burn_rate_thresholds(t.threshold for t in tiers))


def _tier_table_query(config: MonitorConfig) -> str:
    """One series per SLO and tier: min(burn over long window, burn over short window) / tier threshold.

    The thresholds are the alert rules' own (capped by the SLO's target, docs/alerting.md), so the value
    reads as "share of the way to firing": the tier fires at >= 1.
    """
    parts = []
    for model in config.models:
        for slo in model.slos:
            for t in tiers_for(slo, config.windows):
                long_w, short_w = format_duration(t.long_window), format_duration(t.short_window)
                per_window = q.max_by(
                    [C.L_MODEL, C.L_LABEL, C.L_SLO, C.L_WINDOW],
                    q.sel(q.R_BURN_RATE, q.eq(C.L_MODEL, model.name), q.eq(C.L_SLO, slo.name),
                          q.one_of(C.L_WINDOW, (long_w, short_w))),
                )
                both = q.min_by([C.L_MODEL, C.L_LABEL, C.L_SLO], per_window)
                tier = f"{t.name} {t.threshold:g}x {long_w}+{short_w}"
                parts.append(f'label_replace({both} / {t.threshold:g}, "{C.L_BURNRATE_TIER}", "{tier}", "", "")')
    return " or ".join(parts)


def _latency_threshold(config: MonitorConfig) -> float | None:
    values = {m.latency_slo_seconds for m in config.models}
    return values.pop() if len(values) == 1 else None


def build(config: MonitorConfig) -> dict[str, Any]:
    dash = (
        k.base_dashboard(
            UID,
            TITLE,
            "For the on-call engineer: SLO objectives with intervals, burn rates per window and tier, "
            "estimated against realised quality, serving latency and the monitor's own health. Generated "
            "by `monitor dashboards generate`.",
            time_from="24h",
        )
        .with_variable(k.model_variable(multi=False))
        .with_variable(k.version_variable())
        .with_variable(k.label_variable())
        .with_variable(k.window_variable(config, preferred="1h"))
    )

    slos = [(m, s) for m in config.models for s in m.slos]
    if slos:
        dash = dash.with_row(db.Row("SLOs (window $window for the objectives)"))
        for model, slo in slos:
            dash = dash.with_panel(_slo_objective_panel(model, slo))
            dash = dash.with_panel(_slo_burn_panel(config, model, slo))
        if any(m.slos for m in config.models):
            dash = dash.with_panel(
                k.table_panel(
                    "Burn-rate tiers: how close each tier is to firing",
                    "For every SLO of the model and every multi-window burn-rate tier: the smaller of the "
                    "burn rates over the tier's long and short window, divided by the tier's factor: how "
                    "close the measured burn is to the tier's. 100% or more is necessary, not sufficient: "
                    "the alert also needs min_events labelled events and the error ratio above the budget "
                    "beyond sampling noise (docs/alerting.md). Page tiers go to the pager, ticket tiers "
                    "to the ticket queue.",
                    k.UNIT_RATIO,
                    Q(_tier_table_query(config), instant=True, table=True),
                    span=16,
                    transformations=[
                        k.organize({"Value": "share of firing threshold"}, exclude=("Time",)),
                        k.sort_by(C.L_SLO),
                    ],
                )
                .thresholds(k.red_above((0.5, "orange"), (1, "red")))
                .with_override(
                    k.by_names("share of firing threshold"),
                    [k.prop("custom.cellOptions", {"type": "color-background", "mode": "basic"})],
                )
            )
            dash = dash.with_panel(
                k.bargauge_panel(
                    "Error budget remaining",
                    "Share of each SLO's error budget left over its full period (1 = untouched, "
                    "0 = spent, negative = overspent), from outcome counts summed over workers.",
                    k.UNIT_RATIO,
                    Q(q.min_by([C.L_MODEL, C.L_LABEL, C.L_SLO],
                               q.sel(q.R_BUDGET_REMAINING, q.F_MODEL)),
                      "{{slo}}", instant=True),
                ).thresholds(k.thresholds((None, "red"), (0, "orange"), (0.25, "green"))).max(1)
            )

    f1 = q.f1(_ML, *_FILTERS)
    per_label = [
        Q(q.precision(_ML, *_FILTERS), instant=True, table=True),
        Q(q.precision_bound(_ML, *_FILTERS, upper=False), instant=True, table=True),
        Q(q.precision_bound(_ML, *_FILTERS, upper=True), instant=True, table=True),
        Q(q.recall(_ML, *_FILTERS), instant=True, table=True),
        Q(q.recall_bound(_ML, *_FILTERS, upper=False), instant=True, table=True),
        Q(q.recall_bound(_ML, *_FILTERS, upper=True), instant=True, table=True),
        Q(f1, instant=True, table=True),
        Q(q.outcomes(_ML, (q.TP, q.FN), *_FILTERS), instant=True, table=True),
    ]
    columns = ["precision", "precision lower", "precision upper", "recall", "recall lower",
               "recall upper", "F1", "support"]
    dash = (
        dash.with_row(db.Row("Per-label quality (window $window)"))
        .with_panel(
            k.timeseries_panel(
                "Precision by label",
                "TP / (TP + FP) per label over the rolling window, from summed outcome counts. A label "
                "predicted for everything (collapse) shows as precision dropping to its base rate.",
                k.UNIT_RATIO,
                Q(q.precision(_ML, *_FILTERS), "{{label}}"),
            )
        )
        .with_panel(
            k.timeseries_panel(
                "Recall by label",
                "TP / (TP + FN) per label over the rolling window. A label predicted for nothing "
                "(collapse) or a threshold drifting upwards shows here first.",
                k.UNIT_RATIO,
                Q(q.recall(_ML, *_FILTERS), "{{label}}"),
            )
        )
        .with_panel(
            k.table_panel(
                "Per-label precision, recall and F1 with 95% intervals",
                "Current value per label with Wilson 95% bounds and support (actual positives, TP + FN). "
                "Small support gives wide intervals: treat such labels' swings as noise until the "
                "interval narrows.",
                k.UNIT_PLAIN,  # one unit for all columns: ratios read as 0.91, support as a count
                *per_label,
                transformations=[
                    k.merge(),
                    k.organize(
                        {f"Value #{chr(ord('A') + i)}": name for i, name in enumerate(columns)},
                        exclude=("Time",),
                    ),
                    k.sort_by(C.L_LABEL),
                ],
            )
        )
        .with_row(db.Row("Estimated vs realised quality"))
        .with_panel(
            k.timeseries_panel(
                "Estimated vs realised precision",
                "Realised: precision of predictions whose ground truth arrived. Estimated: expected "
                "precision of the window's predictions still waiting for ground truth, from calibrated "
                "scores (confidence-based performance estimation; lowest worker's estimate). A gap that "
                "opens before the realised line moves is an early warning; it is only as good as the "
                "calibration (see ECE on the debug dashboard).",
                k.UNIT_RATIO,
                Q(q.precision(_ML, *_FILTERS), "realised · {{label}}"),
                Q(q.min_by(_ML, q.sel(q.R_ESTIMATED_PRECISION, *_FILTERS)), "estimated · {{label}}"),
            )
        )
        .with_panel(
            k.timeseries_panel(
                "Estimated vs realised recall",
                "As for precision: realised recall from joined events against the recall expected from "
                "the calibrated scores of predictions still waiting for ground truth.",
                k.UNIT_RATIO,
                Q(q.recall(_ML, *_FILTERS), "realised · {{label}}"),
                Q(q.min_by(_ML, q.sel(q.R_ESTIMATED_RECALL, *_FILTERS)), "estimated · {{label}}"),
            )
        )
    )

    mv = (q.F_MODEL, q.F_VERSION)
    latency = k.timeseries_panel(
        "Serving latency p95 / p99",
        "Serving latency reported on prediction events: quantiles of the latency histogram, 5-minute "
        "rates of the buckets summed over versions and workers by bucket bound. Spikes (failure mode F3) show "
        "here before they show in quality.",
        k.UNIT_SECONDS,
        Q(q.histogram_quantile(0.95, q.R_LATENCY_BUCKET_RATE, [], *mv), "p95"),
        Q(q.histogram_quantile(0.99, q.R_LATENCY_BUCKET_RATE, [], *mv), "p99"),
        span=8,
    ).min(0)
    threshold = _latency_threshold(config)
    if threshold is not None:
        latency = k.dashed_thresholds(latency, k.red_above((threshold, "red")))

    invalid = q.sel(q.R_INVALID_EVENTS_RATE)
    dash = (
        dash.with_row(db.Row("Serving and pipeline health"))
        .with_panel(latency)
        .with_panel(
            k.timeseries_panel(
                "Consumer lag",
                "Messages not yet consumed, per topic (summed over partitions). Growing lag means the "
                "workers fall behind: every window gauge is then stale by that much.",
                k.UNIT_COUNT,
                Q(q.sum_by([C.L_TOPIC], q.sel(q.R_CONSUMER_LAG)), "{{topic}}"),
                span=8,
            ).min(0)
        )
        .with_panel(
            k.timeseries_panel(
                "Invalid input by reason",
                "Events rejected to the dead-letter topic per second, by topic and reason (all models: "
                "an unknown model is itself a reason). The 'all reasons' line is 0 when nothing is "
                "rejected.",
                k.UNIT_RATE,
                Q(q.sum_by([C.L_TOPIC, C.L_REASON], invalid), "{{topic}} · {{reason}}"),
                Q(f"sum({invalid}) or vector(0)", "all reasons"),
                span=8,
            ).min(0)
        )
        .with_panel(
            k.timeseries_panel(
                "Ground-truth delay p50 / p90",
                "Time from prediction to its ground truth, at first join (quantiles of the delay "
                "histogram). Quality windows shorter than this delay hold few labelled events.",
                k.UNIT_SECONDS,
                Q(q.histogram_quantile(0.5, q.R_DELAY_BUCKET_RATE, [], q.F_MODEL), "p50"),
                Q(q.histogram_quantile(0.9, q.R_DELAY_BUCKET_RATE, [], q.F_MODEL), "p90"),
                span=8,
            ).min(0)
        )
        .with_panel(
            k.timeseries_panel(
                "Pending joins",
                "Events waiting for their partner (a prediction for its ground truth, or early ground "
                "truth for its prediction). Steady growth on the prediction side means ground truth "
                "stopped arriving.",
                k.UNIT_COUNT,
                Q(q.sum_by([C.L_SIDE], q.sel(q.R_PENDING_JOINS, q.F_MODEL)), "{{side}}"),
                span=8,
            ).min(0)
        )
        .with_panel(
            k.timeseries_panel(
                "Join expiries per second",
                "Events dropped because their partner did not arrive within the join TTL, by side. The "
                "'all' line is 0 when nothing expires.",
                k.UNIT_RATE,
                Q(q.sum_by([C.L_SIDE], q.sel(q.R_JOIN_EXPIRED_RATE, q.F_MODEL)), "{{side}}"),
                Q(f"sum({q.sel(q.R_JOIN_EXPIRED_RATE, q.F_MODEL)}) or vector(0)", "all"),
                span=8,
            ).min(0)
        )
    )
    return k.finish(dash)

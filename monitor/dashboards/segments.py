"""The debug dashboard's segment row: quality per value of one segment (models[].segments).

Added only when a model of the config has segments. Two variables pick the breakdown: `$segment` (one of
the model's segments) and `$segment_value` (its values, "All" by default). Every panel reads the recorded
per-segment sums (monitor.rules.recording.segment_rules) and computes its ratios from them, so N workers
show what one would. Calibration, drift and bin-level figures per segment value are exported per worker
only (no additive bins per segment value), so they are not shown here.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from monitor import conventions as C
from monitor.config import MonitorConfig
from monitor.dashboards import common as k
from monitor.dashboards import promql as q
from monitor.dashboards.common import Q

_SEGMENT = (q.F_MODEL, q.F_SEGMENT, q.F_SEGMENT_VALUE, q.F_WINDOW)
_SEGMENT_LABEL = (q.F_MODEL, q.F_SEGMENT, q.F_SEGMENT_VALUE, q.F_LABEL, q.F_WINDOW)
_BY_VALUE = [C.L_SEGMENT_VALUE]
_BY_VALUE_LABEL = [C.L_SEGMENT_VALUE, C.L_LABEL]
_SOURCE = q.R_SEGMENT_OUTCOMES


def has_segments(config: MonitorConfig) -> bool:
    return any(m.segments for m in config.models)


def has_segment_slos(config: MonitorConfig) -> bool:
    return any(s.per_segment is not None for m in config.models for s in m.slos)


def segment_variable() -> db.QueryVariable:
    query = f"label_values({q.sel(q.R_SEGMENT_PREDICTIONS, q.F_MODEL)}, {C.L_SEGMENT})"
    return k.query_variable(C.L_SEGMENT, "Segment", query,
                            "The dimension to break quality down by (models[].segments).", multi=False)


def segment_value_variable() -> db.QueryVariable:
    query = f"label_values({q.sel(q.R_SEGMENT_PREDICTIONS, q.F_MODEL, q.F_SEGMENT)}, {C.L_SEGMENT_VALUE})"
    return k.query_variable(
        C.L_SEGMENT_VALUE, "Segment value", query,
        "Values of the segment: the most frequent ones up to max_values, then _other and _missing.", multi=True)


def add_segment_row(dash: db.Dashboard, slo_burn: bool = False) -> db.Dashboard:
    """The variables and the row; the caller adds them only when has_segments(config), and the burn panel
    only when has_segment_slos(config)."""
    predictions = q.sum_by(_BY_VALUE, q.sel(q.R_SEGMENT_PREDICTIONS, *_SEGMENT))
    joined = q.sum_by(_BY_VALUE, q.sel(q.R_SEGMENT_JOINED, *_SEGMENT))
    dash = (
        dash.with_variable(segment_variable())
        .with_variable(segment_value_variable())
        .with_row(db.Row("Segments: $segment (window $window)"))
        .with_panel(
            k.bargauge_panel(
                "Predictions by $segment",
                "Predictions made in the window per value of the segment, summed over workers and versions. "
                "_other counts the values beyond the segment's max_values; _missing the events without one.",
                k.UNIT_COUNT,
                Q(predictions, "{{segment_value}}", instant=True),
                span=8,
            )
        )
        .with_panel(
            k.timeseries_panel(
                "Label coverage by $segment",
                "Joined events / predictions per segment value: a segment whose ground truth stops arriving "
                "shows here before its quality figures go stale.",
                k.UNIT_RATIO,
                Q(q.ratio(joined, predictions), "{{segment_value}}"),
                span=8,
            )
        )
        .with_panel(
            k.timeseries_panel(
                "Micro F1 by $segment",
                "Micro F1 per segment value (outcome counts summed over labels, versions and workers). A "
                "value far below the others is a slice where the model underperforms.",
                k.UNIT_RATIO,
                Q(q.micro_f1(_BY_VALUE, *_SEGMENT, source=_SOURCE), "{{segment_value}}"),
                span=8,
            )
        )
        .with_panel(
            k.table_panel(
                "F1 by label and $segment",
                "Current F1 per label (rows) and segment value (columns), from outcome counts summed over "
                "versions and workers. Empty cells: no labelled outcome yet.",
                k.UNIT_PLAIN,
                Q(q.f1(_BY_VALUE_LABEL, *_SEGMENT_LABEL, source=_SOURCE), instant=True, table=True),
                span=24,
                transformations=[k.grouping_to_matrix(C.L_LABEL, C.L_SEGMENT_VALUE)],
            )
        )
    )
    for name, figure, formula in (("Recall", q.recall, "TP / (TP + FN)"), ("Precision", q.precision, "TP / (TP + FP)")):
        dash = dash.with_panel(
            k.timeseries_panel(
                f"{name} by $segment · $label",
                f"{name} of the label per segment value: {formula} from summed outcome counts.",
                k.UNIT_RATIO,
                Q(figure(_BY_VALUE, *_SEGMENT_LABEL, source=_SOURCE), "{{segment_value}}"),
                span=12,
            ).repeat(C.L_LABEL).repeat_direction("h").max_per_row(2)
        )
    if slo_burn:
        burn = q.sel(q.R_SEGMENT_BURN_RATE, q.F_MODEL, q.F_SEGMENT, q.F_SEGMENT_VALUE, q.F_WINDOW)
        dash = dash.with_panel(
            k.timeseries_panel(
                "SLO burn rate by $segment",
                "Error-budget burn rate per segment value of the SLOs held per segment (slos[].per_segment), "
                "over the window: that value's error ratio / (1 - target), from its outcome counts summed "
                "over versions and workers; the numbers the per-value burn alerts read (docs/alerting.md, "
                "Per-segment SLOs). 1 spends the budget exactly over the SLO's period. Empty for a segment "
                "no SLO is held per.",
                k.UNIT_FACTOR,
                Q(burn, "{{slo}} · {{segment_value}}"),
                span=24,
            )
        )
    return dash

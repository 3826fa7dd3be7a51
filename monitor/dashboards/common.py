"""Shared pieces of the three dashboards: datasource, template variables, panel factories, serialisation.

The panel factories fill in every option Grafana's panel schemas mark as required. Grafana itself would
default them on load, but a dashboard that validates against the strict schemas is one whose every
option we chose on purpose (and the tests can prove it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import barchart, bargauge, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import prometheus as pm

from monitor import conventions as C
from monitor.config import MonitorConfig
from monitor.dashboards import promql as q

# The provisioned Prometheus datasource (deploy/grafana/provisioning/datasources/prometheus.yaml).
DATASOURCE_UID = "mlmon-prometheus"
DATASOURCE_VAR = "datasource"
DS = dm.DataSourceRef(type_val="prometheus", uid="${" + DATASOURCE_VAR + "}")
TAG = "mlmon"
GRAFANA_VERSION = "11.6.0"

# Regex matching every alert this product defines (they share a prefix by convention).
ALERTS_REGEX = "|".join(sorted(C.ALL_ALERTS))

UNIT_RATIO = "percentunit"
UNIT_COUNT = "short"
UNIT_RATE = "eps"  # events per second
UNIT_SECONDS = "s"
UNIT_FACTOR = "suffix:x"  # burn rates: multiples of the sustainable error rate
UNIT_PLAIN = "none"


@dataclass(frozen=True)
class Q:
    """One Prometheus target. `instant` for panels that show a current value per series (tables, bars)."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


def _targets(queries: Sequence[Q]) -> list[prometheus.Dataquery]:
    out = []
    for i, query in enumerate(queries):
        target = (
            prometheus.Dataquery()
            .expr(query.expr)
            .ref_id(chr(ord("A") + i))
            .datasource(DS)
            .editor_mode(pm.QueryEditorMode.CODE)
        )
        if query.legend:
            target = target.legend_format(query.legend)
        target = target.instant() if query.instant else target.range()
        if query.table:
            target = target.format(pm.PromQueryFormat.TABLE)
        out.append(target)
    return out


def legend(*, as_table: bool = False, calcs: Sequence[str] = ()) -> cb.VizLegendOptions:
    return (
        cb.VizLegendOptions()
        .display_mode(cm.LegendDisplayMode.TABLE if as_table else cm.LegendDisplayMode.LIST)
        .placement(cm.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(list(calcs))
    )


def tooltip() -> cb.VizTooltipOptions:
    return cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)


def reduce_last() -> cb.ReduceDataOptions:
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    """Steps as (from value, colour); the first step's value is None (-Infinity)."""
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=value, color=color) for value, color in steps])
    )


def green_above(target: float) -> db.ThresholdsConfig:
    return thresholds((None, "red"), (target, "green"))


def red_above(*levels: tuple[float, str]) -> db.ThresholdsConfig:
    return thresholds((None, "green"), *levels)


def burn_rate_thresholds(factors: Iterable[float]) -> db.ThresholdsConfig:
    """Colour steps at the burn-rate tier factors: the slowest tier yellow, the fastest dark red."""
    ordered = sorted(set(factors))
    colours = ["yellow", "orange", "red", "dark-red"][-len(ordered):] if ordered else []
    return red_above(*zip(ordered, colours, strict=True))


P = TypeVar("P", timeseries.Panel, stat.Panel, bargauge.Panel, table.Panel, barchart.Panel, heatmap.Panel)


def _common(panel: P, title: str, description: str, unit: str, queries: Sequence[Q], span: int, height: int,
            transformations: Sequence[dm.DataTransformerConfig] = ()) -> P:
    """What every panel of these dashboards sets the same way: texts, datasource, unit, size, queries."""
    panel = panel.title(title).description(description).datasource(DS).unit(unit).span(span).height(height)
    for target in _targets(queries):
        panel = panel.with_target(target)
    for transformation in transformations:
        panel = panel.with_transformation(transformation)
    return panel


def timeseries_panel(
    title: str, description: str, unit: str, *queries: Q, span: int = 12, height: int = 8
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .legend(legend(as_table=True, calcs=["lastNotNull", "min", "max"]))
        .tooltip(tooltip())
        .line_width(1)
        .fill_opacity(10)
        .show_points(cm.VisibilityMode.NEVER)
        .span_nulls(False)
    )
    panel = _common(panel, title, description, unit, queries, span, height)
    if unit == UNIT_RATIO:
        panel = panel.min(0).max(1)
    return panel


def dashed_thresholds(panel: timeseries.Panel, config: db.ThresholdsConfig) -> timeseries.Panel:
    """Draw the thresholds as dashed lines on a time series (SLO targets, drift bands, burn-rate tiers)."""
    style = cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED)
    return panel.thresholds(config).thresholds_style(style)


def stat_panel(
    title: str, description: str, unit: str, *queries: Q, span: int = 6, height: int = 4
) -> stat.Panel:
    panel = (
        stat.Panel()
        .graph_mode(cm.BigValueGraphMode.AREA)
        .color_mode(cm.BigValueColorMode.VALUE)
        .justify_mode(cm.BigValueJustifyMode.AUTO)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .wide_layout(True)
        .show_percent_change(False)
        .percent_change_color_mode(cm.PercentChangeColorMode.STANDARD)
        .orientation(cm.VizOrientation.AUTO)
        .reduce_options(reduce_last())
    )
    return _common(panel, title, description, unit, queries, span, height)


def bargauge_panel(
    title: str, description: str, unit: str, *queries: Q, span: int = 8, height: int = 8
) -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
        .value_mode(cm.BarGaugeValueMode.COLOR)
        .name_placement(cm.BarGaugeNamePlacement.LEFT)
        .show_unfilled(True)
        .sizing(cm.BarGaugeSizing.AUTO)
        .min_viz_width(8)
        .min_viz_height(16)
        .max_viz_height(300)
        .legend(legend())
        .reduce_options(reduce_last())
        .orientation(cm.VizOrientation.HORIZONTAL)
    )
    return _common(panel, title, description, unit, queries, span, height)


def table_panel(
    title: str,
    description: str,
    unit: str,
    *queries: Q,
    span: int = 24,
    height: int = 8,
    transformations: Sequence[dm.DataTransformerConfig] = (),
) -> table.Panel:
    panel = (
        table.Panel()
        .frame_index(0)
        .show_header(True)
        .cell_height(cm.TableCellHeight.SM)
        .align(cm.FieldTextAlignment.AUTO)
        .inspect(False)
        .filterable(True)
    )
    return _common(panel, title, description, unit, queries, span, height, transformations)


def barchart_panel(
    title: str,
    description: str,
    unit: str,
    *queries: Q,
    x_field: str,
    span: int = 12,
    height: int = 8,
    transformations: Sequence[dm.DataTransformerConfig] = (),
) -> barchart.Panel:
    panel = (
        barchart.Panel()
        .x_field(x_field)
        .orientation(cm.VizOrientation.VERTICAL)
        .x_tick_label_rotation(0)
        .x_tick_label_max_length(16)
        .stacking(cm.StackingMode.NONE)
        .show_value(cm.VisibilityMode.AUTO)
        .bar_width(0.9)
        .group_width(0.7)
        .full_highlight(False)
        .legend(legend())
        .tooltip(tooltip())
        .fill_opacity(80)
        .line_width(1)
    )
    panel = _common(panel, title, description, unit, queries, span, height, transformations)
    if unit == UNIT_RATIO:
        panel = panel.min(0).max(1)
    return panel


def rows_heatmap_panel(
    title: str, description: str, unit: str, *queries: Q, max_value: float, span: int = 24, height: int = 9
) -> heatmap.Panel:
    """A heatmap of several time series, one row per series (no bucketing: the values are the colours).

    Layout "unknown" makes Grafana treat the series names as ordinal rows even when a name looks like a
    number, instead of reading them as bucket bounds.
    """
    color = (
        heatmap.HeatmapColorOptions()
        .mode(hm.HeatmapColorMode.SCHEME)
        .scheme("Reds")
        .fill("dark-red")
        .scale(hm.HeatmapColorScale.LINEAR)
        .exponent(0.5)
        .steps(32)
        .reverse(False)
        .min(0)
        .max(max_value)
    )
    panel = (
        heatmap.Panel()
        .calculate(False)
        .color(color)
        .show_value(cm.VisibilityMode.AUTO)
        .y_axis(heatmap.YAxisConfig().axis_placement(cm.AxisPlacement.LEFT).reverse(False))
        .rows_frame(heatmap.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.UNKNOWN))
        .show_legend()
        .mode(cm.TooltipDisplayMode.SINGLE)
        .show_color_scale(True)
        .exemplars_color("rgba(255,0,255,0.7)")
        .cell_gap(1)
    )
    return _common(panel, title, description, unit, queries, span, height)


# --- transformations (Grafana transformer ids and options) -----------------------------------------------

def merge() -> dm.DataTransformerConfig:
    """Join instant table results of several queries on their common label columns."""
    return dm.DataTransformerConfig(id_val="merge", options={})


def organize(rename: dict[str, str], exclude: Sequence[str] = ("Time",)) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(
        id_val="organize",
        options={"excludeByName": {name: True for name in exclude}, "renameByName": rename, "indexByName": {}},
    )


def sort_by(field: str) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(id_val="sortBy", options={"sort": [{"field": field, "desc": False}]})


def grouping_to_matrix(row: str, column: str, value: str = "Value") -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(
        id_val="groupingToMatrix", options={"rowField": row, "columnField": column, "valueField": value}
    )


# --- template variables ----------------------------------------------------------------------------------

def datasource_variable() -> db.DatasourceVariable:
    return (
        db.DatasourceVariable(DATASOURCE_VAR)
        .label("Prometheus")
        .type("prometheus")
        .current(dm.VariableOption(text="Prometheus", value=DATASOURCE_UID, selected=True))
        .description("The Prometheus that scrapes the monitor's workers.")
    )


def query_variable(name: str, label: str, query: str, description: str, *, multi: bool) -> db.QueryVariable:
    variable = (
        db.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DS)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )
    if multi:
        all_option = dm.VariableOption(text="All", value="$__all", selected=True)
        variable = variable.multi(True).include_all(True).all_value(".*").current(all_option)
    return variable


def model_variable(*, multi: bool) -> db.QueryVariable:
    query = f"label_values({C.PREDICTIONS_TOTAL.name}, {C.L_MODEL})"
    return query_variable(C.L_MODEL, "Model", query, "Models that sent predictions.", multi=multi)


def version_variable() -> db.QueryVariable:
    query = f"label_values({q.sel(C.PREDICTIONS_TOTAL, q.F_MODEL)}, {C.L_VERSION})"
    return query_variable(
        C.L_VERSION, "Version", query, "Model versions; pick two to compare a canary.", multi=True
    )


def label_variable() -> db.QueryVariable:
    # predicted_positives exists from the first prediction on; outcome series only once truth arrives.
    query = f"label_values({q.sel(C.PREDICTED_POSITIVES, q.F_MODEL)}, {C.L_LABEL})"
    return query_variable(C.L_LABEL, "Label", query, "Labels (classes) of the model.", multi=True)


def window_variable(config: MonitorConfig, preferred: str) -> db.CustomVariable:
    names = config.window_names
    default = preferred if preferred in names else names[len(names) // 2]
    return (
        db.CustomVariable(C.L_WINDOW)
        .label("Window")
        .description("Length of the rolling window the window gauges summarise (from the config).")
        .values(",".join(names))
        .options([dm.VariableOption(text=n, value=n, selected=n == default) for n in names])
        .current(dm.VariableOption(text=default, value=default, selected=True))
    )


def drift_bands(config: MonitorConfig) -> tuple[float, float]:
    """PSI bands for threshold lines: the models' own if they agree, else the config's defaults."""
    bands = {(m.drift.moderate, m.drift.significant) for m in config.models}
    return bands.pop() if len(bands) == 1 else (0.1, 0.25)


def base_dashboard(uid: str, title: str, description: str, time_from: str) -> db.Dashboard:
    links = (
        db.DashboardLink("ML monitor dashboards")
        .type(dm.DashboardLinkType.DASHBOARDS)
        .tags([TAG])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
        .target_blank(False)
        .icon("external link")
        .tooltip("")
        .url("")
    )
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .time(f"now-{time_from}", "now")
        .timezone("browser")
        .refresh("1m")
        .link(links)
        .with_variable(datasource_variable())
    )


# --- finishing and serialisation -------------------------------------------------------------------------

def finish(dashboard: db.Dashboard) -> dict[str, Any]:
    """Build, number the panels in layout order and return plain JSON data."""
    model = dashboard.build()
    next_id = 1
    for panel in model.panels or []:
        panel.id_val = next_id
        next_id += 1
        for inner in getattr(panel, "panels", None) or []:
            inner.id_val = next_id
            next_id += 1
    data: dict[str, Any] = json.loads(JSONEncoder().encode(model))
    return data


def encode(data: dict[str, Any]) -> str:
    """Deterministic text: sorted keys, 2-space indent, trailing newline (diff-friendly when checked in)."""
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def by_names(*names: str) -> dm.MatcherConfig:
    """Field matcher for overrides.

    Grafana's schema types matcher options and override values as objects, so the string-valued
    `byName` matcher (and scalar values such as a line width) do not validate; `byNames` takes an object
    and matches the same fields.
    """
    return dm.MatcherConfig(id_val="byNames", options={"mode": "include", "names": list(names)})


def prop(property_id: str, value: dict[str, Any]) -> dm.DynamicConfigValue:
    return dm.DynamicConfigValue(id_val=property_id, value=value)

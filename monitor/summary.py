"""`monitor replay` on a terminal: one evaluation as a summary a person reads in ten seconds.

Per model: each SLO's state and which alert tiers the generated rules would fire on this snapshot
(decided by monitor.rules.tier_state, the burn alert rule's condition in Python, as the report decides
it); per-label quality with Wilson intervals for the default window; drift and label-collapse
flags over the drift alerts' window; what was rejected, by reason. Every number is read from the same
`Figures` the Prometheus text carries; `summarize()` builds a plain view, `render()` draws it with rich.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from monitor import conventions as c
from monitor.config import ModelConfig, MonitorConfig, format_duration
from monitor.engine.figures import Figures
from monitor.engine.metrics import classification, drift
from monitor.rejections import InputReport
from monitor.rules.collapse_state import collapse
from monitor.rules.options import RuleOptions
from monitor.rules.tier_state import TierState, slo_counts, tier_states
from monitor.rules.tiers import TIER_NAMES

Labels = tuple[str, ...]


@dataclass(frozen=True)
class SLOView:
    name: str
    target: float
    period: str
    remaining: float | None
    tiers: list[TierState]

    @property
    def firing(self) -> list[TierState]:
        return [t for t in self.tiers if t.fires]


@dataclass(frozen=True)
class LabelView:
    label: str
    support: float
    precision: tuple[float, float, float]  # value, lower, upper (NaN when undefined)
    recall: tuple[float, float, float]
    f1: float
    ece: float | None
    predicted_rate: float | None
    reference_rate: float | None
    collapse: str | None  # "nothing" | "everything" | None


@dataclass(frozen=True)
class DriftView:
    what: str  # "feature text_length", "score violence", "label co-occurrence"
    psi: float
    band: str


@dataclass(frozen=True)
class ModelView:
    name: str
    task: str
    min_events: int
    predictions: float
    ground_truth: float
    joined: float
    window: str
    drift_window: str
    slos: list[SLOView]
    labels: list[LabelView]
    drift: list[DriftView]  # moderate or significant only
    drift_checked: bool  # a reference is configured and the window holds enough predictions
    missing_features: list[tuple[str, float]]  # above the model's missing_ratio_alert
    accuracy: float | None = None  # multiclass, over `window`, with a single version


@dataclass(frozen=True)
class SummaryView:
    at: float
    models: list[ModelView]
    rejections: list[InputReport] = field(default_factory=list)


class _Index:
    def __init__(self, figures: Figures) -> None:
        self.by: dict[str, dict[Labels, float]] = defaultdict(dict)
        for s in figures.samples:
            self.by[s.metric.name][s.labels] = s.value

    def get(self, metric: c.MetricDef, labels: Labels) -> float | None:
        return self.by[metric.name].get(labels)

    def over_versions(self, metric: c.MetricDef, model: str, rest: Labels) -> float:
        """Sum over versions of a (model, version, *rest) metric."""
        return sum(v for k, v in self.by[metric.name].items() if k[0] == model and k[2:] == rest)

    def max_over_versions(self, metric: c.MetricDef, model: str, rest: Labels) -> float | None:
        values = [v for k, v in self.by[metric.name].items() if k[0] == model and k[2:] == rest]
        return max(values) if values else None


def default_window(config: MonitorConfig, idx: _Index) -> str:
    """The shortest window holding every prediction and joined event the longest one holds: longer ones
    would show the same numbers, shorter ones leave data out."""
    names = [format_duration(w) for w in sorted(config.windows)]

    def volume(window: str) -> float:
        return sum(idx.over_versions(metric, m.name, (window,))
                   for m in config.models for metric in (c.WINDOW_PREDICTIONS, c.WINDOW_JOINED))

    longest = volume(names[-1])
    return next((w for w in names if volume(w) >= longest), names[-1]) if longest > 0 else names[-1]


def _tiers(config: MonitorConfig, m: ModelConfig, figures: Figures, idx: _Index, opts: RuleOptions) -> list[SLOView]:
    counts = slo_counts(figures, m)
    out = []
    for s in m.slos:
        tiers = tier_states(opts, config.windows, m, s, {w: n for (name, w), n in counts.items() if name == s.name})
        out.append(SLOView(s.name, s.target, format_duration(s.period),
                           idx.get(c.ERROR_BUDGET_REMAINING, (m.name, s.label, s.name)), tiers))
    return out


def _labels(m: ModelConfig, idx: _Index, window: str, drift_window: str, opts: RuleOptions) -> list[LabelView]:
    outcomes = np.array([[idx.over_versions(c.LABEL_OUTCOMES, m.name, (label, o, window)) for o in c.OUTCOMES]
                         for label in m.labels])
    tp, fp, fn = outcomes[:, 0], outcomes[:, 1], outcomes[:, 2]
    precision, recall, f1 = classification.precision_recall_f1(tp, fp, fn)
    p_lo, p_hi = classification.wilson_interval(tp, tp + fp)
    r_lo, r_hi = classification.wilson_interval(tp, tp + fn)
    n_pred = idx.over_versions(c.WINDOW_PREDICTIONS, m.name, (drift_window,))
    rows = []
    for i, label in enumerate(m.labels):
        ref = idx.get(c.REFERENCE_POSITIVE_RATE, (m.name, label))
        positives = idx.over_versions(c.PREDICTED_POSITIVES, m.name, (label, drift_window))
        rate = positives / n_pred if n_pred > 0 else None
        rows.append(LabelView(
            label, float(tp[i] + fn[i]), (precision[i], p_lo[i], p_hi[i]), (recall[i], r_lo[i], r_hi[i]), f1[i],
            idx.max_over_versions(c.LABEL_ECE, m.name, (label, window)) if _one_version(idx, m) else None,
            rate, ref, collapse(opts, rate, ref, n_pred)))
    return rows


def _one_version(idx: _Index, m: ModelConfig) -> bool:
    return len({k[1] for k in idx.by[c.PREDICTIONS_TOTAL.name] if k[0] == m.name}) == 1


def _drift(m: ModelConfig, idx: _Index, window: str) -> tuple[list[DriftView], bool]:
    checked = any(k[0] == m.name and k[2] == window and v > 0 for k, v in idx.by[c.DRIFT_SAMPLE_OK.name].items())
    found = []
    sources: list[tuple[str, c.MetricDef, tuple[str, ...]]] = [
        (f"feature {f}", c.FEATURE_PSI, (f, window)) for f in m.features.all]
    sources += [(f"score {label}", c.SCORE_PSI, (label, window)) for label in m.labels]
    sources.append(("label co-occurrence", c.LABEL_COOCCURRENCE_DRIFT, (window,)))
    for what, metric, rest in sources:
        psi = idx.max_over_versions(metric, m.name, rest)
        if psi is None:
            continue
        band = drift.band(psi, m.drift.moderate, m.drift.significant)
        if band != "none":
            found.append(DriftView(what, psi, band))
    found.sort(key=lambda d: -d.psi)
    return found, checked


def summarize(config: MonitorConfig, figures: Figures, at: float, rejections: list[InputReport],
              opts: RuleOptions | None = None) -> SummaryView:
    opts = opts or RuleOptions()
    idx = _Index(figures)
    window = default_window(config, idx)
    windows = opts.windows(config)
    models = []
    for m in config.models:
        drifts, checked = _drift(m, idx, windows.drift)
        missing = [(f, r) for f in m.features.all
                   if (r := idx.max_over_versions(c.FEATURE_MISSING_RATIO, m.name, (f, windows.fast))) is not None
                   and r > m.drift.missing_ratio_alert]
        models.append(ModelView(
            m.name, m.task, m.min_events,
            predictions=sum(v for k, v in idx.by[c.PREDICTIONS_TOTAL.name].items() if k[0] == m.name),
            ground_truth=idx.get(c.GROUND_TRUTH_TOTAL, (m.name,)) or 0.0,
            joined=sum(v for k, v in idx.by[c.JOINED_TOTAL.name].items() if k[0] == m.name),
            window=window, drift_window=windows.drift, slos=_tiers(config, m, figures, idx, opts),
            labels=_labels(m, idx, window, windows.drift, opts), drift=drifts,
            drift_checked=checked and m.reference is not None, missing_features=missing,
            accuracy=idx.max_over_versions(c.ACCURACY, m.name, (window,)) if _one_version(idx, m) else None))
    return SummaryView(at, models, rejections)


# --- drawing -------------------------------------------------------------------------------------------------

def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def _interval(t: tuple[float, float, float]) -> str:
    v, lo, hi = t
    return "-" if math.isnan(v) else f"{v:.3f} ({lo:.2f}-{hi:.2f})"


def _burn(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _tier_cell(t: TierState, min_events: int) -> Text:
    if t.long_burn is None:
        return Text(f"no data over {t.long_window}", style="dim")
    if t.fires:
        return Text(f"{t.long_burn:.2f}x > {t.threshold:.3g} {t.severity.upper()}",
                    style="bold red" if t.severity == "page" else "bold yellow")
    if t.reason == "below_threshold":
        return Text(f"{t.long_burn:.2f}x ≤ {t.threshold:.3g}", style="green" if t.long_burn <= 1 else "")
    if t.reason == "few_events":
        return Text(f"{t.long_burn:.2f}x, {t.long_events:,.0f} events < {min_events}", style="dim")
    if t.reason == "noise":
        return Text(f"{t.long_burn:.2f}x, within sampling noise on {t.long_events:,.0f} events", style="dim")
    return Text(f"{t.long_burn:.2f}x, recovered over {t.short_window}")


def _slo_table(model: ModelView, min_events: int) -> Table:
    names = [t for t in TIER_NAMES if any(x.name == t for s in model.slos for x in s.tiers)]
    windows = {x.name: x.long_window for s in model.slos for x in s.tiers}
    table = Table(title="SLOs: burn rate over each alert tier's window, and whether its alert would fire now",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("SLO", no_wrap=True)
    table.add_column("target", justify="right")
    table.add_column("budget", justify="right")
    for name in names:
        table.add_column(f"{name} {windows[name]}", no_wrap=True)
    for s in model.slos:
        by_name = {t.name: t for t in s.tiers}
        left = "-" if s.remaining is None else f"{s.remaining:.0%}"
        table.add_row(s.name, f"{s.target:g}", Text(left, style="red" if (s.remaining or 0) < 0 else ""),
                      *(_tier_cell(by_name[n], min_events) if n in by_name else Text("-", style="dim")
                        for n in names))
    return table


def _label_table(model: ModelView) -> Table:
    table = Table(title=f"Labels over {model.window}, with 95% Wilson intervals", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("label", "support", "precision", "recall", "F1", "ECE",
                f"predicted {model.drift_window} / reference"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for row in model.labels:
        rate = "-" if row.predicted_rate is None else f"{row.predicted_rate:.3f}"
        ref = "" if row.reference_rate is None else f" / {row.reference_rate:.3f}"
        flag = Text(f" COLLAPSE ({row.collapse})", style="bold red") if row.collapse else Text("")
        table.add_row(row.label, f"{row.support:,.0f}", _interval(row.precision), _interval(row.recall),
                      _num(row.f1), _num(row.ece), Text(rate + ref) + flag)
    return table


def _flags(model: ModelView) -> Text:
    out = Text()
    if not model.drift_checked:
        out.append(f"drift ({model.drift_window}): not checked (no reference, or too few predictions)\n", style="dim")
    elif not model.drift:
        out.append(f"drift ({model.drift_window}): none\n", style="green")
    for d in model.drift:
        out.append(f"drift ({model.drift_window}): {d.what} PSI {d.psi:.3f} {d.band}\n",
                   style="bold red" if d.band == "significant" else "yellow")
    for feature, ratio in model.missing_features:
        out.append(f"missing features: {feature} absent in {ratio:.1%} of predictions\n", style="yellow")
    collapsed = [f"{r.label} ({r.collapse})" for r in model.labels if r.collapse]
    out.append(f"label collapse ({model.drift_window}): {', '.join(collapsed) or 'none'}",
               style="bold red" if collapsed else "green")
    return out


def _headline(model: ModelView) -> Text:
    pages = sorted({s.name for s in model.slos for t in s.firing if t.severity == "page"})
    tickets = sorted({s.name for s in model.slos for t in s.firing if t.severity == "ticket"} - set(pages))
    text = Text()
    if pages:
        text.append(f"PAGE: {', '.join(pages)} burning its error budget", style="bold red")
    if tickets:
        text.append(("; " if pages else "") + f"TICKET: {', '.join(tickets)}", style="yellow")
    if not pages and not tickets:
        text.append("no SLO alert would fire", style="green")
    return text


def _rejections(reports: list[InputReport]) -> RenderableType:
    rows = [r for r in reports if r.rejected]
    if not rows:
        return Text("rejected events: none", style="green")
    table = Table(title="Rejected events (details on stderr)", title_justify="left")
    for col in ("input", "reason", "count", "why", "first at line", "its start"):
        table.add_column(col, justify="right" if col in ("count", "first at line") else "left")
    for r in rows:
        for x in r.rejected:
            table.add_row(r.source, x.reason, f"{x.count:,}", x.detail, str(x.line),
                          Text(x.excerpt, style="dim", no_wrap=True, overflow="ellipsis"))
    return table


def render(view: SummaryView) -> RenderableType:
    stamp = datetime.fromtimestamp(view.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts: list[RenderableType] = []
    for m in view.models:
        head = Text.assemble((f"{m.name}", "bold"), f" ({m.task})  ",
                             f"{m.predictions:,.0f} predictions, {m.ground_truth:,.0f} ground truth, "
                             f"{m.joined:,.0f} joined",
                             f", accuracy over {m.window} {m.accuracy:.3f}\n" if m.accuracy is not None else "\n",
                             _headline(m))
        body: list[RenderableType] = [head]
        if m.slos:
            body.append(_slo_table(m, m.min_events))
        body += [_label_table(m), _flags(m)]
        parts.append(Panel(Group(*body), title=f"evaluated at {stamp}", title_align="left"))
    parts.append(_rejections(view.rejections))
    parts.append(Text("Prometheus text: --format prometheus (the default when piped); every sample: --format json; "
                      "HTML: monitor report", style="dim"))
    return Group(*parts)


def print_summary(config: MonitorConfig, result: object, at: float | None, console: Console | None = None) -> None:
    from monitor.replay import Replayed

    assert isinstance(result, Replayed)
    when = at if at is not None else (result.engine.latest_event_time or 0.0)
    view = summarize(config, result.figures, when, result.rejections)
    (console or Console()).print(render(view))

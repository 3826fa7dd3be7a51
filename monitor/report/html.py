"""The report's HTML: one file, inline CSS and SVG, no script, no URL.

The window selector is CSS only (radio inputs + `:checked ~`), so it works offline and with scripts
disabled. Every window-dependent block is rendered once per window that holds data and hidden unless its
radio is checked. Every string from config or figures goes through `esc`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from monitor.report import segments, svg
from monitor.report.model import (
    Distribution,
    LabelRow,
    ModelView,
    ReportView,
    SLOView,
    VersionView,
    WindowView,
)
from monitor.report.svg import Band, HLine, Series, esc
from monitor.rules.collapse_state import collapse as label_collapse

if TYPE_CHECKING:
    from monitor.report.headline import Headline
    from monitor.report.timeline import Timeline

DASH = "—"
UNDEFINED = f'<span class="na" title="undefined (0/0) or below the sample-size guard">{DASH}</span>'


# --- number formatting: one place, so tests can format figures exactly as the table does -----------------

def ratio(v: float | None) -> str:
    return DASH if v is None or not math.isfinite(v) else f"{v:.3f}"


def pct(v: float | None) -> str:
    return DASH if v is None or not math.isfinite(v) else f"{v:.1%}"


def count(v: float | None) -> str:
    return DASH if v is None or not math.isfinite(v) else f"{v:,.0f}"


def burn(v: float | None) -> str:
    return DASH if v is None or not math.isfinite(v) else f"{v:.2f}×"


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(s: str, metric: str = "", label: str = "", cls: str = "", title: str = "") -> str:
    """A table cell; `data-metric`/`data-label` let tests (and curious people) map cells to figures."""
    attrs = ""
    if metric:
        attrs += f' data-metric="{esc(metric)}"'
    if label:
        attrs += f' data-label="{esc(label)}"'
    if cls:
        attrs += f' class="{esc(cls)}"'
    if title:
        attrs += f' title="{esc(title)}"'
    body = UNDEFINED if s == DASH else esc(s)
    return f"<td{attrs}>{body}</td>"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", s)


def band_class(v: float | None, moderate: float, significant: float) -> str:
    if v is None or not math.isfinite(v):
        return ""
    return "sig" if v >= significant else "mod" if v >= moderate else "ok"


# --- page -------------------------------------------------------------------------------------------------

def render(view: ReportView, extra_sections: Sequence[str] = (), headline: Headline | None = None,
           timeline: Timeline | None = None) -> str:
    """The whole document. `extra_sections` are trusted HTML fragments (the optional evidently embed)."""
    from monitor.report import sections  # it builds on this module's helpers: imported here, not at the top
    win_ids = {w: f"win-{i}" for i, w in enumerate(view.windows)}
    radios = "".join(
        f'<input type="radio" name="window" class="win-radio" id="{win_ids[w]}" '
        f'aria-label="window {esc(w)}"{" checked" if w == view.default_window else ""}>'
        for w in view.windows)
    body = [radios, _header(view, win_ids), "<main>"]
    if headline is not None:
        body.append(sections.headline(view, headline, timeline))
    body.append(_toc(view, timeline is not None))
    for m in view.models:
        if timeline is not None and m.name in timeline.models:
            body.append(sections.timeline(view, m, timeline, headline))
        if m.versions:
            body.append(sections.versions(view, m, win_ids))
    for m in view.models:
        body.append(_model(view, m, win_ids))
    body.append(_invalid(view))
    body.extend(extra_sections)
    body.append("</main>")
    body.append(_footer(view, scripted=bool(extra_sections)))
    title = "Quality report · " + ", ".join(m.name for m in view.models)
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{_css(win_ids)}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def _css(win_ids: dict[str, str]) -> str:
    toggles = "".join(
        f"#{i}:checked~main .{i}{{display:block}}"
        f"#{i}:checked~header label[for={i}]{{background:#fff;color:#1f3b57;border-color:#fff;font-weight:600}}"
        f"#{i}:focus-visible~header label[for={i}]{{outline:2px solid #E69F00}}"
        for i in win_ids.values())
    return _BASE_CSS + toggles


_BASE_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#1d1d1f;
background:#f4f5f7}
header{background:#1f3b57;color:#fff;padding:18px 28px 14px}
header h1{margin:0 0 4px;font-size:22px;font-weight:600}
header .meta{display:flex;flex-wrap:wrap;gap:4px 28px;color:#d6e2ee;font-size:13px}
header .meta b{color:#fff;font-weight:600}
.selector{margin-top:12px;display:flex;align-items:center;gap:6px;flex-wrap:wrap;font-size:13px}
.selector label{cursor:pointer;border:1px solid #8fa9c2;border-radius:14px;padding:2px 11px;color:#fff;
background:#2c5075}
.selector label:hover{background:#3b6592}
.win-radio{position:absolute;opacity:0;width:1px;height:1px}
main{padding:12px 28px 28px;max-width:1400px}
nav.toc{font-size:13px;color:#555;margin:4px 0 8px}
nav.toc a{color:#1f5f99;margin-right:14px;text-decoration:none}
section.model>h2{font-size:20px;margin:18px 0 6px}
.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:14px 18px;margin:12px 0}
.card h3{margin:0 0 8px;font-size:16px}
.card h4{margin:10px 0 6px;font-size:14px}
.note{color:#666;font-size:12px;margin:4px 0}
.win{display:none}
.kpis{display:flex;flex-wrap:wrap;gap:8px;margin:6px 0 10px}
.kpi{flex:1 1 0;border:1px solid #e3e6ea;border-radius:6px;padding:6px 10px;min-width:104px;background:#fbfbfc}
.kpi .v{font-size:19px;font-weight:600;font-variant-numeric:tabular-nums}
.kpi .k{font-size:11px;color:#666;text-transform:uppercase;letter-spacing:.03em}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:13px}
th,td{padding:4px 9px;border-bottom:1px solid #eceef1;text-align:right;white-space:nowrap;vertical-align:middle}
th{font-weight:600;color:#444;background:#f7f8fa;font-size:12px}
th.l,td.l{text-align:left}
td .ci{display:block;color:#777;font-size:11px}
td.why{white-space:normal;color:#555;font-size:12px;text-align:left;min-width:170px}
td svg.spark{display:block;margin:2px 0 0 auto}
.na{color:#aaa}
.ok{background:#eaf5ec}.mod{background:#fff3d6}.sig{background:#fde2e2}
.warn{background:#fff3d6}.bad{background:#fde2e2;color:#8e1b1b;font-weight:600}
.good{color:#1a7f37;font-weight:600}
.pill{display:inline-block;border-radius:10px;padding:0 8px;font-size:11px;font-weight:600}
.pill.fire{background:#c62828;color:#fff}.pill.quiet{background:#e6ece8;color:#35603f}
.pill.page{background:#fde2e2;color:#8e1b1b}.pill.ticket{background:#e3edf7;color:#1f4f7a}
.grid{display:flex;flex-wrap:wrap;gap:8px 14px}
.legend{font-size:12px;color:#555;display:flex;gap:14px;align-items:center;margin:2px 0 6px}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.cols{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.cols>.grow{flex:1;min-width:480px}
footer{color:#777;font-size:12px;padding:0 28px 24px}
code{font-size:12px;background:#f0f1f3;padding:0 4px;border-radius:3px}
.headline{border-width:2px;padding:12px 18px}
.headline .status{font-size:20px;font-weight:700;margin:0 0 10px}
.status.alarm{color:#b3261e}.status.good{color:#1a7f37}
.tiles{display:flex;flex-wrap:wrap;gap:12px}
.tile{flex:1 1 380px;max-width:640px;border-radius:8px;padding:10px 14px;border:1px solid #e3e6ea;border-left-width:6px}
.tile.bad{border-left-color:#c62828;background:#fff6f6}.tile.warn{border-left-color:#E69F00;background:#fffaf0}
.tile .t-kind{font-size:12px;font-weight:700;text-transform:uppercase;letter-spacing:.04em;color:#8e1b1b}
.tile.warn .t-kind{color:#7a5200}
.tile .t-main{font-size:16px;margin:4px 0 2px}
.tile .big{font-size:24px;font-variant-numeric:tabular-nums}
.tile .vs{color:#555;font-size:13px;margin-bottom:4px}
.status .tally{display:block;font-size:14px;font-weight:600;color:#555;margin-top:2px}
.tile .t-budget{font-size:14px}
.tile .t-budget .big{color:#b3261e}
.tile .t-sub{font-size:12px;color:#666;margin-top:6px}
.tile ul{margin:4px 0 0;padding-left:18px}.tile li{margin:3px 0}
.since{color:#444;font-size:12px;white-space:nowrap}
.ver{color:#888;font-size:11px;white-space:nowrap}
p.met{margin:10px 0 0;font-size:13px;color:#35603f}
.tl-top{display:flex;flex-wrap:wrap;gap:4px 18px;align-items:flex-start}
table.timeline td,table.timeline th{padding:2px 4px;vertical-align:top;text-align:left}
table.timeline th.tl-label{font-size:14px;padding-top:24px;min-width:90px}
table.timeline svg{display:block}
table.versions td{vertical-align:top}
table.versions th.vgroup{text-align:center;border-left:2px solid #dde1e6}
th .ci{display:block;font-weight:normal;color:#666;font-size:11px}
table.versions .vstart{border-left:2px solid #dde1e6}
td.differs{background:#fde2e2}
"""


def _header(view: ReportView, win_ids: dict[str, str]) -> str:
    models = ", ".join(f"{m.name} ({m.task}, {len(m.labels)} labels, version "
                       f"{'/'.join(v.version for v in m.versions) or DASH})" for m in view.models)
    pills = "".join(f'<label for="{win_ids[w]}" title="show the last {esc(w)}">{esc(w)}</label>'
                    for w in view.windows)
    return ("<header><h1>Model quality report</h1>"
            f'<div class="meta"><span>Models: <b>{esc(models)}</b></span>'
            f"<span>Evaluated at <b>{esc(when(view.at))}</b></span>"
            f'<span>Default window: <b>{esc(view.default_window)}</b></span></div>'
            f'<div class="selector"><span>Window (ends at the evaluation time):</span>{pills}</div></header>')


def _toc(view: ReportView, with_timeline: bool = False) -> str:
    links = ['<a href="#headline">headline</a>'] if with_timeline else []
    for m in view.models:
        s = _slug(m.name)
        if with_timeline:
            links.append(f'<a href="#{esc(s)}-timeline">{esc(m.name)}: timeline</a>')
        links.append(f'<a href="#{esc(s)}-versions">versions</a>')
    for m in view.models:
        s = _slug(m.name)
        for anchor, name in (("quality", "quality"), ("calibration", "calibration"), ("drift", "drift"),
                             ("slo", "SLOs"), ("ground-truth", "ground truth"), ("health", "health")):
            prefix = f"{m.name}: " if len(view.models) > 1 and anchor == "quality" else ""
            links.append(f'<a href="#{esc(s)}-{anchor}">{esc(prefix + name)}</a>')
    return f'<nav class="toc">{"".join(links)}</nav>'


def _model(view: ReportView, m: ModelView, win_ids: dict[str, str]) -> str:
    s = _slug(m.name)
    out = [f'<section class="model" id="{esc(s)}"><h2>{esc(m.name)}</h2>']
    for v in m.versions:
        out.append(_quality(view, m, v, win_ids, s))
        out.append(_calibration(m, v, win_ids, s))
        out.append(_drift(view, m, v, s))
    if not m.versions:
        out.append('<div class="card"><p class="note">No predictions for this model.</p></div>')
    if m.segments:
        out.append(segments.section(m.name, m.task, m.segments, view.windows, win_ids, s))
    out.append(_slos(m, view.windows, s))
    out.append(_ground_truth(view, m, s))
    out.append(_health(m, s))
    out.append("</section>")
    return "".join(out)


def _version_title(m: ModelView, v: VersionView) -> str:
    return f"{m.name} {v.version}"


# --- quality ------------------------------------------------------------------------------------------------

def _quality(view: ReportView, m: ModelView, v: VersionView, win_ids: dict[str, str], s: str) -> str:
    out = [f'<div class="card" id="{esc(s)}-quality"><h3>Quality per label · {esc(_version_title(m, v))}</h3>']
    for w in view.windows:
        wv = v.windows[w]
        out.append(f'<div class="win {win_ids[w]}" data-window="{esc(w)}">')
        out.append(_kpis(m, wv))
        out.append(_label_table(view, m, wv))
        if wv.confusion is not None:
            out.append("<h4>Confusion matrix</h4>")
            out.append(svg.heatmap(wv.confusion, m.labels, m.labels, label=f"confusion matrix, last {w}"))
        out.append("</div>")
    out.append('<p class="note">Intervals are Wilson 95% (F1: docs/semantics.md). A dash means undefined '
               "(0/0), never zero. Estimated precision and recall are for predictions in the window still "
               "waiting for ground truth (CBPE from calibrated scores). Predicted-positive rates are over all "
               "predictions in the window; <span class=\"bad\">collapse</span> marks a rate below a tenth of "
               "the reference's, or its mirror, as the label-collapse alert does.</p></div>")
    return "".join(out)


def _kpis(m: ModelView, wv: WindowView) -> str:
    items: list[tuple[str, str, str]] = [
        ("predictions", count(wv.predictions), "mlmon_window_predictions"),
        ("labelled (joined)", count(wv.joined), "mlmon_window_joined"),
        ("label coverage", pct(wv.coverage), "mlmon_label_coverage"),
        ("awaiting ground truth", count(wv.pending), "mlmon_window_pending"),
    ]
    if m.task == "multiclass":
        items.append(("accuracy", ratio(wv.accuracy), "mlmon_accuracy"))
    items += [("micro F1", ratio(wv.micro_f1), "mlmon_micro_f1"), ("macro F1", ratio(wv.macro_f1), "mlmon_macro_f1"),
              ("hamming loss", ratio(wv.hamming_loss), "mlmon_hamming_loss")]
    if m.task != "multiclass":
        items.append(("subset accuracy", ratio(wv.subset_accuracy), "mlmon_subset_accuracy"))
    if m.task == "multilabel":
        card = f"{_num(wv.cardinality_predicted)} · {_num(wv.cardinality_actual)}"
        items.append(("labels per event pred · actual", card, "mlmon_label_cardinality"))
    return '<div class="kpis">' + "".join(
        f'<div class="kpi"><div class="v" data-metric="{metric}">{esc(val)}</div><div class="k">{esc(k)}</div></div>'
        for k, val, metric in items) + "</div>"


def _num(v: float | None) -> str:
    return DASH if v is None or not math.isfinite(v) else f"{v:.2f}"


def _label_table(view: ReportView, m: ModelView, wv: WindowView) -> str:
    head = ("<tr><th class=l>label</th><th>threshold</th><th>support</th><th>TP / FP / FN / TN</th>"
            "<th>precision</th><th>recall</th><th>F1</th><th>ECE</th><th>predicted positive<br>now · reference</th>"
            "<th>score PSI</th><th>pending: est.<br>precision</th><th>pending: est.<br>recall</th></tr>")
    rows = [_label_row(view, m, wv, r) for r in wv.rows]
    return (f'<table class="labels" data-window="{esc(wv.window)}"><thead>{head}</thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _label_row(view: ReportView, m: ModelView, wv: WindowView, r: LabelRow) -> str:
    lab = r.label
    threshold = "arg-max" if m.task == "multiclass" else f"{r.threshold:g}"
    cells = [f'<td class="l"><b>{esc(lab)}</b></td>', _cell(threshold),
             _cell(count(r.support), "mlmon_label_support", lab),
             f'<td class="na-soft">{esc(" / ".join(count(x) for x in (r.tp, r.fp, r.fn, r.tn)))}</td>']
    for name, iv in (("precision", r.precision), ("recall", r.recall), ("f1", r.f1)):
        if iv.value is None:
            cells.append(_cell(DASH, f"mlmon_label_{name}", lab))
            continue
        bar = svg.interval_bar(iv.value, iv.lower, iv.upper) if name == "f1" else ""
        cells.append(f'<td data-metric="mlmon_label_{name}" data-label="{esc(lab)}">{esc(ratio(iv.value))}'
                     f'<span class="ci">{esc(ratio(iv.lower))}–{esc(ratio(iv.upper))}</span>{bar}</td>')
    ece_cls = "warn" if r.ece is not None and r.ece > view.ece_threshold else ""
    cells.append(_cell(ratio(r.ece), "mlmon_label_ece", lab, ece_cls,
                       f"calibration alert above {view.ece_threshold:g}" if ece_cls else ""))
    collapse = label_collapse(view.opts, r.positive_rate, r.reference_rate, wv.predictions) is not None
    rate = f"{pct(r.positive_rate)} · {pct(r.reference_rate)}"
    cells.append(_cell(rate, "mlmon_predicted_positive_rate", lab, "bad" if collapse else "",
                       "label collapse: predicted for (almost) nothing or everything" if collapse else ""))
    cells.append(_cell(ratio(r.score_psi), "mlmon_score_psi", lab,
                       band_class(r.score_psi, m.moderate, m.significant)))
    cells.append(_cell(ratio(r.est_precision), "mlmon_estimated_label_precision", lab))
    cells.append(_cell(ratio(r.est_recall), "mlmon_estimated_label_recall", lab))
    return "<tr>" + "".join(cells) + "</tr>"


# --- calibration and score distributions ----------------------------------------------------------------------

def _calibration(m: ModelView, v: VersionView, win_ids: dict[str, str], s: str) -> str:
    out = [f'<div class="card" id="{esc(s)}-calibration"><h3>Calibration and score distributions · '
           f"{esc(_version_title(m, v))}</h3>"]
    for w, i in win_ids.items():
        wv = v.windows[w]
        out.append(f'<div class="win {i}" data-window="{esc(w)}">')
        out.append(f"<h4>Reliability diagrams, last {esc(w)}</h4>")
        if wv.calibration:
            out.append('<div class="grid">')
            for label, bins in wv.calibration.items():
                row = next((r for r in wv.rows if r.label == label), None)
                ece = f" · ECE {ratio(row.ece)}" if row and row.ece is not None else ""
                pts = [(b.index, b.mean_score, b.positive_share, b.count) for b in bins if b.count > 0]
                out.append(svg.reliability(pts, title=f"{label}{ece}", label=f"reliability diagram {label}, last {w}"))
            out.append("</div>")
        else:
            out.append('<p class="note">No calibration detail for these labels '
                       "(config <code>detail_labels</code>).</p>")
        out.append(f"<h4>Score distributions, last {esc(w)} vs reference</h4>")
        if wv.scores:
            out.append(_legend([("current window", svg.CURRENT), ("reference", svg.REFERENCE)]))
            out.append('<div class="grid">' + "".join(_distribution(d, w) for d in wv.scores) + "</div>")
        else:
            out.append('<p class="note">No reference configured: no score distributions.</p>')
        out.append("</div>")
    out.append('<p class="note">Reliability: each point is one of 10 equal-width score bins (x: mean score, '
               "y: share of positives; marker size and grey bars: labelled events in the bin); the dashed "
               "diagonal is perfect calibration. Score distributions use the reference's frozen decile bins, "
               "so the reference is about 10% per bin.</p></div>")
    return "".join(out)


def _distribution(d: Distribution, w: str) -> str:
    psi = f" · PSI {ratio(d.psi)}" if d.psi is not None else ""
    return svg.distribution(Distribution.shares(d.current), Distribution.shares(d.reference), d.bin_titles,
                            title=f"{d.name}{psi}", label=f"score distribution {d.name}, last {w}")


def _legend(items: Iterable[tuple[str, str]]) -> str:
    return '<div class="legend">' + "".join(
        f'<span><span class="sw" style="background:{c}"></span>{esc(name)}</span>' for name, c in items) + "</div>"


# --- drift ----------------------------------------------------------------------------------------------------

def _psi_bands(m: ModelView) -> list[Band]:
    return [Band(0, m.moderate, svg.BAND_NONE, f"PSI < {m.moderate:g}: no drift"),
            Band(m.moderate, m.significant, svg.BAND_MODERATE, f"{m.moderate:g}–{m.significant:g}: moderate"),
            Band(m.significant, 1e9, svg.BAND_SIGNIFICANT, f"≥ {m.significant:g}: significant")]


def _drift(view: ReportView, m: ModelView, v: VersionView, s: str) -> str:
    windows = view.windows
    out = [f'<div class="card" id="{esc(s)}-drift"><h3>Drift against the reference · {esc(_version_title(m, v))}</h3>']
    band_legend = _legend([(f"PSI < {m.moderate:g} none", svg.BAND_NONE),
                           (f"{m.moderate:g}–{m.significant:g} moderate", svg.BAND_MODERATE),
                           (f"≥ {m.significant:g} significant", svg.BAND_SIGNIFICANT)])
    out.append(band_legend)
    out.append('<div class="cols">')
    if v.feature_psi:
        series = [Series(f, svg.PALETTE[i % len(svg.PALETTE)], [v.feature_psi[f].get(w) for w in windows])
                  for i, f in enumerate(v.feature_psi)]
        out.append("<div><h4>Feature PSI per window</h4>" + svg.bar_chart(
            windows, series, label="feature PSI per window", width=620, height=250, sqrt=True,
            bands=_psi_bands(m), y_title="PSI (square-root scale)") + "</div>")
    series = [Series(label, svg.PALETTE[i % len(svg.PALETTE)], [v.score_psi[label].get(w) for w in windows])
              for i, label in enumerate(m.labels)]
    out.append("<div><h4>Score PSI per label and window</h4>" + svg.bar_chart(
        windows, series, label="score PSI per window", width=620, height=250, sqrt=True, bands=_psi_bands(m),
        y_title="PSI (square-root scale)") + "</div>")
    out.append("</div>")
    out.append(_drift_table(m, v, windows))
    out.append(f'<p class="note">PSI is absent (n/a) in windows with fewer than {m.min_samples:,} predictions '
               f"(sample-size guard, <code>drift.min_samples</code>). Missing ratios above "
               f"{m.missing_alert:.0%} are highlighted (<code>drift.missing_ratio_alert</code>).</p></div>")
    return "".join(out)


def _drift_table(m: ModelView, v: VersionView, windows: list[str]) -> str:
    head = "<tr><th class=l></th>" + "".join(f"<th>{esc(w)}</th>" for w in windows) + "</tr>"
    rows = []
    for f, per in v.feature_psi.items():
        rows.append(f'<tr><td class="l">PSI · {esc(f)}</td>' + "".join(
            _cell(ratio(per.get(w)), "mlmon_feature_psi", f, band_class(per.get(w), m.moderate, m.significant))
            for w in windows) + "</tr>")
    for f in v.feature_psi:
        cells = []
        for w in windows:
            r = v.windows[w].missing.get(f)
            cells.append(_cell(pct(r), "mlmon_feature_missing_ratio", f,
                               "warn" if r is not None and r > m.missing_alert else ""))
        rows.append(f'<tr><td class="l">missing · {esc(f)}</td>' + "".join(cells) + "</tr>")
    rows.append('<tr><td class="l">label co-occurrence PSI</td>' + "".join(
        _cell(ratio(v.windows[w].cooccurrence_drift), "mlmon_label_cooccurrence_drift", "",
              band_class(v.windows[w].cooccurrence_drift, m.moderate, m.significant)) for w in windows) + "</tr>")
    rows.append('<tr><td class="l">predictions</td>' + "".join(
        _cell(count(v.windows[w].predictions), "mlmon_window_predictions", "",
              "" if v.windows[w].drift_sufficient in (None, True) else "na") for w in windows) + "</tr>")
    return f'<table class="drift"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


# --- SLOs -----------------------------------------------------------------------------------------------------

_TIER_COLOURS = {"page_fast": "#c62828", "page_slow": "#D55E00", "ticket_fast": "#8a6d00", "ticket_slow": "#5b6b7a"}


def _slos(m: ModelView, windows: list[str], s: str) -> str:
    out = [f'<div class="card" id="{esc(s)}-slo"><h3>SLOs: error budget and burn rates</h3>']
    if not m.slos:
        out.append('<p class="note">No SLOs configured for this model.</p>')
    for slo in m.slos:
        out.append(_slo(m, slo, windows))
    out.append('<p class="note">Burn rate = error ratio / (1 − target); 1× spends the budget exactly over the '
               "period. Thresholds follow docs/alerting.md: the workbook's 14.4× / 6× / 3× / 1× capped at "
               "1 + share × (max burn − 1). A tier fires when its long window burns above the threshold with "
               "at least <code>min_events</code> events, unless its short window has recovered; this report "
               "evaluates that condition on the snapshot (no <code>for:</code> delay).</p></div>")
    return "".join(out)


def _slo(m: ModelView, slo: SLOView, windows: list[str]) -> str:
    firing = [t for t in slo.tiers if t.fires]
    rem_cls = "bad" if slo.remaining is not None and slo.remaining < 0 else "good"
    status = ('<span class="pill fire">FIRING: ' + esc(", ".join(t.name for t in firing)) + "</span>"
              if firing else '<span class="pill quiet">no tier firing</span>')
    head = (f'<h4 data-slo="{esc(slo.name)}">{esc(slo.name)} '
            f'<span class="pill {esc(slo.severity)}">{esc(slo.severity)}</span> {status}</h4>'
            f'<p class="note">{esc(slo.objective)} of <b>{esc(slo.label)}</b> ≥ {slo.target:g} over '
            f"{esc(slo.period)} · max burn rate {slo.max_burn:.2f}× · budget remaining over {esc(slo.period)}: "
            f'<span class="{rem_cls}" data-metric="mlmon_error_budget_remaining">{esc(pct(slo.remaining))}'
            "</span></p>")
    thresholds: dict[float, list[str]] = {}
    for t in slo.tiers:
        thresholds.setdefault(t.threshold, []).append(t.name)
    hlines = [HLine(th, _TIER_COLOURS.get(names[0], "#555"), f"{' '.join(names)} {th:.3g}×")
              for th, names in thresholds.items()]
    hlines.append(HLine(slo.max_burn, "#222", f"max {slo.max_burn:.2f}×", "1 2"))
    colours = [svg.BAD if any(t.fires and t.long_window == w for t in slo.tiers)
               else svg.WARN if (slo.burn.get(w) or 0) > 1 else svg.GOOD for w in windows]
    chart = svg.bar_chart(windows, [Series("burn rate", "#888", [slo.burn.get(w) for w in windows], colours)],
                          label=f"burn rate per window, {slo.name}", width=460, height=230,
                          vmax=max([slo.max_burn, *[b for b in slo.burn.values() if b is not None]]) * 1.08,
                          hlines=hlines, fmt=lambda v: f"{v:.2f}×", legend=False, y_title="burn rate")
    tier_head = ("<tr><th class=l>tier</th><th>windows<br>long / short</th><th>threshold</th>"
                 "<th>long<br>burn</th><th>short<br>burn</th><th>events<br>(long)</th><th class=l>state</th>"
                 "<th class=l>because</th></tr>")
    tier_rows = []
    for t in slo.tiers:
        state = ('<span class="pill fire">would fire</span>' if t.fires else '<span class="pill quiet">quiet</span>')
        tier_rows.append(
            f'<tr data-tier="{esc(t.name)}"><td class="l">{esc(t.name)}</td>'
            f"<td>{esc(t.long_window)} / {esc(t.short_window)}</td><td>{esc(f'{t.threshold:.3g}×')}</td>"
            f"{_cell(burn(t.long_burn), 'mlmon_error_budget_burn_rate', t.long_window)}"
            f"{_cell(burn(t.short_burn), 'mlmon_error_budget_burn_rate', t.short_window)}"
            f'<td>{esc(count(t.long_events))}</td><td class="l">{state}</td>'
            f'<td class="l why">{esc(t.why)}</td></tr>')
    table = f'<table class="tiers"><thead>{tier_head}</thead><tbody>{"".join(tier_rows)}</tbody></table>'
    legend = _legend([("burn ≤ 1× (on budget)", svg.GOOD), ("above 1×", svg.WARN),
                      ("long window of a firing tier", svg.BAD)])
    return (f'<div class="slo">{head}<div class="cols"><div>{legend}{chart}</div>'
            f'<div class="grow">{table}</div></div></div>')


# --- ground truth, health -------------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _ground_truth(view: ReportView, m: ModelView, s: str) -> str:
    windows = view.windows
    out = [f'<div class="card" id="{esc(s)}-ground-truth"><h3>Label coverage and ground-truth delay</h3>'
           '<div class="cols">']
    for v in m.versions:
        cov = [v.windows[w].coverage for w in windows]
        chart = svg.bar_chart(windows, [Series("coverage", svg.CURRENT, cov)],
                              label=f"label coverage per window, version {v.version}", width=460, height=210,
                              vmax=1.0, fmt=lambda x: f"{x:.1%}", legend=False, y_title="joined / predictions")
        head = "<tr><th class=l></th>" + "".join(f"<th>{esc(w)}</th>" for w in windows) + "</tr>"
        rows = [
            ("predictions", [count(v.windows[w].predictions) for w in windows], "mlmon_window_predictions"),
            ("labelled (joined)", [count(v.windows[w].joined) for w in windows], "mlmon_window_joined"),
            ("awaiting ground truth", [count(v.windows[w].pending) for w in windows], "mlmon_window_pending"),
            ("coverage", [pct(x) for x in cov], "mlmon_label_coverage"),
        ]
        body = "".join(f'<tr><td class="l">{esc(name)}</td>' + "".join(_cell(x, metric) for x in vals) + "</tr>"
                       for name, vals, metric in rows)
        out.append(f"<div><h4>Label coverage · version {esc(v.version)}</h4>{chart}"
                   f'<table class="coverage"><thead>{head}</thead><tbody>{body}</tbody></table></div>')
    if m.delay is not None:
        out.append(_delay(m))
    out.append("</div>")
    out.append('<p class="note">Coverage: joined events observed in the window / predictions made in it (both '
               "placed by their own time, so a recent window can exceed what it will settle at). Delay: "
               "ground-truth time minus prediction time at the first join, since the start of the stream.</p></div>")
    return "".join(out)


def _histogram_groups(buckets: Sequence[float]) -> list[str]:
    labels = [f"≤{_duration(b)}" for b in buckets]
    return [*labels, f">{_duration(buckets[-1])}"] if buckets else [">0"]


def _delay(m: ModelView) -> str:
    h = m.delay
    assert h is not None
    total = sum(h.counts)
    groups = _histogram_groups(h.buckets)
    median = DASH
    if total > 0:
        acc = 0.0
        for g, cnt in zip(groups, h.counts, strict=True):
            acc += cnt
            if acc >= total / 2:
                median = g
                break
    mean = _human(h.sum / total) if total > 0 else DASH
    chart = svg.bar_chart(groups, [Series("joins", svg.PALETTE[2], list(h.counts))],
                          label="ground-truth delay histogram", width=520, height=210,
                          fmt=lambda x: f"{x:,.0f}", legend=False, y_title="first joins")
    return (f"<div><h4>Ground-truth delay</h4>{chart}"
            f'<p class="note">{count(total)} joins · mean delay {esc(mean)} · median in bucket {esc(median)}</p></div>')


def _human(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def _health(m: ModelView, s: str) -> str:
    rows = "".join(f'<tr><td class="l">{esc(k)}</td><td>{esc(count(v))}</td></tr>' for k, v in m.counters.items())
    latency = ""
    for v in m.versions:
        h = v.latency
        if h is None or sum(h.counts) <= 0:
            continue
        groups = [f"≤{b * 1000:g}ms" if b < 1 else f"≤{b:g}s" for b in h.buckets] + [f">{h.buckets[-1]:g}s"]
        latency += (f"<div><h4>Serving latency · version {esc(v.version)}</h4>" + svg.bar_chart(
            groups, [Series("predictions", svg.PALETTE[4], list(h.counts))], label="serving latency histogram",
            width=700, height=200, fmt=lambda x: f"{x:,.0f}", legend=False, y_title="predictions") + "</div>")
    return (f'<div class="card" id="{esc(s)}-health"><h3>Stream health</h3><div class="cols">'
            f'<div><table class="health"><tbody>{rows}</tbody></table></div>{latency}</div></div>')


def _invalid(view: ReportView) -> str:
    if not view.invalid:
        body = '<p class="note">No invalid events.</p>'
    else:
        rows = "".join(f'<tr><td class="l">{esc(t)}</td><td class="l">{esc(r)}</td><td>{esc(count(n))}</td></tr>'
                       for (t, r), n in view.invalid.items())
        body = ("<table><thead><tr><th class=l>topic</th><th class=l>reason</th><th>events</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>")
    return f'<div class="card" id="invalid-input"><h3>Invalid input (dead-lettered)</h3>{body}</div>'


def _footer(view: ReportView, scripted: bool) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("mlmon")
    except PackageNotFoundError:
        ver = "dev"
    return (f"<footer>Generated by <code>monitor report</code> (mlmon {esc(ver)}) from the same figures "
            f"<code>monitor replay</code> exports, evaluated at {esc(when(view.at))}. "
            + ("Self-contained: no network; the only script is evidently's, inside its sandboxed frame."
               if scripted else "Self-contained: no scripts, no network.") + "</footer>")

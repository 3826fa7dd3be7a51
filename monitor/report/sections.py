"""The report's first sections: the headline (what is wrong, since when), the timeline per label, and the
model versions side by side. The page, its styles and the per-window sections live in html.py."""

from __future__ import annotations

from datetime import UTC, datetime

from monitor.report import svg
from monitor.report.headline import KIND_COLLAPSE, Finding, Headline, SLOStatus
from monitor.report.html import DASH, UNDEFINED, _legend, _psi_bands, _slug, burn, count, pct, ratio, when
from monitor.report.model import ModelView, ReportView
from monitor.report.svg import HLine, Line, Marker, Strip, esc
from monitor.report.timeline import Timeline
from monitor.report.versions import Comparison, VersionCell, compare

TIER_COLOURS = {"page_fast": "#c62828", "page_slow": "#D55E00", "ticket_fast": "#8a6d00", "ticket_slow": "#5b6b7a"}
CHART_W, CHART_H = 300, 132


# --- time words -------------------------------------------------------------------------------------------

def clock(ts: float, span: float) -> str:
    fmt = "%H:%M" if span <= 86400 else "%Y-%m-%d %H:%M"
    return datetime.fromtimestamp(ts, UTC).strftime(fmt) + " UTC"


def ago(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m" if minutes else f"{hours}h"
    return f"{hours / 24:.1f}d"


def since_text(since: float | None, at: float, timeline: Timeline | None) -> str:
    if since is None or timeline is None or not timeline.times:
        return ""
    span = timeline.times[-1] - timeline.times[0]
    if since <= timeline.times[0]:
        return f"since the start of the data ({clock(since, span)})"
    if since >= timeline.times[-1]:
        return "at the evaluation time, not at the step before"
    return f"since {clock(since, span)} ({ago(at - since)} before the evaluation)"


# --- headline ---------------------------------------------------------------------------------------------

def headline(view: ReportView, h: Headline, timeline: Timeline | None) -> str:
    problems = h.problems
    if problems:
        parts = _tally(h)
        status = (f'<div class="status alarm" data-problems="{problems}">{problems} problem'
                  f'{"s" if problems != 1 else ""} at {esc(when(view.at))}'
                  f'<span class="tally">{esc(" · ".join(parts))}</span></div>')
    else:
        status = ('<div class="status good" data-problems="0">No problem found: every SLO met, no alert tier '
                  f"would fire, no collapsed label, no significant drift (last {esc(h.window)})</div>")
    tiles = [_slo_tile(s, view.at, timeline) for s in h.slos if s.state != "met"]
    collapses = [f for f in h.findings if f.kind == KIND_COLLAPSE]
    drifts = [f for f in h.findings if f.kind != KIND_COLLAPSE]
    if collapses:
        tiles.append(_finding_tile("Collapsed labels", f"predicted-positive rate, last {h.window}", collapses,
                                   view.at, timeline, "bad"))
    if drifts:
        tiles.append(_finding_tile("Significant drift", f"PSI against the reference, last {h.window}", drifts,
                                   view.at, timeline, "warn"))
    met = [s for s in h.slos if s.state == "met"]
    ok = ""
    if met:
        ok = '<p class="met">SLOs met: ' + " · ".join(
            f'<span data-slo="{esc(s.slo.name)}"><b>{esc(s.slo.name)}</b> {esc(s.slo.objective)} '
            f"{esc(ratio(s.slo.measured))} ≥ {s.slo.target:g} over {esc(s.slo.period)}, budget left "
            f"{esc(pct(s.slo.remaining))}</span>" for s in met) + "</p>"
    invalid = ""
    if h.invalid:
        invalid = (f'<p class="met">{esc(count(h.invalid))} events were rejected as invalid: see '
                   '<a href="#invalid-input">invalid input</a>.</p>')
    return (f'<section class="card headline" id="headline">{status}'
            f'<div class="tiles">{"".join(tiles)}</div>{ok}{invalid}'
            '<p class="note">Conditions are the generated alert rules\' (SLO tiers, label collapse, drift) '
            "evaluated on this replay, without their <code>for:</code> delays; \"since\" is the first timeline "
            "step from which the condition held without a break up to the evaluation time.</p></section>")


def _tally(h: Headline) -> list[str]:
    def n(k: int, one: str, many: str) -> str:
        return f"{k} {one if k == 1 else many}"

    breached = sum(s.state == "breached" for s in h.slos)
    burning = sum(s.state == "burning" for s in h.slos)
    collapses = sum(f.kind == KIND_COLLAPSE for f in h.findings)
    drifts = len(h.findings) - collapses
    return [text for k, text in ((breached, n(breached, "SLO breached", "SLOs breached")),
                                 (burning, n(burning, "SLO burning its budget", "SLOs burning their budget")),
                                 (collapses, n(collapses, "collapsed label", "collapsed labels")),
                                 (drifts, n(drifts, "significant drift", "significant drifts"))) if k]


def _slo_tile(s: SLOStatus, at: float, timeline: Timeline | None) -> str:
    slo = s.slo
    state = "SLO breached" if s.breached else "SLO burning its budget"
    tiers = "".join(
        f'<li data-firing-tier="{esc(t.name)}"><span class="pill fire">{esc(t.name)}</span> '
        f"{esc(t.long_window)} burn {esc(burn(t.burn))} &gt; {esc(f'{t.threshold:.3g}×')} "
        f'<span class="since">{esc(since_text(t.since, at, timeline))}</span></li>' for t in s.firing)
    tiers_html = (f'<div class="t-sub">alert tiers that would fire</div><ul>{tiers}</ul>' if tiers
                  else '<div class="t-sub">no alert tier would fire now</div>')
    return (f'<div class="tile bad" data-slo="{esc(slo.name)}" data-state="{esc(s.state)}">'
            f'<div class="t-kind">{esc(state)} · {esc(slo.severity)} · {esc(s.model)}</div>'
            f'<div class="t-main">{esc(slo.label)} {esc(slo.objective)} '
            f'<b class="big" data-value="slo-measured">{esc(ratio(slo.measured))}</b></div>'
            f'<div class="vs">target ≥ {slo.target:g} over {esc(slo.period)} · '
            f"{esc(count(slo.period_events))} labelled "
            f"{'actual' if slo.objective == 'recall' else 'predicted'} positives</div>"
            f'<div class="t-budget">error budget left <b class="big" data-metric="mlmon_error_budget_remaining">'
            f"{esc(pct(slo.remaining))}</b></div>{tiers_html}</div>")


def _finding_tile(title: str, sub: str, items: list[Finding], at: float, timeline: Timeline | None,
                  cls: str) -> str:
    rows = []
    for f in items:
        what = f.kind.replace(" drift", "") if f.kind != KIND_COLLAPSE else ""
        subject = f"{what} {f.subject}".strip() if f.subject else what
        rows.append(f'<li data-kind="{esc(f.kind)}" data-subject="{esc(f.subject)}"><b>{esc(subject)}</b> '
                    f"{esc(f.detail)} <span class=\"since\">{esc(since_text(f.since, at, timeline))}</span>"
                    + (f' <span class="ver">{esc(f.model)} {esc(f.version)}</span>' if f.version else "")
                    + "</li>")
    return (f'<div class="tile {cls}"><div class="t-kind">{esc(title)}</div>'
            f'<div class="t-sub">{esc(sub)}</div><ul>{"".join(rows)}</ul></div>')


# --- timeline ---------------------------------------------------------------------------------------------

def timeline(view: ReportView, m: ModelView, tl: Timeline, h: Headline | None) -> str:
    mt = tl.models[m.name]
    times = tl.times
    s = _slug(m.name)
    versions = list(mt.versions)
    colour = {v: svg.PALETTE[i % len(svg.PALETTE)] for i, v in enumerate(versions)}
    markers = _markers(m, h, tl)
    out = [f'<div class="card" id="{esc(s)}-timeline"><h3>Timeline · {esc(m.name)}: each point is the last '
           f"{esc(tl.window)} at that time, every {esc(ago(tl.step))}</h3>"]
    legend = [(f"version {v}", colour[v]) for v in versions] if len(versions) > 1 else []
    legend += [(f"{name} firing", c) for name, c in TIER_COLOURS.items()
               if any(t.name == name for slo in m.slos for t in slo.tiers)]
    if legend:
        out.append(_legend(legend))
    # Model-level: inputs and volume.
    feature_lines = []
    for vi, (v, vs) in enumerate(mt.versions.items()):
        for fi, (feature, series) in enumerate(vs.feature_psi.items()):
            name = feature if len(versions) == 1 else f"{feature} · {v}"
            feature_lines.append(Line(name, svg.PALETTE[(fi + 4) % len(svg.PALETTE)], series,
                                      dash="" if vi == 0 else "4 2"))
    top = []
    if feature_lines:
        top.append(_with_key(svg.time_series(
            times, feature_lines, title=f"feature PSI (inputs), last {tl.window}", label="timeline feature PSI",
            width=CHART_W * 2 + 10, height=CHART_H, sqrt=True, vmax=_psi_top(feature_lines, m.significant),
            bands=_psi_bands(m),            markers=markers.get(("feature", ""), [])), feature_lines))
    volume = [Line(f"predictions · {v}", colour[v], vs.predictions) for v, vs in mt.versions.items()]
    top.append(svg.time_series(times, volume, title=f"predictions in the last {tl.window}",
                               label="timeline predictions", width=CHART_W, height=CHART_H,
                               fmt=lambda x: f"{x:,.0f}"))
    out.append(f'<div class="tl-top">{"".join(top)}</div>')
    head = ("<tr><th class=l>label</th><th class=l>quality (95% interval)</th><th class=l>SLO burn rate by "
            "tier window</th><th class=l>predicted-positive rate</th><th class=l>score PSI</th></tr>")
    rows = [_label_row(view, m, tl, label, colour, markers) for label in m.labels]
    out.append(f'<table class="timeline"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>')
    out.append('<p class="note">Every point is what <code>monitor replay --at</code> that time reports for the '
               f"window ending there (the drift alerts' window, {esc(tl.window)}). Quality is the label's SLO "
               "objective (F1 without an SLO), with its Wilson 95% interval as a band and the target dashed. "
               "Burn rates are drawn for each alert tier's long window with its threshold; the strips under "
               "the chart show when each tier's condition held. Dashed vertical lines mark the onsets named "
               "in the headline. Gaps are steps where a figure is undefined (no labelled events, or fewer "
               "predictions than the drift sample-size guard).</p></div>")
    return "".join(out)


def _with_key(chart: str, lines: list[Line]) -> str:
    return f"<div>{chart}{_legend([(ln.name, ln.colour) for ln in lines])}</div>"


def _markers(m: ModelView, h: Headline | None, tl: Timeline) -> dict[tuple[str, str], list[Marker]]:
    """Onsets from the headline, by (chart kind, label): drawn as dashed vertical lines."""
    out: dict[tuple[str, str], list[Marker]] = {}
    if h is None:
        return out
    span = tl.times[-1] - tl.times[0] if tl.times else 0.0
    for s in h.slos:
        starts = [t.since for t in s.firing if t.since is not None]
        if s.model == m.name and starts:
            mk = Marker(min(starts), f"tiers fire {clock(min(starts), span).removesuffix(' UTC')}")
            for kind in ("quality", "burn"):
                out.setdefault((kind, s.slo.label), []).append(mk)
    for f in h.findings:
        if f.model != m.name or f.since is None:
            continue
        at = clock(f.since, span).removesuffix(" UTC")
        if f.kind == KIND_COLLAPSE:
            out.setdefault(("rate", f.subject), []).append(Marker(f.since, f"collapse {at}"))
        elif f.kind.startswith("score"):
            out.setdefault(("psi", f.subject), []).append(Marker(f.since, f"drift {at}", svg.WARN))
        elif f.kind.startswith("feature"):
            out.setdefault(("feature", ""), []).append(Marker(f.since, f"{f.subject} {at}", svg.WARN))
    # One marker per chart is readable; the earliest onset is the one a person looks for.
    return {k: [min(v, key=lambda mk: mk.time)] for k, v in out.items()}


def _label_row(view: ReportView, m: ModelView, tl: Timeline, label: str, colour: dict[str, str],
               markers: dict[tuple[str, str], list[Marker]]) -> str:
    mt = tl.models[m.name]
    times = tl.times
    slos = [s for s in m.slos if s.label == label]
    metric = slos[0].objective if slos else "f1"
    metric_name = {"f1": "F1"}.get(metric, metric)
    quality = []
    for v, vs in mt.versions.items():
        value, lower, upper = vs.labels[label].quality(metric)
        quality.append(Line(f"{metric_name} · {v}", colour[v], value, lower, upper))
    targets = [HLine(s.target, svg.BAD, f"target {s.target:g}") for s in slos if s.objective == metric]
    cells = [f'<th class="l tl-label" scope="row">{esc(label)}</th>']
    cells.append("<td>" + svg.time_series(
        times, quality, title=f"{label} · {metric_name}", label=f"timeline quality {label}", width=CHART_W,
        height=CHART_H, vmax=1.0, hlines=targets, markers=markers.get(("quality", label), []),
        fmt=lambda x: f"{x:g}", empty="no labelled events") + "</td>")
    burn_charts = []
    for s in slos:
        series = mt.slos.get(s.name)
        if series is None:
            continue
        lines: list[Line] = []
        hlines: list[HLine] = []
        strips: list[Strip] = []
        for t in s.tiers:
            c = TIER_COLOURS.get(t.name, "#555")
            if all(ln.name != t.long_window for ln in lines):
                lines.append(Line(t.long_window, c, series.burn[t.long_window]))
            hlines.append(HLine(t.threshold, c, f"{t.threshold:.3g}×"))
            strips.append(Strip(t.name, series.tier_fires(view.opts, t, s.target, m.min_events), c))
        top = max([s.max_burn, *(v for ln in lines for v in ln.values if v is not None)]) * 1.05
        burn_charts.append(svg.time_series(
            times, lines, title=f"{s.name}: burn rate ({', '.join(ln.name for ln in lines)})",
            label=f"timeline burn rate {s.name}", width=CHART_W, height=CHART_H + 9 * len(strips), vmax=top,
            hlines=_dedupe(hlines), strips=strips, markers=markers.get(("burn", label), []),
            fmt=lambda x: f"{x:g}×", empty="no labelled events"))
    cells.append("<td>" + ("".join(burn_charts) or '<span class="na">no SLO on this label</span>') + "</td>")
    reference = next((r.reference_rate for v in m.versions for wv in v.windows.values() for r in wv.rows
                      if r.label == label and r.reference_rate is not None), None)
    rate_lines = [Line(f"predicted positive · {v}", colour[v], vs.labels[label].positive_rate)
                  for v, vs in mt.versions.items()]
    ref_lines = [HLine(reference, "#555", f"reference {reference:.1%}")] if reference is not None else []
    cells.append("<td>" + svg.time_series(
        times, rate_lines, title=f"{label} · predicted-positive rate", label=f"timeline positive rate {label}",
        width=CHART_W, height=CHART_H, hlines=ref_lines, markers=markers.get(("rate", label), []),
        fmt=lambda x: f"{x:.0%}") + "</td>")
    psi_lines = [Line(f"score PSI · {v}", colour[v], vs.labels[label].score_psi) for v, vs in mt.versions.items()]
    cells.append("<td>" + svg.time_series(
        times, psi_lines, title=f"{label} · score PSI", label=f"timeline score PSI {label}", width=CHART_W,
        height=CHART_H, sqrt=True, vmax=_psi_top(psi_lines, m.significant), bands=_psi_bands(m),
        markers=markers.get(("psi", label), []),
        empty="no PSI (no reference, or too few predictions)") + "</td>")
    return f'<tr data-label="{esc(label)}">{"".join(cells)}</tr>'


def _psi_top(lines: list[Line], significant: float) -> float:
    """Room above the significant band even when nothing drifts, so every PSI chart shows the bands."""
    values = [v for ln in lines for v in ln.values if v is not None]
    return max([*values, significant * 1.6]) * 1.08


def _dedupe(hlines: list[HLine]) -> list[HLine]:
    seen: dict[float, HLine] = {}
    for h in hlines:
        seen.setdefault(h.value, h)
    return list(seen.values())


# --- versions ---------------------------------------------------------------------------------------------

def versions(view: ReportView, m: ModelView, win_ids: dict[str, str]) -> str:
    s = _slug(m.name)
    out = [f'<div class="card" id="{esc(s)}-versions"><h3>Model versions side by side · {esc(m.name)}</h3>']
    for w, i in win_ids.items():
        out.append(f'<div class="win {i}" data-window="{esc(w)}">{_comparison(compare(m, w))}</div>')
    out.append('<p class="note">Baseline: the version with the most predictions in the window. Precision and '
               "recall of every other version are compared with the baseline's by a two-proportion z-test; "
               "<span class=\"pill fire\">differs</span> marks a difference significant at 5% after the "
               "Benjamini-Hochberg correction over the table's comparisons. F1 is not a proportion of "
               "events, so it gets intervals but no test.</p></div>")
    return "".join(out)


def _comparison(cmp: Comparison) -> str:
    if not cmp.versions:
        return f'<p class="note">No predictions in the last {esc(cmp.window)}.</p>'
    metrics = ("precision", "recall", "f1")
    head = ('<tr><th class=l rowspan="2">label</th>' + "".join(
        f'<th colspan="3" class="vgroup" data-version="{esc(v)}">{esc(v)}'
        f'{" (baseline)" if v == cmp.baseline else ""}<span class="ci">{esc(count(cmp.predictions[v]))} '
        f"predictions ({esc(pct(cmp.share(v)))}) · {esc(count(cmp.joined[v]))} labelled</span></th>"
        for v in cmp.versions) + "</tr><tr>" + "".join(
        f'<th class="{"vstart" if i == 0 else ""}">{"F1" if mt == "f1" else mt}</th>'
        for _ in cmp.versions for i, mt in enumerate(metrics)) + "</tr>")
    by_label: dict[str, dict[str, list[VersionCell]]] = {}
    for row in cmp.rows:
        by_label.setdefault(row.label, {})[row.metric] = row.cells
    rows = []
    for label, per_metric in by_label.items():
        cells = []
        for vi in range(len(cmp.versions)):
            for i, metric in enumerate(metrics):
                cell = per_metric[metric][vi]
                iv = cell.interval
                n = f" · n={count(cell.n)}" if metric != "f1" else ""
                body = UNDEFINED if iv.value is None else (
                    f"{esc(ratio(iv.value))}<span class=\"ci\">{esc(ratio(iv.lower))}–{esc(ratio(iv.upper))}"
                    f"{esc(n)}</span>" + svg.interval_bar(iv.value, iv.lower, iv.upper))
                if cell.p is not None:
                    body += f'<span class="ci" title="adjusted {cell.q:.2g}">p={cell.p:.2g}</span>'
                    if cell.significant:
                        body = '<span class="pill fire">differs</span> ' + body
                classes = " ".join(c for c in ("differs" if cell.significant else "", "vstart" if i == 0 else "") if c)
                cls = f' class="{classes}"' if classes else ""
                cells.append(f'<td{cls} data-version="{esc(cell.version)}" data-metric="{esc(metric)}" '
                             f'data-label="{esc(label)}">{body}</td>')
        rows.append(f'<tr><td class="l"><b>{esc(label)}</b></td>{"".join(cells)}</tr>')
    note = ""
    if len(cmp.versions) == 1:
        note = (f'<p class="note">Only version {esc(cmp.versions[0])} made predictions in the last '
                f"{esc(cmp.window)}: nothing to compare it with.</p>")
    return f'{note}<table class="versions"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


__all__ = ["DASH", "headline", "timeline", "versions"]

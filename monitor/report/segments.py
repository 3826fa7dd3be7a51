"""The report's segment breakdown: per value of each of a model's segments (models[].segments), the
window's volume, coverage and quality, with the label that does worst there.

Figures come from the engine's per-segment series (mlmon_segment_*, summed over versions), the same ones
`monitor replay` exports. Rows are ordered by volume; `_other` and `_missing` come last.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from monitor import conventions as c
from monitor.config import ModelConfig
from monitor.engine.figures import Figures
from monitor.report.svg import esc

_TWIN = c.SEGMENT_TWINS


@dataclass(frozen=True)
class LabelQuality:
    label: str
    f1: float
    lower: float | None
    upper: float | None
    support: float


@dataclass(frozen=True)
class SegmentRow:
    value: str
    predictions: float
    joined: float
    coverage: float | None
    micro_f1: float | None
    macro_f1: float | None
    accuracy: float | None
    worst: LabelQuality | None  # the label with the lowest defined F1 in this value's window


@dataclass(frozen=True)
class SegmentView:
    name: str
    windows: dict[str, list[SegmentRow]]  # window -> rows, by volume


def segment_views(m: ModelConfig, figures: Figures, windows: list[str]) -> list[SegmentView]:
    if not m.segments:
        return []
    by: dict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
    for s in figures.samples:
        if s.metric.name.startswith(c.PREFIX + "segment_") and s.labels and s.labels[0] == m.name:
            by[s.metric.name][s.labels[1:]] = s.value

    def get(base: c.MetricDef, *labels: str) -> float | None:
        return by[_TWIN[base.name].name].get(labels)

    out = []
    for seg in m.segments:
        values = sorted({k[1] for k in by[_TWIN[c.WINDOW_PREDICTIONS.name].name] if k[0] == seg.name})
        per_window: dict[str, list[SegmentRow]] = {}
        for w in windows:
            rows = []
            for v in values:
                predictions = get(c.WINDOW_PREDICTIONS, seg.name, v, w) or 0.0
                joined = get(c.WINDOW_JOINED, seg.name, v, w) or 0.0
                if predictions == 0 and joined == 0:
                    continue
                labels = []
                for label in m.labels:
                    f1 = get(c.LABEL_F1, seg.name, v, label, w)
                    if f1 is not None:
                        labels.append(LabelQuality(label, f1, get(c.LABEL_F1_LOWER, seg.name, v, label, w),
                                                   get(c.LABEL_F1_UPPER, seg.name, v, label, w),
                                                   get(c.LABEL_SUPPORT, seg.name, v, label, w) or 0.0))
                rows.append(SegmentRow(
                    value=v, predictions=predictions, joined=joined,
                    coverage=get(c.LABEL_COVERAGE, seg.name, v, w),
                    micro_f1=get(c.MICRO_F1, seg.name, v, w), macro_f1=get(c.MACRO_F1, seg.name, v, w),
                    accuracy=get(c.ACCURACY, seg.name, v, w),
                    worst=min(labels, key=lambda q: (q.f1, q.label)) if labels else None))
            rows.sort(key=lambda r: (r.value in (c.SEGMENT_OTHER, c.SEGMENT_MISSING), -r.predictions, r.value))
            per_window[w] = rows
        out.append(SegmentView(seg.name, per_window))
    return out


def section(model: str, task: str, views: list[SegmentView], windows: list[str], win_ids: dict[str, str],
            slug: str) -> str:
    """One card per segment, a table per window (shown by the report's window selector)."""
    from monitor.report.html import DASH, count, pct, ratio

    out = []
    for view in views:
        out.append(f'<div class="card" id="{esc(slug)}-segment-{esc(view.name)}">'
                   f"<h3>Quality by {esc(view.name)} · {esc(model)}</h3>")
        quality = "accuracy" if task == "multiclass" else "micro F1"
        head = (f"<tr><th class=l>{esc(view.name)}</th><th>predictions</th><th>labelled</th><th>coverage</th>"
                f"<th>{quality}</th><th>macro F1</th><th class=l>weakest label: F1 (95%)</th></tr>")
        for w in windows:
            rows = view.windows.get(w, [])
            body = []
            for r in rows:
                main = r.accuracy if task == "multiclass" else r.micro_f1
                worst = DASH
                if r.worst is not None:
                    worst = (f"{esc(r.worst.label)}: {esc(ratio(r.worst.f1))}"
                             f'<span class="ci">{esc(ratio(r.worst.lower))}–{esc(ratio(r.worst.upper))}</span>'
                             f' <span class="na-soft">support {esc(count(r.worst.support))}</span>')
                body.append(
                    f'<tr data-segment-value="{esc(r.value)}"><td class="l"><b>{esc(r.value)}</b></td>'
                    f"<td>{esc(count(r.predictions))}</td><td>{esc(count(r.joined))}</td>"
                    f"<td>{esc(pct(r.coverage))}</td><td>{esc(ratio(main))}</td><td>{esc(ratio(r.macro_f1))}</td>"
                    f'<td class="l">{worst}</td></tr>')
            table = (f'<table class="labels" data-window="{esc(w)}"><thead>{head}</thead>'
                     f'<tbody>{"".join(body)}</tbody></table>') if body else \
                '<p class="note">No events in this window.</p>'
            out.append(f'<div class="win {win_ids[w]}" data-window="{esc(w)}">{table}</div>')
        out.append('<p class="note">Per segment value, over all versions. Values beyond the segment\'s '
                   "max_values are counted as _other, events without a value as _missing. The weakest label "
                   "is the one with the lowest F1 in that value's window; a wide interval means few labelled "
                   "events.</p></div>")
    return "".join(out)

"""Chart primitives as inline SVG strings: the report must open offline, so no JS chart library or CDN.

Every text node and attribute value passes through `esc`; callers hand in config names (labels, models,
features), which are user input. Coordinates are rounded to 0.1 px to keep the file small.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

# Okabe-Ito: distinguishable with the common colour-vision deficiencies, readable on white.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#999933", "#882255")
CURRENT = "#0072B2"
REFERENCE = "#b8b8b8"
GOOD = "#1a7f37"
WARN = "#E69F00"
BAD = "#c62828"
BAND_NONE = "#eaf5ec"
BAND_MODERATE = "#fff3d6"
BAND_SIGNIFICANT = "#fde2e2"
AXIS = "#666"
GRID = "#e4e4e4"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif"
CHAR_W = 6.2  # rough width of one 11px character, for laying out legends without a text engine


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def clip(s: str, width: float, size: float = 11) -> str:
    """Shorten to what fits in `width` px (no text measuring in SVG); callers keep the full text in a <title>."""
    room = max(int(width / (CHAR_W * size / 11)), 2)
    return s if len(s) <= room else s[:room - 1] + "…"


def n(x: float) -> str:
    """Compact coordinate: 12.0 -> '12', 3.14159 -> '3.1'."""
    s = f"{x:.1f}"
    return s[:-2] if s.endswith(".0") else s


def root(width: float, height: float, body: str, label: str, cls: str = "chart") -> str:
    # No xmlns: inline SVG in HTML needs none, and the report then carries no URL at all.
    return (f'<svg class="{esc(cls)}" width="{n(width)}" height="{n(height)}" viewBox="0 0 {n(width)} {n(height)}" '
            f'role="img" aria-label="{esc(label)}" style="{FONT}">{body}</svg>')


def text(x: float, y: float, s: str, *, size: float = 11, anchor: str = "start", fill: str = "#222",
         weight: str = "normal", extra: str = "", tip: str = "") -> str:
    w = f' font-weight="{weight}"' if weight != "normal" else ""
    t = f"<title>{esc(tip)}</title>" if tip else ""
    return (f'<text x="{n(x)}" y="{n(y)}" font-size="{n(size)}" text-anchor="{anchor}" fill="{fill}"{w}{extra}>'
            f"{t}{esc(s)}</text>")


def line(x1: float, y1: float, x2: float, y2: float, stroke: str = AXIS, width: float = 1, dash: str = "") -> str:
    d = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<line x1="{n(x1)}" y1="{n(y1)}" x2="{n(x2)}" y2="{n(y2)}" stroke="{stroke}" '
            f'stroke-width="{n(width)}"{d}/>')


def rect(x: float, y: float, w: float, h: float, fill: str, tip: str = "", extra: str = "") -> str:
    inner = f"<title>{esc(tip)}</title>" if tip else ""
    return (f'<rect x="{n(x)}" y="{n(y)}" width="{n(max(w, 0))}" height="{n(max(h, 0))}" fill="{fill}"{extra}>'
            f"{inner}</rect>")


@dataclass(frozen=True)
class Series:
    name: str
    colour: str
    values: Sequence[float | None]  # one per group; None draws nothing (undefined, not zero)
    colours: Sequence[str] | None = None  # per-bar colours (state, e.g. burn rate over threshold)


@dataclass(frozen=True)
class Band:
    lower: float
    upper: float
    fill: str
    label: str


@dataclass(frozen=True)
class HLine:
    value: float
    colour: str
    label: str
    dash: str = "4 3"


class Scale:
    """Value -> y pixel. sqrt keeps the PSI bands (0.1, 0.25) visible next to a PSI of 2."""

    def __init__(self, top: float, bottom: float, vmax: float, sqrt: bool = False) -> None:
        self.top, self.bottom, self.vmax, self.sqrt = top, bottom, max(vmax, 1e-12), sqrt

    def __call__(self, v: float) -> float:
        v = min(max(v, 0.0), self.vmax)
        f = math.sqrt(v / self.vmax) if self.sqrt else v / self.vmax
        return self.bottom - f * (self.bottom - self.top)


def nice_ticks(vmax: float, count: int = 5) -> list[float]:
    if vmax <= 0:
        return [0.0]
    raw = vmax / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(vmax / step + 1e-9) + 1)]


SQRT_TICKS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def tick_label(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e4 else f"{v:,.0f}"


def bar_chart(groups: Sequence[str], series: Sequence[Series], *, label: str, width: float = 640,
              height: float = 240, vmax: float | None = None, sqrt: bool = False, bands: Sequence[Band] = (),
              hlines: Sequence[HLine] = (), fmt: Callable[[float], str] = lambda v: f"{v:.3g}",
              legend: bool = True, y_title: str = "") -> str:
    """Grouped bars (one group per x category, one bar per series), optional background bands and
    threshold lines labelled in the right margin."""
    values = [v for s in series for v in s.values if v is not None and math.isfinite(v)]
    top_value = max([*values, *(h.value for h in hlines), 0.0])
    vmax = vmax if vmax is not None else (top_value * 1.08 if top_value > 0 else 1.0)
    right = 118 if hlines else 12
    left, top, bottom = 52, 28 if legend and len(series) > 1 else 12, 34
    x0, x1, y_top, y_bot = left, width - right, top, height - bottom
    y = Scale(y_top, y_bot, vmax, sqrt)
    out: list[str] = []
    for b in bands:
        if b.lower >= vmax:
            continue
        out.append(rect(x0, y(min(b.upper, vmax)), x1 - x0, y(b.lower) - y(min(b.upper, vmax)), b.fill, b.label))
    ticks = [t for t in SQRT_TICKS if t <= vmax] if sqrt else nice_ticks(vmax)
    for t in ticks:
        out.append(line(x0, y(t), x1, y(t), GRID))
        out.append(text(x0 - 6, y(t) + 4, tick_label(t), anchor="end", fill=AXIS, size=10))
    if y_title:
        out.append(text(12, (y_top + y_bot) / 2, y_title, anchor="middle", fill=AXIS, size=10,
                        extra=f' transform="rotate(-90 12 {n((y_top + y_bot) / 2)})"'))
    gw = (x1 - x0) / max(len(groups), 1)
    bw = min(28.0, gw * 0.8 / max(len(series), 1))
    for gi, g in enumerate(groups):
        gx = x0 + gi * gw + (gw - bw * len(series)) / 2
        drawn = False
        for si, s in enumerate(series):
            v = s.values[gi]
            if v is None or not math.isfinite(v):
                continue
            drawn = True
            tip = f"{s.name} · {g}: {fmt(v)}" if len(series) > 1 else f"{g}: {fmt(v)}"
            colour = s.colours[gi] if s.colours else s.colour
            out.append(rect(gx + si * bw + 0.5, y(v), bw - 1, y_bot - y(v), colour, tip,
                            extra=' class="bar"'))
        if not drawn:
            out.append(text(x0 + (gi + 0.5) * gw, y_bot - 4, "n/a", anchor="middle", fill="#aaa", size=9))
        out.append(text(x0 + (gi + 0.5) * gw, y_bot + 14, g, anchor="middle", fill="#333", size=10))
    out.append(line(x0, y_bot, x1, y_bot, AXIS))
    out.append(line(x0, y_top, x0, y_bot, AXIS))
    out.extend(_hlines(hlines, y, x0, x1))
    if legend and len(series) > 1:
        out.append(_legend([(s.name, s.colour) for s in series], x0, 12))
    return root(width, height, "".join(out), label)


def _hlines(hlines: Sequence[HLine], y: Scale, x0: float, x1: float) -> list[str]:
    out = []
    placed: list[float] = []
    # Labels of close thresholds would overprint: push each one at least 11 px from the previous.
    for h in sorted(hlines, key=lambda h: -h.value):
        py = y(h.value)
        out.append(line(x0, py, x1, py, h.colour, 1.3, h.dash))
        ly = py + 4
        if placed and ly < placed[-1] + 11:
            ly = placed[-1] + 11
        placed.append(ly)
        out.append(text(x1 + 5, ly, h.label, fill=h.colour, size=10))
    return out


def _legend(items: Sequence[tuple[str, str]], x: float, y: float) -> str:
    out = []
    for name, colour in items:
        out.append(rect(x, y - 8, 10, 10, colour))
        out.append(text(x + 14, y + 1, name, size=10, fill="#333"))
        x += 24 + CHAR_W * len(name)
    return "<g>" + "".join(out) + "</g>"


def reliability(points: Sequence[tuple[int, float, float, float]], *, title: str, label: str,
                size: float = 200) -> str:
    """Reliability diagram: (bin, mean score, share positive, count) per score bin against the diagonal.
    Marker area grows with the bin's count; grey bars along the bottom show where the scores are."""
    left, top, pad = 34, 22, 22
    side = size - left - 8
    x = lambda v: left + v * side  # noqa: E731
    y = lambda v: top + (1 - v) * side  # noqa: E731
    out = [f"<title>{esc(title)}</title>", text(left, 14, clip(title, size - left), weight="600", size=11)]
    out.append(rect(left, top, side, side, "#fafafa"))
    for t in (0.0, 0.5, 1.0):
        out.append(line(x(t), top, x(t), top + side, GRID))
        out.append(line(left, y(t), left + side, y(t), GRID))
        out.append(text(x(t), top + side + 12, f"{t:g}", anchor="middle", fill=AXIS, size=9))
        out.append(text(left - 4, y(t) + 3, f"{t:g}", anchor="end", fill=AXIS, size=9))
    out.append(line(x(0), y(0), x(1), y(1), "#888", 1, "4 3"))
    filled = [p for p in points if p[3] > 0]
    biggest = max((p[3] for p in filled), default=0.0)
    for b, _, _, cnt in filled:
        h = 0.18 * side * cnt / biggest
        out.append(rect(x(b / 10) + 1, top + side - h, side / 10 - 2, h, "#dcdcdc", f"n={cnt:,.0f}"))
    if len(filled) > 1:
        out.append('<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>'.format(
            CURRENT, " ".join(f"{n(x(s))},{n(y(p))}" for _, s, p, _ in filled)))
    for _, s, p, cnt in filled:
        px, py = x(s), y(p)
        r = 2.5 + 4.5 * math.sqrt(cnt / biggest)
        out.append(f'<circle class="point" cx="{n(px)}" cy="{n(py)}" r="{n(r)}" fill="{CURRENT}" '
                   f'fill-opacity="0.85"><title>{esc(f"mean score {s:.3f}, positive {p:.3f}, n={cnt:,.0f}")}'
                   "</title></circle>")
    if not filled:
        out.append(text(left + side / 2, top + side / 2, "no labelled events", anchor="middle", fill="#999"))
    out.append(text(left + side / 2, size - 1, "mean score", anchor="middle", fill=AXIS, size=9))
    out.append(text(9, top + side / 2, "share positive", anchor="middle", fill=AXIS, size=9,
                    extra=f' transform="rotate(-90 9 {n(top + side / 2)})"'))
    return root(size, size + pad - 8, "".join(out), label, "chart small")


def distribution(current: Sequence[float], reference: Sequence[float], bin_titles: Sequence[str], *, title: str,
                 label: str, width: float = 206, height: float = 150) -> str:
    """Shares per frozen reference bin: reference as wide grey bars, current as narrow blue bars on top."""
    left, top, bottom = 34, 22, 18
    x1 = width - 6
    vmax = max([*current, *reference, 0.01]) * 1.1
    y = Scale(top, height - bottom, vmax)
    k = max(len(current), 1)
    bw = (x1 - left) / k
    out = [f"<title>{esc(title)}</title>", text(left, 14, clip(title, width - left), weight="600", size=11)]
    for t in nice_ticks(vmax, 3):
        out.append(line(left, y(t), x1, y(t), GRID))
        out.append(text(left - 4, y(t) + 3, f"{t:.0%}", anchor="end", fill=AXIS, size=9))
    for i in range(k):
        bx = left + i * bw
        ref = reference[i] if i < len(reference) else 0.0
        cur = current[i]
        tip = bin_titles[i] if i < len(bin_titles) else f"bin {i}"
        out.append(rect(bx + 1, y(ref), bw - 2, y(0) - y(ref), REFERENCE, f"{tip}: reference {ref:.1%}"))
        out.append(rect(bx + bw * 0.3, y(cur), bw * 0.4, y(0) - y(cur), CURRENT, f"{tip}: current {cur:.1%}",
                        extra=' class="bar"'))
    out.append(line(left, y(0), x1, y(0), AXIS))
    out.append(text(left, height - 4, "low score", fill=AXIS, size=9))
    out.append(text(x1, height - 4, "high score", anchor="end", fill=AXIS, size=9))
    return root(width, height, "".join(out), label, "chart small")


def interval_bar(value: float | None, lower: float | None, upper: float | None, *, width: float = 84,
                 height: float = 12) -> str:
    """A value on [0, 1] with its interval: wide intervals (rare labels) are visible at a glance."""
    pad = 3
    x = lambda v: pad + v * (width - 2 * pad)  # noqa: E731
    out = [line(x(0), height / 2, x(1), height / 2, "#ddd", 2)]
    if lower is not None and upper is not None:
        out.append(line(x(lower), height / 2, x(upper), height / 2, "#7aa6c9", 5))
    if value is not None:
        out.append(f'<circle cx="{n(x(value))}" cy="{n(height / 2)}" r="3" fill="#1f3b57"/>')
    return root(width, height, "".join(out), "interval", "spark")


def heatmap(matrix: Sequence[Sequence[float]], rows: Sequence[str], cols: Sequence[str], *, label: str,
            cell: float = 44) -> str:
    """Confusion matrix: rows actual, columns predicted, shaded by share of the row."""
    left = 14 + CHAR_W * min(max((len(r) for r in rows), default=4), 28)
    top = 34
    width = left + cell * len(cols) + 10
    height = top + cell * len(rows) + 24
    out = [text(left + cell * len(cols) / 2, 12, "predicted", anchor="middle", fill=AXIS, size=10)]
    for j, col in enumerate(cols):
        out.append(text(left + (j + 0.5) * cell, top - 6, clip(col, cell, 10), anchor="middle", size=10,
                        tip=col))
    for i, row in enumerate(rows):
        total = sum(matrix[i]) or 1.0
        out.append(text(left - 6, top + (i + 0.5) * cell + 4, clip(row, left - 14, 10), anchor="end", size=10,
                        tip=row))
        for j, v in enumerate(matrix[i]):
            share = v / total
            colour = GOOD if i == j else BAD
            out.append(rect(left + j * cell, top + i * cell, cell - 2, cell - 2, colour,
                            f"actual {row}, predicted {cols[j]}: {v:,.0f}",
                            extra=f' fill-opacity="{0.08 + 0.8 * share:.2f}"'))
            out.append(text(left + (j + 0.5) * cell - 1, top + (i + 0.5) * cell + 4, f"{v:,.0f}",
                            anchor="middle", size=10, fill="#fff" if share > 0.55 else "#222"))
    out.append(text(10, top + cell * len(rows) + 16, "rows: actual", fill=AXIS, size=10))
    return root(width, height, "".join(out), label)


# --- time series (the report's timeline) ---------------------------------------------------------------------

@dataclass(frozen=True)
class Line:
    name: str
    colour: str
    values: Sequence[float | None]  # one per time; None leaves a gap (undefined, not zero)
    lower: Sequence[float | None] | None = None  # an interval band drawn behind the line
    upper: Sequence[float | None] | None = None
    dash: str = ""


@dataclass(frozen=True)
class Strip:
    """A row of on/off cells under the plot (e.g. when an alert tier's condition held)."""

    name: str
    flags: Sequence[bool]
    colour: str


@dataclass(frozen=True)
class Marker:
    time: float
    label: str
    colour: str = BAD


# A white outline behind small labels keeps them legible where they cross a line or another label.
HALO = ' paint-order="stroke" stroke="#fff" stroke-width="3" stroke-linejoin="round"'

TIME_TICK_STEPS = (300, 600, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400,
                   7 * 86400, 14 * 86400)


def time_ticks(start: float, end: float, count: int = 4) -> tuple[list[float], Callable[[float], str]]:
    """Round times for the x axis (multiples of a step since the epoch) and their formatter."""
    from datetime import UTC, datetime

    span = max(end - start, 1.0)
    step = next((s for s in TIME_TICK_STEPS if span / s <= count), TIME_TICK_STEPS[-1])
    first = math.ceil(start / step) * step
    ticks = [float(t) for t in range(int(first), int(end) + 1, step)]
    pattern = "%m-%d" if step >= 86400 else "%H:%M" if span <= 86400 else "%d %H:%M"
    return ticks, lambda t: datetime.fromtimestamp(t, UTC).strftime(pattern)


def _segments(values: Sequence[float | None]) -> list[list[int]]:
    out: list[list[int]] = []
    run: list[int] = []
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            if run:
                out.append(run)
            run = []
        else:
            run.append(i)
    if run:
        out.append(run)
    return out


def time_series(times: Sequence[float], lines: Sequence[Line], *, title: str, label: str, width: float = 300,
                height: float = 140, vmax: float | None = None, sqrt: bool = False, bands: Sequence[Band] = (),
                hlines: Sequence[HLine] = (), strips: Sequence[Strip] = (), markers: Sequence[Marker] = (),
                fmt: Callable[[float], str] = lambda v: f"{v:.3g}", empty: str = "no data") -> str:
    """Lines over time with optional interval bands, background bands, threshold lines, on/off strips
    under the plot and vertical onset markers. Every line point carries its value in a tooltip."""
    left, right, top = (58 if strips else 40), 8, 20
    strip_h = 9 * len(strips)
    bottom = 18 + strip_h
    x0, x1, y_top, y_bot = left, width - right, top, height - bottom
    finite = [v for ln in lines for seq in (ln.values, ln.upper or ()) for v in seq
              if v is not None and math.isfinite(v)]
    top_value = max([*finite, *(h.value for h in hlines), 0.0])
    vmax = vmax if vmax is not None else (top_value * 1.1 if top_value > 0 else 1.0)
    y = Scale(y_top, y_bot, vmax, sqrt)
    t0, t1 = (times[0], times[-1]) if times else (0.0, 1.0)
    tspan = max(t1 - t0, 1e-9)

    def x(t: float) -> float:
        return x0 + (t - t0) / tspan * (x1 - x0)

    out = [f"<title>{esc(title)}</title>", text(x0, 13, clip(title, width - x0), weight="600", size=11)]
    for b in bands:
        if b.lower >= vmax:
            continue
        hi = min(b.upper, vmax)
        out.append(rect(x0, y(hi), x1 - x0, y(b.lower) - y(hi), b.fill, b.label))
    ticks = [t for t in SQRT_TICKS if t <= vmax] if sqrt else nice_ticks(vmax, 3)
    if sqrt and len(ticks) > 5:
        ticks = [t for t in ticks if t in (0.0, 0.1, 0.25, 1.0) or t == ticks[-1]]
    for t in ticks:
        out.append(line(x0, y(t), x1, y(t), GRID))
        out.append(text(x0 - 4, y(t) + 3, fmt(t) if not sqrt else tick_label(t), anchor="end", fill=AXIS, size=9))
    tticks, tfmt = time_ticks(t0, t1)
    for t in tticks:
        out.append(line(x(t), y_bot, x(t), y_bot + 3, AXIS))
        # A tick at the right edge would be cut off by the chart's border: end-align it instead.
        edge = x(t) > x1 - 14
        out.append(text(x(t) + (3 if edge else 0), y_bot + 12, tfmt(t), anchor="end" if edge else "middle",
                        fill=AXIS, size=9))
    for h in hlines:
        if h.value > vmax:
            continue
        out.append(line(x0, y(h.value), x1, y(h.value), h.colour, 1.1, h.dash))
        out.append(text(x1 - 2, y(h.value) - 2, h.label, anchor="end", fill=h.colour, size=9, extra=HALO))
    drawn = False
    for ln in lines:
        if ln.lower is not None and ln.upper is not None:
            both = [v if v is not None and lo is not None and hi is not None else None
                    for v, lo, hi in zip(ln.values, ln.lower, ln.upper, strict=True)]
            for seg in _segments(both):
                up = [f"{n(x(times[i]))},{n(y(ln.upper[i]))}" for i in seg]  # type: ignore[arg-type,index]
                down = [f"{n(x(times[i]))},{n(y(ln.lower[i]))}" for i in reversed(seg)]  # type: ignore[arg-type,index]
                out.append(f'<polygon class="band" points="{" ".join(up + down)}" fill="{ln.colour}" '
                           f'fill-opacity="0.16"/>')
        dash = f' stroke-dasharray="{ln.dash}"' if ln.dash else ""
        for seg in _segments(ln.values):
            drawn = True
            if len(seg) == 1:
                i = seg[0]
                out.append(f'<circle class="point" cx="{n(x(times[i]))}" cy="{n(y(ln.values[i]))}" r="1.8" '  # type: ignore[arg-type]
                           f'fill="{ln.colour}"/>')
                continue
            pts = " ".join(f"{n(x(times[i]))},{n(y(ln.values[i]))}" for i in seg)  # type: ignore[arg-type]
            out.append(f'<polyline class="series" fill="none" stroke="{ln.colour}" stroke-width="1.6"{dash} '
                       f'points="{pts}"><title>{esc(ln.name)}</title></polyline>')
    if not drawn:
        out.append(text((x0 + x1) / 2, (y_top + y_bot) / 2, empty, anchor="middle", fill="#999", size=10))
    for mk in markers:
        if t0 <= mk.time <= t1:
            mx = x(mk.time)
            out.append(line(mx, y_top, mx, y_bot, mk.colour, 1, "2 2"))
            anchor = "end" if mx > (x0 + x1) / 2 else "start"
            out.append(text(mx + (-3 if anchor == "end" else 3), y_top + 9, mk.label, anchor=anchor,
                            fill=mk.colour, size=9, extra=HALO))
    out.append(line(x0, y_bot, x1, y_bot, AXIS))
    out.append(line(x0, y_top, x0, y_bot, AXIS))
    sy = y_bot + 17
    cell = (x1 - x0) / max(len(times) - 1, 1)
    for s in strips:
        out.append(text(x0 - 4, sy + 6, s.name, anchor="end", fill=AXIS, size=8))
        out.append(rect(x0, sy, x1 - x0, 7, "#f1f2f4"))
        for seg in _segments([1.0 if f else None for f in s.flags]):
            on_from, on_to = x(times[seg[0]]) - cell / 2, x(times[seg[-1]]) + cell / 2
            out.append(rect(max(on_from, x0), sy, min(on_to, x1) - max(on_from, x0), 7, s.colour,
                            f"{s.name}: condition held", extra=' class="on"'))
        sy += 9
    return root(width, height + (4 if strips else 0), "".join(out), label, "chart timeline")

"""The engine's figures as JSON-ready records (`monitor replay --format json`).

Its own module so that the JSON output does not import prometheus_client (monitor.exporter does).
"""

from __future__ import annotations

from monitor.engine.figures import Figures

__all__ = ["figures_json"]


def le_label(bound: float) -> str:
    """A histogram bucket bound as the exposition writes it (`le` label), shared with monitor.exporter."""
    return repr(float(bound))


def figures_json(figures: Figures) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for s in figures.samples:
        out.append({"name": s.metric.name, "labels": dict(zip(s.metric.labels, s.labels, strict=True)),
                    "value": s.value})
    for h in figures.histograms:
        running, buckets = 0.0, {}
        for le, n in zip([*[le_label(b) for b in h.buckets], "+Inf"], h.counts, strict=True):
            running += n
            buckets[le] = running
        out.append({"name": h.metric.name, "labels": dict(zip(h.metric.labels, h.labels, strict=True)),
                    "buckets": buckets, "sum": h.sum, "count": running})
    return out

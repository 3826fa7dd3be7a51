"""Prometheus exposition of the engine's figures, computed at scrape time.

A custom collector (the prometheus/client_python pattern): nothing is updated per event; each scrape
asks for one consistent `Figures` snapshot and renders it, so thousands of label series cost nothing
between scrapes.
"""

from __future__ import annotations

import platform
from collections import defaultdict
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from monitor import __version__
from monitor import conventions as c
from monitor.engine.figures import Figures, HistogramSample, Sample


class FiguresCollector(Collector):
    def __init__(self, snapshot: Callable[[], Figures]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return iter(render(self.snapshot()))


def render(figures: Figures) -> list[Metric]:
    by_metric: dict[c.MetricDef, list[Sample]] = defaultdict(list)
    for s in figures.samples:
        by_metric[s.metric].append(s)
    families: list[Metric] = []
    for metric in sorted(by_metric, key=lambda m: m.name):
        samples = by_metric[metric]
        fam: CounterMetricFamily | GaugeMetricFamily
        if metric.kind == "counter":
            fam = CounterMetricFamily(metric.name.removesuffix("_total"), metric.help, labels=metric.labels)
        else:
            fam = GaugeMetricFamily(metric.name, metric.help, labels=metric.labels)
        for s in samples:
            fam.add_metric(list(s.labels), s.value)
        families.append(fam)
    hist: dict[c.MetricDef, list[HistogramSample]] = defaultdict(list)
    for h in figures.histograms:
        hist[h.metric].append(h)
    for metric in sorted(hist, key=lambda m: m.name):
        hfam = HistogramMetricFamily(metric.name, metric.help, labels=metric.labels)
        for h in hist[metric]:
            cumulative, running = [], 0.0
            for le, n in zip([*[_le(b) for b in h.buckets], "+Inf"], h.counts, strict=True):
                running += n
                cumulative.append((le, running))
            hfam.add_metric(list(h.labels), cumulative, h.sum)
        families.append(hfam)
    info = InfoMetricFamily(c.BUILD_INFO.name.removesuffix("_info"), c.BUILD_INFO.help)
    info.add_metric([], {"version": __version__, "python": platform.python_version()})
    families.append(info)
    return families


def _le(bound: float) -> str:
    return repr(float(bound))


def prometheus_text(figures: Figures) -> bytes:
    """Text format 0.0.4. Serve this, never OpenMetrics: in OpenMetrics the counter
    `mlmon_label_outcomes_total` and the window gauge `mlmon_label_outcomes` (names fixed by DESIGN
    section 6) would be two families of the same name, and the scrape would fail."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FiguresCollector(lambda: figures))
    return generate_latest(registry)


def figures_json(figures: Figures) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for s in figures.samples:
        out.append({"name": s.metric.name, "labels": dict(zip(s.metric.labels, s.labels, strict=True)),
                    "value": s.value})
    for h in figures.histograms:
        running, buckets = 0.0, {}
        for le, n in zip([*[_le(b) for b in h.buckets], "+Inf"], h.counts, strict=True):
            running += n
            buckets[le] = running
        out.append({"name": h.metric.name, "labels": dict(zip(h.metric.labels, h.labels, strict=True)),
                    "buckets": buckets, "sum": h.sum, "count": running})
    return out

"""Prometheus exposition of the engine's figures, computed at scrape time.

A custom collector (the prometheus/client_python pattern): nothing is updated per event; each scrape
asks for one consistent `Figures` snapshot and renders it, so thousands of label series cost nothing
between scrapes.

Counters under scale-out: a worker holds one engine per Kafka partition, and a partition's counts move
with it when the consumer group hands it to another worker. Summed per worker, a counter would drop on
the old worker (a false reset for rate()) and jump on the new one. Given the per-partition figures, the
exporter instead renders every counter and histogram once per partition, labelled `partition`: the
series of a partition ends on the old worker and starts on the new one at the value it had, so no
series ever decreases, and the recording rules sum rate() over partitions and workers
(docs/operations.md, "Scaling out").
"""

from __future__ import annotations

import platform
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping

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
from monitor.figures_json import figures_json as figures_json  # re-exported: its callers import it from here
from monitor.figures_json import le_label

# The figures of each partition a worker holds, by partition number.
PartitionFigures = Mapping[int, Figures]


class FiguresCollector(Collector):
    """`snapshot`: the figures of everything this process holds. `partitions`, when given: the figures of
    each partition it holds (only their counters and histograms are read), rendered per partition."""

    def __init__(self, snapshot: Callable[[], Figures],
                 partitions: Callable[[], PartitionFigures] | None = None) -> None:
        self.snapshot = snapshot
        self.partitions = partitions

    def collect(self) -> Iterator[Metric]:
        return iter(render(self.snapshot(), self.partitions() if self.partitions is not None else None))


def is_cumulative(metric: c.MetricDef) -> bool:
    """Counters and histograms: the series that must never decrease."""
    return metric.kind in ("counter", "histogram")


def render(figures: Figures, partitions: PartitionFigures | None = None) -> list[Metric]:
    """Prometheus families of `figures`. With `partitions`, counters and histograms come from there, one
    series per partition with the extra label `partition`, and those in `figures` are left out."""
    # Each sample with its partition label value (None: not partitioned).
    by_metric: dict[c.MetricDef, list[tuple[str | None, Sample]]] = defaultdict(list)
    hist: dict[c.MetricDef, list[tuple[str | None, HistogramSample]]] = defaultdict(list)
    for s in figures.samples:
        if partitions is None or not is_cumulative(s.metric):
            by_metric[s.metric].append((None, s))
    for h in figures.histograms:
        if partitions is None:
            hist[h.metric].append((None, h))
    for partition, part in sorted((partitions or {}).items()):
        for s in part.samples:
            if is_cumulative(s.metric):
                by_metric[s.metric].append((str(partition), s))
        for h in part.histograms:
            hist[h.metric].append((str(partition), h))
    partitioned = partitions is not None
    families: list[Metric] = []
    for metric in sorted(by_metric, key=lambda m: m.name):
        fam: CounterMetricFamily | GaugeMetricFamily
        if metric.kind == "counter":
            fam = CounterMetricFamily(metric.name.removesuffix("_total"), metric.help,
                                      labels=_label_names(metric, partitioned))
        else:
            fam = GaugeMetricFamily(metric.name, metric.help, labels=_label_names(metric, partitioned))
        for partition, s in by_metric[metric]:
            fam.add_metric(_label_values(s.labels, partition), s.value)
        families.append(fam)
    for metric in sorted(hist, key=lambda m: m.name):
        hfam = HistogramMetricFamily(metric.name, metric.help, labels=_label_names(metric, partitioned))
        for partition, h in hist[metric]:
            cumulative, running = [], 0.0
            for le, n in zip([*[le_label(b) for b in h.buckets], "+Inf"], h.counts, strict=True):
                running += n
                cumulative.append((le, running))
            hfam.add_metric(_label_values(h.labels, partition), cumulative, h.sum)
        families.append(hfam)
    info = InfoMetricFamily(c.BUILD_INFO.name.removesuffix("_info"), c.BUILD_INFO.help)
    info.add_metric([], {"version": __version__, "python": platform.python_version()})
    families.append(info)
    return families


def _label_names(metric: c.MetricDef, partitioned: bool) -> list[str]:
    return [*metric.labels, c.L_PARTITION] if partitioned and is_cumulative(metric) else list(metric.labels)


def _label_values(values: tuple[str, ...], partition: str | None) -> list[str]:
    return [*values, partition] if partition is not None else list(values)


def prometheus_text(figures: Figures, partitions: PartitionFigures | None = None) -> bytes:
    """Text format 0.0.4. Serve this, never OpenMetrics: in OpenMetrics the counter
    `mlmon_label_outcomes_total` and the window gauge `mlmon_label_outcomes` (names fixed by
    monitor/conventions.py) would be two families of the same name, and the scrape would fail."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FiguresCollector(lambda: figures, (lambda: partitions) if partitions is not None else None))
    return generate_latest(registry)

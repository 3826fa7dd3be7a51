"""The Prometheus exposition: every catalogue metric the engine owns is present, well-formed, and
consistent with the JSON output."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from monitor import conventions as c
from monitor.config import SegmentConfig
from monitor.exporter import figures_json, prometheus_text
from monitor.replay import read_lines, run_replay
from tests.conftest import ROOT

EXAMPLE = ROOT / "monitor" / "examples"
# Exported by the Kafka worker or about other tasks, not by the engine alone.
NOT_FROM_ENGINE = {*c.WORKER_ONLY, c.ACCURACY.name, c.CONFUSION.name, c.SEGMENT_TWINS[c.ACCURACY.name].name}


def example_figures(example_config):
    return run_replay(example_config, read_lines(EXAMPLE / "predictions.jsonl"),
                      read_lines(EXAMPLE / "ground_truth.jsonl"))[1]


def test_every_catalogue_metric_is_exported(example_config) -> None:
    """Looked up by sample name: `mlmon_label_outcomes_total` (counter) and `mlmon_label_outcomes`
    (window gauge) share a family name for the parser, not for Prometheus' text format. The example's
    first model gets a segment, so the per-segment families are there too."""
    first = example_config.models[0].model_copy(update={"segments": [SegmentConfig(name="lang", feature="lang")]})
    segmented = example_config.model_copy(update={"models": [first, *example_config.models[1:]]})
    text = prometheus_text(example_figures(segmented)).decode()
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.labels)
    for metric in c.ALL_METRICS:
        if metric.name in NOT_FROM_ENGINE:
            continue
        name = metric.name + ("_count" if metric.kind == "histogram" else "")
        assert name in samples, metric.name
        for labels in samples[name]:
            assert set(labels) == set(metric.labels), (metric.name, labels)


def test_histograms_are_cumulative_and_match_json(example_config) -> None:
    figs = example_figures(example_config)
    text = prometheus_text(figs).decode()
    fam = {f.name: f for f in text_string_to_metric_families(text)}["mlmon_ground_truth_delay_seconds"]
    buckets = [s for s in fam.samples if s.name.endswith("_bucket")]
    values = [s.value for s in buckets]
    assert values == sorted(values) and buckets[-1].labels["le"] == "+Inf"
    count = next(s.value for s in fam.samples if s.name.endswith("_count"))
    assert count == values[-1]
    js = next(m for m in figures_json(figs) if m["name"] == "mlmon_ground_truth_delay_seconds")
    assert js["count"] == count


def test_no_undefined_values_are_exported_as_numbers(example_config) -> None:
    text = prometheus_text(example_figures(example_config)).decode()
    assert "NaN" not in text


def test_cumulative_figures_are_those_of_a_full_evaluation(example_config) -> None:
    """The worker exports each partition's counters from `Engine.cumulative()`; they must be exactly the
    counters and histograms `evaluate()` gives, with none missing (render drops them from the merged view)."""
    from monitor.engine.engine import Engine
    from monitor.exporter import is_cumulative

    # With a segment, so that per-segment families are there too (none may be cumulative and missed).
    first = example_config.models[0].model_copy(update={"segments": [SegmentConfig(name="lang", feature="lang")]})
    engine = Engine(example_config.model_copy(update={"models": [first, *example_config.models[1:]]}))
    engine.process_topics(read_lines(EXAMPLE / "predictions.jsonl"), read_lines(EXAMPLE / "ground_truth.jsonl"))
    full, counted = engine.evaluate(), engine.cumulative()

    def cumulative(figs):
        out = {(s.metric.name, s.labels): s.value for s in figs.samples if is_cumulative(s.metric)}
        out |= {(h.metric.name, h.labels): (*h.counts, h.sum) for h in figs.histograms}
        return out

    assert cumulative(counted) == cumulative(full) and len(cumulative(full)) > 50

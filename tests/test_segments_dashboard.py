"""The debug dashboard's segment panels, evaluated by a real Prometheus over two workers' expositions
(the stream split by prediction id, as two partitions would be), equal scikit-learn per segment value on
the whole stream: the recording rules sum the workers and the panels compute their ratios from the sums."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from monitor import conventions as c
from monitor.dashboards import debug, panel_queries
from monitor.engine.engine import Engine
from monitor.exporter import prometheus_text
from monitor.rules import ALERTS_FILE, RECORDING_FILE, RuleOptions, generate, write
from monitor.rules import names as n
from monitor.rules.check import check
from monitor.services import Prometheus, ServiceError, StaticMetrics
from tests.needs import needs_prometheus, needs_promtool
from tests.test_segments import COUNTRIES, LABELS, T0, config, stream

AT = T0 + 5000
TIERS = ["gold", "free", "7"]


def _worker(preds: list[bytes], truths: list[bytes]) -> bytes:
    engine = Engine(config())
    engine.process_topics(preds, truths)
    return prometheus_text(engine.evaluate(AT))


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, list[dict]]]:
    preds, truths, rows = stream(4000)
    # Two workers, each with the events of its prediction ids (truths[i] belongs to preds[i]).
    bodies = [_worker(preds[k::2], truths[k::2]) for k in (0, 1)]
    tmp = tmp_path_factory.mktemp("segments")
    write(generate(config(), RuleOptions(for_overrides={"*": "0s"})), tmp)
    with StaticMetrics(bodies[0]) as one, StaticMetrics(bodies[1]) as two, \
            Prometheus([one.target, two.target], [tmp / RECORDING_FILE, tmp / ALERTS_FILE], interval="200ms",
                       workdir=tmp / "prometheus") as prom:
        # Both targets scraped and summed: the count of all predictions of one segment is the stream's.
        total = f'sum({n.SEGMENT_WINDOW_PREDICTIONS_SUM}{{segment="tier", window="30d"}}) == {len(preds)}'
        with contextlib.suppress(ServiceError):
            prom.wait_for(total, timeout=30)
        yield prom, rows


def _panels(segment: str) -> dict[str, str]:
    """Title -> query of the segment row's panels, with one label per repeated panel."""
    dash = debug.build(config())
    variables = {"model": "m", "version": "$__all", "label": LABELS, "window": "30d", "segment": segment,
                 "segment_value": "$__all"}
    rows = [p for p in dash["panels"] if p["type"] == "row"]
    assert any(p["title"].startswith("Segments") for p in rows), "the debug dashboard has no segment row"
    start = next(i for i, p in enumerate(dash["panels"]) if p["title"].startswith("Segments"))
    return dict(panel_queries({**dash, "panels": dash["panels"][start:]}, variables))


def _by_value(prom: Prometheus, expr: str, *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"][k] for k in keys): float(r["value"][1]) for r in prom.query(expr)}


@needs_promtool
def test_rules_with_segment_sums_pass_promtool(tmp_path: Path) -> None:
    write(generate(config()), tmp_path)
    assert n.SEGMENT_LABEL_OUTCOMES_SUM in (tmp_path / RECORDING_FILE).read_text()
    results = check(tmp_path)
    assert all(r.returncode == 0 for r in results), "\n".join(r.output for r in results)


def test_configs_without_segments_keep_their_rules_and_dashboards() -> None:
    from tests.conftest import small_config

    assert n.SEGMENT_LABEL_OUTCOMES_SUM not in generate(small_config())[RECORDING_FILE]
    assert not any(p["title"].startswith("Segments") for p in debug.build(small_config())["panels"])


@needs_prometheus
@pytest.mark.slow
@pytest.mark.parametrize(("segment", "values"), [("country", COUNTRIES), ("tier", TIERS)])
def test_segment_panels_equal_sklearn_across_two_workers(scraped: tuple[Prometheus, list[dict]], segment: str,
                                                          values: list[str]) -> None:
    prom, rows = scraped
    queries = _panels(segment)
    volume = _by_value(prom, queries[f"Predictions by {segment}"], c.L_SEGMENT_VALUE)
    coverage = _by_value(prom, queries[f"Label coverage by {segment}"], c.L_SEGMENT_VALUE)
    micro = _by_value(prom, queries[f"Micro F1 by {segment}"], c.L_SEGMENT_VALUE)
    table = _by_value(prom, queries[f"F1 by label and {segment}"], c.L_SEGMENT_VALUE, c.L_LABEL)
    assert set(volume) == {(v,) for v in values}
    for value in values:
        mine = [r for r in rows if r[segment] == value]
        y = np.array([r["actual"] for r in mine])
        p = np.array([r["predicted"] for r in mine])
        assert volume[(value,)] == len(mine)
        assert coverage[(value,)] == 1.0  # every prediction got its ground truth
        assert micro[(value,)] == pytest.approx(f1_score(y, p, average="micro"), abs=1e-12)
        for li, label in enumerate(LABELS):
            recall = _by_value(prom, queries[f"Recall by {segment} · {label}"], c.L_SEGMENT_VALUE)
            precision = _by_value(prom, queries[f"Precision by {segment} · {label}"], c.L_SEGMENT_VALUE)
            assert recall[(value,)] == pytest.approx(recall_score(y[:, li], p[:, li]), abs=1e-12)
            assert precision[(value,)] == pytest.approx(precision_score(y[:, li], p[:, li]), abs=1e-12)
            assert table[(value, label)] == pytest.approx(f1_score(y[:, li], p[:, li]), abs=1e-12)

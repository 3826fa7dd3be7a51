"""/metrics stays linear in the number of labels, and detail_labels cuts what it says it cuts.

Bounds are ratios between label counts measured in the same run (never absolute seconds), generous
enough for a loaded CI machine and tight enough to catch a quadratic family: 10x the labels must give
at most about 10x the series and well under 100x the scrape time. bench/cardinality.py prints the full
numbers (docs/operations.md quotes them).
"""

from __future__ import annotations

from collections import Counter

import pytest

from bench.cardinality import AT, DETAIL, build, measure
from monitor import conventions as c
from monitor.engine.engine import Engine

# A few hundred predictions over the last 10 minutes: every family present, few window blocks to hold.
EVENTS, SPAN = 200, 600.0


def families(engine: Engine) -> Counter[str]:
    figs = engine.evaluate(AT)
    return Counter([s.metric.name for s in figs.samples] + [h.metric.name for h in figs.histograms])


@pytest.fixture(scope="module")
def counts() -> dict[tuple[str, int, bool], Counter[str]]:
    out = {}
    for task, n, detail in (("multilabel", 50, False), ("multilabel", 100, False), ("multilabel", 500, False),
                            ("multilabel", 500, True), ("multiclass", 50, True), ("multiclass", 500, True)):
        out[(task, n, detail)] = families(build(n, detail, EVENTS, task, SPAN))
    return out


def test_series_grow_linearly_with_labels(counts: dict[tuple[str, int, bool], Counter[str]]) -> None:
    s50, s100, s500 = (sum(counts[("multilabel", n, False)].values()) for n in (50, 100, 500))
    per_label = (s100 - s50) / 50
    assert 300 <= per_label <= 700  # about 60 series per label and window (8 windows): see bench/cardinality.py
    # Straight-line extrapolation from 50 and 100 labels predicts 500 (a quadratic family would not fit).
    assert s500 == pytest.approx(s100 + 400 * per_label, rel=0.02)
    # Family by family (undefined ratios are absent, so sparse data moves a few families by 10-20%; a
    # quadratic family would grow 100x).
    for name in set(counts[("multilabel", 500, False)]):
        grew = counts[("multilabel", 500, False)][name] / max(1, counts[("multilabel", 50, False)][name])
        assert grew <= 15, f"{name} grew {grew:.1f}x for 10x the labels"


def test_detail_labels_restrict_calibration_bins_and_confusion_cells(
        counts: dict[tuple[str, int, bool], Counter[str]]) -> None:
    full, detail = counts[("multilabel", 500, False)], counts[("multilabel", 500, True)]
    windows, versions = 8, 1
    assert full[c.CALIBRATION_BIN.name] == 500 * c.CALIBRATION_BINS * 3 * windows * versions
    assert detail[c.CALIBRATION_BIN.name] == DETAIL * c.CALIBRATION_BINS * 3 * windows * versions
    # The threshold advice follows detail_labels too (its score histograms take memory per label), never
    # more than three series per label and window.
    advice = (c.THRESHOLD_ADVICE.name, c.THRESHOLD_ADVICE_LOWER.name, c.THRESHOLD_ADVICE_UPPER.name)
    for name in advice:
        assert detail[name] <= DETAIL * windows * versions and full[name] <= 500 * windows * versions
    # Everything else is unchanged: ECE, outcomes and score bins stay per label (score PSI and the score-drift
    # alert are computed from mlmon_score_bin in Prometheus, so it must not follow detail_labels).
    followers = (c.CALIBRATION_BIN.name, *advice)
    assert full - Counter({x: full[x] for x in followers}) == detail - Counter({x: detail[x] for x in followers})
    assert sum(detail.values()) < 0.55 * sum(full.values())
    # Multiclass: the confusion matrix keeps the detail classes' rows and columns, linear in the classes.
    for n in (50, 500):
        assert counts[("multiclass", n, True)][c.CONFUSION.name] == (2 * DETAIL * n - DETAIL ** 2) * windows


def test_scrape_time_for_500_labels_is_linear(counts: object) -> None:
    """evaluate + render, best of 3, for 500 labels vs 50 (detail_labels set, as a 500-label deployment
    would run it): about 10x in practice; a quadratic family would make it 100x."""
    small = measure(build(50, True, EVENTS, "multilabel", SPAN), repeat=3)
    large = measure(build(500, True, EVENTS, "multilabel", SPAN), repeat=3)
    ratio = large["scrape_s"] / small["scrape_s"]
    assert ratio < 30, (small["scrape_s"], large["scrape_s"])
    assert large["series"] / small["series"] < 10.5
    assert large["bytes"] / large["series"] < 150  # label values and names stay short

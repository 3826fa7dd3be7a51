"""Segments (models[].segments): per segment value figures against scikit-learn, bounded series under a
flood of distinct values, identical native and pure-Python results, checkpoints, config errors."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from pydantic import ValidationError
from sklearn.metrics import f1_score, precision_score, recall_score

from monitor import conventions as c
from monitor.config import MonitorConfig
from monitor.engine import native, snapshot
from monitor.engine.engine import Engine
from monitor.engine.merge import merged_figures

T0 = 1_700_000_000
LABELS = ["spam", "toxic"]
COUNTRIES = ["de", "fr", "us", "br", "jp"]
PATHS = [False, True] if native.enabled() else [False]


def config(max_values: int = 20, **extra: object) -> MonitorConfig:
    return MonitorConfig.model_validate({"models": [{
        "name": "m", "labels": LABELS,
        "segments": [{"name": "country", "feature": "country", "max_values": max_values},
                     {"name": "tier", "field": "customer.tier"}],
        **extra}]})


def stream(n: int, seed: int = 3) -> tuple[list[bytes], list[bytes], list[dict]]:
    """Predictions and ground truth whose quality differs by country (so a per-segment bug shows)."""
    rng = np.random.default_rng(seed)
    preds, truths, rows = [], [], []
    for i in range(n):
        country = COUNTRIES[int(rng.integers(len(COUNTRIES)))]
        tier = ["gold", "free", 7][int(rng.integers(3))]
        actual = rng.random(2) < 0.4
        noise = 0.2 + 0.15 * COUNTRIES.index(country)
        scores = np.clip(actual * 0.6 + rng.random(2) * 0.5 + (rng.random(2) < noise) * 0.4, 0, 1)
        preds.append(orjson.dumps({"prediction_id": f"p{i}", "model": "m", "timestamp": T0 + i,
                                   "scores": dict(zip(LABELS, scores.tolist(), strict=True)),
                                   "features": {"country": country}, "customer": {"tier": tier}}))
        truths.append(orjson.dumps({"prediction_id": f"p{i}", "model": "m", "timestamp": T0 + i + 30,
                                    "labels": [x for x, a in zip(LABELS, actual, strict=True) if a]}))
        rows.append({"country": country, "tier": str(tier), "actual": actual, "predicted": scores >= 0.5})
    return preds, truths, rows


def run(cfg: MonitorConfig, preds: list[bytes], truths: list[bytes], use_native: bool, batch: int = 700) -> Engine:
    engine = Engine(cfg, use_native=use_native)
    for k in range(0, len(preds), batch):
        engine.process_topics(preds[k:k + batch], truths[k:k + batch])
    return engine


@pytest.mark.parametrize("use_native", PATHS)
def test_per_segment_quality_matches_sklearn(use_native: bool) -> None:
    preds, truths, rows = stream(4000)
    figs = run(config(), preds, truths, use_native).evaluate(T0 + 5000)
    got = {name: figs.by_name(c.SEGMENT_TWINS[base.name].name)
           for name, base in (("p", c.LABEL_PRECISION), ("r", c.LABEL_RECALL), ("f", c.LABEL_F1))}
    counts = figs.by_name(c.SEGMENT_TWINS[c.WINDOW_PREDICTIONS.name].name)
    checked = 0
    for segment, values in (("country", COUNTRIES), ("tier", ["gold", "free", "7"])):
        for value in values:
            mine = [r for r in rows if r[segment] == value]
            assert counts[("m", segment, value, "30d")] == len(mine)
            y = np.array([r["actual"] for r in mine])
            p = np.array([r["predicted"] for r in mine])
            for li, label in enumerate(LABELS):
                key = ("m", segment, value, label, "30d")
                assert got["p"][key] == pytest.approx(precision_score(y[:, li], p[:, li]), abs=1e-12)
                assert got["r"][key] == pytest.approx(recall_score(y[:, li], p[:, li]), abs=1e-12)
                assert got["f"][key] == pytest.approx(f1_score(y[:, li], p[:, li]), abs=1e-12)
                checked += 1
    assert checked == 16
    # The breakdown is a real one: countries differ (the stream makes later countries noisier).
    f1 = [got["f"][("m", "country", x, "spam", "30d")] for x in COUNTRIES]
    assert max(f1) - min(f1) > 0.05


def test_native_and_python_paths_give_identical_figures() -> None:
    if not native.enabled():
        pytest.skip("native core not built")
    preds, truths, _ = stream(3000, seed=5)
    a, b = (sorted((s.metric.name, s.labels, s.value) for s in run(config(max_values=3), preds, truths, n)
                   .evaluate(T0 + 4000).samples) for n in (True, False))
    assert a == b
    assert any(name.startswith("mlmon_segment_") and labels[2] == c.SEGMENT_OTHER for name, labels, _ in a)


def test_a_million_distinct_values_keep_the_series_bounded() -> None:
    cfg = MonitorConfig.model_validate({"models": [{"name": "m", "labels": ["a"], "segments": [
        {"name": "country", "feature": "country", "max_values": 20}]}]})
    engine = Engine(cfg)
    n, batch = 1_000_000, 50_000
    for k in range(0, n, batch):
        engine.predictions(orjson.dumps({"prediction_id": f"p{i}", "model": "m", "timestamp": T0 + i // 100,
                                         "scores": {"a": 0.7}, "features": {"country": f"c{i}"}})
                           for i in range(k, k + batch))
    state = engine.models["m"]
    assert len(state.segment_values[0]) == 21  # 20 values and _other (no event lacks one)
    figs = engine.evaluate()
    values = {s.labels[2] for s in figs.samples if s.metric.name.startswith("mlmon_segment_")}
    assert len(values) == 21 and c.SEGMENT_OTHER in values
    counts = figs.by_name(c.SEGMENT_TWINS[c.WINDOW_PREDICTIONS.name].name)
    assert counts[("m", "country", c.SEGMENT_OTHER, "30d")] == n - 20
    assert sum(v for k, v in counts.items() if k[3] == "30d") == n
    # The first batch's most frequent values took the slots; all were seen once: the first 20 seen.
    assert state.segment_values[0][:20] == [f"c{i}" for i in range(20)]


@pytest.mark.parametrize("use_native", PATHS)
def test_segments_survive_a_snapshot_and_a_merge(use_native: bool) -> None:
    preds, truths, _ = stream(3000, seed=9)
    cfg = config(max_values=3)
    whole = sorted((s.metric.name, s.labels, s.value)
                   for s in run(cfg, preds, truths, use_native).evaluate(T0 + 4000).samples)
    first = run(cfg, preds[:1500], truths[:1400], use_native)
    engine, _ = snapshot.restore(cfg, None, snapshot.dump(first), use_native)
    engine.process_topics(preds[1500:], truths[1400:])
    resumed = sorted((s.metric.name, s.labels, s.value) for s in engine.evaluate(T0 + 4000).samples)
    assert [x[:2] for x in resumed] == [x[:2] for x in whole]
    assert all(x[2] == pytest.approx(y[2], rel=1e-9, abs=1e-9) for x, y in zip(resumed, whole, strict=True))
    # Two partitions by prediction id, merged: the per-segment outcome counts add up to the whole.
    halves = [run(cfg, preds[k::2], truths[k::2], use_native) for k in (0, 1)]
    merged = merged_figures(cfg, {"m": None}, halves, T0 + 4000)
    name = c.SEGMENT_TWINS[c.LABEL_OUTCOMES.name].name
    single = {k: v for k, v in run(cfg, preds, truths, use_native).evaluate(T0 + 4000).by_name(name).items()
              if k[2] != c.SEGMENT_OTHER and k[1] == "tier"}
    assert {k: v for k, v in merged.by_name(name).items() if k in single} == single


def test_snapshot_refuses_other_segments() -> None:
    preds, truths, _ = stream(200)
    data = snapshot.dump(run(config(), preds, truths, False))
    other = MonitorConfig.model_validate({"models": [{"name": "m", "labels": LABELS}]})
    with pytest.raises(snapshot.SnapshotError, match="segments"):
        snapshot.restore(other, None, data)


@pytest.mark.parametrize(("segments", "message"), [
    ([{"name": "country"}], "exactly one of feature and field"),
    ([{"name": "country", "feature": "country", "field": "a.b"}], "exactly one of feature and field"),
    ([{"name": "country", "feature": "country"}, {"name": "country", "field": "x"}], "named twice"),
    ([{"name": "country", "field": "a[?"}], "invalid JMESPath"),
    ([{"name": "country", "feature": "country", "max_values": 0}], "greater than or equal to 1"),
    ([{"name": "bad name", "feature": "country"}], "pattern"),
    ([{"name": "country", "feature": "country", "colour": 1}], "Extra inputs"),
])
def test_bad_segment_config_is_refused(segments: list[dict], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MonitorConfig.model_validate({"models": [{"name": "m", "labels": ["a"], "segments": segments}]})


@pytest.mark.parametrize("use_native", PATHS)
def test_mapped_input_reads_segments_through_its_mapping(use_native: bool) -> None:
    """A flat custom log: the feature through `fields.features`, the field over the message body."""
    cfg = MonitorConfig.model_validate({"models": [{
        "name": "m", "labels": ["a"],
        "segments": [{"name": "country", "feature": "country"}, {"name": "plan", "field": "account.plan"}],
        "input": {"predictions": {"fields": {"model": "'m'", "prediction_id": "id", "timestamp": "ts",
                                             "scores": "score", "features": {"country": "geo.cc"}}}}}]})
    raws = [orjson.dumps({"id": f"x{i}", "ts": T0 + i, "score": 0.9, "geo": {"cc": ["de", "fr"][i % 2]},
                          "account": {"plan": ["pro", "free", "team"][i % 3]}}) for i in range(600)]
    engine = Engine(cfg, use_native=use_native)
    assert not engine.predictions(raws)
    counts = engine.evaluate().by_name(c.SEGMENT_TWINS[c.WINDOW_PREDICTIONS.name].name)
    assert {k[1:3]: v for k, v in counts.items() if k[3] == "30d"} == {
        ("country", "de"): 300, ("country", "fr"): 300, ("plan", "pro"): 200, ("plan", "free"): 200,
        ("plan", "team"): 200}


@pytest.mark.parametrize("use_native", PATHS)
def test_report_breaks_quality_down_by_segment(use_native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report's segment tables: per value, volume and quality equal scikit-learn on that value's events,
    the weakest label is the one with the lowest F1, values beyond max_values are one _other row."""
    from monitor.report.build import make_report
    from monitor.report.html import render

    if not use_native:
        monkeypatch.setenv("MLMON_NATIVE", "0")
    preds, truths, rows = stream(3000, seed=4)
    report = make_report(config(max_values=3), preds, truths, at=T0 + 4000)
    (model,) = report.view.models
    country = next(s for s in model.segments if s.name == "country")
    table = {r.value: r for r in country.windows["30d"]}
    kept = [x for x in table if x != c.SEGMENT_OTHER]
    assert len(kept) == 3 and c.SEGMENT_OTHER in table
    assert list(table)[-1] == c.SEGMENT_OTHER  # by volume, _other last
    for value in [*kept, c.SEGMENT_OTHER]:
        mine = [r for r in rows
                if (r["country"] not in kept if value == c.SEGMENT_OTHER else r["country"] == value)]
        y = np.array([r["actual"] for r in mine])
        p = np.array([r["predicted"] for r in mine])
        row = table[value]
        assert row.predictions == len(mine) and row.joined == len(mine)
        assert row.micro_f1 == pytest.approx(f1_score(y, p, average="micro"), abs=1e-12)
        f1s = {label: f1_score(y[:, i], p[:, i]) for i, label in enumerate(LABELS)}
        assert row.worst is not None and row.worst.label == min(f1s, key=lambda k: (f1s[k], k))
        assert row.worst.f1 == pytest.approx(min(f1s.values()), abs=1e-12)
        assert row.worst.lower is not None and row.worst.upper is not None
        assert row.worst.lower <= row.worst.f1 <= row.worst.upper
    html = render(report.view, headline=report.headline, timeline=report.timeline)
    assert "Quality by country" in html and "Quality by tier" in html
    assert all(f'data-segment-value="{v}"' in html for v in table)

"""The join: either side first, TTL expiry, duplicates, corrections, the cap on pending entries."""

from __future__ import annotations

from monitor.config import parse_config
from monitor.engine.engine import Engine
from tests.conftest import small_config
from tests.events import BASE, ground_truth, prediction

S = {"a": 0.9, "b": 0.1, "c": 0.1}


def outcomes(engine: Engine, window: str = "1d") -> dict[str, float]:
    figs = engine.evaluate(BASE + 3600)
    return {k[3]: v for k, v in figs.by_name("mlmon_label_outcomes").items() if k[2] == "a" and k[4] == window}


def test_ground_truth_first_then_prediction_joins() -> None:
    e = Engine(small_config())
    e.ground_truth([ground_truth("p", BASE + 10, ["a"])])
    assert e.evaluate().by_name("mlmon_pending_joins")[("m", "ground_truth")] == 1
    e.predictions([prediction("p", BASE, S)])
    figs = e.evaluate(BASE + 3600)
    assert figs.by_name("mlmon_pending_joins")[("m", "ground_truth")] == 0
    assert figs.by_name("mlmon_pending_joins")[("m", "prediction")] == 0
    assert figs.by_name("mlmon_window_pending")[("m", "v1", "1h")] == 0
    assert outcomes(e)["tp"] == 1


def test_correction_moves_the_count_and_never_doubles() -> None:
    e = Engine(small_config())
    e.predictions([prediction("p", BASE, S)])
    e.ground_truth([ground_truth("p", BASE + 60, ["a"])])
    assert outcomes(e) == {"tp": 1, "fp": 0, "fn": 0, "tn": 0}
    e.ground_truth([ground_truth("p", BASE + 120, ["b"])])  # reviewer changed their mind
    assert outcomes(e) == {"tp": 0, "fp": 1, "fn": 0, "tn": 0}
    e.ground_truth([ground_truth("p", BASE + 90, ["a"])])  # older than the current one: stale
    assert outcomes(e) == {"tp": 0, "fp": 1, "fn": 0, "tn": 0}
    e.ground_truth([ground_truth("p", BASE + 120, ["b"])])  # identical re-send
    figs = e.evaluate(BASE + 3600)
    assert figs.by_name("mlmon_ground_truth_corrections_total")[("m",)] == 1
    assert figs.by_name("mlmon_duplicates_total")[("m", "ground_truth")] == 2
    assert figs.by_name("mlmon_joined_total")[("m", "v1")] == 1
    assert figs.by_name("mlmon_label_outcomes_total")[("m", "v1", "a", "fp")] == 1
    assert figs.by_name("mlmon_label_outcomes_total")[("m", "v1", "a", "tp")] == 0


def test_duplicate_prediction_is_ignored_and_counted() -> None:
    e = Engine(small_config())
    e.predictions([prediction("p", BASE, S), prediction("p", BASE + 5, {"a": 0.1, "b": 0.1, "c": 0.1}, version="v9")])
    figs = e.evaluate()
    assert figs.by_name("mlmon_duplicates_total")[("m", "predictions")] == 1
    # Versions are registered before the join decides (it runs natively, per batch), so the duplicate's
    # version exists, with nothing counted for it.
    assert figs.by_name("mlmon_predictions_total") == {("m", "v1"): 1, ("m", "v9"): 0}


def test_ttl_expires_both_sides_on_event_time() -> None:
    cfg = parse_config({"windows": ["1h", "1d"], "join": {"ttl": "1h"},
                        "models": [{"name": "m", "labels": ["a", "b", "c"]}]})
    e = Engine(cfg)
    e.predictions([prediction("lonely", BASE, S)])
    e.ground_truth([ground_truth("orphan", BASE + 60, ["a"])])
    e.predictions([prediction("later", BASE + 3 * 3600, S)])  # moves event time past both TTLs
    figs = e.evaluate()
    assert figs.by_name("mlmon_join_expired_total")[("m", "prediction")] == 1
    assert figs.by_name("mlmon_join_expired_total")[("m", "ground_truth")] == 1
    assert figs.by_name("mlmon_pending_joins")[("m", "prediction")] == 1  # "later"
    # The expired prediction no longer counts as waiting in any window.
    assert figs.by_name("mlmon_window_pending")[("m", "v1", "1d")] == 1
    e.ground_truth([ground_truth("lonely", BASE + 3 * 3600, ["a"])])  # too late to join
    figs = e.evaluate()
    assert figs.by_name("mlmon_joined_total").get(("m", "v1"), 0) == 0


def test_pending_cap_expires_oldest_first() -> None:
    cfg = parse_config({"windows": ["1h"], "join": {"ttl": "3d", "max_pending": 100},
                        "models": [{"name": "m", "labels": ["a", "b", "c"]}]})
    e = Engine(cfg)
    e.predictions(prediction(f"p{i}", BASE + i, S) for i in range(250))
    state = e.models["m"]
    ids, _ = state.join.export()
    assert len(state.join) == 100
    assert "p249" in ids and "p0" not in ids
    assert e.evaluate().by_name("mlmon_join_expired_total")[("m", "prediction")] == 150


def test_windows_follow_observation_time() -> None:
    e = Engine(small_config())
    e.predictions([prediction("p", BASE, S)])
    e.ground_truth([ground_truth("p", BASE + 2 * 3600, ["a"])])  # observed two hours after the prediction
    figs = e.evaluate(BASE + 2 * 3600)
    tp = figs.by_name("mlmon_label_outcomes")
    assert tp[("m", "v1", "a", "tp", "5m")] == 1
    # The prediction itself counts in prediction-time windows only when its time is inside them.
    preds = figs.by_name("mlmon_window_predictions")
    assert preds[("m", "v1", "1h")] == 0 and preds[("m", "v1", "6h")] == 1


def test_delay_histogram_records_first_join() -> None:
    e = Engine(small_config())
    e.predictions([prediction("p", BASE, S)])
    e.ground_truth([ground_truth("p", BASE + 400, ["a"]), ground_truth("p", BASE + 500, ["b"])])
    h = next(x for x in e.evaluate().histograms if x.metric.name == "mlmon_ground_truth_delay_seconds")
    assert sum(h.counts) == 1 and h.sum == 400


def test_expiry_does_not_depend_on_batch_boundaries() -> None:
    """A partner arriving after the TTL never joins, whether or not a batch-end expiry ran in between."""
    cfg = parse_config({"windows": ["1h"], "join": {"ttl": "1h"}, "models": [{"name": "m", "labels": ["a", "b", "c"]}]})
    events = [("predictions", prediction("p", BASE, S)),
              ("predictions", prediction("q", BASE + 3 * 3600, S)),
              ("ground_truth", ground_truth("p", BASE + 3 * 3600 + 1, ["a"]))]
    one = Engine(cfg)
    one.process(events)
    split = Engine(cfg)
    for e in events:
        split.process([e])
    for engine in (one, split):
        figs = engine.evaluate()
        assert figs.by_name("mlmon_joined_total").get(("m", "v1"), 0) == 0
        assert figs.by_name("mlmon_join_expired_total")[("m", "prediction")] == 1
        assert figs.by_name("mlmon_pending_joins")[("m", "ground_truth")] == 1


def test_versions_beyond_the_cap_are_counted_as_other() -> None:
    e = Engine(small_config(max_versions=3))
    e.predictions(prediction(f"p{i}", BASE + i, S, version=f"v{i}") for i in range(10))
    figs = e.evaluate()
    totals = figs.by_name("mlmon_predictions_total")
    assert totals == {("m", "v0"): 1, ("m", "v1"): 1, ("m", "v2"): 1, ("m", "_other"): 7}
    assert {k[1] for k in figs.by_name("mlmon_window_predictions")} == {"v0", "v1", "v2", "_other"}

"""The counter values (monitor/engine/tallies.py): how they add, dump, load and compare, and that both joins
report and restore exactly the fields of JoinCounters. Expected values are written out by hand."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Annotated

import numpy as np
import pytest

from monitor.config import MonitorConfig
from monitor.conventions import GROUND_TRUTH_DELAY_BUCKETS, LATENCY_BUCKETS
from monitor.engine import native, snapshot
from monitor.engine.engine import Engine
from monitor.engine.join import JoinTable, empty_join_columns
from monitor.engine.tallies import (
    Count,
    Histogram,
    JoinCounters,
    JoinLike,
    Keyed,
    ModelTallies,
    TalliesError,
    Values,
    kinds,
)

PATHS = [False, True] if native.enabled() else [False]


def hist(buckets: tuple[float, ...], values: list[float]) -> Histogram:
    h = Histogram(buckets)
    h.observe(np.array(values))
    return h


def sample(n_versions: int, base: int) -> ModelTallies:
    """Tallies whose every number differs (so a field mixed up with another shows)."""
    t = ModelTallies.zero()
    for _ in range(n_versions):
        t.add_version()
    t.predictions_total[:] = [base + v for v in range(n_versions)]
    for v in range(n_versions):
        t.latency[v].observe(np.array([0.001 * (base + v), 0.5 * v]))
    t.delay.observe(np.array([60.0 * base, 7200.0]))
    t.ground_truth_total = 10 * base
    t.ignored_scores = 100 * base
    t.late = {"predictions": base + 1, "ground_truth": base + 2}
    t.last_event = {"predictions": 1000.0 * base, "ground_truth": 999.0 * base}
    return t


def test_add_maps_versions_and_combines_each_kind_its_way() -> None:
    a, b = sample(2, 1), sample(3, 5)
    a.add_version()  # a has versions 0, 1, 2; b's 0 -> a's 2, b's 1 -> a's 0, b's 2 -> a's 1
    a.add(b, [2, 0, 1])
    assert a.predictions_total == [1 + 6, 2 + 7, 0 + 5]
    assert a.latency[2] == hist(LATENCY_BUCKETS, [0.005, 0.0])
    assert a.latency[0] == hist(LATENCY_BUCKETS, [0.001, 0.0, 0.006, 0.5])
    assert a.delay == hist(GROUND_TRUTH_DELAY_BUCKETS, [60.0, 7200.0, 300.0, 7200.0])
    assert (a.ground_truth_total, a.ignored_scores) == (60, 600)
    assert a.late == {"predictions": 2 + 6, "ground_truth": 3 + 7}
    assert a.last_event == {"predictions": 5000.0, "ground_truth": 4995.0}  # the newest, not a sum


def test_dump_and_load_round_trip_and_missing_fields_load_as_zero() -> None:
    t = sample(3, 2)
    meta, arrays = t.dump()
    # The checkpoint layout: histograms' counts as arrays, their sums beside the other fields.
    assert sorted(arrays) == ["delay", "latency"] and arrays["latency"].shape == (3, len(LATENCY_BUCKETS) + 1)
    assert set(meta) == {"predictions_total", "latency_sum", "delay_sum", "ground_truth_total", "ignored_scores",
                         "late", "last_event"}
    assert ModelTallies.load(meta, arrays, 3) == t
    assert ModelTallies.load(meta, arrays, 3) != sample(3, 3)
    empty = ModelTallies.zero()
    for _ in range(3):
        empty.add_version()
    assert ModelTallies.load({}, {}, 3) == empty
    with pytest.raises(TalliesError):
        ModelTallies.load(meta, arrays, 2)  # three versions' values for two versions
    with pytest.raises(TalliesError):
        ModelTallies.load(meta, {**arrays, "delay": np.zeros(3)}, 3)


def test_a_new_field_is_one_line() -> None:
    """Add, dump, load and equality follow from the declaration alone."""

    @dataclass
    class More(Values):
        a: Annotated[int, Count()]
        b: Annotated[dict[str, int], Keyed(("x",))]

    one, two = More.zero(), More(3, {"x": 1, "y": 2})
    one.add(two)
    one.add(two)
    assert one == More(6, {"x": 2, "y": 4})
    assert More.load(one.dump()[0]) == one and More.load({}) == More(0, {"x": 0})
    assert [name for name, _ in kinds(More)] == ["a", "b"]


def make_join(use_native: bool) -> JoinLike:
    return native._native.Join(3600.0, 4, 2) if use_native else JoinTable(3600.0, 4, 2)


def test_join_counters_are_the_joins_restore_keywords() -> None:
    names = [f.name for f in fields(JoinCounters)]
    python = list(inspect.signature(JoinTable.restore).parameters)
    assert python[-len(names):] == names
    if native.enabled():
        text: str = getattr(native._native.Join.restore, "__text_signature__")  # noqa: B009 (not in the stub)
        assert [p.strip() for p in text.strip("()").split(",")][-len(names):] == names


@pytest.mark.parametrize("use_native", PATHS)
def test_both_joins_give_back_each_counter_they_are_restored_with(use_native: bool) -> None:
    want = JoinCounters(pending={"prediction": 1, "ground_truth": 2}, expired={"prediction": 3, "ground_truth": 4},
                        evicted={"prediction": 5, "ground_truth": 6, "joined": 7},
                        duplicates={"prediction": 8, "ground_truth": 9}, corrections=10, joined=11)
    join = make_join(use_native)
    assert JoinCounters.of(join) == JoinCounters.zero()
    want.restore(join, [], empty_join_columns(2), 0, 123.0)
    assert JoinCounters.of(join) == want and join.watermark == 123.0
    assert JoinCounters.load(want.dump()[0]) == want


def test_both_joins_count_the_same_stream_alike() -> None:
    """Counters by hand for a small stream, through the engine (duplicates, a correction, eviction)."""
    config = MonitorConfig.model_validate({"join": {"ttl": "1h", "max_pending": 3},
                                           "models": [{"name": "m", "labels": ["a", "b"]}]})
    t0 = 1_700_000_000

    def pred(i: int, dt: float = 0.0) -> tuple[str, bytes]:
        return ("predictions", b'{"prediction_id":"p%d","model":"m","timestamp":%f,"scores":{"a":0.9,"b":0.1}}'
                % (i, t0 + i + dt))

    def truth(i: int, labels: bytes, dt: float) -> tuple[str, bytes]:
        return ("ground_truth", b'{"prediction_id":"p%d","model":"m","timestamp":%f,"labels":%s}'
                % (i, t0 + i + dt, labels))

    items = [pred(0), pred(0), truth(0, b'["a"]', 5), truth(0, b'["a"]', 5), truth(0, b'["b"]', 9),
             pred(1), pred(2), pred(3), pred(4), truth(9, b'["a"]', 0)]
    got = []
    for use_native in PATHS:
        engine = Engine(config, use_native=use_native)
        engine.process(items)
        engine.flush()
        got.append(JoinCounters.of(engine.models["m"].join))
    # p0 joined then corrected; p1..p4 and the truth for p9 wait; the cap of 3 entries evicts the
    # earliest-expiring ones: p0 (joined), then p1 and p2 (waiting predictions, also counted as expired).
    want = JoinCounters(pending={"prediction": 2, "ground_truth": 1}, expired={"prediction": 2, "ground_truth": 0},
                        evicted={"prediction": 2, "ground_truth": 0, "joined": 1},
                        duplicates={"prediction": 1, "ground_truth": 1}, corrections=1, joined=1)
    assert got == [want] * len(PATHS)


@pytest.mark.parametrize("use_native", PATHS)
def test_every_tally_field_survives_a_checkpoint(use_native: bool) -> None:
    config = MonitorConfig.model_validate({"models": [{"name": "m", "labels": ["a", "b"]}]})
    engine = Engine(config, use_native=use_native)
    state = engine.models["m"]
    for name in ("v1", "v2", "v3"):
        state.version_index(name)
    state.tallies = sample(3, 4)
    restored = snapshot.load(config, None, snapshot.dump(engine))
    assert restored.models["m"].tallies == sample(3, 4)

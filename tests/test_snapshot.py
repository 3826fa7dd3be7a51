"""Engine snapshots (monitor/engine/snapshot.py) and merged views (monitor/engine/merge.py).

The oracle is `run_replay` on the whole stream: a snapshot taken mid-stream, restored and fed the rest
must end where an uninterrupted engine ends, and partition engines merged must report what one engine
reports. Counts must match exactly; sums of scores may differ in the last bits because floating-point
additions happen in another order (tolerance 1e-9).
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Iterable

import numpy as np
import orjson
import pytest

from monitor.config import MonitorConfig, load_config, parse_config
from monitor.engine import model_state, snapshot
from monitor.engine.engine import Engine
from monitor.engine.figures import Figures
from monitor.engine.join import Entry, JoinTable, Pred, Truth
from monitor.engine.merge import merged_engine, merged_figures
from monitor.engine.model_state import ModelState
from monitor.engine.tallies import StateError
from monitor.engine.windows import BlockStore
from monitor.reference import load_reference
from monitor.replay import merge_by_time, run_replay
from monitor.simulate import TrafficSpec, generate
from tests.conftest import EXAMPLE_CONFIG
from tests.test_oracle import make_stream, to_raw

ORACLE_MODEL = {"name": "m", "task": "multilabel", "labels": ["a", "b", "c"], "threshold": 0.5,
                "thresholds": {"b": 0.3}}


def figure_map(figures: Figures) -> dict[tuple[str, tuple[str, ...]], float | tuple[float, ...]]:
    out: dict[tuple[str, tuple[str, ...]], float | tuple[float, ...]] = {
        (s.metric.name, s.labels): s.value for s in figures.samples}
    for h in figures.histograms:
        out[(h.metric.name, h.labels)] = (*h.counts, h.sum)
    return out


def assert_figures_equal(got: Figures | dict, want: Figures | dict, rel: float = 1e-9, abs_: float = 1e-9) -> None:
    g = got if isinstance(got, dict) else figure_map(got)
    w = want if isinstance(want, dict) else figure_map(want)
    missing, unexpected = sorted(set(w) - set(g)), sorted(set(g) - set(w))
    assert not missing and not unexpected, f"missing {missing[:5]} unexpected {unexpected[:5]}"
    bad = []
    for key, want_v in w.items():
        got_v = g[key]
        pairs = zip(got_v, want_v, strict=True) if isinstance(want_v, tuple) else [(got_v, want_v)]
        if not all(math.isclose(a, b, rel_tol=rel, abs_tol=abs_) for a, b in pairs):
            bad.append((key, got_v, want_v))
    assert not bad, f"{len(bad)} figures differ, e.g. {bad[:5]}"


def batches(items: list[tuple[str, bytes]], size: int) -> Iterable[list[tuple[str, bytes]]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@pytest.fixture(scope="module")
def example() -> tuple[MonitorConfig, list[bytes], list[bytes]]:
    config = load_config(EXAMPLE_CONFIG)
    preds, truths = generate(TrafficSpec(n=3000, rate=1.0))
    return config, [r for _, r in preds], [r for _, r in truths]


def oracle_config(**join: object) -> MonitorConfig:
    return parse_config({"windows": ["5m", "30m", "1h", "2h", "6h", "1d"], "join": {"ttl": "3d", **join},
                         "models": [ORACLE_MODEL]})


def test_mid_stream_snapshot_continues_like_an_uninterrupted_run(example) -> None:
    config, preds, truths = example
    items = list(merge_by_time(preds, truths, None))
    refs = {m.name: load_reference(config, m) for m in config.models}
    whole = Engine(config, refs)
    pieces = Engine(config, refs)
    cut = len(items) // 2
    for batch in batches(items[:cut], 500):
        whole.process(batch)
        pieces.process(batch)
    data = snapshot.dump(pieces, extra={"offsets": [1, 2]})
    restored, extra = snapshot.restore(config, refs, data)
    assert extra == {"offsets": [1, 2]}
    assert snapshot.peek_extra(data) == extra
    assert_figures_equal(restored.evaluate(), whole.evaluate(), rel=0, abs_=0)
    for batch in batches(items[cut:], 500):
        whole.process(batch)
        restored.process(batch)
    # Same batches in the same order: bit for bit the same figures.
    assert_figures_equal(restored.evaluate(), whole.evaluate(), rel=0, abs_=0)
    _, oracle = run_replay(config, preds, truths)
    assert_figures_equal(restored.evaluate(), oracle)


@pytest.mark.parametrize("join", [{}, {"ttl": "1h"}, {"ttl": "2h", "max_pending": 150}])
def test_repeated_snapshots_with_expiry_corrections_and_versions(join: dict) -> None:
    """The oracle tests' stream: two versions, partial truth, corrections, truth before prediction;
    with short TTLs and a pending cap so expiry and early eviction happen between snapshots."""
    config = oracle_config(**join)
    raw_p, raw_g = to_raw(*make_stream(seed=11, n=1500))
    items = list(merge_by_time(raw_p, raw_g, None))
    whole = Engine(config)
    engine = Engine(config)
    for batch in batches(items, 257):
        whole.process(batch)
        engine.process(batch)
        engine = snapshot.load(config, None, snapshot.dump(engine, compress=False))
        state, ref_state = engine.models["m"], whole.models["m"]
        assert state.join.pending == ref_state.join.pending
        assert sorted(state.join.export()[0]) == sorted(ref_state.join.export()[0])
    assert_figures_equal(engine.evaluate(), whole.evaluate(), rel=0, abs_=0)
    assert engine.models["m"].join.expired == whole.models["m"].join.expired
    if not join:
        # Expiry runs once per batch, so with short TTLs the batch size (257 here, 8192 in replay)
        # decides some joins; without expiry the replay is the oracle.
        _, oracle = run_replay(config, raw_p, raw_g)
        assert_figures_equal(engine.evaluate(), oracle)


def test_snapshot_keeps_the_invalid_counts_and_an_empty_engine_round_trips(example) -> None:
    config, _, _ = example
    engine = Engine(config)
    rejected = engine.process([("predictions", b"{"), ("ground_truth", b"[]")])
    assert len(rejected) == 2
    restored = snapshot.load(config, None, snapshot.dump(engine))
    assert restored.invalid == engine.invalid
    assert_figures_equal(restored.evaluate(0.0), engine.evaluate(0.0), rel=0, abs_=0)


def test_fields_of_the_engine_classes_are_all_known_to_the_snapshot(example) -> None:
    """A field added to the engine state must be added to its dump, load and add too (or listed as derived)."""
    config, _, _ = example
    state = Engine(config, use_native=False).models["moderation"]  # the native join exports the same columns
    assert isinstance(state, ModelState)
    assert set(vars(state)) == model_state.MODEL_STATE_FIELDS
    assert isinstance(state.join, JoinTable) and set(vars(state.join)) == model_state.JOIN_FIELDS
    assert isinstance(state.store, BlockStore) and set(vars(state.store)) == model_state.STORE_FIELDS
    assert set(Pred.__slots__) == {"predicted", "scores", "ts", "version"}
    assert set(Truth.__slots__) == {"actual", "full", "known", "seq", "ts"}
    assert set(Entry.__slots__) == {"expires", "pred", "truth"}


# --- refusing what is not a snapshot of this configuration --------------------------------------------------
def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_pickled_objects_and_garbage_are_refused(example) -> None:
    config, _, _ = example
    with pytest.raises(snapshot.SnapshotError):
        snapshot.load(config, None, b"not a zip")
    with pytest.raises(snapshot.SnapshotError):
        # An object array would need pickle to load; allow_pickle=False refuses it.
        snapshot.load(config, None, _npz(meta=np.array([{"x": 1}], dtype=object)))
    meta = np.frombuffer(orjson.dumps({"format": snapshot.FORMAT, "version": 999}), dtype=np.uint8)
    with pytest.raises(snapshot.SnapshotError, match="version 999"):
        snapshot.load(config, None, _npz(meta=meta))
    data = snapshot.dump(Engine(config))
    with pytest.raises(snapshot.SnapshotError):
        snapshot.load(config, None, data[: len(data) // 2])
    assert zlib.crc32(data)  # the intact one still loads
    snapshot.load(config, None, data)


def test_a_changed_model_is_refused_an_added_model_starts_empty() -> None:
    config = oracle_config()
    raw_p, raw_g = to_raw(*make_stream(seed=3, n=200))
    engine = Engine(config)
    engine.process(merge_by_time(raw_p, raw_g, None))
    data = snapshot.dump(engine)
    relabelled = parse_config({"windows": ["5m", "1h", "1d"], "models": [{**ORACLE_MODEL, "labels": ["a", "b", "x"],
                                                                        "thresholds": {}}]})
    with pytest.raises(snapshot.SnapshotError, match="labels"):
        snapshot.load(relabelled, None, data)
    added = parse_config({"windows": ["5m", "30m", "1h", "2h", "6h", "1d"], "join": {"ttl": "3d"},
                          "models": [ORACLE_MODEL, {**ORACLE_MODEL, "name": "other"}]})
    restored = snapshot.load(added, None, data)
    assert restored.models["m"].tallies == engine.models["m"].tallies
    assert restored.models["other"].version_names == []


# --- merged views ------------------------------------------------------------------------------------------
def _partition(raw: bytes, n: int) -> int:
    return zlib.crc32(orjson.loads(raw)["prediction_id"].encode()) % n


def test_partition_engines_merged_equal_one_engine(example) -> None:
    config, preds, truths = example
    refs = {m.name: load_reference(config, m) for m in config.models}
    engines = [Engine(config, refs) for _ in range(3)]
    items = list(merge_by_time(preds, truths, None))
    for batch in batches(items, 700):
        parts: list[list[tuple[str, bytes]]] = [[], [], []]
        for topic, raw in batch:
            parts[_partition(raw, 3)].append((topic, raw))
        for engine, part in zip(engines, parts, strict=True):
            engine.process(part)
    engines[1].process([("predictions", b"nope")])
    _, oracle = run_replay(config, preds, truths)
    want = figure_map(oracle)
    want[("mlmon_invalid_events_total", ("predictions", "invalid_json"))] = 1.0
    assert_figures_equal(merged_figures(config, refs, engines), want)
    # A merged view of one engine is that engine, exactly.
    assert_figures_equal(merged_figures(config, refs, engines[:1]), engines[0].evaluate(), rel=0, abs_=0)
    # The view is built fresh: evaluating it leaves the partition engines untouched.
    assert len(merged_engine(config, refs, engines).models["moderation"].join) == 0
    assert len(engines[0].models["moderation"].join) > 0
    # Adding is for views: a state holding join entries does not take another's statistics.
    with pytest.raises(StateError, match="without join entries"):
        engines[0].add(engines[1])


def test_merged_view_of_no_engines_reports_zero_counters(example) -> None:
    config, _, _ = example
    figures = merged_figures(config, {}, [], at=0.0)
    assert figures.by_name("mlmon_ground_truth_total") == {("moderation",): 0.0}

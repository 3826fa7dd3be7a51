"""The native core against the pure-Python engine it replaces (docs/native.md).

The Python decoder and join are the reference: on the same input, in the same batches, both engines must
hold the same join table and report the same figures, to the last bit. The streams are built to reach
every branch of the join (either side first, duplicates, corrections, stale and identical re-sends, TTL
expiry on partner arrival, cap evictions, versions past `max_versions`) and mix in messages only the
exact decoder can judge (partial labels, served lists, multiclass, epoch times, garbage).
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import DEFAULT_MEMORY_ENTRIES, WORKER_STATE_DIR, MonitorConfig, SegmentConfig, parse_config
from monitor.engine import model_state, native, snapshot
from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Engine
from monitor.engine.figures import Figures
from monitor.engine.merge import merged_engine
from monitor.exporter import prometheus_text
from monitor.inputs import load_inputs
from monitor.replay import run_replay, steps_by_time
from tests.events import BASE

pytestmark = pytest.mark.skipif(native._native is None,
                                reason="monitor._native is not built (scripts/test.sh requires it)")

CFG = parse_config({
    "windows": ["5m", "30m", "1h", "6h"],
    "join": {"ttl": "20m", "max_pending": 8},
    "models": [
        {"name": "m", "task": "multilabel", "labels": ["a", "b", "c"], "threshold": 0.5, "thresholds": {"b": 0.3},
         "max_versions": 2},
        {"name": "k", "task": "multiclass", "labels": ["x", "y"]},
    ],
})


def figures_map(f: Figures) -> dict:
    out: dict = {(s.metric.name, s.labels): s.value for s in f.samples}
    out.update({(h.metric.name, h.labels): (h.counts, h.sum) for h in f.histograms})
    return out


def join_state(engine: Engine) -> dict:
    out = {}
    for name, state in engine.models.items():
        ids, cols = state.join.export()
        order = np.argsort(np.array(ids, dtype=object))
        j = state.join
        out[name] = (sorted(ids), {k: v[order].tolist() for k, v in cols.items()}, j.seq, j.watermark,
                     dict(j.pending), {k: v for k, v in dict(j.expired).items() if v},
                     {k: v for k, v in dict(j.evicted).items() if v},
                     {k: v for k, v in dict(j.duplicates).items() if v}, j.corrections, j.joined, len(j))
    return out


def assert_same_engines(a: Engine, b: Engine, at: float | None = None) -> None:
    assert join_state(a) == join_state(b)
    assert figures_map(a.evaluate(at)) == figures_map(b.evaluate(at))


def stamp(dt: int) -> str:
    return np.datetime_as_string(np.datetime64(int((BASE + dt) * 1000), "ms"), unit="ms") + "Z"


ids = st.integers(0, 11).map(lambda i: f"id{i}")
when = st.integers(0, 45 * 60)
score = st.one_of(st.floats(0, 1, allow_nan=False), st.sampled_from([0, 1, 0.5, 0.3]))
multilabel_prediction = st.builds(
    lambda pid, dt, s, v, lat: {"prediction_id": pid, "model": "m", "model_version": v, "timestamp": stamp(dt),
                                "scores": dict(zip("abc", s, strict=True)), **({"latency_ms": lat} if lat else {})},
    ids, when, st.tuples(score, score, score), st.sampled_from(["v1", "v2", "v3"]),
    st.one_of(st.none(), st.floats(0, 5000)))
served_prediction = st.builds(
    lambda pid, dt, s, served: {"prediction_id": pid, "model": "m", "timestamp": BASE + dt,
                                "scores": dict(zip("abc", s, strict=True)), "predicted": served},
    ids, when, st.tuples(score, score, score), st.lists(st.sampled_from("abc"), unique=True))
multiclass_prediction = st.builds(
    lambda pid, dt, s: {"prediction_id": pid, "model": "k", "timestamp": stamp(dt), "scores": {"x": s, "y": 1 - s}},
    ids, when, st.floats(0, 1, allow_nan=False))
full_truth = st.builds(
    lambda pid, dt, labels: {"prediction_id": pid, "model": "m", "timestamp": stamp(dt), "labels": labels},
    ids, when, st.lists(st.sampled_from("abc"), unique=True))
partial_truth = st.builds(
    lambda pid, dt, labels: {"prediction_id": pid, "model": "m", "timestamp": stamp(dt), "labels": labels},
    ids, when, st.dictionaries(st.sampled_from("abc"), st.integers(0, 1), min_size=1))
multiclass_truth = st.builds(
    lambda pid, dt, c: {"prediction_id": pid, "model": "k", "timestamp": stamp(dt), "labels": [c]},
    ids, when, st.sampled_from("xy"))
garbage = st.sampled_from([b"{", b"[]", b'{"prediction_id": "id1"}', b'{"prediction_id":"id2","model":"m",'
                           b'"timestamp":"2026-11-20T00:00:00Z","scores":{"a":0.1,"b":true,"c":0.2}}', b"\xff"])

predictions = st.one_of(multilabel_prediction, multilabel_prediction, served_prediction, multiclass_prediction)
truths = st.one_of(full_truth, full_truth, partial_truth, multiclass_truth)
message = st.one_of(
    *[st.tuples(st.just(PREDICTIONS), predictions.map(orjson.dumps))] * 3,
    *[st.tuples(st.just(GROUND_TRUTH), truths.map(orjson.dumps))] * 3,
    st.tuples(st.sampled_from([PREDICTIONS, GROUND_TRUTH]), garbage),
)
# A prediction judged twice: the second truth corrects the first, or is a stale or identical re-send.
rejudged = st.builds(
    lambda pid, dt, first, second, later: [
        (PREDICTIONS, orjson.dumps({"prediction_id": pid, "model": "m", "timestamp": stamp(dt),
                                    "scores": {"a": 0.9, "b": 0.2, "c": 0.6}})),
        (GROUND_TRUTH, orjson.dumps({"prediction_id": pid, "model": "m", "timestamp": stamp(dt + 30),
                                     "labels": first})),
        (GROUND_TRUTH, orjson.dumps({"prediction_id": pid, "model": "m", "timestamp": stamp(dt + later),
                                     "labels": second}))],
    ids, when, st.lists(st.sampled_from("abc"), unique=True), st.lists(st.sampled_from("abc"), unique=True),
    st.integers(0, 60))
# A prediction re-sent around the end of its TTL (20m): the duplicate / new-prediction boundary.
resent = st.builds(
    lambda pid, dt, delta: [(PREDICTIONS, orjson.dumps({"prediction_id": pid, "model": "m", "timestamp": stamp(t),
                                                        "scores": {"a": 0.9, "b": 0.2, "c": 0.6}}))
                            for t in (dt, dt + 1200 + delta)],
    ids, when, st.integers(-1, 1))
stream = st.lists(st.one_of(message.map(lambda m: [m]), rejudged, resent), min_size=10, max_size=100).map(
    lambda parts: [m for part in parts for m in part])


def with_budget(memory_entries: int | None) -> MonitorConfig:
    """CFG with the native join keeping at most `memory_entries` entries in memory (the rest in its store)."""
    return CFG.model_copy(update={"join": CFG.join.model_copy(update={"memory_entries": memory_entries})})


# None: all in memory; 1-6 (below the cap of 8): entries spill to the store and load back all the time.
budgets = st.one_of(st.none(), st.integers(1, 6))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream, st.lists(st.integers(1, 40), min_size=1, max_size=10), budgets)
def test_native_and_python_engines_agree_on_any_stream(items: list[tuple[str, bytes]], cuts: list[int],
                                                       budget: int | None) -> None:
    fast, slow = Engine(with_budget(budget), use_native=True), Engine(CFG, use_native=False)
    pos = 0
    for k in range(len(items)):
        if pos >= len(items):
            break
        size = cuts[k % len(cuts)]
        batch = items[pos:pos + size]
        rejected_fast, rejected_slow = fast.process(batch), slow.process(batch)
        assert rejected_fast == rejected_slow
        if budget is not None:
            assert all(s.join.memory_len <= budget for s in fast.models.values())
        pos += size
    assert_same_engines(fast, slow, BASE + 2 * 3600)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream, st.integers(0, 150), budgets)
def test_checkpoints_move_between_the_native_and_python_joins(items: list[tuple[str, bytes]], cut: int,
                                                              budget: int | None) -> None:
    """A snapshot taken by either implementation restores into the other and continues identically (the
    native one with its memory budget: its export includes the entries in its store)."""
    config = with_budget(budget)
    for source, target in ((True, False), (False, True)):
        whole = Engine(CFG, use_native=target)
        first = Engine(config, use_native=source)
        first.process(items[:cut])
        whole.process(items[:cut])
        restored, _ = snapshot.restore(config, None, snapshot.dump(first), use_native=target)
        restored.process(items[cut:])
        whole.process(items[cut:])
        assert_same_engines(restored, whole, BASE + 2 * 3600)


def test_bundled_example_gives_identical_figures() -> None:
    inputs = load_inputs(None, None, None, None)
    fast, figures_fast = run_replay(inputs.config, inputs.predictions, inputs.ground_truth, use_native=True)
    slow, figures_slow = run_replay(inputs.config, inputs.predictions, inputs.ground_truth, use_native=False)
    assert fast.use_native and not slow.use_native
    assert figures_map(figures_fast) == figures_map(figures_slow)
    assert join_state(fast) == join_state(slow)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_batches_applied_with_folds_on_another_thread_equal_one_apply_per_batch(
        threads: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine.apply_batches applies a model's batches on one thread while the previous batch's statistics
    are folded into its blocks on another: the same figures, join and blocks, to the bit, as one
    `apply` (apply, then flush) per batch, with segments (cohort keys handed over by `take`) and a
    budget that spills."""
    monkeypatch.setenv("MLMON_APPLY_THREADS", threads)
    inputs = load_inputs(None, None, None, None)
    config = inputs.config.model_copy(update={
        "join": inputs.config.join.model_copy(update={"memory_entries": 300}),
        "models": [m.model_copy(update={"segments": [SegmentConfig(name="lang", feature="lang")]})
                   for m in inputs.config.models]})
    engines = [Engine(config, use_native=True) for _ in range(2)]
    decoded = [(e.decode(PREDICTIONS, inputs.predictions), e.decode(GROUND_TRUTH, inputs.ground_truth))
               for e in engines]
    sides, index = steps_by_time(*decoded[0], None)
    batches = [(sides[s:s + 1000], index[s:s + 1000]) for s in range(0, len(sides), 1000)]
    for sides_b, index_b in batches:
        engines[0].apply(*decoded[0], sides_b, index_b)
    engines[1].apply_batches(*decoded[1], batches)
    assert len(engines[1].models["moderation"].join) > engines[1].models["moderation"].join.memory_len
    assert engines[1].models["moderation"].segment_values[0], "segments were filled"
    assert join_state(engines[0]) == join_state(engines[1])
    assert snapshot.dump(engines[0]) == snapshot.dump(engines[1])
    assert prometheus_text(engines[0].evaluate()) == prometheus_text(engines[1].evaluate())


def test_a_budget_spills_and_loads_back_in_expiry_order() -> None:
    """Deterministic companion of the property tests: 8 pending (the cap) with 2 in memory, then truths
    for the oldest (cold) ids join, and the cap evicts across both tiers in (expires, id) order."""
    def pred(pid: str, dt: int) -> tuple[str, bytes]:
        return PREDICTIONS, orjson.dumps({"prediction_id": pid, "model": "k", "timestamp": stamp(dt),
                                          "scores": {"x": 0.7, "y": 0.3}})

    def truth(pid: str, dt: int) -> tuple[str, bytes]:
        return GROUND_TRUTH, orjson.dumps({"prediction_id": pid, "model": "k", "timestamp": stamp(dt),
                                           "labels": ["x"]})

    items = [pred(f"id{i}", 10 * (i % 4)) for i in range(8)] + [truth("id0", 100), truth("id4", 100)]
    items += [pred("late", 5), pred("id9", 50)]  # each over the cap: evicts the smallest (expires, id)
    fast, slow = Engine(with_budget(2), use_native=True), Engine(CFG, use_native=False)
    for item in items:
        fast.process([item])
        slow.process([item])
    join = fast.models["k"].join
    assert join.memory_len <= 2 < len(join) == 8
    evicted = {k: v for k, v in join.evicted.items() if v}
    assert evicted == dict(slow.models["k"].join.evicted) and sum(evicted.values()) == 2
    assert sorted(join.export()[0]) == sorted(slow.models["k"].join.export()[0])
    assert_same_engines(fast, slow, BASE + 2 * 3600)


def test_the_merged_view_of_budgeted_engines_opens_no_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """/metrics builds a merged view on every scrape; its joins hold no entries, so with a budget they must
    not each open (and delete) an on-disk store."""
    engine = Engine(with_budget(2), use_native=True)
    engine.process([(PREDICTIONS, orjson.dumps({"prediction_id": f"id{i}", "model": "k", "timestamp": stamp(0),
                                                "scores": {"x": 0.7, "y": 0.3}})) for i in range(5)])
    assert engine.models["k"].join.store_dir is not None  # the engine's own join does have one
    made: list[tuple[int | None, bool]] = []
    real = model_state.make_join

    def make_join(config: MonitorConfig, n_labels: int, use_native: bool) -> object:
        made.append((config.join.memory_entries, use_native))
        return real(config, n_labels, use_native)

    monkeypatch.setattr(model_state, "make_join", make_join)
    view = merged_engine(with_budget(2), {}, [engine])
    assert made and all(budget is None for budget, _ in made)  # no join of the view has a store
    assert view.models["k"].join.pending == engine.models["k"].join.pending


def test_a_budget_above_the_cap_is_refused_naming_both() -> None:
    from monitor.config import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config({"join": {"max_pending": 1000, "memory_entries": 5000},
                      "models": [{"name": "m", "labels": ["a"]}]})
    assert "join.memory_entries" in str(info.value.problems) and "join.max_pending" in str(info.value.problems)
    # The worker's --state-dir goes to the join settings; the budget stays what the config says.
    worker = parse_config({"models": [{"name": "m", "labels": ["a"]}]}).join.for_worker("/tmp/x")
    assert worker.memory_entries == DEFAULT_MEMORY_ENTRIES and worker.state_dir == "/tmp/x"
    # Else join.state_dir, else one fixed place, where a restarted worker finds its local copies.
    configured = parse_config({"join": {"state_dir": "/srv/s"}, "models": [{"name": "m", "labels": ["a"]}]}).join
    assert configured.for_worker(None).state_dir == "/srv/s" and configured.state_dir == "/srv/s"
    unset = parse_config({"models": [{"name": "m", "labels": ["a"]}]}).join
    assert unset.state_dir is None and unset.for_worker(None).state_dir == WORKER_STATE_DIR
    assert Path(WORKER_STATE_DIR).parent == Path(tempfile.gettempdir())


def test_the_default_budget_yields_to_a_lower_cap_and_null_keeps_everything_in_memory() -> None:
    def join(**keys: object) -> Any:
        return parse_config({"join": keys, "models": [{"name": "m", "labels": ["a"]}]}).join

    assert join().memory_entries == DEFAULT_MEMORY_ENTRIES
    assert join(max_pending=1000).memory_entries == 1000  # not an error: the config set no budget
    assert join(memory_entries=None).memory_entries is None
    assert join(memory_entries=7, max_pending=1000).memory_entries == 7


def test_a_join_under_its_budget_makes_no_store(tmp_path: Path) -> None:
    """The store is opened when the first entry moves there: an engine under its budget makes no directory
    (a worker has a join per model and partition); the first spill makes one, and dropping the join
    removes it. A state dir that cannot be written to is refused when the join is made."""
    config = with_budget(4).model_copy(update={"join": with_budget(4).join.model_copy(
        update={"state_dir": str(tmp_path)})})
    engine = Engine(config, use_native=True)
    preds = [(PREDICTIONS, orjson.dumps({"prediction_id": f"id{i}", "model": "k", "timestamp": stamp(i),
                                         "scores": {"x": 0.7, "y": 0.3}})) for i in range(6)]
    engine.process(preds[:4])
    join = engine.models["k"].join
    assert join.store_dir is None and list(tmp_path.iterdir()) == []
    engine.process(preds[4:])
    assert join.store_dir is not None and Path(join.store_dir).parent == tmp_path and len(join) == 6
    del engine, join
    gc.collect()
    assert list(tmp_path.iterdir()) == []
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(OSError, match="join store directory"):
        native._native.Join(3600.0, 100, 2, 5, str(blocked / "sub"))


@pytest.mark.parametrize("memory_entries", [None, 3])
def test_the_native_join_restores_ids_given_as_spans_like_a_list(memory_entries: int | None) -> None:
    """A changelog restore hands the ids as spans of its keys (monitor.spans.TextSpans): the table equals
    one restored from a list of str, with and without a memory budget; a span that is not UTF-8 is refused."""
    from monitor import _native
    from monitor.spans import TextSpans

    engine = Engine(CFG, use_native=True)
    engine.process([(PREDICTIONS, orjson.dumps({"prediction_id": pid, "model": "k", "timestamp": stamp(i),
                                                "scores": {"x": 0.1 * i, "y": 0.5}}))
                    for i, pid in enumerate(["a", "\u00e9t\u00e9", "\u4e2d\u6587", "id-3", "", "x" * 300])])
    ids, columns = engine.models["k"].join.export()
    raw = [pid.encode() for pid in ids]
    ends = np.cumsum([len(r) for r in raw], dtype=np.int64)
    spans = TextSpans(b"".join(raw), ends - [len(r) for r in raw], ends)
    assert list(spans) == ids and spans[1] == ids[1] and list(spans[2:4]) == ids[2:4]
    counters = dict(pending={"prediction": len(ids), "ground_truth": 0}, expired={"prediction": 0, "ground_truth": 0},
                    evicted={"prediction": 0, "ground_truth": 0, "joined": 0},
                    duplicates={"prediction": 0, "ground_truth": 0}, corrections=0, joined=0)
    tables = []
    for form in (ids, spans):
        join = _native.Join(3600.0, 100, 2, memory_entries)
        join.restore(form, columns, 7, 5.0, **counters)
        tables.append(join.export())
    assert tables[0][0] == tables[1][0] == ids
    assert all(np.array_equal(tables[0][1][c], tables[1][1][c]) for c in tables[0][1])
    bad = TextSpans(b"ok\xff", np.array([0, 2], dtype=np.int64), np.array([2, 3], dtype=np.int64))
    two = {c: v[:2] for c, v in columns.items()}
    with pytest.raises(ValueError, match="not valid UTF-8"):
        _native.Join(3600.0, 100, 2, memory_entries).restore(bad, two, 7, 5.0, **counters)


def test_the_native_join_applies_ids_given_as_spans_like_a_list() -> None:
    """The native decoder hands a batch's ids as spans of one buffer (monitor.spans.TextSpans): the join
    applies them as it applies a list of str (accepted rows, output and table alike), blocks concatenate
    as spans, and a span outside the buffer or not UTF-8 is refused before any step runs."""
    from monitor import _native
    from monitor.engine.columns import concat_ids
    from monitor.spans import TextSpans

    def spans_of(ids: list[str]) -> TextSpans:
        raw = [pid.encode() for pid in ids]
        ends = np.cumsum([len(r) for r in raw], dtype=np.int64)
        return TextSpans(np.frombuffer(b"".join(raw), dtype=np.uint8), ends - [len(r) for r in raw], ends)

    preds = ["a", "\u00e9t\u00e9", "\u4e2d\u6587", "a", ""]
    truths = ["\u4e2d\u6587", "b", "a"]
    kinds = np.array([0, 0, 1, 0, 1, 0, 1, 0], dtype=np.uint8)
    rows = np.array([0, 1, 0, 2, 1, 3, 2, 4], dtype=np.int64)
    columns = (np.arange(5, dtype=np.float64) + 10.0, np.zeros(5, dtype=np.int64), np.full((5, 2), 0.5),
               np.ones((5, 2), dtype=bool))
    truth_columns = (np.arange(3, dtype=np.float64) + 20.0, np.ones((3, 2), dtype=bool), np.ones((3, 2), dtype=bool),
                     np.ones(3, dtype=bool))
    got = []
    for form in (list, spans_of):
        join = _native.Join(3600.0, 100, 2)
        accepted = join.apply(kinds, rows, form(preds), *columns, form(truths), *truth_columns)
        drained = join.drain()
        got.append((accepted.tolist(), {k: v.tolist() for k, v in drained.items()}, join.export()[0], len(join)))
    assert got[0] == got[1] and got[0][0] == [0, 1, 2, 4]  # the second "a" is a duplicate

    both = concat_ids(spans_of(preds[:2]), spans_of(preds[2:]))
    assert isinstance(both, TextSpans) and list(both) == preds
    assert concat_ids(spans_of(preds[:2]), preds[2:]) == preds
    outside = TextSpans(np.frombuffer(b"ab", dtype=np.uint8), np.array([0], dtype=np.int64),
                        np.array([5], dtype=np.int64))
    not_utf8 = TextSpans(np.frombuffer(b"o\xff", dtype=np.uint8), np.array([0], dtype=np.int64),
                         np.array([2], dtype=np.int64))
    one = (np.array([0], dtype=np.uint8), np.array([0], dtype=np.int64))
    for bad, message in ((outside, "outside the buffer"), (not_utf8, "not valid UTF-8")):
        join = _native.Join(3600.0, 100, 2)
        with pytest.raises(ValueError, match=message):
            join.apply(*one, bad, *(c[:1] for c in columns), [], *(c[:0] for c in truth_columns))
        assert len(join) == 0

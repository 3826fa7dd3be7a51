"""The state changelog's records (monitor/stream/changelog.py), without a broker.

A compacted topic is modelled as a dict (the newest value of each key; a tombstone removes it), which is
what a reader sees after compaction and what `read_partitions` builds before it. The oracles: an engine
that was never checkpointed (bit for bit after the same batches) and `run_replay` of the whole stream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitor.engine import native
from monitor.engine.engine import Engine
from monitor.replay import merge_by_time, run_replay
from monitor.stream import changelog
from monitor.stream.changelog import (
    KEY_META,
    ChangelogError,
    ChangeTracker,
    StateRecords,
    decode_rows,
    encode_rows,
    entry_dtype,
    entry_key,
    parse_entry_key,
    rebuild,
    track,
)
from tests.test_oracle import make_stream, to_raw
from tests.test_snapshot import assert_figures_equal, batches, oracle_config

ENGINES = [pytest.param(False, id="python"),
           pytest.param(True, id="native", marks=pytest.mark.skipif(not native.enabled(), reason="not built"))]


def apply(topic: dict[bytes, bytes], records: list[tuple[bytes, bytes | None]], meta: bytes) -> None:
    for key, value in [*records, (KEY_META, meta)]:
        if value is None:
            topic.pop(key, None)
        else:
            topic[key] = value


@pytest.mark.parametrize("use_native", ENGINES)
@pytest.mark.parametrize("join", [{}, {"ttl": "1h"}, {"ttl": "2h", "max_pending": 150},
                                  {"memory_entries": 5}, {"ttl": "2h", "max_pending": 150, "memory_entries": 7}])
def test_restored_from_the_changelog_continues_like_an_uninterrupted_run(join: dict, use_native: bool) -> None:
    """Checkpoint after every batch (only the changes), restore from the records alone every third batch:
    the figures equal an engine never checkpointed, bit for bit, with expiry, eviction and corrections
    (and, with a memory budget, with most entries spilled to the native join's store all along: the
    uninterrupted engine keeps everything in memory)."""
    config = oracle_config(**join)
    raw_p, raw_g = to_raw(*make_stream(seed=11, n=1500))
    items = list(merge_by_time(raw_p, raw_g, None))
    unbounded = {k: v for k, v in join.items() if k != "memory_entries"}
    whole = Engine(oracle_config(**unbounded), use_native=use_native)
    engine = Engine(config, use_native=use_native)
    track(engine)
    tracker = ChangeTracker()
    topic: dict[bytes, bytes] = {}
    written = 0
    for i, batch in enumerate(batches(items, 257)):
        whole.process(batch)
        engine.process(batch)
        changes = tracker.take(engine, {"offsets": {"predictions": i}})
        records = list(changes.records())
        written += len(records)
        apply(topic, records, changes.meta)
        tracker.committed(changes)
        if i % 3 == 2:
            restored = rebuild(config, None, dict(topic))
            assert restored is not None and restored.extra == {"offsets": {"predictions": i}}
            engine, tracker = restored.engine, restored.tracker
            assert sorted(engine.models["m"].join.export()[0]) == sorted(whole.models["m"].join.export()[0])
    assert_figures_equal(engine.evaluate(), whole.evaluate(), rel=0, abs_=0)
    state = engine.models["m"]
    # The topic holds exactly the live entries: every departure became a tombstone.
    entries = [k for k in topic if k.startswith(b"e")]
    assert len(entries) == len(state.join)
    assert written > len(topic)  # records were overwritten, not only added
    if "memory_entries" in join and use_native:
        budget = join["memory_entries"]
        assert state.join.memory_len <= budget < len(state.join)  # spilled, and the budget held
    if not unbounded:
        _, oracle = run_replay(config, raw_p, raw_g)
        assert_figures_equal(engine.evaluate(), oracle)


@pytest.mark.parametrize("use_native", ENGINES)
@pytest.mark.parametrize("join", [{"ttl": "2h", "max_pending": 150}, {"ttl": "2h", "memory_entries": 7}])
def test_checkpoints_written_while_the_engine_goes_on_and_failing_lose_nothing(join: dict, use_native: bool) -> None:
    """The worker takes a checkpoint, then consumes on while it is written; a write may fail, and the next
    checkpoint must then also carry what the failed one held. Here checkpoints stay in flight for 0-2
    batches (their entries encoded only then, as the worker's writer does), a third of them fail, and the
    next is taken only once one ends: the changelog ends up holding exactly the live entries, and the
    state rebuilt from it equals an engine never checkpointed, bit for bit. Without `failed` handing the
    entries back, entries changed by a failed checkpoint are missing from the changelog."""
    config = oracle_config(**join)
    unbounded = {k: v for k, v in join.items() if k != "memory_entries"}
    raw_p, raw_g = to_raw(*make_stream(seed=21, n=1500))
    items = list(merge_by_time(raw_p, raw_g, None))
    rng = np.random.default_rng(5)
    whole = Engine(oracle_config(**unbounded), use_native=use_native)
    engine = Engine(config, use_native=use_native)
    track(engine)
    tracker = ChangeTracker()
    topic: dict[bytes, bytes] = {}
    in_flight: tuple[changelog.Changes, int] | None = None
    failures = 0
    for i, batch in enumerate(batches(items, 97)):
        whole.process(batch)
        engine.process(batch)
        if in_flight is not None and in_flight[1] <= i:
            changes = in_flight[0]
            records = list(changes.records())  # encoded after more batches changed the table
            if rng.random() < 1 / 3:
                tracker.failed(engine, changes)
                failures += 1
            else:
                apply(topic, records, changes.meta)
                tracker.committed(changes)
            in_flight = None
        if in_flight is None:
            in_flight = (tracker.take(engine, {"offsets": {"predictions": i}}), i + int(rng.integers(0, 3)))
    assert in_flight is not None and failures >= 3
    apply(topic, list(in_flight[0].records()), in_flight[0].meta)
    tracker.committed(in_flight[0])
    final = tracker.take(engine, {})
    apply(topic, list(final.records()), final.meta)
    restored = rebuild(config, None, dict(topic))
    assert restored is not None
    assert_figures_equal(restored.engine.evaluate(), whole.evaluate(), rel=0, abs_=0)
    assert_figures_equal(engine.evaluate(), whole.evaluate(), rel=0, abs_=0)
    assert sorted(k for k in topic if k.startswith(b"e")) == sorted(
        entry_key("m", pid) for pid in restored.engine.models["m"].join.export()[0])
    assert len([k for k in topic if k.startswith(b"e")]) == len(engine.models["m"].join)


@pytest.mark.skipif(not native.enabled(), reason="native core not built")
@pytest.mark.parametrize("join", [{"ttl": "2h", "max_pending": 150},
                                  {"ttl": "2h", "max_pending": 150, "memory_entries": 7}])
def test_a_local_copy_plus_the_changelog_tail_continues_like_an_uninterrupted_run(join: dict, tmp_path, monkeypatch,
                                                                                  caplog) -> None:
    """A worker with a state dir feeds each committed checkpoint to a local copy of its changelog, seals it
    now and then, and on a restart reads only the changelog after the copy's mark into it. Restarted every
    third batch, alternately after a seal (a graceful stop) and without one (a kill -9, which loses the
    copy's unsealed records but not the runs it wrote since the seal, here a run per 2 KB of entries): the figures
    equal an uninterrupted engine bit for bit, with TTL expiry, the pending cap and a memory budget."""
    from monitor.stream import local_store

    monkeypatch.setattr(local_store, "RUN_BYTES", 2000)
    config = oracle_config(**join)
    raw_p, raw_g = to_raw(*make_stream(seed=12, n=1500))
    items = list(merge_by_time(raw_p, raw_g, None))
    whole = Engine(oracle_config(ttl="2h", max_pending=150), use_native=True)
    engine = Engine(config, use_native=True)
    track(engine)
    tracker = ChangeTracker()
    log: list[tuple[bytes, bytes | None]] = []  # the changelog before compaction, offset = index
    inputs = {"predictions": "p"}
    copy, start = local_store.open_copy(tmp_path, "state", 3, inputs, 0, 0, 86_400_000)
    assert start == 0
    # Open elsewhere (another worker on the same state dir): left alone, not wiped.
    assert local_store.open_copy(tmp_path, "state", 3, inputs, 0, 0, 86_400_000) is None
    tails = []
    for i, batch in enumerate(batches(items, 257)):
        whole.process(batch)
        engine.process(batch)
        changes = tracker.take(engine, {"offsets": {"predictions": i}, "partition": 3, "topics": inputs})
        changes.keep = True
        list(changes.parts(changelog.MAX_BATCH_BYTES))
        log.extend([*changes.records(), (KEY_META, changes.meta), (b"", b"")])  # the last: its commit marker
        tracker.committed(changes)
        copy.feed(changes, len(log))
        if i % 3 == 2:
            if i % 2:
                copy.seal()
            copy.close()
            copy, start = local_store.open_copy(tmp_path, "state", 3, inputs, 0, len(log), 86_400_000)
            tails.append(len(log) - start)
            for key, value in log[start:]:
                if key:
                    copy.store.put(key, value)
            copy.end = len(log)
            copy.store.finish()
            copy.seal()
            restored = rebuild(config, None, StateRecords(*copy.store.take_others()), copy.store)
            assert restored is not None and restored.extra["offsets"] == {"predictions": i}
            engine, tracker = restored.engine, restored.tracker
    assert_figures_equal(engine.evaluate(), whole.evaluate(), rel=0, abs_=0)
    # After a seal nothing was read again; after a crash, the records since the last seal (at most 60 s
    # old: here the first seal, or the one at the last restart) were.
    assert tails[1::2] == [0] * len(tails[1::2]) and all(t > 0 for t in tails[::2])
    # A copy sealed for other topics, at an offset beyond the changelog's end, or longer ago than the state
    # topic keeps tombstones is not used: it is wiped and read from the beginning.
    copy.close()
    for args, why in [((inputs | {"predictions": "q"}, 0, len(log), 86_400_000), "it holds"),
                      ((inputs, 0, len(log) - 1, 86_400_000), "outside the changelog"),
                      ((inputs, 0, len(log), 1), "delete.retention.ms")]:
        caplog.clear()
        with caplog.at_level("INFO", logger=local_store.__name__):
            reopened, start = local_store.open_copy(tmp_path, "state", 3, *args)
        assert start == 0 and reopened.store.mark is None and not reopened.store.staged, why
        assert why in caplog.text
        reopened.close()
        copy, start = local_store.open_copy(tmp_path, "state", 3, inputs, 0, len(log), 86_400_000)
        assert start == 0
        for key, value in log:
            if key:
                copy.store.put(key, value)
        copy.end = len(log)
        copy.seal()
        copy.close()


def test_a_checkpoint_writes_what_changed_not_the_whole_table() -> None:
    """With 3,000 predictions pending, a batch of 10 more writes about 10 entries and a few blocks."""
    config = oracle_config()
    raw_p, _ = to_raw(*make_stream(seed=3, n=3010))
    engine = Engine(config)
    track(engine)
    tracker = ChangeTracker()
    engine.process([("predictions", r) for r in raw_p[:3000]])
    tracker.committed(tracker.take(engine, {}))
    engine.process([("predictions", r) for r in raw_p[3000:]])
    changes = tracker.take(engine, {})
    records = list(changes.records())
    entries = [k for k, _ in records if k.startswith(b"e")]
    assert 1 <= len(entries) <= 10
    assert len(records) - len(entries) < 30
    assert max(len(v or b"") for _, v in records) < 64 << 10
    assert len(changes.meta) < 64 << 10


@pytest.mark.parametrize("n_labels", [1, 3, 8, 9, 130])
def test_entry_encoding_round_trips_every_column(n_labels: int) -> None:
    rng = np.random.default_rng(n_labels)
    n = 50
    cols = {
        "has_pred": rng.random(n) < 0.7, "pred_ts": rng.random(n) * 1e9, "pred_version": rng.integers(0, 9, n),
        "scores": rng.random((n, n_labels)), "predicted": rng.random((n, n_labels)) < 0.5,
        "has_truth": rng.random(n) < 0.5, "truth_ts": rng.random(n) * 1e9, "known": rng.random((n, n_labels)) < 0.5,
        "actual": rng.random((n, n_labels)) < 0.5, "full": rng.random(n) < 0.5,
        "seq": rng.integers(0, 1 << 40, n), "expires": rng.random(n) * 1e9,
    }
    raw, width = encode_rows(cols, n_labels)
    assert width == entry_dtype(n_labels).itemsize and len(raw) == n * width
    back = decode_rows(raw, n_labels)
    for name, col in cols.items():
        assert np.array_equal(back[name], col), name
    # Ids of any content, model names with any bytes: the key is length-prefixed, not separated.
    for model, pid in [("m", "a\x00b"), ("x\x00y", "é🙂"), ("m", "\ud800")]:
        assert parse_entry_key(entry_key(model, pid)) == (model, pid)


def test_a_state_topic_of_another_format_is_refused_with_the_reason() -> None:
    from monitor.stream.changelog import ChangelogError

    config = oracle_config()
    with pytest.raises(ChangelogError, match="no meta record"):
        rebuild(config, None, {b"0": b"an old whole-state checkpoint"})
    assert rebuild(config, None, {}) is None


@pytest.mark.skipif(not native.enabled(), reason="native core not built")
@pytest.mark.parametrize("memory_entries", [None, 20])
def test_both_joins_report_the_same_changes(memory_entries: int | None, tmp_path: Path) -> None:
    """The Python join is the oracle of the native one's changes, also with entries moving between the
    native join's memory and its store all the time, and with checkpoints that were not written (their
    entries marked changed again, as `ChangeTracker.failed` does)."""
    config = oracle_config(ttl="1h", max_pending=300)
    budgeted = config.model_copy(update={"join": config.join.model_copy(
        update={"memory_entries": memory_entries, "state_dir": str(tmp_path)})})
    raw_p, raw_g = to_raw(*make_stream(seed=5, n=1200))
    items = list(merge_by_time(raw_p, raw_g, None))
    engines = [Engine(config, use_native=False), Engine(budgeted, use_native=True)]
    for e in engines:
        track(e)
    for i, batch in enumerate(batches(items, 100)):
        got = []
        for e in engines:
            e.process(batch)
            e.flush()
            join = e.models["m"].join
            ids, cols, gone = join.changes()
            got.append((ids, {k: v.tolist() for k, v in cols.items()}, gone))
            join.clear_changes()
            if i % 3 == 2:
                join.mark_changed([*ids, *gone])
        assert got[0] == got[1]
        if memory_entries is not None:
            assert engines[1].models["m"].join.memory_len <= memory_entries + 1


@pytest.mark.parametrize("use_native", ENGINES)
def test_segmented_state_round_trips_through_the_changelog(use_native: bool) -> None:
    """Segment values, their blocks and the join's cohorts travel in the changelog like the rest."""
    from tests.test_segments import T0
    from tests.test_segments import config as segment_config
    from tests.test_segments import stream as segment_stream

    cfg = segment_config(max_values=3)
    preds, truths, _ = segment_stream(3000)
    whole = Engine(cfg, use_native=use_native)
    engine = Engine(cfg, use_native=use_native)
    track(engine)
    tracker = ChangeTracker()
    topic: dict[bytes, bytes] = {}
    for i, k in enumerate(range(0, len(preds), 400)):
        for e in (whole, engine):
            e.process_topics(preds[k:k + 400], truths[max(0, k - 800):max(0, k - 400)])
        changes = tracker.take(engine, {})
        apply(topic, list(changes.records()), changes.meta)
        tracker.committed(changes)
        if i % 2:
            restored = rebuild(cfg, None, dict(topic))
            assert restored is not None
            engine, tracker = restored.engine, restored.tracker
    at = T0 + 3000.0
    got, want = engine.evaluate(at), whole.evaluate(at)
    assert any(s.metric.name.startswith("mlmon_segment_") and s.value > 0 for s in want.samples)
    assert_figures_equal(got, want, rel=0, abs_=0)


def test_a_multiclass_model_with_hundreds_of_classes_writes_small_records() -> None:
    """400 classes make a window block of 1.5 MB (its confusion matrix), more than the broker's stock 1 MB
    message limit: it goes as fixed parts, only changed parts are written again, and a restore from the
    records equals an engine never checkpointed."""
    import orjson

    from monitor.config import MonitorConfig
    from monitor.stream.changelog import BLOCK_PART_BYTES

    classes = [f"c{i}" for i in range(400)]
    cfg = MonitorConfig.model_validate({"models": [{"name": "router", "task": "multiclass", "labels": classes}]})
    rng = np.random.default_rng(5)
    t0 = 1_700_000_000

    def events(start: int, n: int) -> tuple[list[bytes], list[bytes]]:
        preds, truths = [], []
        for i in range(start, start + n):
            scores = rng.dirichlet(np.ones(len(classes)))
            preds.append(orjson.dumps({"prediction_id": f"p{i}", "model": "router", "timestamp": t0 + i,
                                       "scores": dict(zip(classes, scores.round(6).tolist(), strict=True))}))
            truths.append(orjson.dumps({"prediction_id": f"p{i}", "model": "router", "timestamp": t0 + i + 5,
                                        "labels": [classes[int(rng.integers(len(classes)))]]}))
        return preds, truths

    whole = Engine(cfg)
    engine = Engine(cfg)
    assert engine.models["router"].layout.size * 8 > 1 << 20
    track(engine)
    tracker = ChangeTracker()
    topic: dict[bytes, bytes] = {}
    sizes = []
    for k in range(3):
        preds, truths = events(k * 40, 40)
        for e in (whole, engine):
            e.process_topics(preds, truths)
        changes = tracker.take(engine, {})
        records = list(changes.records())
        assert max(len(key) + len(v or b"") for key, v in records) < BLOCK_PART_BYTES + (4 << 10)
        sizes.append(len(records))
        apply(topic, records, changes.meta)
        tracker.committed(changes)
    assert any(key.startswith(b"p") for key in topic)
    # A batch rewrites the parts it changed, not every part of every block.
    parts_per_block = -(-engine.models["router"].layout.size * 8 // BLOCK_PART_BYTES)
    blocks = {key[1:18] for key in topic if key.startswith(b"p")}
    assert sizes[-1] < len(blocks) * parts_per_block + 100
    restored = rebuild(cfg, None, dict(topic))
    assert restored is not None
    # Same blocks, byte for byte, as the engine never checkpointed (its figures are functions of them;
    # evaluating 400 classes' 1.4M series twice would take most of a minute).
    whole.flush()
    got, want = restored.engine.models["router"].store, whole.models["router"].store
    for kind in ("fine", "coarse", "total"):
        mine, theirs = getattr(got, kind), getattr(want, kind)
        assert mine.keys() == theirs.keys()
        if kind == "total":
            assert all(mine[v].tobytes() == theirs[v].tobytes() for v in theirs)
        else:
            assert all(mine[v].keys() == theirs[v].keys() for v in theirs)
            assert all(mine[v][b].tobytes() == theirs[v][b].tobytes() for v in theirs for b in theirs[v])
    # A missing part is an error that says so, not a silently zero block.
    broken = dict(topic)
    broken.pop(next(key for key in broken if key.startswith(b"p")))
    with pytest.raises(ChangelogError, match="parts"):
        rebuild(cfg, None, broken)
    # Whatever the block holds (here incompressible noise in the cumulative block), no record passes
    # the part bound, and the restore gives back the same bytes.
    state = engine.models["router"]
    version = next(iter(state.store.total))
    state.store.total[version][:] = rng.random(state.layout.size)
    changes = tracker.take(engine, {})
    records = list(changes.records())
    assert max(len(key) + len(v or b"") for key, v in records) < BLOCK_PART_BYTES + (4 << 10)
    apply(topic, records, changes.meta)
    restored = rebuild(cfg, None, dict(topic))
    assert restored is not None
    assert restored.engine.models["router"].store.total[version].tobytes() == state.store.total[version].tobytes()


@pytest.mark.parametrize("use_native", ENGINES)
def test_state_records_group_entries_like_parsing_each_key(use_native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries of models whose names share a length or a prefix, interleaved with other records, with
    non-ASCII and surrogate ids: grouped per model in record order like parse_entry_key on each key (with
    the native grouping and with its numpy fallback)."""
    if not use_native:
        monkeypatch.setattr(changelog, "_native", None)
    rng = np.random.default_rng(3)
    records: dict[bytes, bytes] = {KEY_META: b"meta", b"b" + bytes(17) + b"ab": b"block"}
    for i in range(3000):
        model = ["ab", "cd", "abc", "m\u00e9", "a"][int(rng.integers(5))]
        pid = [f"id-{i}", f"\u00fc-{i}", f"\ud800-{i}"][i % 3]
        records[entry_key(model, pid)] = rng.bytes(int(rng.integers(1, 9)))
    expected: dict[str, tuple[list[str], list[bytes]]] = {}
    for key, value in records.items():
        if key.startswith(b"e"):
            model, pid = parse_entry_key(key)
            expected.setdefault(model, ([], []))[0].append(pid)
            expected[model][1].append(value)
    state = StateRecords.of(records)
    mask = state.entry_mask()
    assert mask.sum() == 3000
    got = state.entries(np.flatnonzero(mask))
    assert {m: (list(ids), rows.tobytes(), lengths.tolist()) for m, (ids, rows, lengths) in got.items()} == {
        m: (ids, b"".join(values), [len(v) for v in values]) for m, (ids, values) in expected.items()}
    assert dict(state.items(np.flatnonzero(~mask))) == {k: v for k, v in records.items() if not k.startswith(b"e")}


def _columns(records: list[tuple[bytes, bytes | None]]) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Records as the raw reader hands them over: one buffer, key and value offsets (-1: a tombstone)."""
    data, ks, ke, vs, ve = bytearray(), [], [], [], []
    for key, value in records:
        ks.append(len(data))
        data += key
        ke.append(len(data))
        if value is None:
            vs.append(-1)
            ve.append(-1)
        else:
            vs.append(len(data))
            data += value
            ve.append(len(data))
    return bytes(data), *(np.array(x, dtype=np.int64) for x in (ks, ke, vs, ve))


@pytest.mark.skipif(not native.enabled(), reason="native core not built")
@pytest.mark.parametrize("window_bytes", [3000, 40_000, 1 << 26])
@pytest.mark.parametrize("join", [{"ttl": "1h", "memory_entries": 7}, {"ttl": "2h", "max_pending": 150,
                                                                      "memory_entries": 40}, {"ttl": "1h"}])
def test_a_staged_restore_equals_the_restore_in_memory(join: dict, window_bytes: int, tmp_path) -> None:
    """The changelog as a reader sees it before compaction (every record in order: entries written,
    rewritten and tombstoned) read through a staging store, with runs of one record, of a few dozen and
    one run: the rebuilt engine holds the same entries as the one rebuilt from the newest values in
    memory, keeps at most its budget of them in memory, and goes on to the figures of an engine never
    checkpointed, bit for bit."""
    config = oracle_config(**join)
    raw_p, raw_g = to_raw(*make_stream(seed=17, n=1500))
    parts = list(batches(list(merge_by_time(raw_p, raw_g, None)), 211))
    whole = Engine(oracle_config(**{k: v for k, v in join.items() if k != "memory_entries"}), use_native=True)
    engine = Engine(config, use_native=True)
    track(engine)
    tracker = ChangeTracker()
    log: list[tuple[bytes, bytes | None]] = []
    topic: dict[bytes, bytes] = {}
    half = len(parts) // 2
    for i, batch in enumerate(parts[:half]):
        whole.process(batch)
        engine.process(batch)
        changes = tracker.take(engine, {"offsets": {"predictions": i}})
        records = [(k, None if v is None else bytes(v)) for k, v in changes.records()]
        log += [*records, (KEY_META, changes.meta)]
        apply(topic, records, changes.meta)
        tracker.committed(changes)
    assert sum(v is None for k, v in log if k.startswith(b"e")) > 0  # tombstones to honour
    staged = native._native.Staged(str(tmp_path), window_bytes)
    for start in range(0, len(log), 500):
        staged.add(*_columns(log[start:start + 500]))
    staged.finish()
    assert staged.records == len(log)
    assert any(p.name.startswith("mlmon-restore-") for p in tmp_path.iterdir())
    from_staged = rebuild(config, None, StateRecords(*staged.take_others()), staged)
    in_memory = rebuild(config, None, dict(topic))
    assert from_staged is not None and in_memory is not None
    a, b = from_staged.engine.models["m"].join, in_memory.engine.models["m"].join
    ids_a, cols_a = a.export()
    ids_b, cols_b = b.export()
    order_a, order_b = np.argsort(ids_a), np.argsort(ids_b)
    assert [ids_a[i] for i in order_a] == [ids_b[i] for i in order_b]
    for name in cols_b:
        np.testing.assert_array_equal(cols_a[name][order_a], cols_b[name][order_b], err_msg=name)
    if "memory_entries" in join:
        assert a.memory_len == b.memory_len <= join["memory_entries"] < len(a)
    assert_figures_equal(from_staged.engine.evaluate(), in_memory.engine.evaluate(), rel=0, abs_=0)
    engine = from_staged.engine
    for batch in parts[half:]:
        whole.process(batch)
        engine.process(batch)
    assert_figures_equal(engine.evaluate(), whole.evaluate(), rel=0, abs_=0)


@pytest.mark.skipif(not native.enabled(), reason="native core not built")
def test_a_staged_restore_refuses_entries_of_another_label_count(tmp_path) -> None:
    config = oracle_config(memory_entries=5)
    engine = Engine(config, use_native=True)
    meta = changelog.snapshot.dump(engine, extra={}, entries=False)
    staged = native._native.Staged(str(tmp_path))
    staged.add(*_columns([(KEY_META, meta), (entry_key("m", "p1"), b"\0" * 7)]))
    staged.finish()
    with pytest.raises(ChangelogError, match=r"model 'm': a join entry is not .* bytes long"):
        rebuild(config, None, StateRecords(*staged.take_others()), staged)
    with pytest.raises(ValueError, match="without its model name"):
        native._native.Staged(str(tmp_path)).add(*_columns([(b"e\x00\x09m", b"x")]))

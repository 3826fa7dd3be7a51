"""Checkpoints written by earlier code still load: tests/data/snapshot_v1 was written by the code before the
model and join counters became value types (tests/data/snapshot_v1/make.py). The oracle is a fresh engine
fed the same events, which never goes through a snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from monitor import conventions as c
from monitor.config import MonitorConfig
from monitor.engine import native, snapshot
from monitor.engine.engine import Engine
from monitor.engine.merge import merged_engine
from tests.test_snapshot import assert_figures_equal

DATA = Path(__file__).resolve().parent / "data" / "snapshot_v1"
CUT, BATCH = 900, 97  # as in make.py
PATHS = [False, True] if native.enabled() else [False]


def fixture() -> tuple[MonitorConfig, list[tuple[str, bytes]], bytes]:
    config = MonitorConfig.model_validate(json.loads((DATA / "config.json").read_text()))
    lines = (DATA / "events.jsonl").read_bytes().splitlines()
    items = [(e["topic"], e["raw"].encode()) for e in map(orjson.loads, lines)]
    return config, items, (DATA / "snapshot.bin").read_bytes()


def feed(engine: Engine, items: list[tuple[str, bytes]]) -> Engine:
    for k in range(0, len(items), BATCH):
        engine.process(items[k:k + BATCH])
    return engine


@pytest.mark.parametrize("use_native", PATHS)
def test_a_checkpoint_of_the_previous_code_restores_every_figure(use_native: bool) -> None:
    config, items, data = fixture()
    restored, extra = snapshot.restore(config, None, data, use_native)
    assert extra == {"offsets": {"predictions": CUT}}
    fresh = feed(Engine(config, use_native=use_native), items[:CUT])
    assert_figures_equal(restored.evaluate(), fresh.evaluate(), rel=0, abs_=0)
    # The stream exercises the counters (so a field read back as zero would show).
    figs = restored.evaluate()
    for metric in (c.JOIN_EVICTED_TOTAL, c.JOIN_EXPIRED_TOTAL, c.CORRECTIONS_TOTAL, c.DUPLICATES_TOTAL,
                   c.PENDING_JOINS, c.IGNORED_SCORES_TOTAL, c.LATE_EVENTS_TOTAL, c.PREDICTION_LATENCY_SECONDS,
                   c.GROUND_TRUTH_DELAY_SECONDS, c.INVALID_EVENTS_TOTAL):
        name = metric.name
        total = sum(figs.by_name(name).values()) + sum(sum(h.counts) for h in figs.histograms if h.metric.name == name)
        assert total > 0, name
    for model in ("m", "k"):
        a, b = restored.models[model], fresh.models[model]
        assert sorted(a.join.export()[0]) == sorted(b.join.export()[0]) and len(a.join) > 0
    # The restored engine continues like the uninterrupted one, and merges like it.
    feed(restored, items[CUT:])
    feed(fresh, items[CUT:])
    assert_figures_equal(restored.evaluate(), fresh.evaluate(), rel=0, abs_=0)
    assert_figures_equal(merged_engine(config, {}, [restored]).evaluate(), fresh.evaluate(), rel=0, abs_=0)


def test_a_checkpoint_written_now_reads_like_the_previous_one() -> None:
    """Same meta keys and npz members as the fixture: older workers can still read newer checkpoints."""
    config, items, data = fixture()
    old_meta, old_arrays = snapshot.open_parts(data)
    new_meta, new_arrays = snapshot.open_parts(snapshot.dump(feed(Engine(config), items[:CUT]),
                                                             extra={"offsets": {"predictions": CUT}}))
    assert sorted(new_arrays) == sorted(old_arrays)
    assert [sorted(m) for m in new_meta["models"]] == [sorted(m) for m in old_meta["models"]]
    assert [sorted(m["join"]) for m in new_meta["models"]] == [sorted(m["join"]) for m in old_meta["models"]]
    for old, new in zip(old_meta["models"], new_meta["models"], strict=True):
        for key in set(old) - {"join"}:
            assert new[key] == old[key], key
        assert {k: v for k, v in new["join"].items() if k != "ids"} == \
            {k: v for k, v in old["join"].items() if k != "ids"}


def test_a_checkpoint_with_more_versions_than_the_config_admits_is_refused() -> None:
    config, _, data = fixture()
    fewer = config.model_copy(update={"models": [config.models[0].model_copy(update={"max_versions": 1}),
                                                 config.models[1]]})
    with pytest.raises(snapshot.SnapshotError):
        snapshot.load(fewer, None, data)

"""Properties of the statistics: additivity across engines (workers) and independence of topic order."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Engine
from tests.conftest import small_config
from tests.events import BASE, ground_truth, prediction

CFG = small_config(thresholds={"b": 0.3})
AT = BASE + 4 * 3600

score = st.floats(0, 1, allow_nan=False)
event = st.one_of(
    st.tuples(st.just(PREDICTIONS), st.integers(0, 40), st.integers(0, 3 * 3600),
              st.tuples(score, score, score), st.sampled_from(["v1", "v2"])),
    st.tuples(st.just(GROUND_TRUTH), st.integers(0, 40), st.integers(0, 3 * 3600),
              st.lists(st.sampled_from("abc"), unique=True),
              st.one_of(st.none(), st.dictionaries(st.sampled_from("abc"), st.integers(0, 1), min_size=1))),
)


def raw(ev: tuple) -> tuple[str, bytes]:
    if ev[0] == PREDICTIONS:
        _, i, dt, scores, version = ev
        return PREDICTIONS, prediction(f"id{i}", BASE + dt, dict(zip("abc", scores, strict=True)), version=version)
    _, i, dt, full, partial = ev
    return GROUND_TRUTH, ground_truth(f"id{i}", BASE + dt, partial if partial is not None else full)


def state(engine: Engine) -> dict[tuple[str, int | str], np.ndarray]:
    """Window sums and cumulative totals per version name (version indexes differ between engines)."""
    st_ = engine.models["m"]
    out = {}
    for name, v in st_.versions.items():
        for w, vec in st_.store.window_sums(v, CFG.windows, AT).items():
            out[(name, w)] = vec
        out[(name, "total")] = st_.store.total.get(v, 0.0)  # a version only a duplicate named has none
    return out


def assert_same(a: dict, b: dict) -> None:
    keys = set(a) | set(b)
    for k in keys:
        va = a.get(k, 0.0)
        vb = b.get(k, 0.0)
        np.testing.assert_allclose(va, vb, rtol=1e-9, atol=1e-9, err_msg=str(k))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event, max_size=120), st.randoms(use_true_random=False))
def test_split_stream_statistics_sum_to_whole(events: list[tuple], rnd) -> None:
    """Two engines that each see the events of half the ids (two workers, partitioned by key) hold
    statistics that add up to one engine's that saw everything."""
    items = [raw(e) for e in events]
    whole = Engine(CFG, {"m": None})
    whole.process(items)
    parts = [Engine(CFG, {"m": None}), Engine(CFG, {"m": None})]
    for p in (0, 1):
        parts[p].process([it for it, e in zip(items, events, strict=True) if e[1] % 2 == p])
    a, b = state(parts[0]), state(parts[1])
    summed = {k: a.get(k, 0.0) + b.get(k, 0.0) for k in set(a) | set(b)}
    assert_same(summed, state(whole))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event, max_size=120), st.randoms(use_true_random=False), st.integers(1, 50))
def test_interleaving_of_topics_does_not_change_result(events: list[tuple], rnd, batch: int) -> None:
    """Any interleaving of the two topics (each keeping its own order), in any batch size, gives the same
    statistics as predictions-then-ground-truth."""
    items = [raw(e) for e in events]
    preds = [it for it in items if it[0] == PREDICTIONS]
    truths = [it for it in items if it[0] == GROUND_TRUTH]
    first = Engine(CFG, {"m": None})
    first.process(preds + truths)
    merged, i, j = [], 0, 0
    while i < len(preds) or j < len(truths):
        if j >= len(truths) or (i < len(preds) and rnd.random() < 0.5):
            merged.append(preds[i])
            i += 1
        else:
            merged.append(truths[j])
            j += 1
    other = Engine(CFG, {"m": None})
    for k in range(0, len(merged), batch):
        other.process(merged[k:k + batch])
    assert_same(state(first), state(other))
    f1 = first.evaluate(AT).by_name("mlmon_label_f1")
    f2 = other.evaluate(AT).by_name("mlmon_label_f1")
    assert f1.keys() == f2.keys()
    for k in f1:
        assert abs(f1[k] - f2[k]) < 1e-12

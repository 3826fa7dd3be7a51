"""The native block deltas (`monitor._native.Cells`) against the numpy computation they replace.

`ModelState._apply` in pure Python lists every contribution of a flush and sums them with `np.bincount`;
the native core adds them in place. Both must hand the store the same blocks and the same deltas to the
last bit (compared as bytes), and count the same late events, for every kind of model:
multilabel with a reference (score and feature bins, label pairs, threshold histograms for some labels),
segments (a row's copies in the blocks of its segment values), multiclass (confusion), binary without
a reference; with scores on bin edges, missing features, corrections (sign -1), partial ground truth,
and minutes the store no longer keeps.

`BlockStore.add_sparse`, which both engines' deltas go through, is checked against the plain definition
of what the blocks must hold, summed row by row in Python.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import MonitorConfig, parse_config
from monitor.engine import native
from monitor.engine.model_state import AcceptedPredictions, ModelState
from monitor.engine.windows import BlockStore
from monitor.reference import Reference, categorical_binning, numeric_binning

pytestmark = pytest.mark.skipif(native._native is None, reason="monitor._native is not built")

CONFIG = parse_config({
    "windows": ["5m", "1h", "6h", "1d", "3d"],
    "models": [
        {"name": "m", "labels": ["a", "b", "c", "d"], "threshold": 0.5, "detail_labels": ["a", "c"],
         "features": {"numeric": ["n", "n2"], "categorical": ["c"]},
         "segments": [{"name": "country", "feature": "country"}, {"name": "plan", "feature": "plan"}]},
        {"name": "k", "task": "multiclass", "labels": ["x", "y", "z"], "features": {"numeric": ["n"]}},
        {"name": "bin", "task": "binary", "labels": ["f"], "features": {"categorical": ["c"]}},
    ],
})
GRID = np.round(np.linspace(0, 1, 21), 2)  # scores on the reference's bin edges and calibration bin edges
T0 = 1_764_547_200.0


def reference(cfg: Any, rng: np.random.Generator) -> Reference:
    n_labels = len(cfg.labels)
    features = {f: numeric_binning(rng.choice(GRID * 10, 300)) for f in cfg.features.numeric}
    features.update({f: categorical_binning(rng.choice(["en", "de", "fr", "it"], 300).tolist())
                     for f in cfg.features.categorical})
    k = min(cfg.cooccurrence_max_labels, n_labels)
    return Reference(model=cfg.name, n=300, labels=list(cfg.labels),
                     scores=[numeric_binning(rng.choice(GRID, 300)) for _ in range(n_labels)],
                     features=features, positive_rate=np.full(n_labels, 0.5), pair_labels=k,
                     pair_counts=np.ones(k * (k - 1) // 2 + 1) if k >= 2 else np.zeros(0))


def columns(rng: np.random.Generator, n: int, n_labels: int, cohorts: int, span: float) -> dict[str, np.ndarray]:
    scores = np.where(rng.random((n, n_labels)) < 0.5, rng.choice(GRID, (n, n_labels)), rng.random((n, n_labels)))
    return {"version": rng.integers(0, cohorts, n).astype(np.int64),
            "ts": T0 + np.sort(rng.random(n)) * span + rng.choice([0.0, 0.999, 59.999999], n),
            "scores": scores, "predicted": rng.random((n, n_labels)) < 0.4}


def flush_inputs(state: ModelState, rng: np.random.Generator, sizes: tuple[int, int, int],
                 cohorts: int) -> tuple[list[AcceptedPredictions], dict[str, np.ndarray]]:
    nl, n_num, n_cat = state.n_labels, state.n_numeric, len(state.features) - state.n_numeric
    n_pred, n_unpend, n_join = sizes
    p = columns(rng, n_pred, nl, cohorts, 600.0)
    numeric = np.where(rng.random((n_pred, n_num)) < 0.2, np.nan, rng.choice(GRID * 10, (n_pred, n_num)))
    ref = state.reference
    bins = [ref.features[f].size if ref else 1 for f in state.features[n_num:]]
    categorical = np.stack([rng.integers(-1, b, n_pred) for b in bins], axis=1) if n_cat \
        else np.zeros((n_pred, 0), dtype=np.int64)
    # Two chunks, as when several batches are applied before a flush.
    cut = n_pred // 2
    preds = [AcceptedPredictions(p["version"][s], p["ts"][s], p["scores"][s], p["predicted"][s], numeric[s],
                                 categorical[s].astype(np.int64)) for s in (slice(0, cut), slice(cut, None))]
    u = columns(rng, n_unpend, nl, cohorts, 3 * 86400.0)  # pending removals land at their prediction's minute
    j = columns(rng, n_join, nl, cohorts, 600.0)
    full = rng.random(n_join) < 0.7
    known = full[:, None] | (rng.random((n_join, nl)) < 0.5)
    out = {"unpend_version": u["version"], "unpend_ts": u["ts"] - 3 * 86400.0, "unpend_scores": u["scores"],
           "unpend_predicted": u["predicted"],
           "join_version": j["version"], "join_obs": j["ts"], "join_scores": j["scores"],
           "join_predicted": j["predicted"], "join_known": known, "join_actual": rng.random((n_join, nl)) < 0.5,
           "join_full": full, "join_sign": rng.choice([1.0, -1.0], n_join)}
    return preds, out


def recorded_apply(state: ModelState, preds: list[AcceptedPredictions], out: dict[str, np.ndarray]) -> list:
    """What `_apply` hands the store, with each block's delta as a dense row (the numpy engine's add_many
    passes its nonzero cells, the native core its touched cells, to add_sparse)."""
    calls: list = []

    def record(v: np.ndarray, m: np.ndarray, ptr: np.ndarray, cells: np.ndarray, values: np.ndarray,
               add_rows: object = None) -> None:
        dense = np.zeros((v.size, state.layout.size))
        dense[np.repeat(np.arange(v.size), np.diff(ptr)), cells] = values
        calls.append((v.tolist(), m.tolist(), dense.tobytes()))

    state.store.add_sparse = record  # type: ignore[method-assign,assignment]
    table = None
    if state.cfg.segments:
        state.cohort_keys(np.zeros(0, dtype=np.int64))  # what `take` hands over
        table = state._cohort_keys
    state._apply(out, AcceptedPredictions.concat(list(preds)), table)
    return [calls, dict(state.tallies.late)]


def states(config: MonitorConfig, index: int, seed: int) -> tuple[ModelState, ModelState, int]:
    cfg = config.models[index]
    ref = None if cfg.name == "bin" else reference(cfg, np.random.default_rng(seed))
    pair = [ModelState(config, cfg, ref, use_native=flag) for flag in (True, False)]
    cohorts = 1
    if cfg.segments:
        # The same (version, country, plan) cohorts in both, registered in the same order.
        for key in [(0, 0, 0), (0, 1, 0), (1, 0, 1), (0, 2, 1), (1, 1, 1)]:
            for state in pair:
                state.cohort_index(key)
        cohorts = 5
    return pair[0], pair[1], cohorts


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2), st.integers(0, 2**32), st.tuples(st.integers(0, 300), st.integers(0, 300),
                                                            st.integers(0, 300)),
       st.sampled_from([None, 0, 600, 4000]))
def test_native_deltas_equal_the_numpy_deltas(index: int, seed: int, sizes: tuple[int, int, int],
                                              newest_after: int | None) -> None:
    fast, slow, cohorts = states(CONFIG, index, seed)
    assert fast._cells is not None and slow._cells is None
    if newest_after is not None:  # the store has moved on: some contributions are late
        for state in (fast, slow):
            state.store.advance(int(T0 // 60) + newest_after)
    preds, out = flush_inputs(fast, np.random.default_rng(seed), sizes, cohorts)
    if not preds[0].ts.size and not preds[1].ts.size:
        preds = []
    got, want = recorded_apply(fast, preds, out), recorded_apply(slow, preds, out)
    assert got == want


@pytest.mark.parametrize("index", [0, 1, 2])
def test_a_large_flush_filled_on_several_threads_equals_the_numpy_deltas(
        index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush of at least 32,768 contributions has its blocks filled on several threads (each with its
    own accumulators): still the numpy deltas to the last bit, whatever the number of threads."""
    for threads in ("1", "3"):
        monkeypatch.setenv("MLMON_APPLY_THREADS", threads)
        fast, slow, cohorts = states(CONFIG, index, 11)
        preds, out = flush_inputs(fast, np.random.default_rng(11), (30_000, 12_000, 20_000), cohorts)
        assert recorded_apply(fast, preds, out) == recorded_apply(slow, preds, out), f"{threads} threads"


def plain_store(size: int, spans: tuple[int, int], calls: list[tuple[int, list[tuple[int, int, np.ndarray]]]]
                ) -> tuple[dict, dict, dict]:
    """The definition: per call, a total (a kept hourly block) gets the sum of its rows taken in order, a
    kept minute's block its row; retention as BlockStore.in_retention with the newest minute before the call."""
    fine_span, coarse_span = spans
    fine: dict = {}
    coarse: dict = {}
    total: dict = {}
    newest = -(1 << 62)
    for advance_to, rows in calls:
        if advance_to > newest:
            newest = advance_to
            for store, floor in ((fine, newest - fine_span), (coarse, newest // 60 - coarse_span)):
                for per in store.values():
                    for b in [b for b in per if b <= floor]:
                        del per[b]
        sums: dict = {}
        for v, m, delta in rows:
            ahead = m > newest
            key: tuple[str, int, int] = ("total", v, 0)
            sums[key] = sums.get(key, np.zeros(size)) + delta
            if fine_span > 1 and (m > newest - fine_span or ahead):
                per = fine.setdefault(v, {})
                per[m] = per.get(m, np.zeros(size)) + delta
            if coarse_span > 1 and (m // 60 > newest // 60 - coarse_span or ahead):
                key = ("coarse", v, m // 60)
                sums[key] = sums.get(key, np.zeros(size)) + delta
        for key, value in sums.items():
            if key[0] == "total":
                total[key[1]] = total.get(key[1], np.zeros(size)) + value
            else:
                per = coarse.setdefault(key[1], {})
                per[key[2]] = per.get(key[2], np.zeros(size)) + value
    return fine, coarse, total


def as_bytes(blocks: dict) -> dict:
    return {k: as_bytes(v) if isinstance(v, dict) else v.tobytes() for k, v in blocks.items() if
            not isinstance(v, dict) or v}


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 6), st.sampled_from(["dense", "numpy", "native"]))
def test_add_sparse_holds_the_sums_of_its_rows(seed: int, n_calls: int, how: str) -> None:
    """add_many (dense rows), add_sparse with numpy, and add_sparse with the native core's add_rows."""
    rng = np.random.default_rng(seed)
    size = 7
    store = BlockStore(size, [300, 3600, 6 * 3600, 3 * 86400])  # fine: 361 minutes, coarse: 73 hours
    spans = (store.fine_span, store.coarse_span)
    start = 29_409_120
    calls = []
    for k in range(n_calls):
        newest = start + k * int(rng.integers(0, 400))
        store.advance(newest)
        # Distinct (version, minute) pairs sorted, minutes less than fine_span apart among the kept ones,
        # some ahead of the newest minute, some older than every window (late).
        minutes = np.unique(np.concatenate([newest - rng.integers(0, 360, 12), newest - rng.integers(361, 6000, 6),
                                            newest + rng.integers(1, 3, int(rng.integers(0, 2)))]))
        versions = np.sort(rng.integers(0, 2, minutes.size))
        order = np.lexsort((minutes, versions))
        versions, minutes = versions[order], minutes[order]
        keep = np.unique(versions * (1 << 32) + minutes, return_index=True)[1]
        versions, minutes = versions[keep], minutes[keep]
        shape = (minutes.size, size)
        magnitude = 10.0 ** rng.integers(-8, 12, shape)
        deltas = np.where(rng.random(shape) < 0.4, rng.standard_normal(shape) * magnitude, 0.0)
        if how == "dense":
            store.add_many(versions, minutes, deltas)
        else:
            rows, cells = np.nonzero(deltas)
            store.add_sparse(versions, minutes, np.searchsorted(rows, np.arange(minutes.size + 1)), cells,
                             deltas[rows, cells], native._native.add_rows if how == "native" else None)
        calls.append((newest, [(int(v), int(m), deltas[i])
                               for i, (v, m) in enumerate(zip(versions, minutes, strict=True))]))
    fine, coarse, total = plain_store(size, spans, calls)
    assert as_bytes(store.fine) == as_bytes(fine)
    assert as_bytes(store.coarse) == as_bytes(coarse)
    assert as_bytes(store.total) == as_bytes(total)

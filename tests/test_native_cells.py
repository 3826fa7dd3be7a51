"""The native block deltas (`monitor._native.Cells`) against the numpy computation they replace.

`ModelState._apply` in pure Python lists every contribution of a flush and sums them with `np.bincount`;
the native core adds them in place. Both must hand `BlockStore.add_many` the same blocks and the same
deltas to the last bit (compared as bytes), and count the same late events, for every kind of model:
multilabel with a reference (score and feature bins, label pairs, threshold histograms for some labels),
segments (a row's copies in the blocks of its segment values), multiclass (confusion), binary without
a reference; with scores on bin edges, missing features, corrections (sign -1), partial ground truth,
and minutes the store no longer keeps.
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
    calls: list = []
    state.store.add_many = lambda v, m, d: calls.append((v.tolist(), m.tolist(), d.shape, d.tobytes()))  # type: ignore[method-assign]
    state._preds = list(preds)
    state._apply(out)
    return [calls, dict(state.late)]


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

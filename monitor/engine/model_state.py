"""Per-model state: the join table, the window blocks, and the batch that turns events into block deltas.

Join decisions happen per event (they depend on order); the statistics they produce are queued and
turned into block deltas once per batch with a single `np.bincount`, so the per-event cost is a few
dict operations and list appends.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from monitor.config import ModelConfig, MonitorConfig
from monitor.conventions import GROUND_TRUTH_DELAY_BUCKETS, LATENCY_BUCKETS, SIDE_PREDICTION
from monitor.engine.join import JoinTable, Pred, Truth
from monitor.engine.metrics.calibration import score_bins
from monitor.engine.windows import (
    S_CARD_ACTUAL,
    S_CARD_ACTUAL_N,
    S_CARD_PRED,
    S_JOINED,
    S_PENDING,
    S_PREDICTIONS,
    S_SUBSET_N,
    S_SUBSET_OK,
    SCORE_BINS,
    BlockStore,
    Layout,
    fine_bucket,
)
from monitor.events import GroundTruth, Prediction
from monitor.reference import Reference

# The version label of predictions from versions beyond `max_versions` (see ModelConfig).
OTHER_VERSION = "_other"


class Histogram:
    """Cumulative-at-export histogram counts (the Prometheus shape) kept as a numpy vector."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = np.asarray(buckets)
        self.counts = np.zeros(len(buckets) + 1)
        self._edges = [float(b) for b in buckets]  # bisect on a list: no numpy call per observation
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self._edges, value)] += 1
        self.sum += value


class ModelState:
    def __init__(self, config: MonitorConfig, cfg: ModelConfig, reference: Reference | None) -> None:
        self.cfg = cfg
        self.reference = reference
        self.n_labels = len(cfg.labels)
        self.multiclass = cfg.task == "multiclass"
        self.features = cfg.features.all
        self.n_numeric = len(cfg.features.numeric)
        feature_bins = [reference.features[f].size for f in self.features] if reference else []
        self.pair_labels = reference.pair_labels if reference else 0
        self.layout = Layout(
            labels=self.n_labels,
            feature_bins=feature_bins if reference else [0] * len(self.features),
            pair_labels=self.pair_labels,
            classes=self.n_labels if self.multiclass else 0,
        )
        self.store = BlockStore(self.layout.size, config.windows)
        self.join = JoinTable(config.join.ttl, config.join.max_pending, self)
        self.versions: dict[str, int] = {}
        self.version_names: list[str] = []
        self.predictions_total: list[int] = []
        self.latency: list[Histogram] = []
        self.delay = Histogram(GROUND_TRUTH_DELAY_BUCKETS)
        self.ground_truth_total = 0
        self.ignored_scores = 0
        self.late = {"predictions": 0, "ground_truth": 0}
        self.last_event: dict[str, float] = {}
        self._preds: list[tuple[Pred, dict[str, Any] | None]] = []
        self._unpend: list[Pred] = []
        self._joins: list[tuple[Pred, Truth, int]] = []
        self._pairs = np.triu_indices(self.pair_labels, 1) if self.pair_labels >= 2 else None

    # --- events in ---------------------------------------------------------------------------------
    def version_index(self, name: str) -> int:
        idx = self.versions.get(name)
        if idx is None and len(self.versions) >= self.cfg.max_versions and name != OTHER_VERSION:
            return self.version_index(OTHER_VERSION)
        if idx is None:
            idx = self.versions[name] = len(self.version_names)
            self.version_names.append(name)
            self.predictions_total.append(0)
            self.latency.append(Histogram(LATENCY_BUCKETS))
        return idx

    def add_prediction(self, p: Prediction) -> None:
        entry = self.join.entries.get(p.prediction_id)
        if entry is not None and entry.pred is not None and entry.expires >= max(self.join.watermark, p.ts):
            self.join.duplicates[SIDE_PREDICTION] += 1
            return
        v = self.version_index(p.version)
        self.ignored_scores += p.ignored_scores
        self.last_event["predictions"] = max(self.last_event.get("predictions", p.ts), p.ts)
        self.predictions_total[v] += 1
        if p.latency_s is not None:
            self.latency[v].observe(p.latency_s)
        self.join.add_prediction(p, v)

    def add_ground_truth(self, g: GroundTruth) -> None:
        self.ground_truth_total += 1
        self.last_event["ground_truth"] = max(self.last_event.get("ground_truth", g.ts), g.ts)
        self.join.add_ground_truth(g)

    # --- JoinSink ----------------------------------------------------------------------------------
    def on_prediction(self, pred: Pred, features: dict[str, Any] | None) -> None:
        self._preds.append((pred, features))

    def on_unpend(self, pred: Pred) -> None:
        self._unpend.append(pred)

    def on_join(self, pred: Pred, truth: Truth, sign: int) -> None:
        self._joins.append((pred, truth, sign))

    def on_first_join(self, pred: Pred, truth: Truth) -> None:
        self.delay.observe(max(0.0, truth.ts - pred.ts))

    # --- batch -> block deltas ---------------------------------------------------------------------
    def flush(self) -> None:
        """Expire old joins, then apply everything queued since the last flush to the blocks."""
        self.join.expire()
        if self.join.watermark > float("-inf"):
            self.store.advance(int(self.join.watermark // 60))
        if self._preds or self._unpend or self._joins:
            self._apply()

    def _apply(self) -> None:
        idx: list[np.ndarray] = []
        w: list[np.ndarray] = []
        groups: dict[tuple[int, int], int] = {}
        late = {"predictions": 0, "ground_truth": 0}

        def group_ids(versions: np.ndarray, minutes: np.ndarray) -> np.ndarray:
            # Few distinct (version, minute) pairs per batch: map the unique ones, not every event.
            keys, inverse = np.unique(versions.astype(np.int64) << 32 | minutes, return_inverse=True)
            ids = np.fromiter((groups.setdefault((int(k >> 32), int(k & 0xFFFFFFFF)), len(groups)) for k in keys),
                              dtype=np.int64, count=len(keys))
            return ids[inverse.ravel()]

        L = self.layout
        size = L.size
        if self._preds:
            preds = [p for p, _ in self._preds]
            g = group_ids(np.array([p.version for p in preds]), fine_bucket(np.array([p.ts for p in preds])))
            self._prediction_cells(preds, [f for _, f in self._preds], g * size, idx, w)
            late["predictions"] += self._count_late(np.array([p.ts for p in preds]))
        if self._unpend:
            preds = self._unpend
            g = group_ids(np.array([p.version for p in preds]), fine_bucket(np.array([p.ts for p in preds])))
            self._pending_cells(preds, g * size, -1.0, idx, w)
        if self._joins:
            obs = np.array([max(p.ts, t.ts) for p, t, _ in self._joins])
            g = group_ids(np.array([p.version for p, _, _ in self._joins]), fine_bucket(obs))
            self._join_cells(g * size, idx, w)
            late["ground_truth"] += self._count_late(obs)
        self._preds, self._unpend, self._joins = [], [], []
        if not idx:
            return
        deltas = np.bincount(np.concatenate(idx), weights=np.concatenate(w), minlength=len(groups) * size)
        deltas = deltas.reshape(len(groups), size)
        for (version, minute), gi in groups.items():
            self.store.add(version, minute, deltas[gi])
        for topic, n in late.items():
            self.late[topic] += n

    def _count_late(self, ts: np.ndarray) -> int:
        m = fine_bucket(ts)
        st = self.store
        newest = np.maximum(st.newest_fine, m)
        kept = (m > newest - st.fine_span) | (m // 60 > newest // 60 - st.coarse_span)
        return int(m.size - np.count_nonzero(kept))

    def _prediction_cells(self, preds: list[Pred], features: list[dict[str, Any] | None],
                          base: np.ndarray, idx: list[np.ndarray], w: list[np.ndarray]) -> None:
        L = self.layout
        n, nl = len(preds), self.n_labels
        S = np.stack([p.scores for p in preds])
        P = np.stack([p.predicted for p in preds])
        sc = L.offsets["scalars"]
        ones = np.ones(n)
        idx += [base + sc + S_PREDICTIONS, base + sc + S_CARD_PRED]
        w += [ones, P.sum(axis=1).astype(np.float64)]
        rows, cols = np.nonzero(P)
        idx.append(base[rows] + L.offsets["pred_pos"] + cols)
        w.append(np.ones(rows.size))
        self._pending_cells(preds, base, 1.0, idx, w, S, P)
        ref = self.reference
        if ref is not None:
            bins = np.empty((n, nl), dtype=np.int64)
            for j in range(nl):
                bins[:, j] = ref.scores[j].bin_numeric(S[:, j])
            idx.append((base[:, None] + L.offsets["score_bins"] + np.arange(nl) * SCORE_BINS + bins).ravel())
            w.append(np.ones(n * nl))
        self._feature_cells(features, base, idx, w)
        if self._pairs is not None:
            k = self.pair_labels
            Pk = P[:, :k]
            pair_hits = Pk[:, self._pairs[0]] & Pk[:, self._pairs[1]]
            r, c = np.nonzero(pair_hits)
            few = np.nonzero(Pk.sum(axis=1) < 2)[0]
            off = L.offsets["pairs"]
            idx += [base[r] + off + c, base[few] + off + pair_hits.shape[1]]
            w += [np.ones(r.size), np.ones(few.size)]

    def _feature_cells(self, features: list[dict[str, Any] | None], base: np.ndarray,
                       idx: list[np.ndarray], w: list[np.ndarray]) -> None:
        if not self.features:
            return
        L = self.layout
        ref = self.reference
        missing_off = L.offsets["feat_missing"]
        bins_off = L.offsets["feat_bins"]
        for fi, name in enumerate(self.features):
            values = [f.get(name) if f else None for f in features]
            present = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
            miss = np.nonzero(~present)[0]
            idx.append(base[miss] + missing_off + fi)
            w.append(np.ones(miss.size))
            if ref is None:
                continue
            binning = ref.features[name]
            rows = np.nonzero(present)[0]
            if fi < self.n_numeric:
                b = binning.bin_numeric(np.array([values[i] for i in rows], dtype=np.float64))
            else:
                b = np.fromiter((binning.bin_category(values[i]) for i in rows), dtype=np.int64, count=rows.size)
            idx.append(base[rows] + bins_off + L.feature_offsets[fi] + b)
            w.append(np.ones(rows.size))

    def _pending_cells(self, preds: list[Pred], base: np.ndarray, sign: float, idx: list[np.ndarray],
                       w: list[np.ndarray], S: np.ndarray | None = None, P: np.ndarray | None = None) -> None:
        L = self.layout
        if S is None or P is None:
            S = np.stack([p.scores for p in preds])
            P = np.stack([p.predicted for p in preds])
        n, nl = S.shape
        cb = score_bins(S)
        # pending[label, bin, k]: k = 0/1 count/score sum if predicted positive, 2/3 if negative.
        cell = (base[:, None] + L.offsets["pending"] + np.arange(nl) * (10 * 4) + cb * 4 + (~P) * 2).ravel()
        idx += [cell, cell + 1, base + L.offsets["scalars"] + S_PENDING]
        w += [np.full(n * nl, sign), sign * S.ravel(), np.full(n, sign)]

    def _join_cells(self, base: np.ndarray, idx: list[np.ndarray], w: list[np.ndarray]) -> None:
        L = self.layout
        joins = self._joins
        S = np.stack([p.scores for p, _, _ in joins])
        P = np.stack([p.predicted for p, _, _ in joins])
        K = np.stack([t.known for _, t, _ in joins])
        A = np.stack([t.actual for _, t, _ in joins])
        full = np.fromiter((t.full for _, t, _ in joins), dtype=bool, count=len(joins))
        sign = np.fromiter((s for _, _, s in joins), dtype=np.float64, count=len(joins))
        nl = self.n_labels
        code = (~A).astype(np.int64) + (~P).astype(np.int64) * 2  # tp 0, fp 1, fn 2, tn 3
        r, c = np.nonzero(K)
        idx.append(base[r] + L.offsets["outcomes"] + c * 4 + code[r, c])
        w.append(sign[r])
        cal = base[r] + L.offsets["calib"] + c * 30 + score_bins(S[r, c]) * 3
        idx += [cal, cal + 1, cal + 2]
        w += [sign[r], sign[r] * S[r, c], sign[r] * A[r, c]]
        sc = base + L.offsets["scalars"]
        exact = np.all(P == A, axis=1)
        f = np.nonzero(full)[0]
        idx += [sc + S_JOINED, sc[f] + S_SUBSET_N, sc[f] + S_SUBSET_OK, sc[f] + S_CARD_ACTUAL, sc[f] + S_CARD_ACTUAL_N]
        w += [sign, sign[f], sign[f] * exact[f], sign[f] * A[f].sum(axis=1), sign[f]]
        if self.multiclass and f.size:
            conf = base[f] + L.offsets["confusion"] + np.argmax(A[f], axis=1) * nl + np.argmax(P[f], axis=1)
            idx.append(conf)
            w.append(sign[f])

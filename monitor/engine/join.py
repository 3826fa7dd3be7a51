"""The symmetric prediction / ground-truth join with TTL expiry and corrections (pure Python).

Either side may arrive first. A prediction stays joinable for `ttl` after its timestamp, and after it is
joined it stays for the rest of that time so a later ground truth can correct it: the old outcome is
reverted and the new one applied, never doubled. Which ground truth wins does not depend on arrival
order: the one with the later timestamp, ties going to the later arrival (an identical re-send is a
duplicate). Expiry runs on event time (the newest timestamp seen), so a replay and a live worker expire
the same events.

This is the reference implementation of the join interface in docs/native.md; `monitor._native.Join`
is the same table in Rust, tested against this one. The table keeps no statistics: what the steps
produce (predictions leaving the pending set, join outcomes with their sign, ground-truth delays) is
collected and handed out as columns by `drain()`.
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Any

import numpy as np

from monitor.conventions import SIDE_GROUND_TRUTH, SIDE_JOINED, SIDE_PREDICTION

# The checkpoint columns of a join table and their types, in the order docs/native.md lists them.
EXPORT_COLUMNS: dict[str, type] = {
    "has_pred": np.bool_, "pred_ts": np.float64, "pred_version": np.int64, "scores": np.float64,
    "predicted": np.bool_, "has_truth": np.bool_, "truth_ts": np.float64, "known": np.bool_, "actual": np.bool_,
    "full": np.bool_, "seq": np.int64, "expires": np.float64,
}
# The columns with a value per label (n, labels); the others have one per entry.
MATRIX_COLUMNS = frozenset({"scores", "predicted", "known", "actual"})


def empty_join_columns(n_labels: int) -> dict[str, np.ndarray]:
    """The export columns of a table without entries."""
    return {name: np.zeros((0, n_labels) if name in MATRIX_COLUMNS else 0, dtype=dtype)
            for name, dtype in EXPORT_COLUMNS.items()}


class Pred:
    """What a pending or joined prediction keeps."""

    __slots__ = ("predicted", "scores", "ts", "version")

    def __init__(self, ts: float, version: int, scores: np.ndarray, predicted: np.ndarray) -> None:
        self.ts = ts
        self.version = version
        self.scores = scores
        self.predicted = predicted


class Truth:
    __slots__ = ("actual", "full", "known", "seq", "ts")

    def __init__(self, ts: float, known: np.ndarray, actual: np.ndarray, full: bool, seq: int) -> None:
        self.ts = ts
        self.known = known
        self.actual = actual
        self.full = full
        self.seq = seq

    def supersedes(self, other: Truth) -> bool:
        return (self.ts, self.seq) > (other.ts, other.seq)

    def same_as(self, other: Truth) -> bool:
        return bool(np.array_equal(self.known, other.known) and np.array_equal(self.actual, other.actual))


class Entry:
    __slots__ = ("expires", "pred", "truth")

    def __init__(self) -> None:
        self.pred: Pred | None = None
        self.truth: Truth | None = None
        self.expires = 0.0


class JoinTable:
    def __init__(self, ttl: float, max_entries: int, n_labels: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.n_labels = n_labels
        self.entries: dict[str, Entry] = {}
        self._heap: list[tuple[float, str]] = []
        self.seq = 0
        self.watermark = float("-inf")
        self.pending = {SIDE_PREDICTION: 0, SIDE_GROUND_TRUTH: 0}
        self.expired: Counter[str] = Counter()
        # Removed early by the max_entries cap, by what the entry held (prediction / ground_truth: still
        # waiting, so also counted in `expired`; joined: its outcome stays, later corrections miss it).
        self.evicted: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()  # by side
        self.corrections = 0
        self.joined = 0
        self._unpend: list[Pred] = []
        self._joins: list[tuple[Pred, Truth, float]] = []
        self._delays: list[float] = []
        # Ids whose entry changed or left since `clear_changes`, when tracking (the worker's changelog).
        self._dirty: set[str] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    # --- steps -------------------------------------------------------------------------------------------
    def apply(self, kinds: np.ndarray, rows: np.ndarray, pred_ids: list[str], pred_ts: np.ndarray,
              pred_version: np.ndarray, scores: np.ndarray, predicted: np.ndarray, gt_ids: list[str],
              gt_ts: np.ndarray, known: np.ndarray, actual: np.ndarray, full: np.ndarray) -> np.ndarray:
        """Apply the steps in order (kind 0: prediction row, 1: ground-truth row); returns the accepted
        (non-duplicate) prediction rows in step order."""
        accepted: list[int] = []
        for kind, r in zip(kinds.tolist(), rows.tolist(), strict=True):
            if kind == 0:
                if self._add_prediction(pred_ids[r], float(pred_ts[r]), int(pred_version[r]), scores[r].copy(),
                                        predicted[r].copy()):
                    accepted.append(r)
            else:
                self._add_ground_truth(gt_ids[r], float(gt_ts[r]), known[r].copy(), actual[r].copy(),
                                       bool(full[r]))
        return np.array(accepted, dtype=np.int64)

    def _add_prediction(self, pid: str, ts: float, version: int, scores: np.ndarray, predicted: np.ndarray) -> bool:
        entry = self.entries.get(pid)
        # A re-sent prediction still inside its TTL is a duplicate, whatever the watermark does next.
        if entry is not None and entry.pred is not None and entry.expires >= max(self.watermark, ts):
            self.duplicates[SIDE_PREDICTION] += 1
            return False
        self.watermark = max(self.watermark, ts)
        entry = self._live(pid)
        if entry is None:
            entry = self.entries[pid] = Entry()
        pred = entry.pred = Pred(ts, version, scores, predicted)
        if entry.truth is None:
            self.pending[SIDE_PREDICTION] += 1
        else:
            self.pending[SIDE_GROUND_TRUTH] -= 1
            self.joined += 1
            self._unpend.append(pred)  # the statistics counted it as pending; it never was
            self._first_join(pred, entry.truth)
        self._schedule(pid, entry, ts + self.ttl)
        self._enforce_cap()
        return True

    def _add_ground_truth(self, pid: str, ts: float, known: np.ndarray, actual: np.ndarray, full: bool) -> None:
        self.watermark = max(self.watermark, ts)
        self.seq += 1
        truth = Truth(ts, known, actual, full, self.seq)
        entry = self._live(pid)
        if entry is None:
            entry = self.entries[pid] = Entry()
            entry.truth = truth
            self.pending[SIDE_GROUND_TRUTH] += 1
            self._schedule(pid, entry, ts + self.ttl)
            self._enforce_cap()
            return
        old = entry.truth
        # A re-sent identical truth is a duplicate; an older one is stale. A newer one with the same labels
        # still replaces, since it moves the observation time (order-independent either way).
        if old is not None and (not truth.supersedes(old) or (truth.ts == old.ts and truth.same_as(old))):
            self.duplicates[SIDE_GROUND_TRUTH] += 1
            return
        entry.truth = truth
        if self._dirty is not None:
            self._dirty.add(pid)
        pred = entry.pred
        if pred is None:  # replacing a ground truth that still waits for its prediction
            self._schedule(pid, entry, ts + self.ttl)
            return
        if old is None:
            self.pending[SIDE_PREDICTION] -= 1
            self.joined += 1
            self._unpend.append(pred)
            self._first_join(pred, truth)
        else:
            self.corrections += 1
            self._joins.append((pred, old, -1.0))
            self._joins.append((pred, truth, 1.0))

    def _first_join(self, pred: Pred, truth: Truth) -> None:
        self._delays.append(max(0.0, truth.ts - pred.ts))
        self._joins.append((pred, truth, 1.0))

    # --- expiry --------------------------------------------------------------------------------------------
    def _schedule(self, pid: str, entry: Entry, expires: float) -> None:
        if self._dirty is not None:
            self._dirty.add(pid)
        entry.expires = expires
        heapq.heappush(self._heap, (expires, pid))
        # Rescheduling leaves stale items behind; a flood of re-sent ground truth for one id would grow the
        # heap without bound while `entries` stays small. Rebuilding at 2x keeps it O(entries), amortised.
        if len(self._heap) > 2 * len(self.entries) + 1024:
            self._heap = [(e.expires, k) for k, e in self.entries.items()]
            heapq.heapify(self._heap)

    def _live(self, pid: str) -> Entry | None:
        """The entry for `pid` unless its TTL passed at the current watermark (then it expires now, so the
        outcome never depends on when the last batch-end expiry ran)."""
        entry = self.entries.get(pid)
        if entry is not None and entry.expires < self.watermark:
            self._drop(pid, entry)
            return None
        return entry

    def expire(self) -> None:
        """Drop everything whose TTL has passed at the current watermark."""
        while self._heap and self._heap[0][0] < self.watermark:
            self._pop()

    def _enforce_cap(self) -> None:
        while len(self.entries) > self.max_entries and self._heap:
            entry = self._pop()
            if entry is not None:
                side = SIDE_JOINED if entry.pred is not None and entry.truth is not None else \
                    SIDE_PREDICTION if entry.pred is not None else SIDE_GROUND_TRUTH
                self.evicted[side] += 1

    def _pop(self) -> Entry | None:
        expires, pid = heapq.heappop(self._heap)
        entry = self.entries.get(pid)
        if entry is None or entry.expires != expires:
            return None  # rescheduled or already gone
        self._drop(pid, entry)
        return entry

    def _drop(self, pid: str, entry: Entry) -> None:
        if self._dirty is not None:
            self._dirty.add(pid)
        del self.entries[pid]
        if entry.pred is None:
            self.pending[SIDE_GROUND_TRUTH] -= 1
            self.expired[SIDE_GROUND_TRUTH] += 1
        elif entry.truth is None:
            self.pending[SIDE_PREDICTION] -= 1
            self.expired[SIDE_PREDICTION] += 1
            self._unpend.append(entry.pred)
        # A joined entry just leaves: its outcome stays counted, later corrections start a new wait.

    # --- output ------------------------------------------------------------------------------------------
    def drain(self) -> dict[str, np.ndarray]:
        """What the steps and expiries produced since the last drain, as columns (docs/native.md)."""
        L = self.n_labels
        unpend, joins = self._unpend, self._joins
        preds = [p for p, _, _ in joins]
        truths = [t for _, t, _ in joins]
        out = {
            "unpend_version": np.array([p.version for p in unpend], dtype=np.int64),
            "unpend_ts": np.array([p.ts for p in unpend], dtype=np.float64),
            "unpend_scores": _rows([p.scores for p in unpend], L, np.float64),
            "unpend_predicted": _rows([p.predicted for p in unpend], L, bool),
            "join_version": np.array([p.version for p in preds], dtype=np.int64),
            "join_obs": np.array([max(p.ts, t.ts) for p, t in zip(preds, truths, strict=True)], dtype=np.float64),
            "join_scores": _rows([p.scores for p in preds], L, np.float64),
            "join_predicted": _rows([p.predicted for p in preds], L, bool),
            "join_known": _rows([t.known for t in truths], L, bool),
            "join_actual": _rows([t.actual for t in truths], L, bool),
            "join_full": np.array([t.full for t in truths], dtype=bool),
            "join_sign": np.array([s for _, _, s in joins], dtype=np.float64),
            "delay": np.array(self._delays, dtype=np.float64),
        }
        self._unpend, self._joins, self._delays = [], [], []
        return out

    # --- checkpoints ---------------------------------------------------------------------------------------
    def track_changes(self, on: bool) -> None:
        """Start (True) or stop recording which entries change; starting clears the record."""
        self._dirty = set() if on else None

    def changes(self) -> tuple[list[str], dict[str, np.ndarray], list[str]]:
        """What changed since tracking started or `clear_changes`: the live entries as `export` columns
        (ids sorted) and the ids that left the table."""
        ids = sorted(self._dirty or ())
        live = [pid for pid in ids if pid in self.entries]
        gone = [pid for pid in ids if pid not in self.entries]
        return live, self._columns([self.entries[pid] for pid in live]), gone

    @property
    def changed(self) -> int:
        """How many ids changed (or left) since tracking started or `clear_changes`."""
        return len(self._dirty or ())

    def clear_changes(self) -> None:
        if self._dirty is not None:
            self._dirty.clear()

    def mark_changed(self, ids: list[str]) -> None:
        """Record `ids` as changed again: a checkpoint that took them was not written."""
        if self._dirty is not None:
            self._dirty.update(ids)

    def export(self) -> tuple[list[str], dict[str, np.ndarray]]:
        """Every entry as checkpoint columns (one row per entry) and the ids in the same order."""
        return list(self.entries), self._columns(list(self.entries.values()))

    def _columns(self, entries: list[Entry]) -> dict[str, np.ndarray]:
        n, L = len(entries), self.n_labels
        # Column by column with comprehensions: a per-entry loop of numpy row stores costs 3x more.
        preds = [e.pred for e in entries]
        truths = [e.truth for e in entries]
        has_pred = np.fromiter((p is not None for p in preds), dtype=bool, count=n)
        has_truth = np.fromiter((t is not None for t in truths), dtype=bool, count=n)
        ps = [p for p in preds if p is not None]
        ts = [t for t in truths if t is not None]

        def column(values: list[Any], rows: np.ndarray, dtype: Any, width: int | None = None) -> np.ndarray:
            out = np.zeros((n, width) if width else n, dtype=dtype)
            if values:
                out[rows] = np.stack(values) if width else np.array(values, dtype=dtype)
            return out

        return {
            "has_pred": has_pred,
            "pred_ts": column([p.ts for p in ps], has_pred, np.float64),
            "pred_version": column([p.version for p in ps], has_pred, np.int64),
            "scores": column([p.scores for p in ps], has_pred, np.float64, L),
            "predicted": column([p.predicted for p in ps], has_pred, bool, L),
            "has_truth": has_truth,
            "truth_ts": column([t.ts for t in ts], has_truth, np.float64),
            "known": column([t.known for t in ts], has_truth, bool, L),
            "actual": column([t.actual for t in ts], has_truth, bool, L),
            "full": column([t.full for t in ts], has_truth, bool),
            "seq": column([t.seq for t in ts], has_truth, np.int64),
            "expires": np.fromiter((e.expires for e in entries), dtype=np.float64, count=n),
        }

    def restore(self, ids: list[str], col: dict[str, np.ndarray], seq: int, watermark: float,
                pending: dict[str, int], expired: dict[str, int], evicted: dict[str, int],
                duplicates: dict[str, int], corrections: int, joined: int) -> None:
        """Replace the whole table with checkpoint columns (shapes and EXPORT_COLUMNS types already checked
        by the caller)."""
        # Column -> Python objects once, so the per-entry loop below is attribute stores only.
        has_pred, pred_ts, pred_version = col["has_pred"].tolist(), col["pred_ts"].tolist(), \
            col["pred_version"].tolist()
        has_truth, truth_ts, full, seqs = col["has_truth"].tolist(), col["truth_ts"].tolist(), \
            col["full"].tolist(), col["seq"].tolist()
        expires = col["expires"].tolist()
        scores, predicted, known, actual = col["scores"], col["predicted"], col["known"], col["actual"]
        entries: dict[str, Entry] = {}
        for i, pid in enumerate(ids):
            entry = Entry()
            entry.expires = expires[i]
            if has_pred[i]:
                entry.pred = Pred(pred_ts[i], pred_version[i], scores[i], predicted[i])
            if has_truth[i]:
                entry.truth = Truth(truth_ts[i], known[i], actual[i], full[i], seqs[i])
            entries[pid] = entry
        self.entries = entries
        # One heap item per live entry is what the table would hold after skipping stale items; a sorted
        # list is a valid heap.
        self._heap = sorted((e.expires, pid) for pid, e in entries.items())
        self.seq = seq
        self.watermark = watermark
        self.pending = {SIDE_PREDICTION: 0, SIDE_GROUND_TRUTH: 0, **pending}
        self.expired = Counter(expired)
        self.evicted = Counter(evicted)
        self.duplicates = Counter(duplicates)
        self.corrections = corrections
        self.joined = joined
        self.clear_changes()  # a restored table is what its checkpoint holds


def _rows(values: list[np.ndarray], width: int, dtype: Any) -> np.ndarray:
    return np.stack(values).astype(dtype, copy=False) if values else np.zeros((0, width), dtype=dtype)

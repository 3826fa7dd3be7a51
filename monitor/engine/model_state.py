"""Per-model state: the join table, the window blocks, and the batch that turns events into block deltas.

Join decisions happen per event (they depend on order) inside the join table, native or Python
(docs/native.md). Everything they produce comes out as columns, and is turned into block deltas once
per batch: with a single `np.bincount` in the pure-Python engine (the specification), or by the native
core's `Cells`, which gives the same deltas to the bit as sparse rows. No statistic is computed per
event in Python.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from monitor.config import ModelConfig, MonitorConfig
from monitor.conventions import (
    CALIBRATION_BINS,
    LABEL_PAIRS_EXPORTED,
    SEGMENT_MISSING,
    SEGMENT_OTHER,
    THRESHOLD_BINS,
)
from monitor.engine import native
from monitor.engine.columns import (
    FeatureSpec,
    GroundTruthColumns,
    PredictionColumns,
    from_ground_truth,
    from_predictions,
)
from monitor.engine.join import EXPORT_COLUMNS, MATRIX_COLUMNS, JoinTable, empty_join_columns
from monitor.engine.metrics import drift
from monitor.engine.metrics.calibration import score_bins
from monitor.engine.tallies import JoinCounters, ModelTallies, StateError, TalliesError
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
from monitor.reference import Reference
from monitor.spans import TextSpans

if TYPE_CHECKING:
    from monitor._native import Cells

# The version label of predictions from versions beyond `max_versions` (see ModelConfig).
OTHER_VERSION = "_other"
# Segment values have window blocks of their own in the same store as versions, under keys far above any
# version index (max_versions <= 1000): key = SEGMENT_KEY_BASE + segment * SEGMENT_KEY_STRIDE + value. So
# the store, snapshots and the changelog carry them without knowing what they are.
SEGMENT_KEY_BASE = 1 << 30
SEGMENT_KEY_STRIDE = 1 << 16


def segment_key(segment: int, value: int) -> int:
    return SEGMENT_KEY_BASE + segment * SEGMENT_KEY_STRIDE + value


# The attributes `ModelState.dump`, `load` and `add` carry or knowingly rebuild, and those of the join and
# the block store. Tests compare them with the live objects, so a field added to the state cannot be left
# out of checkpoints, the changelog or the merged view without a test failing.
MODEL_STATE_FIELDS = frozenset({
    "cfg", "reference", "n_labels", "multiclass", "features", "n_numeric", "feature_spec", "pair_labels",
    "layout", "store", "join", "versions", "version_names", "tallies", "_preds", "_pairs", "no_predictions",
    "no_ground_truth", "exported_pairs", "advised", "advised_slot",
    "segment_values", "_segment_index", "cohorts", "_cohort_rows",
    "_cohort_keys",  # derived from _cohort_rows (a cache)
    "_cells",  # derived from the layout and the reference (the native cell computation), rebuilt on load
})
# The Python join's fields; the native join exports the same state through the same export()/restore(),
# its counters as JoinCounters fields.
JOIN_FIELDS = frozenset({
    "ttl", "max_entries", "n_labels", "entries", "_heap", "seq", "watermark", "_unpend", "_joins", "_delays",
    "_dirty",  # change tracking for the worker's changelog (monitor.stream.changelog), not state
}) | {f.name for f in fields(JoinCounters)}
# `_rings` is derived: the fine blocks it holds are the same arrays as in `fine` (a load refills it).
STORE_FIELDS = frozenset({"size", "fine_span", "coarse_span", "fine", "coarse", "total", "newest_fine", "_rings"})


class Taken(NamedTuple):
    """What `ModelState.take` hands to `ModelState.fold`: the join's output since the last take."""

    minute: int | None  # the watermark's minute bucket (None before any event time)
    out: dict[str, np.ndarray]  # the join's drained columns
    preds: list[AcceptedPredictions]  # accepted predictions queued since the last take
    cohort_table: np.ndarray | None  # store keys per cohort (with segments and the native core)


class AcceptedPredictions(NamedTuple):
    """The rows of accepted predictions that the statistics need, queued until the next flush."""

    version: np.ndarray
    ts: np.ndarray
    scores: np.ndarray
    predicted: np.ndarray
    numeric: np.ndarray
    categorical: np.ndarray

    @staticmethod
    def concat(queued: list[AcceptedPredictions]) -> AcceptedPredictions | None:
        """The queued chunks as one (None when nothing is queued)."""
        if not queued:
            return None
        return AcceptedPredictions(*(np.concatenate(col) for col in zip(*queued, strict=True)))


def make_join(config: MonitorConfig, n_labels: int, use_native: bool) -> JoinTable:
    j = config.join
    if use_native:
        # The memory budget is the native core's: the pure-Python table (the specification) keeps all.
        return native._native.Join(j.ttl, j.max_pending, n_labels, j.memory_entries,  # type: ignore[return-value]
                                   j.state_dir)
    return JoinTable(j.ttl, j.max_pending, n_labels)


def make_cells(layout: Layout, reference: Reference | None, advised_slot: np.ndarray, multiclass: bool,
               numeric: list[str], categorical: list[str]) -> Cells:
    """The native twin of `ModelState._apply`'s cell computation for this layout."""
    edges = None
    if reference is not None:
        edges = ([b.edges.tolist() for b in reference.scores if b.edges is not None],
                 [e.tolist() for f in numeric if (e := reference.features[f].edges) is not None])
    return native._native.Cells(  # type: ignore[no-any-return]
        layout.size, dict(layout.offsets),
        [S_PREDICTIONS, S_JOINED, S_SUBSET_N, S_SUBSET_OK, S_CARD_ACTUAL, S_CARD_ACTUAL_N, S_CARD_PRED, S_PENDING],
        (CALIBRATION_BINS, THRESHOLD_BINS, SCORE_BINS), layout.feature_offsets.tolist(), len(numeric),
        len(categorical), layout.pair_labels if layout.pair_labels >= 2 else 0, multiclass, advised_slot.tolist(),
        *(edges or (None, None)))


class ModelState:
    def __init__(self, config: MonitorConfig, cfg: ModelConfig, reference: Reference | None,
                 use_native: bool = False) -> None:
        self.cfg = cfg
        self.reference = reference
        self.n_labels = len(cfg.labels)
        self.multiclass = cfg.task == "multiclass"
        self.features = cfg.features.all
        self.n_numeric = len(cfg.features.numeric)
        self.feature_spec = FeatureSpec(tuple(cfg.features.numeric), tuple(cfg.features.categorical), reference)
        feature_bins = [reference.features[f].size for f in self.features] if reference else []
        self.pair_labels = reference.pair_labels if reference else 0
        # Labels with threshold-advice histograms: the detail labels (all by default), so a model with
        # hundreds of labels can bound the memory they take. advised_slot[label] = row, or -1.
        detail = set(cfg.detail_labels) if cfg.detail_labels is not None else set(cfg.labels)
        self.advised = [] if cfg.task == "multiclass" else [i for i, x in enumerate(cfg.labels) if x in detail]
        self.advised_slot = np.full(self.n_labels, -1, dtype=np.int64)
        self.advised_slot[self.advised] = np.arange(len(self.advised))
        self.layout = Layout(
            labels=self.n_labels,
            feature_bins=feature_bins if reference else [0] * len(self.features),
            pair_labels=self.pair_labels,
            classes=self.n_labels if self.multiclass else 0,
            advised=len(self.advised),
        )
        self.store = BlockStore(self.layout.size, config.windows)
        self.join = make_join(config, self.n_labels, use_native)
        # The native core computes the same block deltas as `_apply` below (bit for bit, cells.rs). An
        # extension built before `Cells` existed still decodes and joins; the numpy code then makes the deltas
        # (tests/test_native_cells.py fails on such a build).
        self._cells = (make_cells(self.layout, reference, self.advised_slot, self.multiclass,
                                  list(cfg.features.numeric), list(cfg.features.categorical))
                       if use_native and hasattr(native._native, "Cells") else None)
        self.versions: dict[str, int] = {}
        self.version_names: list[str] = []
        # Counters and histograms outside the window blocks, per version index where they are per version
        # (monitor.engine.tallies: how they add across partitions, dump and load).
        self.tallies = ModelTallies.zero()
        # Segments: per segment the values admitted so far (index = position), max_values regular ones
        # plus "_other" and "_missing". A prediction's "cohort" is its (version, value per segment): the
        # join keeps the cohort index where it would keep the version, so a joined ground truth counts
        # towards the prediction's version and segment values alike. Without segments cohort = version.
        self.segment_values: list[list[str]] = [[] for _ in cfg.segments]
        self._segment_index: list[dict[str, int]] = [{} for _ in cfg.segments]
        self.cohorts: dict[tuple[int, ...], int] = {}
        self._cohort_rows: list[tuple[int, ...]] = []  # per cohort: its store keys (version, segment values)
        self._cohort_keys = np.zeros((0, 1 + len(cfg.segments)), dtype=np.int64)
        self._preds: list[AcceptedPredictions] = []
        self._pairs = np.triu_indices(self.pair_labels, 1) if self.pair_labels >= 2 else None
        # The label pairs with additive pair counts (mlmon_label_pair_predicted), fixed by the reference.
        self.exported_pairs = (drift.exported_pairs(reference.pair_counts, self.pair_labels, LABEL_PAIRS_EXPORTED)
                               if reference is not None else [])
        # What `apply` uses for a topic with no events in the batch.
        self.no_predictions = from_predictions([], self.n_labels, self.feature_spec)
        self.no_ground_truth = from_ground_truth([], self.n_labels)

    # --- events in ---------------------------------------------------------------------------------
    def version_index(self, name: str) -> int:
        idx = self.versions.get(name)
        if idx is None and len(self.versions) >= self.cfg.max_versions and name != OTHER_VERSION:
            return self.version_index(OTHER_VERSION)
        if idx is None:
            idx = self.versions[name] = len(self.version_names)
            self.version_names.append(name)
            self.tallies.add_version()
        return idx

    def segment_value_index(self, segment: int, value: str) -> int:
        """The index of a segment value, admitting it while the segment has room (else "_other")."""
        idx = self._segment_index[segment].get(value)
        if idx is not None:
            return idx
        reserved = (SEGMENT_OTHER, SEGMENT_MISSING)
        regular = sum(1 for x in self.segment_values[segment] if x not in reserved)
        if value not in reserved and regular >= self.cfg.segments[segment].max_values:
            return self.segment_value_index(segment, SEGMENT_OTHER)
        idx = self._segment_index[segment][value] = len(self.segment_values[segment])
        self.segment_values[segment].append(value)
        return idx

    def cohort_index(self, key: tuple[int, ...]) -> int:
        """The index of a (version, value index per segment) combination, registered on first use."""
        idx = self.cohorts.get(key)
        if idx is None:
            idx = self.cohorts[key] = len(self._cohort_rows)
            self._cohort_rows.append((key[0], *(segment_key(s, v) for s, v in enumerate(key[1:]))))
        return idx

    def cohort_keys(self, cohorts: np.ndarray) -> np.ndarray:
        """Store keys [n, 1 + segments] of cohort indexes: the version, then each segment value's key."""
        if not self.cfg.segments:
            return cohorts.astype(np.int64)[:, None]
        if len(self._cohort_keys) != len(self._cohort_rows):
            self._cohort_keys = np.array(self._cohort_rows, dtype=np.int64).reshape(len(self._cohort_rows), -1)
        return self._cohort_keys[cohorts]

    # --- the state as a value ------------------------------------------------------------------------
    def add(self, other: ModelState) -> None:
        """Add `other`'s statistics (the same model, both flushed): versions and segment values by name,
        window blocks, counters and the join's counters. Join entries are not added: this is for a view
        over several partitions' states (monitor.engine.merge), which holds none and takes no events."""
        if other.layout.size != self.layout.size:
            raise StateError(f"model {self.cfg.name!r}: states with different statistics layouts cannot be added")
        if len(self.join) or self._preds or other._preds:
            raise StateError(f"model {self.cfg.name!r}: only flushed states add, into one without join entries")
        vmap = [self.version_index(name) for name in other.version_names]
        # Block keys: versions by name, segment values by name (admitted under this state's cap).
        keymap = dict(enumerate(vmap))
        for seg, values in enumerate(other.segment_values):
            for i, value in enumerate(values):
                keymap[segment_key(seg, i)] = segment_key(seg, self.segment_value_index(seg, value))
        self.tallies.add(other.tallies, vmap)
        self.store.add_store(other.store, keymap)
        mine = JoinCounters.of(self.join)
        mine.add(JoinCounters.of(other.join))
        mine.restore(self.join, [], empty_join_columns(self.n_labels), 0,
                     max(self.join.watermark, other.join.watermark))

    def dump(self, prefix: str, arrays: dict[str, np.ndarray], entries: bool = True) -> dict[str, Any]:
        """The state as JSON-able metadata (returned) and arrays named `<prefix>.*` (added to `arrays`):
        the parts of a checkpoint (monitor.engine.snapshot). `entries=False` leaves out the window blocks
        and the join entries, which the worker's changelog keeps as records of their own."""
        if self._preds:
            raise StateError("model state has unflushed statistics")
        tallies, tally_arrays = self.tallies.dump()
        for name, arr in tally_arrays.items():
            arrays[f"{prefix}.{name}"] = arr
        (self.store if entries else BlockStore(self.store.size, [])).dump(prefix, arrays)
        join = self.join
        ids, columns = join.export() if entries else ([], empty_join_columns(self.n_labels))
        for name, col in columns.items():
            arrays[f"{prefix}.join.{name}"] = col
        return {
            "name": self.cfg.name,
            "labels": list(self.cfg.labels),
            "task": self.cfg.task,
            "block_size": self.layout.size,
            "versions": list(self.version_names),
            "segments": [seg.name for seg in self.cfg.segments],
            "segment_values": [list(values) for values in self.segment_values],
            "cohorts": [list(key) for key in self.cohorts],  # in index order (a dict keeps insertion order)
            **tallies,
            "newest_fine": self.store.newest_fine,
            "join": {
                "ids": ids,
                "seq": join.seq,
                "watermark": None if join.watermark == float("-inf") else join.watermark,
                **JoinCounters.of(join).dump()[0],
            },
        }

    def load(self, m: Mapping[str, Any], prefix: str, arrays: Mapping[str, np.ndarray]) -> None:
        """What `dump` gave, into this fresh state; StateError when it was dumped under another
        configuration or does not fit (KeyError, TypeError or ValueError when it is malformed)."""
        self._check(m)
        for name in m["versions"]:
            self.version_index(name)
        for seg, values in enumerate(m.get("segment_values", [])):
            for value in values:  # loaded as they are: the dumped values were admitted under the cap
                self._segment_index[seg][value] = len(self.segment_values[seg])
                self.segment_values[seg].append(value)
        sizes = [len(m["versions"]), *(len(values) for values in self.segment_values)]
        for key in m.get("cohorts", []):
            if len(key) != len(sizes) or not all(0 <= int(x) < n for x, n in zip(key, sizes, strict=True)):
                raise StateError("a cohort names an unknown model version or segment value")
            self.cohort_index(tuple(int(x) for x in key))
        mine = f"{prefix}."
        own = {name[len(mine):]: a for name, a in arrays.items() if name.startswith(mine)}
        try:
            # One value per version the state registered: a dump with more (max_versions lowered since)
            # does not fit.
            self.tallies = ModelTallies.load(m, own, len(self.version_names))
        except TalliesError as exc:
            raise StateError(f"model {self.cfg.name!r}: {exc}") from None
        self.store.load(int(m["newest_fine"]), prefix, arrays, self._key_check(len(m["versions"])))
        # The join keeps cohort indexes (cohort_index), which are version indexes without segments.
        n_cohorts = len(self.cohorts) if self.cfg.segments else len(m["versions"])
        self._load_join(m["join"], n_cohorts, prefix, arrays)

    def _check(self, m: Mapping[str, Any]) -> None:
        cfg = self.cfg
        problems = []
        if m["labels"] != list(cfg.labels):
            problems.append(f"labels {m['labels']} became {list(cfg.labels)}")
        if m["task"] != cfg.task:
            problems.append(f"task {m['task']} became {cfg.task}")
        if m["block_size"] != self.layout.size:
            problems.append("the statistics layout changed (features, reference bins or co-occurrence labels)")
        segments = [seg.name for seg in cfg.segments]
        if m.get("segments", []) != segments:
            problems.append(f"segments {m.get('segments', [])} became {segments}")
        if problems:
            raise StateError(f"model {cfg.name!r}: the snapshot was taken under another configuration: "
                             + "; ".join(problems))

    def _key_check(self, n_versions: int) -> Callable[[int], None]:
        """A check that a block key names a known version or segment value."""
        known = set(range(n_versions)) | {segment_key(s, i) for s, values in enumerate(self.segment_values)
                                          for i in range(len(values))}

        def check(key: int) -> None:
            if key not in known:
                raise StateError("a block names an unknown model version or segment value")
        return check

    def _load_join(self, m: Mapping[str, Any], n_versions: int, prefix: str, arrays: Mapping[str, np.ndarray]) -> None:
        ids = m["ids"]
        n = len(ids)
        col: dict[str, np.ndarray] = {name: np.ascontiguousarray(arrays[f"{prefix}.join.{name}"], dtype=dtype)
                                     for name, dtype in EXPORT_COLUMNS.items()}
        shapes = {name: (n, self.n_labels) for name in MATRIX_COLUMNS}
        for name, arr in col.items():
            if arr.shape != shapes.get(name, (n,)):
                raise StateError(f"join column {name} has the wrong shape")
        versions = col["pred_version"][col["has_pred"]]
        if n and ((versions < 0) | (versions >= n_versions)).any():
            raise StateError("a pending prediction names an unknown model version")
        # TextSpans (a changelog's keys) are str by construction; a list is checked in one C loop.
        if not isinstance(ids, TextSpans) and not all(map(isinstance, ids, itertools.repeat(str))):
            raise StateError("prediction ids must be strings")
        JoinCounters.load(m).restore(self.join, ids, col, int(m["seq"]),
                                     float("-inf") if m["watermark"] is None else float(m["watermark"]))

    # --- events in (continued) -----------------------------------------------------------------------
    def apply(self, kinds: np.ndarray, rows: np.ndarray, preds: PredictionColumns | None,
              truths: GroundTruthColumns | None) -> None:
        """Apply steps in order: kind 0 is row `rows[i]` of `preds`, kind 1 a row of `truths`."""
        P = preds if preds is not None else self.no_predictions
        G = truths if truths is not None else self.no_ground_truth
        pred_rows = rows[kinds == 0]
        gt_rows = rows[kinds == 1]
        if pred_rows.size:
            self._assign_versions(P, pred_rows)
        accepted = self.join.apply(kinds, rows, P.ids, P.ts, P.version, P.scores, P.predicted,
                                   G.ids, G.ts, G.known, G.actual, G.full)
        if gt_rows.size:
            self.tallies.ground_truth_total += int(gt_rows.size)
            self.tallies.seen("ground_truth", float(G.ts[gt_rows].max()))
        if accepted.size:
            self._count_predictions(P, accepted)

    def _assign_versions(self, P: PredictionColumns, rows: np.ndarray) -> None:
        # Versions are registered in the order the steps first name them (max_versions keeps the first ones).
        codes = P.version_code[rows]
        uniq, first = np.unique(codes, return_index=True)
        lut = np.empty(len(P.version_names), dtype=np.int64)
        for code in uniq[np.argsort(first, kind="stable")].tolist():
            lut[code] = self.version_index(P.version_names[code])
        if not self.cfg.segments:
            P.version[rows] = lut[codes]
            return
        assert P.segments is not None, "a segmented model's columns carry segment values"
        cols = [lut[codes]]
        for s in range(len(self.cfg.segments)):
            # New values take free slots by their volume in this batch (then by first appearance); a value
            # keeps its slot for good, so its series never change meaning.
            values, first, inverse, counts = np.unique(P.segments[rows, s].astype(str), return_index=True,
                                                       return_inverse=True, return_counts=True)
            seg_lut = np.empty(len(values), dtype=np.int64)
            for k in np.lexsort((first, -counts)).tolist():
                seg_lut[k] = self.segment_value_index(s, str(values[k]))
            cols.append(seg_lut[inverse.ravel()])
        combos, inverse = np.unique(np.stack(cols, axis=1), axis=0, return_inverse=True)
        cohort = np.array([self.cohort_index(tuple(c)) for c in combos.tolist()], dtype=np.int64)
        P.version[rows] = cohort[inverse.ravel()]

    def _count_predictions(self, P: PredictionColumns, rows: np.ndarray) -> None:
        t = self.tallies
        version = self.cohort_keys(P.version[rows])[:, 0]
        for v, n in enumerate(np.bincount(version).tolist()):
            t.predictions_total[v] += n
        latency = P.latency[rows]
        reported = ~np.isnan(latency)
        if reported.any():
            for v in np.unique(version[reported]).tolist():
                t.latency[v].observe(latency[reported & (version == v)])
        t.ignored_scores += int(P.ignored[rows].sum())
        t.seen("predictions", float(P.ts[rows].max()))
        self._preds.append(AcceptedPredictions(P.version[rows], P.ts[rows], P.scores[rows], P.predicted[rows],
                                               P.numeric[rows], P.categorical[rows]))

    # --- batch -> block deltas ---------------------------------------------------------------------
    def flush(self) -> None:
        """Expire old joins, then apply everything produced since the last flush to the blocks."""
        self.fold(self.take())

    def take(self) -> Taken:
        """The join's half of a flush: expire old joins and hand over everything produced since the last
        take. `fold` adds it to the blocks; between the two only the join and the counters of `apply`
        are touched, so a take's fold may run on another thread while the next steps are applied."""
        self.join.expire()
        watermark = self.join.watermark
        out = self.join.drain()
        preds, self._preds = self._preds, []
        table = None
        if self.cfg.segments and self._cells is not None:
            self.cohort_keys(np.zeros(0, dtype=np.int64))  # brings the table up to date: a new array
            table = self._cohort_keys
        return Taken(int(watermark // 60) if watermark > float("-inf") else None, out, preds, table)

    def fold(self, taken: Taken) -> None:
        """The statistics' half of a flush: what `take` handed over, added to the window blocks. Folds of
        one model must run in the order of their takes."""
        if taken.minute is not None:
            self.store.advance(taken.minute)
        out = taken.out
        if out["delay"].size:
            self.tallies.delay.observe(out["delay"])
        if taken.preds or out["unpend_ts"].size or out["join_obs"].size:
            self._apply(out, AcceptedPredictions.concat(taken.preds), taken.cohort_table)

    def _apply(self, out: dict[str, np.ndarray], p: AcceptedPredictions | None,
               cohort_table: np.ndarray | None) -> None:
        """A flush's contributions into the blocks: `p` the accepted predictions (None: none), `out` the
        join's drained columns."""
        if self._cells is not None:
            self._apply_native(out, p, cohort_table)
            return
        # Each contribution goes to the block of its (version, minute): predictions and pending-score
        # removals at prediction time, joins at observation time. One np.unique over all of them numbers
        # the blocks, one bincount makes every block's delta, one add_many applies them. With segments a
        # contribution also goes to the block of each of its segment values (cohort_keys).
        parts: list[tuple[np.ndarray, np.ndarray]] = []  # (cohorts, minutes) per kind of contribution
        if p is not None:
            parts.append((p.version, fine_bucket(p.ts)))
        unpend = out["unpend_ts"].size > 0
        if unpend:
            parts.append((out["unpend_version"], fine_bucket(out["unpend_ts"])))
        joins = out["join_obs"].size > 0
        if joins:
            parts.append((out["join_version"], fine_bucket(out["join_obs"])))
        if not parts:
            return
        copies = 1 + len(self.cfg.segments)
        expanded = [(k[:, j], m) for v, m in parts for k in (self.cohort_keys(v),) for j in range(copies)]
        keys = np.concatenate([v << 32 | m for v, m in expanded])
        blocks, group = np.unique(keys, return_inverse=True)
        group = group.ravel()
        size = self.layout.size
        bounds = np.cumsum([0] + [v.size for v, _ in expanded])
        bases = iter([group[a:b] * size for a, b in itertools.pairwise(bounds)])
        idx: list[np.ndarray] = []
        w: list[np.ndarray] = []
        if p is not None:
            for _ in range(copies):
                self._prediction_cells(p, next(bases), idx, w)
            self.tallies.late["predictions"] += self._count_late(parts[0][1])
        if unpend:
            for _ in range(copies):
                self._pending_cells(out["unpend_scores"], out["unpend_predicted"], next(bases), -1.0, idx, w)
        if joins:
            for _ in range(copies):
                self._join_cells(out, next(bases), idx, w)
            self.tallies.late["ground_truth"] += self._count_late(parts[-1][1])
        deltas = np.bincount(np.concatenate(idx), weights=np.concatenate(w), minlength=len(blocks) * size)
        self.store.add_many(blocks >> 32, blocks & 0xFFFFFFFF, deltas.reshape(len(blocks), size))

    def _apply_native(self, out: dict[str, np.ndarray], p: AcceptedPredictions | None,
                      table: np.ndarray | None) -> None:
        # What `_apply` does, with the cells computed in the native core from the same columns and handed
        # over as the nonzero cells of each block (add_sparse), not as dense rows. `table`: the cohort
        # keys as `take` found them (with segments).
        preds = None if p is None else (p.version, p.ts, p.scores, p.predicted, p.numeric, p.categorical)
        if preds is None and not out["unpend_ts"].size and not out["join_obs"].size:
            return
        st = self.store
        blocks, ptr, cells, values, late_p, late_g = self._cells.deltas(  # type: ignore[union-attr]
            table, preds, out, st.newest_fine, st.fine_span, st.coarse_span)
        self.tallies.late["predictions"] += late_p
        self.tallies.late["ground_truth"] += late_g
        st.add_sparse(blocks >> 32, blocks & 0xFFFFFFFF, ptr, cells, values, getattr(native._native, "add_rows", None))

    def _count_late(self, m: np.ndarray) -> int:
        """Contributions at these minute buckets that no window keeps any more."""
        st = self.store
        newest = np.maximum(st.newest_fine, m)
        kept = (m > newest - st.fine_span) | (m // 60 > newest // 60 - st.coarse_span)
        return int(m.size - np.count_nonzero(kept))

    def _prediction_cells(self, p: AcceptedPredictions, base: np.ndarray, idx: list[np.ndarray],
                          w: list[np.ndarray]) -> None:
        L = self.layout
        S, P = p.scores, p.predicted
        n, nl = S.shape
        sc = L.offsets["scalars"]
        ones = np.ones(n)
        idx += [base + sc + S_PREDICTIONS, base + sc + S_CARD_PRED]
        w += [ones, P.sum(axis=1).astype(np.float64)]
        rows, cols = np.nonzero(P)
        idx.append(base[rows] + L.offsets["pred_pos"] + cols)
        w.append(np.ones(rows.size))
        self._pending_cells(S, P, base, 1.0, idx, w)
        ref = self.reference
        if ref is not None:
            bins = np.empty((n, nl), dtype=np.int64)
            for j in range(nl):
                bins[:, j] = ref.scores[j].bin_numeric(S[:, j])
            idx.append((base[:, None] + L.offsets["score_bins"] + np.arange(nl) * SCORE_BINS + bins).ravel())
            w.append(np.ones(n * nl))
        self._feature_cells(p, base, idx, w)
        if self._pairs is not None:
            k = self.pair_labels
            Pk = P[:, :k]
            pair_hits = Pk[:, self._pairs[0]] & Pk[:, self._pairs[1]]
            r, c = np.nonzero(pair_hits)
            few = np.nonzero(Pk.sum(axis=1) < 2)[0]
            off = L.offsets["pairs"]
            idx += [base[r] + off + c, base[few] + off + pair_hits.shape[1]]
            w += [np.ones(r.size), np.ones(few.size)]

    def _feature_cells(self, p: AcceptedPredictions, base: np.ndarray, idx: list[np.ndarray],
                       w: list[np.ndarray]) -> None:
        L = self.layout
        ref = self.reference
        missing_off = L.offsets["feat_missing"]
        bins_off = L.offsets["feat_bins"]
        for fi, name in enumerate(self.features):
            numeric = fi < self.n_numeric
            values = p.numeric[:, fi] if numeric else p.categorical[:, fi - self.n_numeric]
            present = ~np.isnan(values) if numeric else values >= 0
            miss = np.nonzero(~present)[0]
            idx.append(base[miss] + missing_off + fi)
            w.append(np.ones(miss.size))
            if ref is None:
                continue
            rows = np.nonzero(present)[0]
            # Categorical values arrive already binned against the reference (columns.FeatureSpec).
            b = ref.features[name].bin_numeric(values[rows]) if numeric else values[rows]
            idx.append(base[rows] + bins_off + L.feature_offsets[fi] + b)
            w.append(np.ones(rows.size))

    def _pending_cells(self, S: np.ndarray, P: np.ndarray, base: np.ndarray, sign: float, idx: list[np.ndarray],
                       w: list[np.ndarray]) -> None:
        L = self.layout
        n, nl = S.shape
        cb = score_bins(S)
        # pending[label, bin, k]: k = 0/1 count/score sum if predicted positive, 2/3 if negative.
        cell = (base[:, None] + L.offsets["pending"] + np.arange(nl) * (10 * 4) + cb * 4 + (~P) * 2).ravel()
        idx += [cell, cell + 1, base + L.offsets["scalars"] + S_PENDING]
        w += [np.full(n * nl, sign), sign * S.ravel(), np.full(n, sign)]

    def _join_cells(self, out: dict[str, np.ndarray], base: np.ndarray, idx: list[np.ndarray],
                    w: list[np.ndarray]) -> None:
        L = self.layout
        S, P = out["join_scores"], out["join_predicted"]
        K, A = out["join_known"], out["join_actual"]
        full, sign = out["join_full"], out["join_sign"]
        nl = self.n_labels
        code = (~A).astype(np.int64) + (~P).astype(np.int64) * 2  # tp 0, fp 1, fn 2, tn 3
        r, c = np.nonzero(K)
        idx.append(base[r] + L.offsets["outcomes"] + c * 4 + code[r, c])
        w.append(sign[r])
        cal = base[r] + L.offsets["calib"] + c * 30 + score_bins(S[r, c]) * 3
        idx += [cal, cal + 1, cal + 2]
        w += [sign[r], sign[r] * S[r, c], sign[r] * A[r, c]]
        slot = self.advised_slot[c]
        a = slot >= 0
        if a.any():
            ra, ca = r[a], c[a]
            hist = (base[ra] + L.offsets["thr_hist"] + slot[a] * (THRESHOLD_BINS * 2)
                    + score_bins(S[ra, ca], THRESHOLD_BINS) * 2 + A[ra, ca])
            idx.append(hist)
            w.append(sign[ra])
        sc = base + L.offsets["scalars"]
        exact = np.all(P == A, axis=1)
        f = np.nonzero(full)[0]
        idx += [sc + S_JOINED, sc[f] + S_SUBSET_N, sc[f] + S_SUBSET_OK, sc[f] + S_CARD_ACTUAL, sc[f] + S_CARD_ACTUAL_N]
        w += [sign, sign[f], sign[f] * exact[f], sign[f] * A[f].sum(axis=1), sign[f]]
        if self.multiclass and f.size:
            conf = base[f] + L.offsets["confusion"] + np.argmax(A[f], axis=1) * nl + np.argmax(P[f], axis=1)
            idx.append(conf)
            w.append(sign[f])

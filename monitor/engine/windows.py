"""Windowed additive statistics: one flat float64 vector per (version, time bucket).

Every statistic a figure needs is a count or a sum, laid out by `Layout` into one vector, so a window is
the element-wise sum of its buckets, two engines' states add up to one engine's, and a correction is the
same vector subtracted. Buckets are 1 minute wide for windows up to 6h and 1 hour wide beyond, so window
edges are exact to the bucket width (docs/semantics.md). Counts stay exact in float64 up to 2**53.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from monitor.config import FINE_WINDOW_LIMIT, HOUR, MINUTE
from monitor.conventions import CALIBRATION_BINS, THRESHOLD_BINS
from monitor.engine.metrics.estimation import PENDING_STATS
from monitor.engine.tallies import StateError

SCORE_BINS = 10  # reference deciles give at most 10 bins

# Positions in the "scalars" field.
S_PREDICTIONS, S_JOINED, S_SUBSET_N, S_SUBSET_OK, S_CARD_ACTUAL, S_CARD_ACTUAL_N, S_CARD_PRED, S_PENDING = range(8)
N_SCALARS = 8
NO_MINUTE = -(1 << 62)
# out[rows[b], cells[e]] += values[e] for each entry e of each block b with rows[b] >= 0, in block order
# (args: out, rows, ptr, cells, values): the native core's `add_rows`.
AddRows = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


@dataclass
class Layout:
    """Offsets of each named statistic inside a block vector."""

    labels: int
    feature_bins: list[int]  # bins per watched feature (numeric then categorical), 0 without reference
    pair_labels: int
    classes: int  # multiclass: number of classes (confusion matrix); else 0
    advised: int = 0  # labels with threshold-advice score histograms (the detail labels)
    shapes: dict[str, tuple[int, ...]] = field(init=False)
    offsets: dict[str, int] = field(init=False)
    size: int = field(init=False)

    def __post_init__(self) -> None:
        n_pairs = self.pair_labels * (self.pair_labels - 1) // 2 + 1 if self.pair_labels >= 2 else 0
        self.shapes = {
            "scalars": (N_SCALARS,),
            "outcomes": (self.labels, 4),
            "calib": (self.labels, CALIBRATION_BINS, 3),
            "pending": (self.labels, CALIBRATION_BINS, PENDING_STATS),
            "pred_pos": (self.labels,),
            "score_bins": (self.labels, SCORE_BINS),
            "feat_bins": (sum(self.feature_bins),),
            "feat_missing": (len(self.feature_bins),),
            "pairs": (n_pairs,),
            "confusion": (self.classes, self.classes),
            # [advised label, score bin, negatives | positives] of joined events with known truth.
            "thr_hist": (self.advised, THRESHOLD_BINS, 2),
        }
        self.offsets = {}
        pos = 0
        for name, shape in self.shapes.items():
            self.offsets[name] = pos
            pos += int(np.prod(shape))
        self.size = pos
        self.feature_offsets = np.concatenate([[0], np.cumsum(self.feature_bins)[:-1]]).astype(np.int64) \
            if self.feature_bins else np.empty(0, dtype=np.int64)

    def view(self, block: np.ndarray, name: str) -> np.ndarray:
        start = self.offsets[name]
        shape = self.shapes[name]
        return block[start:start + int(np.prod(shape))].reshape(shape)


def fine_bucket(ts: float | np.ndarray) -> np.ndarray:
    return np.floor_divide(ts, MINUTE).astype(np.int64)


class BlockStore:
    """Blocks per version at two granularities, plus a cumulative block per version (the counters).

    `fine`, `coarse` and `total` are plain dicts of vectors (snapshots and merges read and fill them).
    The fine blocks `add_sparse` creates are rows of one ring array per version (row = minute % fine_span),
    so that adding a batch's deltas to hundreds of minutes is one numpy operation, not one per minute.
    """

    def __init__(self, size: int, windows: list[int]) -> None:
        self.size = size
        fine = [w for w in windows if w <= FINE_WINDOW_LIMIT]
        coarse = [w for w in windows if w > FINE_WINDOW_LIMIT]
        # Buckets are kept for the longest window of their granularity, plus one so an evaluation
        # slightly before the newest event still sees full windows.
        self.fine_span = max(fine, default=0) // MINUTE + 1
        self.coarse_span = max(coarse, default=0) // HOUR + 1
        self.fine: dict[int, dict[int, np.ndarray]] = {}
        self.coarse: dict[int, dict[int, np.ndarray]] = {}
        self.total: dict[int, np.ndarray] = {}
        self.newest_fine = -(1 << 62)
        # Per version: the ring of fine blocks and, per row, the minute it holds (NO_MINUTE: none).
        self._rings: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _block(self, store: dict[int, dict[int, np.ndarray]], version: int, bucket: int) -> np.ndarray:
        per_version = store.setdefault(version, {})
        block = per_version.get(bucket)
        if block is None:
            block = per_version[bucket] = np.zeros(self.size)
        return block

    def in_retention(self, minute: int) -> tuple[bool, bool]:
        """(kept in fine blocks, kept in coarse blocks) for a contribution at this minute bucket."""
        newest = max(self.newest_fine, minute)
        return (minute > newest - self.fine_span, minute // 60 > newest // 60 - self.coarse_span)

    def add(self, version: int, minute: int, delta: np.ndarray) -> bool:
        """Add a delta at a minute bucket; returns False when it was older than every window (late)."""
        total = self.total.get(version)
        if total is None:
            total = self.total[version] = np.zeros(self.size)
        total += delta
        keep_fine, keep_coarse = self.in_retention(minute)
        if keep_fine and self.fine_span > 1:
            self._block(self.fine, version, minute)[:] += delta
        if keep_coarse and self.coarse_span > 1:
            self._block(self.coarse, version, minute // 60)[:] += delta
        return keep_fine or keep_coarse

    def add_many(self, versions: np.ndarray, minutes: np.ndarray, deltas: np.ndarray) -> None:
        """`add(versions[i], minutes[i], deltas[i])` for every i, with distinct (version, minute) pairs sorted
        by (version, minute). Totals and hourly blocks receive the sum of their rows (the same values up to
        float rounding). The dense form of `add_sparse`."""
        rows, cells = np.nonzero(deltas)
        ptr = np.searchsorted(rows, np.arange(deltas.shape[0] + 1))
        self.add_sparse(versions, minutes, ptr, cells, deltas[rows, cells])

    def add_sparse(self, versions: np.ndarray, minutes: np.ndarray, ptr: np.ndarray, cells: np.ndarray,
                   values: np.ndarray, add_rows: AddRows | None = None) -> None:
        """`add_many` with row i's delta given by the cells it touches: `cells[ptr[i]:ptr[i+1]]` (distinct)
        hold `values[ptr[i]:ptr[i+1]]`, every other cell is 0. A flush touches about 6% of its blocks'
        cells, so nothing here is proportional to blocks x layout size but the totals and hourly blocks.
        A total (an hourly block) receives the sum of its rows computed row by row in the given order
        (np.bincount adds in input order), then added once. `add_rows` (the native core's) does the same
        additions in the same order without numpy's intermediate arrays."""
        n = versions.size
        if not n:
            return
        size = self.size
        newest = self.newest_fine
        ahead = minutes > newest  # (only after a restore) newer than every block: kept like in_retention
        keep_fine = ((minutes > newest - self.fine_span) | ahead) if self.fine_span > 1 else np.zeros_like(ahead)
        keep_coarse = (minutes // 60 > newest // 60 - self.coarse_span) | ahead
        if self.coarse_span <= 1:
            keep_coarse[:] = False
        row = np.repeat(np.arange(n), np.diff(ptr)) if add_rows is None else None  # each entry's row
        # `versions` comes sorted, and most flushes hold one version: then no per-version masks.
        one = versions[0] == versions[-1]
        for v in ([int(versions[0])] if one else np.unique(versions).tolist()):
            mine = np.ones(n, dtype=bool) if one else versions == v
            total = self.total.get(v)
            if total is None:
                total = self.total[v] = np.zeros(self.size)
            if add_rows is not None:
                row_sum = np.zeros((1, size))
                add_rows(row_sum, np.where(mine, 0, -1), ptr, cells, values)
                total += row_sum[0]
            else:
                assert row is not None
                picked = mine[row]
                total += np.bincount(cells[picked], weights=values[picked], minlength=size)
            rows = np.nonzero(mine & keep_fine)[0]
            if rows.size:
                if ahead[rows].any():  # minutes a ring row apart could collide: one at a time
                    for r in rows.tolist():
                        a, b = ptr[r], ptr[r + 1]
                        self._block(self.fine, v, int(minutes[r]))[cells[a:b]] += values[a:b]
                else:
                    self._add_fine(v, minutes, rows, (ptr, row, cells, values), add_rows)
            rows = np.nonzero(mine & keep_coarse)[0]
            if rows.size:
                # One sum per hour: entries numbered by their row's hour, summed in row order.
                hours, group = np.unique(minutes[rows] // 60, return_inverse=True)
                group_of = np.full(n, -1, dtype=np.int64)
                group_of[rows] = group.ravel()
                sums: np.ndarray
                if add_rows is not None:
                    sums = np.zeros((hours.size, size))
                    add_rows(sums, group_of, ptr, cells, values)
                else:
                    assert row is not None
                    g = group_of[row]
                    picked = g >= 0
                    sums = np.bincount(g[picked] * size + cells[picked], weights=values[picked],
                                       minlength=hours.size * size).reshape(hours.size, size)
                for hour, delta in zip(hours.tolist(), sums, strict=True):
                    self._block(self.coarse, v, hour)[:] += delta

    def _add_fine(self, version: int, minutes: np.ndarray, rows: np.ndarray,
                  entries: tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray],
                  add_rows: AddRows | None) -> None:
        """Add the entries (ptr, each entry's row, cells, values) of `rows` (distinct minutes less than
        fine_span apart: distinct ring rows) to their fine blocks."""
        ptr, row, cells, values = entries
        ring_owner = self._rings.get(version)
        if ring_owner is None:
            ring_owner = self._rings[version] = (np.zeros((self.fine_span, self.size)),
                                                 np.full(self.fine_span, NO_MINUTE, dtype=np.int64))
        ring, owner = ring_owner
        blocks = self.fine.setdefault(version, {})
        at = minutes % self.fine_span
        # Rows whose minute the ring does not hold yet: a new block (claims the row, whose old minute
        # `advance` has dropped), or one a snapshot or merge put in the dict (adopted into the row).
        for i in rows[owner[at[rows]] != minutes[rows]].tolist():
            m, r = int(minutes[i]), int(at[i])
            found = blocks.get(m)
            ring[r] = 0.0 if found is None else found
            owner[r] = m
            blocks[m] = ring[r]
        # Each (ring row, cell) at most once, so the fancy-index add is one addition per touched cell (on the
        # flat ring: a 1-d index is cheaper than a pair of them).
        if add_rows is not None:
            target = np.full(minutes.size, -1, dtype=np.int64)
            target[rows] = at[rows]
            add_rows(ring, target, ptr, cells, values)
            return
        assert row is not None
        flat = ring.reshape(-1)
        if rows.size == minutes.size:
            flat[(at * self.size)[row] + cells] += values
        else:
            kept = np.zeros(minutes.size, dtype=bool)
            kept[rows] = True
            picked = kept[row]
            flat[(at * self.size)[row[picked]] + cells[picked]] += values[picked]

    def advance(self, minute: int) -> None:
        """Move the newest bucket forward and drop blocks no window can reach any more."""
        if minute <= self.newest_fine:
            return
        self.newest_fine = minute
        for store, floor in ((self.fine, minute - self.fine_span), (self.coarse, minute // 60 - self.coarse_span)):
            for per_version in store.values():
                for b in [b for b in per_version if b <= floor]:
                    del per_version[b]

    def versions(self) -> Iterable[int]:
        return self.total.keys()

    # --- the store as a value ---------------------------------------------------------------------
    def add_store(self, other: BlockStore, keymap: Mapping[int, int]) -> None:
        """Add `other`'s blocks, its keys (versions, segment values) mapped to this store's by `keymap`."""
        self.newest_fine = max(self.newest_fine, other.newest_fine)
        for target, blocks in ((self.fine, other.fine), (self.coarse, other.coarse)):
            for key, per_version in blocks.items():
                dest = target.setdefault(keymap[key], {})
                for bucket, block in per_version.items():
                    have = dest.get(bucket)
                    if have is None:
                        dest[bucket] = block.copy()
                    else:
                        have += block
        for key, block in other.total.items():
            have = self.total.get(keymap[key])
            if have is None:
                self.total[keymap[key]] = block.copy()
            else:
                have += block

    def dump(self, prefix: str, arrays: dict[str, np.ndarray]) -> None:
        """Every block as `<prefix>.<fine|coarse|total>.keys` and `.blocks` (keys and stacked vectors)."""
        for name, blocks in (("fine", self.fine), ("coarse", self.coarse)):
            keys = [(v, b) for v, per_version in blocks.items() for b in per_version]
            arrays[f"{prefix}.{name}.keys"] = np.array(keys, dtype=np.int64).reshape(len(keys), 2)
            arrays[f"{prefix}.{name}.blocks"] = (np.stack([blocks[v][b] for v, b in keys]) if keys
                                                else np.zeros((0, self.size)))
        versions = list(self.total)
        arrays[f"{prefix}.total.keys"] = np.array(versions, dtype=np.int64)
        arrays[f"{prefix}.total.blocks"] = (np.stack([self.total[v] for v in versions]) if versions
                                            else np.zeros((0, self.size)))

    def load(self, newest_fine: int, prefix: str, arrays: Mapping[str, np.ndarray],
             key_ok: Callable[[int], None]) -> None:
        """The blocks `dump` wrote, into this (empty) store; `key_ok` raises for a key the state does not
        know. Blocks a shorter window list no longer reaches are dropped now rather than at the next event."""
        self.newest_fine = newest_fine
        for name, target in (("fine", self.fine), ("coarse", self.coarse)):
            keys = arrays[f"{prefix}.{name}.keys"]
            for (v, b), block in zip(keys.tolist(), self._rows(arrays[f"{prefix}.{name}.blocks"], len(keys)),
                                     strict=True):
                key_ok(v)
                target.setdefault(v, {})[b] = block
        keys = arrays[f"{prefix}.total.keys"]
        for v, block in zip(keys.tolist(), self._rows(arrays[f"{prefix}.total.blocks"], len(keys)), strict=True):
            key_ok(v)
            self.total[v] = block
        self.newest_fine -= 1
        self.advance(newest_fine)

    def _rows(self, stacked: np.ndarray, n: int) -> list[np.ndarray]:
        if stacked.dtype != np.float64 or stacked.shape != (n, self.size):
            raise StateError("window blocks have the wrong shape")
        # Separate writable vectors: the store adds into them in place.
        return [row.copy() for row in stacked]

    def window_sums(self, version: int, windows: list[int], at: float) -> dict[int, np.ndarray]:
        """Element-wise sums of the blocks in each window ending at `at` (window -> vector)."""
        out: dict[int, np.ndarray] = {}
        for store, unit, group in ((self.fine, MINUTE, [w for w in windows if w <= FINE_WINDOW_LIMIT]),
                                   (self.coarse, HOUR, [w for w in windows if w > FINE_WINDOW_LIMIT])):
            if not group:
                continue
            current = int(at // unit)
            blocks = store.get(version, {})
            # Walk the buckets newest first, taking a copy of the running sum at each window edge.
            edges = sorted(((current - w // unit, w) for w in group), reverse=True)
            running = np.zeros(self.size)
            keys = sorted((b for b in blocks if b <= current), reverse=True)
            i = 0
            for floor, w in edges:
                while i < len(keys) and keys[i] > floor:
                    running += blocks[keys[i]]
                    i += 1
                out[w] = running.copy()
        return out

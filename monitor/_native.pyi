"""Types of `monitor._native`, the optional Rust core (native/, docs/native.md).

The module exists only when the extension was built; `monitor.engine.native` imports it and falls back to
the pure-Python engine without it.
"""

import os
from collections.abc import Iterable
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

from monitor.spans import TextSpans

Steps = list[str | int]  # a simple path: object keys and list indexes (monitor.config.simple_path)

class ModelDict(TypedDict):
    name: str
    labels: list[str]  # config order
    thresholds: list[float]  # one per label
    multiclass: bool
    numeric: list[str]  # numeric feature names
    categorical: list[str]  # categorical feature names
    categories: list[dict[str, int] | None]  # per categorical feature: value string -> reference bin
    other_bin: list[int]  # per categorical feature: the bin of an unlisted value

class MappingDict(TypedDict):
    model: int  # index into the models
    name: str
    model_path: Steps | None  # None: a literal model name (claims every message of the topic)
    fields: dict[str, Steps]  # native field name -> path
    features: dict[str, Steps] | None  # per-feature paths, or None (then `fields` may map "features")

class PredictionBlock(TypedDict):
    ids: TextSpans  # one buffer of UTF-8 ids, no str per id
    version_names: list[str]
    version_code: npt.NDArray[np.int64]  # [k]
    ts: npt.NDArray[np.float64]  # [k] epoch seconds
    scores: npt.NDArray[np.float64]  # [k, L]
    predicted: npt.NDArray[np.bool_]  # [k, L]
    latency: npt.NDArray[np.float64]  # [k] seconds, NaN when absent
    ignored: npt.NDArray[np.int64]  # [k] score keys beyond the labels
    numeric: npt.NDArray[np.float64]  # [k, numeric features], NaN when absent
    categorical: npt.NDArray[np.int64]  # [k, categorical features], -1 when absent

class GroundTruthBlock(TypedDict):
    ids: TextSpans
    ts: npt.NDArray[np.float64]  # [k]
    known: npt.NDArray[np.bool_]  # [k, L]
    actual: npt.NDArray[np.bool_]  # [k, L]
    full: npt.NDArray[np.bool_]  # [k]

class PredictionBatch(TypedDict):
    model: npt.NDArray[np.int32]  # [n] model index, -1: left to the exact decoder
    row: npt.NDArray[np.int64]  # [n] row in the model's block, -1 when not accepted
    blocks: list[PredictionBlock]  # one per model

class GroundTruthBatch(TypedDict):
    model: npt.NDArray[np.int32]
    row: npt.NDArray[np.int64]
    blocks: list[GroundTruthBlock]

class Decoder:
    """The fast-path decoder: accepts only events it is certain of, leaves the rest (model -1) to
    `monitor.events.Decoder` / `monitor.mapping`."""

    def __init__(self, max_bytes: int, models: list[ModelDict],
                 readings: list[tuple[str, list[MappingDict]]] | None = None) -> None:
        """`readings`: mapped inputs, each ("predictions" | "ground_truth", its mappings in claim order)."""
    @property
    def max_bytes(self) -> int: ...
    @property
    def readable(self) -> list[bool]:
        """Per reading: whether the fast path reads it (False when paths run through one another)."""
    # `raws`: a list of bytes, any iterable of bytes, or an object whose spans() gives (buffer, starts,
    # ends) (monitor.inputs.InputLines). Large batches are decoded on several threads, the GIL released.
    def predictions(self, raws: Iterable[bytes], reading: int | None = None) -> PredictionBatch: ...
    def ground_truth(self, raws: Iterable[bytes], reading: int | None = None) -> GroundTruthBatch: ...
    @staticmethod
    def split_lines(data: bytes, start: int = 0) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                                                          npt.NDArray[np.int64] | None]:
        """Non-blank lines of a JSON-lines buffer from `start`: start and end offsets (without LF/CRLF),
        and the kept lines' 1-based numbers when blank lines were left out. A large buffer is cut on
        several threads, the GIL released."""

class Join:
    """The join table of `monitor.engine.join.JoinTable` (with ModelState's duplicate check)."""

    def __init__(self, ttl: float, max_entries: int, n_labels: int, memory_entries: int | None = None,
                 state_dir: str | None = None) -> None:
        """With `memory_entries`, entries beyond it live in an embedded store in a fresh directory under
        `state_dir` (the system temp directory when None), made when the first entry moves there and
        removed with the table. OSError when `state_dir` cannot be created or written to."""
    @property
    def memory_len(self) -> int:
        """Entries held in memory (all of them without `memory_entries`)."""
    @property
    def store_dir(self) -> str | None:
        """The store's directory once an entry moved there; None before, and without a budget."""
    def apply(self, kinds: npt.NDArray[np.uint8], rows: npt.NDArray[np.int64], pred_ids: list[str] | TextSpans,
              pred_ts: npt.NDArray[np.float64], pred_version: npt.NDArray[np.int64],
              scores: npt.NDArray[np.float64], predicted: npt.NDArray[np.bool_], gt_ids: list[str] | TextSpans,
              gt_ts: npt.NDArray[np.float64], known: npt.NDArray[np.bool_], actual: npt.NDArray[np.bool_],
              full: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
        """Applies the steps in order; returns the prediction rows accepted (not duplicates)."""
    def expire(self) -> None: ...
    def drain(self) -> dict[str, npt.NDArray[Any]]:
        """unpend_* / join_* / delay columns produced since the last drain (docs/native.md)."""
    # pending ... joined, and restore's keywords of the same names: the fields of
    # monitor.engine.tallies.JoinCounters (tests/test_tallies.py).
    watermark: float
    @property
    def seq(self) -> int: ...
    @property
    def corrections(self) -> int: ...
    @property
    def joined(self) -> int: ...
    @property
    def ttl(self) -> float: ...
    @property
    def max_entries(self) -> int: ...
    @property
    def n_labels(self) -> int: ...
    @property
    def pending(self) -> dict[str, int]: ...
    @property
    def expired(self) -> dict[str, int]: ...
    @property
    def evicted(self) -> dict[str, int]: ...
    @property
    def duplicates(self) -> dict[str, int]: ...
    def __len__(self) -> int: ...
    def export(self) -> tuple[list[str], dict[str, npt.NDArray[Any]]]: ...
    def track_changes(self, on: bool) -> None:
        """Starts (True) or stops recording which entries change; starting clears the record."""
    def changes(self) -> tuple[list[str], dict[str, npt.NDArray[Any]], list[str]]:
        """Changed live entries as `export` columns (ids sorted) and the ids that left the table."""
    def clear_changes(self) -> None: ...
    @property
    def changed(self) -> int:
        """How many ids changed (or left) since tracking started or `clear_changes`, at most: an id
        that left the table and came back may count twice (`changes` lists it once)."""
    def mark_changed(self, ids: list[str]) -> None:
        """Records `ids` as changed again (a checkpoint that took them was not written)."""
    # `ids`: a list of str, or an object whose spans() gives (uint8 buffer, starts, ends) of UTF-8 ids
    # (monitor.spans.TextSpans).
    def restore(self, ids: list[str] | TextSpans, columns: dict[str, npt.NDArray[Any]], seq: int,
                watermark: float | None, pending: dict[str, int], expired: dict[str, int], evicted: dict[str, int],
                duplicates: dict[str, int], corrections: int, joined: int) -> None: ...
    def load_staged(self, staged: Staged, model: str) -> int:
        """Fills the table, empty after a `restore` without entries, with `model`'s entries of a finished
        `Staged` read, holding at most the memory budget of them at a time; returns how many.
        ValueError on an entry of the wrong length or an id that is not UTF-8."""

Int64s = npt.NDArray[np.int64]
Bytes = npt.NDArray[np.uint8]

def encode_record_batches(prefix: bytes, keys: bytes, ends: npt.NDArray[np.int64], values: bytes | None, width: int,
                          max_bytes: int, timestamp_ms: int) -> list[tuple[bytearray, int]]:
    """Transactional v2 record batches (no producer state yet) of one record per key: key i is `prefix` +
    `keys[ends[i-1]:ends[i]]`, its value the i-th `width` bytes of `values` (None: tombstones); each batch
    at most `max_bytes`, with its record count."""
def set_producer_state(batch: bytearray, producer_id: int, epoch: int, base_sequence: int) -> None:
    """Writes the producer state into an encoded batch and recomputes its CRC-32C, in place."""
def unpack_records(records: bytes, fetch_offset: int, read_committed: bool, aborted: list[tuple[int, int]]
                   ) -> tuple[bytes, Int64s, Int64s, Int64s, Int64s, Int64s, int, int]:
    """One partition's Fetch response `records` (record batches v2) -> the data records aiokafka's getmany
    would return, as (data, key_start, key_end, value_start, value_end, offsets, next_offset, batches).
    Record i's key is data[key_start[i]:key_end[i]], None when key_start[i] is -1 (values likewise).
    Control batches, aborted transactions (read_committed; `aborted`: (producer id, first offset)) and
    records below `fetch_offset` are left out; a truncated last batch is left for the next fetch.
    `batches`: complete batches read. ValueError on a CRC mismatch or a corrupt batch."""

class Latest:
    """The newest value of every key over record columns (a compacted topic as a reader sees it): a later
    value replaces an earlier one in place, a None value removes its key, a key written again after its
    removal goes last: the order of a Python dict filled the same way."""
    def __init__(self) -> None: ...
    def add(self, data: bytes, key_start: Int64s, key_end: Int64s, value_start: Int64s, value_end: Int64s) -> None:
        """Records as unpack_records returns them (-1: None); ValueError on a record without a key."""
    def __len__(self) -> int: ...
    def take_columns(self) -> tuple[Bytes, Int64s, Int64s, Bytes, Int64s, Int64s]:
        """(keys, key_start, key_end, values, value_start, value_end) of the live keys in dict order, the
        values contiguous in that order, keys and values as uint8 arrays (no copy); leaves this empty."""

class Staged:
    """A state changelog read in bounded memory: join entry records (keys starting b"e") go, a window at a
    time, into sorted runs of a staging store in a fresh directory under `state_dir` (the system temp
    directory when None; deleted with this object), later runs winning; the other records are kept like
    `Latest`. Call `finish` once the read is complete. A run is written per `window_bytes` of entry
    records (64 MiB by default).

    Made with `local`, the same store in a fixed directory that outlives the object: a worker's local copy
    of a partition's changelog (monitor.stream.local_store), fed committed records and `seal`ed with a mark."""
    def __init__(self, state_dir: str | None = None, window_bytes: int = ...) -> None: ...
    @staticmethod
    def local(dir: str, window_bytes: int = ...) -> Staged:
        """The local copy in `dir` (made empty when there is none), holding what it held when last sealed
        (and possibly runs written after that) and its `mark`. ValueError when it cannot be opened."""
    def add(self, data: bytes, key_start: Int64s, key_end: Int64s, value_start: Int64s, value_end: Int64s) -> None:
        """Records as unpack_records returns them; ValueError on a record without a key or an entry key
        too short for its model name."""
    def put(self, key: bytes, value: bytes | None) -> None:
        """One record (None: a tombstone)."""
    def add_entries(self, prefix: bytes, ids: bytes, ends: Int64s, rows: bytes | None, width: int) -> None:
        """Entry records `prefix + id` -> the id's `width`-byte row of `rows` (tombstones when None), id i
        being ids[ends[i-1]:ends[i]], as `encode_record_batches` takes them."""
    def finish(self) -> None: ...
    def seal(self, mark: bytes) -> None:
        """A local copy only: everything added becomes a run, then the other records and `mark` are written
        in one batch synced to disk."""
    def close(self) -> None:
        """Releases the store (a staging store's directory is deleted, a local copy's kept); every other
        call then raises ValueError."""
    def take_others(self) -> tuple[Bytes, Int64s, Int64s, Bytes, Int64s, Int64s]:
        """The records other than join entries, as `Latest.take_columns` (a local copy keeps them)."""
    @property
    def mark(self) -> bytes | None:
        """A local copy's mark as last sealed (None: never sealed)."""
    @property
    def records(self) -> int:
        """Records added since opened, tombstones included."""
    @property
    def bytes(self) -> int:
        """Their key and value bytes."""
    @property
    def staged(self) -> int:
        """Entry values written to the store (a key once per run): at least the live entries; for a local
        copy, plus about what it held when opened."""
    @property
    def dir(self) -> str: ...

LOCAL_STORE_IN_USE: str
"""What the ValueError of `Staged.local` says when another process (or handle) holds the copy open."""

def name_groups(data: Bytes, starts: Int64s, ends: Int64s) -> tuple[list[bytes], Int64s]:
    """Groups keys by the name at byte 1 (big-endian u16 length, then the name): (names in order of first
    appearance, each key's group, -1 for a key too short for its name)."""

class Cells:
    """A model's window layout (`monitor.engine.windows.Layout`): turns a flush's accepted predictions and
    `Join.drain` output into block deltas identical to `ModelState._apply`'s numpy computation."""

    def __init__(self, size: int, offsets: dict[str, int], scalars: list[int], bins: tuple[int, int, int],
                 feature_offsets: list[int], n_numeric: int, n_categorical: int, pair_labels: int,
                 multiclass: bool, advised_slot: list[int], score_edges: list[list[float]] | None = None,
                 numeric_edges: list[list[float]] | None = None) -> None:
        """`scalars`: the 8 positions windows.S_* in the order S_PREDICTIONS, S_JOINED, S_SUBSET_N,
        S_SUBSET_OK, S_CARD_ACTUAL, S_CARD_ACTUAL_N, S_CARD_PRED, S_PENDING; `bins`: (calibration bins,
        threshold bins, reference score bins per label); `pair_labels`: 0 without pair counts;
        `advised_slot`: per label its threshold-histogram row or -1 (its length is the label count);
        the edges: per label and per numeric feature, the reference's bin edges (None without one)."""
    def deltas(self, cohort_keys: npt.NDArray[np.int64] | None,
               preds: tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64],
                            npt.NDArray[np.bool_], npt.NDArray[np.float64], npt.NDArray[np.int64]] | None,
               out: dict[str, npt.NDArray[Any]], newest_fine: int, fine_span: int,
               coarse_span: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64],
                                          npt.NDArray[np.float64], int, int]:
        """Block keys (store key << 32 | minute, sorted) and their deltas as sparse rows (ptr, cells,
        values: block i's touched cells are cells[ptr[i]:ptr[i+1]], distinct, the rest 0; `BlockStore.add_sparse`),
        then the late predictions and late ground truths. `cohort_keys`: store keys per cohort [cohorts,
        copies] (None: the cohort is the key); `preds`: (version, ts, scores, predicted, numeric,
        categorical)."""

def add_rows(out: npt.NDArray[np.float64], rows: npt.NDArray[np.int64], ptr: npt.NDArray[np.int64],
             cells: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> None:
    """`out[rows[b], cells[e]] += values[e]` for each entry e in ptr[b]:ptr[b+1] of each block b with
    rows[b] >= 0, one after the other in block order (`BlockStore.add_sparse`). `out` must be
    C-contiguous; indexes are checked before anything is added."""

def read_file(path: str | os.PathLike[str]) -> bytes | None:
    """The bytes of a regular file, read on several threads with the GIL released. None when the path is
    not a regular file or the file changed size while it was read (read it the ordinary way then);
    OSError when it cannot be opened."""

"""Whole-engine snapshots in a safe, versioned binary format: `dump(engine)` / `load(config, refs, data)`.

The Kafka worker checkpoints one engine per partition together with its input offsets (docs/worker.md),
so a restore followed by a replay from those offsets applies every event exactly once.

Format: a zip of `.npy` members (numpy's npz) read with `allow_pickle=False`, plus one member `meta`
holding orjson bytes for the small structured parts. Nothing in it can execute code when loaded, so a
party able to write the state topic can corrupt figures but not take over the worker. Arrays are stored
column-wise (one array per field over all pending joins or all blocks), which keeps a snapshot of
100,000 pending joins a few dozen members rather than 100,000 objects.

What a model's state holds, and where it goes:
  versions, segment values     -> meta (JSON)
  counters (ModelTallies)      -> meta, histograms' counts as `<m>.<name>` (monitor.engine.tallies)
  window blocks, cumulative    -> `<m>.fine.*`, `<m>.coarse.*`, `<m>.total.*` (keys + stacked vectors)
  the join table               -> `<m>.join.*` columns, ids, seq, watermark and its JoinCounters in
                                  meta["join"]; the expiry heap is rebuilt
"""

from __future__ import annotations

import io
import itertools
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

import numpy as np
import orjson

from monitor.config import MonitorConfig
from monitor.engine.engine import Engine
from monitor.engine.join import EXPORT_COLUMNS, JoinTable
from monitor.engine.model_state import ModelState, segment_key
from monitor.engine.tallies import JoinCounters, ModelTallies, TalliesError
from monitor.engine.windows import BlockStore
from monitor.reference import Reference
from monitor.spans import TextSpans

FORMAT = "mlmon.engine-snapshot"
VERSION = 1
# A declared uncompressed size above this is refused before anything is inflated (zip bombs).
MAX_UNCOMPRESSED = 8 << 30

# The attributes this module saves or knowingly rebuilds; tests compare them with the live classes so a
# field added to the engine cannot be silently dropped from checkpoints.
MODEL_STATE_FIELDS = frozenset({
    "cfg", "reference", "n_labels", "multiclass", "features", "n_numeric", "feature_spec", "pair_labels",
    "layout", "store", "join", "versions", "version_names", "tallies", "_preds", "_pairs", "no_predictions",
    "no_ground_truth", "exported_pairs", "advised", "advised_slot",
    "segment_values", "_segment_index", "cohorts", "_cohort_rows",
    "_cohort_keys",  # derived from _cohort_rows (a cache)
    "_cells",  # derived from the layout and the reference (the native cell computation), rebuilt on restore
})
# The Python join's fields; the native join exports the same state through the same export()/restore(),
# its counters as JoinCounters fields.
JOIN_FIELDS = frozenset({
    "ttl", "max_entries", "n_labels", "entries", "_heap", "seq", "watermark", "_unpend", "_joins", "_delays",
    "_dirty",  # change tracking for the worker's changelog (monitor.stream.changelog), not state
}) | {f.name for f in fields(JoinCounters)}
# `_rings` is derived: the fine blocks it holds are the same arrays as in `fine` (a restore refills it).
STORE_FIELDS = frozenset({"size", "fine_span", "coarse_span", "fine", "coarse", "total", "newest_fine", "_rings"})


class SnapshotError(Exception):
    """A snapshot that cannot be restored under this configuration (or is not a snapshot at all)."""


# --- dump ------------------------------------------------------------------------------------------------
def dump(engine: Engine, extra: Mapping[str, Any] | None = None, compress: bool = True,
         entries: bool = True) -> bytes:
    """Serialise the engine's whole state; `extra` (JSON-able) travels along, e.g. input offsets.

    `entries=False` leaves out the window blocks and the join entries (empty columns in their place): the
    worker's changelog keeps those as records of their own (monitor.stream.changelog) and fills them in
    with `restore_parts`."""
    engine.flush()  # queued statistics become blocks; after this the per-batch queues are empty
    arrays: dict[str, np.ndarray] = {}
    models: list[dict[str, Any]] = []
    for i, state in enumerate(engine.models.values()):
        models.append(_dump_model(state, f"m{i}", arrays, entries))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "extra": dict(extra or {}),
        "invalid": [[topic, reason, n] for (topic, reason), n in engine.invalid.items()],
        "models": models,
    }
    arrays["meta"] = np.frombuffer(orjson.dumps(meta), dtype=np.uint8)
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def _dump_model(state: ModelState, prefix: str, arrays: dict[str, np.ndarray], entries: bool) -> dict[str, Any]:
    if state._preds:
        raise SnapshotError("model state has unflushed statistics")
    tallies, tally_arrays = state.tallies.dump()
    for name, arr in tally_arrays.items():
        arrays[f"{prefix}.{name}"] = arr
    _dump_store(state.store if entries else BlockStore(state.store.size, []), prefix, arrays)
    join = state.join
    ids, columns = join.export() if entries else ([], empty_join_columns(state.n_labels))
    for name, col in columns.items():
        arrays[f"{prefix}.join.{name}"] = col
    return {
        "name": state.cfg.name,
        "labels": list(state.cfg.labels),
        "task": state.cfg.task,
        "block_size": state.layout.size,
        "versions": list(state.version_names),
        "segments": [seg.name for seg in state.cfg.segments],
        "segment_values": [list(values) for values in state.segment_values],
        "cohorts": [list(key) for key in state.cohorts],  # in index order (a dict keeps insertion order)
        **tallies,
        "newest_fine": state.store.newest_fine,
        "join": {
            "ids": ids,
            "seq": join.seq,
            "watermark": None if join.watermark == float("-inf") else join.watermark,
            **JoinCounters.of(join).dump()[0],
        },
    }


def _dump_store(store: BlockStore, prefix: str, arrays: dict[str, np.ndarray]) -> None:
    for name, blocks in (("fine", store.fine), ("coarse", store.coarse)):
        keys = [(v, b) for v, per_version in blocks.items() for b in per_version]
        arrays[f"{prefix}.{name}.keys"] = np.array(keys, dtype=np.int64).reshape(len(keys), 2)
        arrays[f"{prefix}.{name}.blocks"] = (np.stack([blocks[v][b] for v, b in keys]) if keys
                                            else np.zeros((0, store.size)))
    versions = list(store.total)
    arrays[f"{prefix}.total.keys"] = np.array(versions, dtype=np.int64)
    arrays[f"{prefix}.total.blocks"] = (np.stack([store.total[v] for v in versions]) if versions
                                        else np.zeros((0, store.size)))


def empty_join_columns(n_labels: int) -> dict[str, np.ndarray]:
    return {name: np.zeros((0, n_labels) if name in MATRIX_COLUMNS else 0, dtype=dtype)
            for name, dtype in EXPORT_COLUMNS.items()}


MATRIX_COLUMNS = frozenset({"scores", "predicted", "known", "actual"})


# --- load ------------------------------------------------------------------------------------------------
def load(config: MonitorConfig, references: dict[str, Reference | None] | None, data: bytes) -> Engine:
    return restore(config, references, data)[0]


def restore(config: MonitorConfig, references: dict[str, Reference | None] | None,
            data: bytes, use_native: bool | None = None) -> tuple[Engine, dict[str, Any]]:
    """The engine a snapshot describes, under `config`, and the snapshot's `extra`.

    Models in the snapshot that the config no longer has are dropped; models the config added start
    empty. A model whose labels, task or statistics layout changed cannot be restored (SnapshotError).
    """
    return restore_parts(config, references, *open_parts(data), use_native)


def open_parts(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A snapshot's metadata and arrays, for a caller that fills in parts before `restore_parts`."""
    arrays = _open(data)
    try:
        meta = orjson.loads(arrays.pop("meta").tobytes())
    except orjson.JSONDecodeError:
        raise SnapshotError("snapshot metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise SnapshotError("not an engine snapshot")
    return meta, arrays


def restore_parts(config: MonitorConfig, references: dict[str, Reference | None] | None, meta: dict[str, Any],
                  arrays: dict[str, np.ndarray], use_native: bool | None = None) -> tuple[Engine, dict[str, Any]]:
    if meta.get("format") != FORMAT:
        raise SnapshotError("not an engine snapshot")
    if meta.get("version") != VERSION:
        raise SnapshotError(f"snapshot format version {meta.get('version')} is not supported (this build reads "
                            f"{VERSION})")
    engine = Engine(config, references, use_native)
    try:
        for i, m in enumerate(meta["models"]):
            state = engine.models.get(m["name"])
            if state is not None:
                _load_model(state, m, f"m{i}", arrays)
        engine.invalid = Counter({(topic, reason): int(n) for topic, reason, n in meta["invalid"]})
        extra = meta["extra"]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise SnapshotError(f"snapshot is malformed: {type(exc).__name__}: {exc}") from None
    return engine, extra


def peek_extra(data: bytes) -> dict[str, Any]:
    """Only the `extra` part (cheap: reads the metadata member alone)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        meta = orjson.loads(np.load(zf.open("meta.npy"), allow_pickle=False).tobytes())
    return dict(meta.get("extra", {}))


def _open(data: bytes) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            if sum(info.file_size for info in zf.infolist()) > MAX_UNCOMPRESSED:
                raise SnapshotError("snapshot declares an implausible uncompressed size")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise SnapshotError(f"not a readable snapshot: {exc}") from None


def _check(state: ModelState, m: dict[str, Any]) -> None:
    cfg = state.cfg
    problems = []
    if m["labels"] != list(cfg.labels):
        problems.append(f"labels {m['labels']} became {list(cfg.labels)}")
    if m["task"] != cfg.task:
        problems.append(f"task {m['task']} became {cfg.task}")
    if m["block_size"] != state.layout.size:
        problems.append("the statistics layout changed (features, reference bins or co-occurrence labels)")
    segments = [seg.name for seg in cfg.segments]
    if m.get("segments", []) != segments:
        problems.append(f"segments {m.get('segments', [])} became {segments}")
    if problems:
        raise SnapshotError(f"model {cfg.name!r}: the snapshot was taken under another configuration: "
                            + "; ".join(problems))


def _load_model(state: ModelState, m: dict[str, Any], prefix: str, arrays: dict[str, np.ndarray]) -> None:
    _check(state, m)
    for name in m["versions"]:
        state.version_index(name)
    for seg, values in enumerate(m.get("segment_values", [])):
        for value in values:  # restored as they are: the snapshot's values were admitted under the cap
            state._segment_index[seg][value] = len(state.segment_values[seg])
            state.segment_values[seg].append(value)
    sizes = [len(m["versions"]), *(len(values) for values in state.segment_values)]
    for key in m.get("cohorts", []):
        if len(key) != len(sizes) or not all(0 <= int(x) < n for x, n in zip(key, sizes, strict=True)):
            raise SnapshotError("a cohort names an unknown model version or segment value")
        state.cohort_index(tuple(int(x) for x in key))
    keys_ok = _key_check(state, len(m["versions"]))
    mine = f"{prefix}."
    own = {name[len(mine):]: a for name, a in arrays.items() if name.startswith(mine)}
    try:
        # One value per version the state registered: a checkpoint with more (max_versions lowered since)
        # does not fit.
        state.tallies = ModelTallies.load(m, own, len(state.version_names))
    except TalliesError as exc:
        raise SnapshotError(f"model {state.cfg.name!r}: {exc}") from None
    _load_store(state.store, int(m["newest_fine"]), prefix, arrays, keys_ok)
    # The join keeps cohort indexes (ModelState.cohort_index), which are version indexes without segments.
    n_cohorts = len(state.cohorts) if state.cfg.segments else len(m["versions"])
    _load_join(state.join, m["join"], state.n_labels, n_cohorts, prefix, arrays)


def _key_check(state: ModelState, n_versions: int) -> Callable[[int], None]:
    """A check that a block key names a known version or segment value."""
    known = set(range(n_versions)) | {segment_key(s, i) for s, values in enumerate(state.segment_values)
                                      for i in range(len(values))}

    def check(key: int) -> None:
        if key not in known:
            raise SnapshotError("a block names an unknown model version or segment value")
    return check


def _load_store(store: BlockStore, newest_fine: int, prefix: str, arrays: dict[str, np.ndarray],
                key_ok: Callable[[int], None]) -> None:
    store.newest_fine = newest_fine
    for name, target in (("fine", store.fine), ("coarse", store.coarse)):
        keys = arrays[f"{prefix}.{name}.keys"]
        blocks = _blocks(arrays[f"{prefix}.{name}.blocks"], len(keys), store.size)
        for (v, b), block in zip(keys.tolist(), blocks, strict=True):
            key_ok(v)
            target.setdefault(v, {})[b] = block
    keys = arrays[f"{prefix}.total.keys"]
    for v, block in zip(keys.tolist(), _blocks(arrays[f"{prefix}.total.blocks"], len(keys), store.size),
                        strict=True):
        key_ok(v)
        store.total[v] = block
    # Blocks a shorter window list no longer reaches go now rather than at the next event.
    store.newest_fine -= 1
    store.advance(newest_fine)


def _blocks(stacked: np.ndarray, n: int, size: int) -> list[np.ndarray]:
    if stacked.dtype != np.float64 or stacked.shape != (n, size):
        raise SnapshotError("window blocks have the wrong shape")
    # Separate writable vectors: the store adds into them in place.
    return [row.copy() for row in stacked]


def _load_join(join: JoinTable, m: dict[str, Any], n_labels: int, n_versions: int, prefix: str,
               arrays: dict[str, np.ndarray]) -> None:
    ids = m["ids"]
    n = len(ids)
    col: dict[str, np.ndarray] = {name: np.ascontiguousarray(arrays[f"{prefix}.join.{name}"], dtype=dtype)
                                 for name, dtype in EXPORT_COLUMNS.items()}
    shapes = {name: (n, n_labels) for name in MATRIX_COLUMNS}
    for name, arr in col.items():
        if arr.shape != shapes.get(name, (n,)):
            raise SnapshotError(f"join column {name} has the wrong shape")
    versions = col["pred_version"][col["has_pred"]]
    if n and ((versions < 0) | (versions >= n_versions)).any():
        raise SnapshotError("a pending prediction names an unknown model version")
    # TextSpans (a changelog's keys) are str by construction; a list is checked in one C loop.
    if not isinstance(ids, TextSpans) and not all(map(isinstance, ids, itertools.repeat(str))):
        raise SnapshotError("prediction ids must be strings")
    JoinCounters.load(m).restore(join, ids, col, int(m["seq"]),
                                 float("-inf") if m["watermark"] is None else float(m["watermark"]))

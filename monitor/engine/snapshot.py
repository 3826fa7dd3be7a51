"""Whole-engine snapshots in a safe, versioned binary format: `dump(engine)` / `load(config, refs, data)`.

The Kafka worker checkpoints one engine per partition together with its input offsets (docs/worker.md),
so a restore followed by a replay from those offsets applies every event exactly once.

Format: a zip of `.npy` members (numpy's npz) read with `allow_pickle=False`, plus one member `meta`
holding orjson bytes for the small structured parts. Nothing in it can execute code when loaded, so a
party able to write the state topic can corrupt figures but not take over the worker. Arrays are stored
column-wise (one array per field over all pending joins or all blocks), which keeps a snapshot of
100,000 pending joins a few dozen members rather than 100,000 objects.

This module is the container (members, format version, limits); each model's state dumps and loads
itself (`ModelState.dump` / `load`). What a model's state holds, and where it goes:
  versions, segment values     -> meta (JSON)
  counters (ModelTallies)      -> meta, histograms' counts as `<m>.<name>` (monitor.engine.tallies)
  window blocks, cumulative    -> `<m>.fine.*`, `<m>.coarse.*`, `<m>.total.*` (keys + stacked vectors)
  the join table               -> `<m>.join.*` columns, ids, seq, watermark and its JoinCounters in
                                  meta["join"]; the expiry heap is rebuilt
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from monitor.config import MonitorConfig
from monitor.engine.engine import Engine
from monitor.engine.tallies import StateError
from monitor.reference import Reference

FORMAT = "mlmon.engine-snapshot"
VERSION = 1
# A declared uncompressed size above this is refused before anything is inflated (zip bombs).
MAX_UNCOMPRESSED = 8 << 30

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
    try:
        for i, state in enumerate(engine.models.values()):
            models.append(state.dump(f"m{i}", arrays, entries))
    except StateError as exc:
        raise SnapshotError(str(exc)) from None
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
                state.load(m, f"m{i}", arrays)
        engine.invalid = Counter({(topic, reason): int(n) for topic, reason, n in meta["invalid"]})
        extra = meta["extra"]
    except StateError as exc:
        raise SnapshotError(str(exc)) from None
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

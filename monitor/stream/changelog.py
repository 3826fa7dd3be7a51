"""The worker's state changelog: one partition engine's state as keyed records of a compacted topic.

Partition p of the state topic holds partition p's state, one record per key, the newest value winning:

  b"m"                               the rest of the engine (counters, histograms, versions, the join's
                                     scalars) and the input offsets it describes: a snapshot without
                                     blocks or entries (monitor.engine.snapshot, `entries=False`)
  b"b" kind version bucket model     one window block (kind f: fine, c: coarse, t: cumulative), zlib'd
  b"p" kind version bucket part parts model
                                     one part of a block larger than BLOCK_PART_BYTES (a multiclass model
                                     with hundreds of classes: its confusion matrix), zlib'd; the raw
                                     bytes are cut at fixed offsets, so a block always has the same parts
  b"e" len(model) model id           one join entry (a pending or joined prediction, or waiting ground
                                     truth), fixed-width binary; a tombstone when it leaves the table

A checkpoint writes only what changed since the previous one (join entries the table marked, blocks
whose bytes differ from what was last written) and the meta record, in one Kafka transaction together
with the input offsets (`send_offsets_to_transaction`), so the changelog and the consumer group's
offsets always describe the same prefix of the input. A worker that dies mid-checkpoint leaves an
aborted transaction that read_committed readers and the log cleaner skip. Every record is small (an
entry is 50-150 bytes, a block a few KB, a block part at most BLOCK_PART_BYTES before compression):
nothing comes near the broker's stock 1 MB message limit, whatever the number of pending predictions or
of classes.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from monitor.config import MonitorConfig
from monitor.engine import snapshot
from monitor.engine.engine import Engine
from monitor.engine.join import EXPORT_COLUMNS, empty_join_columns
from monitor.engine.windows import BlockStore
from monitor.reference import Reference
from monitor.spans import TextSpans
from monitor.stream import encoded, raw_fetch

try:
    from monitor import _native
except ImportError:  # the native module was not built: the same columns, a Python step per entry
    _native = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

KEY_META = b"m"
_BLOCK = b"b"
_PART = b"p"
_ENTRY = b"e"
_KINDS = {b"f": "fine", b"c": "coarse", b"t": "total"}
_BLOCK_HEAD = struct.Struct(">cqq")  # kind, version, bucket (0 for the cumulative block)
_PART_HEAD = struct.Struct(">cqqII")  # kind, version, bucket, part, parts
_NAME_LEN = struct.Struct(">H")
# A block's raw bytes above this are written as parts of this size: each compresses to at most a few bytes
# more (zlib's bound), far under the 1 MB message limit, and an unchanged part is not written again.
BLOCK_PART_BYTES = 256 << 10
# Record batches stay well under the broker's stock message.max.bytes (1 MB), which bounds a batch.
MAX_BATCH_BYTES = 512 << 10

Record = tuple[bytes, bytes | None]  # key, value (None: tombstone)


class ChangelogError(Exception):
    """The state topic holds something this worker cannot restore (another configuration, corruption)."""


# --- record encoding (pure) -----------------------------------------------------------------------------
def block_key(model: str, kind: bytes, version: int, bucket: int) -> bytes:
    return _BLOCK + _BLOCK_HEAD.pack(kind, version, bucket) + model.encode()


def block_records(model: str, kind: bytes, version: int, bucket: int, block: np.ndarray) -> Iterator[Record]:
    """(key, raw bytes) of a block: one record, or BLOCK_PART_BYTES parts when it is larger."""
    raw = np.ascontiguousarray(block, dtype=np.float64).tobytes()
    if len(raw) <= BLOCK_PART_BYTES:
        yield block_key(model, kind, version, bucket), raw
        return
    parts = -(-len(raw) // BLOCK_PART_BYTES)
    for i in range(parts):
        key = _PART + _PART_HEAD.pack(kind, version, bucket, i, parts) + model.encode()
        yield key, raw[i * BLOCK_PART_BYTES:(i + 1) * BLOCK_PART_BYTES]


def parse_part_key(key: bytes) -> tuple[str, str, int, int, int, int]:
    kind, version, bucket, part, parts = _PART_HEAD.unpack_from(key, 1)
    if kind not in _KINDS or part >= parts:
        raise ChangelogError(f"bad block part key {key[:24]!r}")
    return key[1 + _PART_HEAD.size:].decode(), _KINDS[kind], version, bucket, part, parts


def entry_key(model: str, pid: str) -> bytes:
    name = model.encode()
    return _ENTRY + _NAME_LEN.pack(len(name)) + name + pid.encode("utf-8", "surrogatepass")


def parse_block_key(key: bytes) -> tuple[str, str, int, int]:
    kind, version, bucket = _BLOCK_HEAD.unpack_from(key, 1)
    if kind not in _KINDS:
        raise ChangelogError(f"unknown block kind {kind!r}")
    return key[1 + _BLOCK_HEAD.size:].decode(), _KINDS[kind], version, bucket


def parse_entry_key(key: bytes) -> tuple[str, str]:
    (n,) = _NAME_LEN.unpack_from(key, 1)
    start = 1 + _NAME_LEN.size
    return key[start:start + n].decode(), key[start + n:].decode("utf-8", "surrogatepass")


def entry_dtype(n_labels: int) -> np.dtype:
    """One join entry: times (prediction, ground truth, expiry), version and sequence, flags (has
    prediction, has ground truth, full), the scores, and the three label vectors bit-packed."""
    return np.dtype([("times", "<f8", 3), ("ints", "<i8", 2), ("flags", "u1"), ("scores", "<f8", n_labels),
                     ("bits", "u1", (3, (n_labels + 7) // 8))])


def encode_rows(columns: dict[str, np.ndarray], n_labels: int) -> tuple[bytes, int]:
    """Join checkpoint columns -> the values of every row, back to back, and the width of one."""
    n = len(columns["has_pred"])
    dtype = entry_dtype(n_labels)
    rows = np.zeros(n, dtype=dtype)
    rows["times"] = np.stack([columns["pred_ts"], columns["truth_ts"], columns["expires"]], axis=1)
    rows["ints"] = np.stack([columns["pred_version"], columns["seq"]], axis=1)
    rows["flags"] = (columns["has_pred"].astype(np.uint8) | (columns["has_truth"].astype(np.uint8) << 1)
                     | (columns["full"].astype(np.uint8) << 2))
    rows["scores"] = columns["scores"].reshape(n, n_labels)
    for i, name in enumerate(("predicted", "known", "actual")):
        rows["bits"][:, i] = np.packbits(columns[name].reshape(n, n_labels).astype(bool), axis=1)
    return rows.tobytes(), dtype.itemsize


def decode_rows(raw: bytes | np.ndarray, n_labels: int) -> dict[str, np.ndarray]:
    """Join checkpoint columns of entry values laid end to end (the caller checks each is one row long)."""
    rows = np.frombuffer(raw, dtype=entry_dtype(n_labels))
    n = len(rows)
    flags = rows["flags"]
    out: dict[str, np.ndarray] = {
        "has_pred": (flags & 1).astype(bool), "has_truth": (flags & 2).astype(bool),
        "full": (flags & 4).astype(bool),
        "pred_ts": rows["times"][:, 0].copy(), "truth_ts": rows["times"][:, 1].copy(),
        "expires": rows["times"][:, 2].copy(),
        "pred_version": rows["ints"][:, 0].copy(), "seq": rows["ints"][:, 1].copy(),
        "scores": rows["scores"].reshape(n, n_labels).copy(),
    }
    for i, name in enumerate(("predicted", "known", "actual")):
        out[name] = np.unpackbits(rows["bits"][:, i], axis=1, count=n_labels).astype(bool).reshape(n, n_labels)
    return {name: out[name].astype(dtype_, copy=False) for name, dtype_ in EXPORT_COLUMNS.items()}


def compress(raw: bytes) -> bytes:
    # Level 1: most of a block is zeros (unused bins), which even the fastest level removes.
    return zlib.compress(raw, 1)


def decompress(value: bytes) -> bytes:
    try:
        return zlib.decompress(value)
    except zlib.error as exc:
        raise ChangelogError(f"a window block does not decompress: {exc}") from None


def block_array(raw: bytes, size: int) -> np.ndarray:
    if len(raw) != size * 8:
        raise ChangelogError("a window block has the wrong size (another statistics layout?)")
    return np.frombuffer(raw, dtype=np.float64).copy()


def _blocks(store: BlockStore) -> Iterable[tuple[bytes, int, int, np.ndarray]]:
    for kind, blocks in ((b"f", store.fine), (b"c", store.coarse)):
        for v, per_version in blocks.items():
            for b, block in per_version.items():
                yield kind, v, b, block
    for v, block in store.total.items():
        yield b"t", v, 0, block


# --- what a checkpoint writes ---------------------------------------------------------------------------
ENTRY_CHUNK = 20_000  # join entries encoded at a time: a checkpoint of millions never holds all as bytes


@dataclass
class JoinChanges:
    model: str
    n_labels: int
    ids: list[str]
    columns: dict[str, np.ndarray]
    gone: list[str]

    def chunks(self) -> Iterator[tuple[list[str], bytes | None, int]]:
        """ENTRY_CHUNK ids at a time with their values end to end and the width of one, then the ids that
        left the table (no values: tombstones)."""
        for start in range(0, len(self.ids), ENTRY_CHUNK):
            chunk = {name: col[start:start + ENTRY_CHUNK] for name, col in self.columns.items()}
            yield self.ids[start:start + ENTRY_CHUNK], *encode_rows(chunk, self.n_labels)
        for start in range(0, len(self.gone), ENTRY_CHUNK):
            yield self.gone[start:start + ENTRY_CHUNK], None, 0


@dataclass
class Changes:
    """One checkpoint: block records (few, encoded now), join changes (encoded chunk by chunk while they
    are sent) and the meta record."""

    blocks: list[Record]
    joins: list[JoinChanges]
    meta: bytes
    written: dict[bytes, bytes]  # block key -> raw bytes (the tracker's view once committed)
    count: int = 0  # records (meta included) and their key + value bytes, once `records()` ran through
    size: int = 0
    # Keep what `parts()` encodes for `copy_to` (for a partition with a local copy of its changelog).
    keep: bool = False
    _kept: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def entries(self) -> int:
        return sum(len(j.ids) + len(j.gone) for j in self.joins)

    def records(self) -> Iterator[Record]:
        """Every record but the meta record, which goes last."""
        self.count, self.size = 1, len(KEY_META) + len(self.meta)
        for key, value in self._records():
            self.count += 1
            self.size += len(key) + len(value or b"")
            yield key, value

    def _records(self) -> Iterator[Record]:
        yield from self.blocks
        for j in self.joins:
            for ids, rows, width in j.chunks():
                for i, pid in enumerate(ids):
                    yield entry_key(j.model, pid), None if rows is None else rows[i * width:(i + 1) * width]

    def parts(self, max_bytes: int) -> Iterator[list[Record] | list[encoded.EncodedBatch]]:
        """The records of `records()`, in the same order: the blocks as records, the join entries as
        natively encoded batches of at most `max_bytes` (monitor.stream.encoded) when that is supported,
        else as records too."""
        self._kept = []
        if not encoded.supported():
            records = list(self.records())
            if self.keep:
                self._kept = records
            yield records
            return
        self.count, self.size = 1 + len(self.blocks), len(KEY_META) + len(self.meta)
        self.size += sum(len(k) + len(v or b"") for k, v in self.blocks)
        if self.keep:
            self._kept = list(self.blocks)
        yield self.blocks
        for j in self.joins:
            prefix = entry_key(j.model, "")
            for ids, rows, width in j.chunks():
                blob, ends = encoded.id_bytes(ids)
                batches, size = encoded.entry_batches(prefix, blob, ends, rows, width, max_bytes)
                if self.keep:
                    self._kept.append((prefix, blob, ends, rows, width))
                self.count += len(ids)
                self.size += size
                yield batches

    def copy_to(self, store: Any) -> None:
        """Give a local copy of the changelog (monitor.stream.local_store) the records `parts()` made, in the
        same order, the meta record last: once they are committed. Needs `keep`."""
        assert self.keep
        for item in self._kept:
            if len(item) == 2:
                store.put(*item)
            else:
                store.add_entries(*item)
        store.put(KEY_META, self.meta)
        self._kept = []


@dataclass
class ChangeTracker:
    """What the changelog holds of one partition's blocks, to write only the blocks that changed. Join
    entries are tracked by the join table itself (`track_changes`).

    A checkpoint is taken (`take`), then written while the engine goes on: `committed` once it is in the
    changelog, `failed` if not, which hands its entries back to the join's change record so the next
    checkpoint writes them (with whatever they became meanwhile)."""

    written: dict[bytes, bytes] = field(default_factory=dict)  # block key -> raw bytes in the changelog

    def take(self, engine: Engine, extra: dict[str, Any]) -> Changes:
        """Everything that changed since the last checkpoint taken, as of now; the join's change record
        starts afresh, so changes made while this checkpoint is written belong to the next one."""
        engine.flush()  # queued statistics become blocks first
        current = block_values(engine)
        blocks: list[Record] = [(key, compress(raw)) for key, raw in current.items() if self.written.get(key) != raw]
        joins = []
        for name, state in engine.models.items():
            ids, columns, gone = state.join.changes()
            state.join.clear_changes()
            joins.append(JoinChanges(name, state.n_labels, ids, columns, gone))
        blocks.extend((key, None) for key in self.written if key not in current)
        meta = snapshot.dump(engine, extra=extra, entries=False)
        return Changes(blocks, joins, meta, current)

    @staticmethod
    def unwritten(engine: Engine) -> int:
        """Join entries changed since the last checkpoint taken: what the next one would write (at most;
        the native join counts an id that left its table and came back twice)."""
        return sum(state.join.changed for state in engine.models.values())

    def committed(self, changes: Changes) -> None:
        """`changes` are in the changelog: blocks are compared against them from now on."""
        self.written = changes.written

    @staticmethod
    def failed(engine: Engine, changes: Changes) -> None:
        """`changes` were not written: their entries count as changed again. Blocks need nothing, as
        `written` still says what the changelog holds."""
        for j in changes.joins:
            engine.models[j.model].join.mark_changed([*j.ids, *j.gone])


def block_values(engine: Engine) -> dict[bytes, bytes]:
    """Every block record of the engine's state, key -> raw value, as the changelog holds them once written
    (what a ChangeTracker compares against)."""
    current: dict[bytes, bytes] = {}
    for name, state in engine.models.items():
        for kind, v, b, block in _blocks(state.store):
            current.update(block_records(name, kind, v, b, block))
    return current


def track(engine: Engine) -> None:
    for state in engine.models.values():
        state.join.track_changes(True)


# --- restore --------------------------------------------------------------------------------------------
def _bounds(parts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    ends = np.cumsum(lengths)
    return ends - lengths, ends


@dataclass
class StateRecords:
    """The newest value of every key of a state partition as columns: key i is
    keys[key_start[i]:key_end[i]], its value values[value_start[i]:value_end[i]], in the order a dict
    filled record by record would hold them, the values end to end in that order. Millions of join
    entries are then decoded with a few numpy operations instead of a Python step per key."""

    keys: np.ndarray  # uint8
    key_start: np.ndarray
    key_end: np.ndarray
    values: np.ndarray  # uint8
    value_start: np.ndarray
    value_end: np.ndarray

    @classmethod
    def of(cls, records: dict[bytes, bytes]) -> StateRecords:
        keys, values = list(records), list(records.values())
        return cls(np.frombuffer(b"".join(keys), dtype=np.uint8), *_bounds(keys),
                   np.frombuffer(b"".join(values), dtype=np.uint8), *_bounds(values))

    def __len__(self) -> int:
        return len(self.key_start)

    @property
    def size(self) -> int:
        return len(self.keys) + len(self.values)

    def entry_mask(self) -> np.ndarray:
        if not len(self):
            return np.zeros(0, dtype=bool)
        empty = self.key_end == self.key_start
        first = self.keys[np.where(empty, 0, self.key_start)]
        return (first == _ENTRY[0]) & ~empty

    def items(self, where: np.ndarray) -> Iterator[Record]:
        keys, values = self.keys, self.values
        for i in where.tolist():
            yield (keys[self.key_start[i]:self.key_end[i]].tobytes(),
                   values[self.value_start[i]:self.value_end[i]].tobytes())

    def entries(self, where: np.ndarray) -> dict[str, tuple[TextSpans, np.ndarray, np.ndarray]]:
        """Per model: the ids, the values end to end (uint8) and their lengths, of the join entries at
        `where` (ascending)."""
        ks, ke = self.key_start[where], self.key_end[where]
        names, group = self._groups(ks, ke)
        if np.any(group < 0):
            raise ChangelogError("a join entry key without its model name")
        out: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
        for g, name in enumerate(names):
            sel = np.flatnonzero(group == g) if len(names) > 1 else np.arange(len(where))
            starts, ends = ks[sel] + 1 + _NAME_LEN.size + len(name), ke[sel]
            ids = TextSpans(self.keys, starts, ends)
            rows = where[sel]
            out[name.decode()] = (ids, self._values(rows), self.value_end[rows] - self.value_start[rows])
        return out

    def _groups(self, ks: np.ndarray, ke: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        """The model names of entry keys (b"e", u16 length, name, id) and each key's index among them (-1:
        too short for its name)."""
        if _native is not None:
            return _native.name_groups(self.keys, ks, ke)
        buf, head = self.keys, 1 + _NAME_LEN.size
        name_len = np.where(ke - ks >= head, buf[np.minimum(ks + 1, len(buf) - 1)].astype(np.int64) * 256
                            + buf[np.minimum(ks + 2, len(buf) - 1)], -1)
        group = np.full(len(ks), -1, dtype=np.int64)
        names: list[bytes] = []
        todo = (name_len >= 0) & (ke - ks >= head + name_len)
        while todo.any():
            # One model at a time: the entries whose name equals the first remaining entry's.
            first = int(np.argmax(todo))
            n, start = int(name_len[first]), int(ks[first]) + head
            name = buf[start:start + n].tobytes()
            same = todo & (name_len == n)
            for j, byte in enumerate(name):
                same &= buf[np.minimum(ks + head + j, len(buf) - 1)] == byte
            group[same] = len(names)
            names.append(name)
            todo &= ~same
        return names, group

    def _values(self, rows: np.ndarray) -> np.ndarray:
        """The values of records `rows` (ascending) end to end. Consecutive records have their values
        side by side, so each run of consecutive rows is one slice (entries usually come in a few runs
        between window blocks)."""
        if not len(rows):
            return np.zeros(0, dtype=np.uint8)
        breaks = np.flatnonzero(np.diff(rows) != 1)
        firsts = np.concatenate(([rows[0]], rows[breaks + 1])).tolist()
        lasts = np.concatenate((rows[breaks], [rows[-1]])).tolist()
        vs, ve = self.value_start, self.value_end
        runs = [self.values[vs[a]:ve[b]] for a, b in zip(firsts, lasts, strict=True)]
        return runs[0] if len(runs) == 1 else np.concatenate(runs)


@dataclass
class Restored:
    engine: Engine
    extra: dict[str, Any]
    tracker: ChangeTracker
    records: int  # the records it was rebuilt from (with a staged read: every record read) and their bytes
    bytes: int


def rebuild(config: MonitorConfig, references: dict[str, Reference | None],
            records: StateRecords | dict[bytes, bytes], staged: Any = None) -> Restored | None:
    """The engine the newest value of every key describes (None: the partition has no state yet).

    With `staged` (a finished monitor._native.Staged, see `read_partitions`) the join entries are there
    and `records` holds the other records; each model's join loads its entries from it."""
    if isinstance(records, dict):
        records = StateRecords.of(records)
    is_entry = records.entry_mask()
    others = dict(records.items(np.flatnonzero(~is_entry)))
    meta_value = others.get(KEY_META)
    if meta_value is None:
        if len(records) or (staged is not None and staged.staged):
            raise ChangelogError(f"{len(records) + (staged.staged if staged else 0)} state records but no meta record")
        return None
    try:
        meta, arrays = snapshot.open_parts(meta_value)
    except snapshot.SnapshotError as exc:
        raise ChangelogError(str(exc)) from None
    prefixes = {m["name"]: (f"m{i}", m) for i, m in enumerate(meta.get("models", []))}
    blocks: dict[str, dict[str, dict[tuple[int, int], np.ndarray]]] = {}
    written: dict[bytes, bytes] = {}
    models = {s.cfg.name: s for s in Engine(config, references).models.values()}
    sizes = {name: s.layout.size for name, s in models.items()}
    labels = {name: s.n_labels for name, s in models.items()}
    parts: dict[tuple[str, str, int, int], dict[int, bytes]] = {}
    counts: dict[tuple[str, str, int, int], int] = {}
    for key, value in others.items():
        if key.startswith(_BLOCK):
            name, kind, v, b = parse_block_key(key)
            if name not in sizes or name not in prefixes:
                continue  # a model the config no longer has
            raw = decompress(value)
            blocks.setdefault(name, {}).setdefault(kind, {})[(v, b)] = block_array(raw, sizes[name])
            written[key] = raw
        elif key.startswith(_PART):
            name, kind, v, b, part, n_parts = parse_part_key(key)
            if name not in sizes or name not in prefixes:
                continue
            raw = decompress(value)
            parts.setdefault((name, kind, v, b), {})[part] = raw
            if counts.setdefault((name, kind, v, b), n_parts) != n_parts:
                raise ChangelogError(f"the parts of a {kind} block of model {name!r} disagree on their count")
            written[key] = raw
        elif key != KEY_META:
            raise ChangelogError(f"unknown state record key {key[:16]!r}")
    entries: dict[str, tuple[TextSpans, np.ndarray]] = {}
    for name, (ids, rows, lengths) in records.entries(np.flatnonzero(is_entry)).items():
        if name in labels and name in prefixes:
            if np.any(lengths != entry_dtype(labels[name]).itemsize):
                raise ChangelogError(f"a join entry is not {entry_dtype(labels[name]).itemsize} bytes long "
                                     "(another label count?)")
            entries[name] = (ids, rows)
    for (name, kind, v, b), got in parts.items():
        if len(got) != counts[(name, kind, v, b)]:
            raise ChangelogError(f"a {kind} block of model {name!r} has {len(got)} of its "
                                 f"{counts[(name, kind, v, b)]} parts")
        raw = b"".join(got[i] for i in range(len(got)))
        blocks.setdefault(name, {}).setdefault(kind, {})[(v, b)] = block_array(raw, sizes[name])
    for name, (prefix, m) in prefixes.items():
        if name not in sizes:
            continue
        # The blocks as the store's own dump: the snapshot's load then checks and keeps them.
        store, got = BlockStore(sizes[name], []), blocks.get(name, {})
        for kind, target in (("fine", store.fine), ("coarse", store.coarse)):
            for (v, b), block in sorted(got.get(kind, {}).items()):
                target.setdefault(v, {})[b] = block
        for (v, _), block in sorted(got.get("total", {}).items()):
            store.total[v] = block
        store.dump(prefix, arrays)
        ids: TextSpans | list[str] = []
        columns = empty_join_columns(labels[name])
        if name in entries:
            ids, rows = entries[name]
            columns = decode_rows(rows, labels[name])
        for col, arr in columns.items():
            arrays[f"{prefix}.join.{col}"] = arr
        m["join"]["ids"] = ids
    try:
        engine, extra = snapshot.restore_parts(config, references, meta, arrays)
    except snapshot.SnapshotError as exc:
        raise ChangelogError(str(exc)) from None
    if staged is not None:
        for name, state in engine.models.items():
            if name in prefixes:
                try:
                    state.join.load_staged(staged, name)
                except ValueError as exc:
                    raise ChangelogError(f"model {name!r}: {exc}") from None
    track(engine)
    if staged is not None:
        return Restored(engine, extra, ChangeTracker(written), staged.records, staged.bytes)
    return Restored(engine, extra, ChangeTracker(written), len(records), records.size)


@dataclass
class PartitionRecords:
    records: StateRecords  # the newest value of every key (with `staged`: of every key but the join entries)
    end: int  # the offset read up to: the partition's last stable offset when reading began
    staged: Any = None  # a finished monitor._native.Staged holding the join entries, when read staged


@dataclass(frozen=True)
class Staging:
    """Read join entries into a staging store under `state_dir` (the system temp directory when None)
    rather than memory: for joins with a memory budget, whose restore then holds at most the budget.
    Only partitions whose changelog spans more than `above` offsets are staged: fewer records cannot
    hold more join entries than a budget of `above`, and a read into memory is faster."""

    state_dir: str | None = None
    above: int = 0


async def read_partitions(reader: AIOKafkaConsumer, topic: str, partitions: list[int], timeout: float = 600.0,
                          raw: bool = True, staging: Staging | None = None,
                          into: dict[int, tuple[Any, int]] | None = None) -> dict[int, PartitionRecords]:
    """The newest value of every key in each state partition, read from the beginning to the last
    committed offset (`reader` reads committed records only). Tombstones remove their key.

    With `raw` (and the native module built) the records come as flat columns from raw Fetch requests
    sent through the reader's client (monitor.stream.raw_fetch) and the newest value of each key is kept
    natively (monitor._native.Latest), without a Python object per record; else aiokafka's getmany, which
    builds a ConsumerRecord per record, fills a dict. Both skip the same control and aborted records.
    With `staging` as well, the join entries go to a staging store as they are read (monitor._native.Staged),
    so memory stays flat however many the partition holds. With `into` (native only), partition p is read
    from offset into[p][1] into the store into[p][0], a local copy of its changelog
    (monitor.stream.local_store), which then holds the newest value of every key."""
    if not partitions:
        return {}
    tps = [TopicPartition(topic, p) for p in partitions]
    ends = await reader.end_offsets(tps)  # the last stable offset under read_committed
    starts = await reader.beginning_offsets(tps)
    into = into or {}
    if into and not (raw and raw_fetch.available()):
        raise ValueError("local copies of the changelog are read natively only")
    for tp in tps:
        if tp.partition in into:
            starts[tp] = into[tp.partition][1]
    todo = {tp: ends[tp] for tp in tps if ends[tp] > starts[tp]}
    if raw and raw_fetch.available():
        staged = {tp for tp in tps if tp.partition in into
                  or (staging is not None and ends[tp] - starts[tp] > staging.above)}
        state_dir = staging.state_dir if staging is not None else None
        latest = {tp: into[tp.partition][0] if tp.partition in into
                  else _native.Staged(state_dir) if tp in staged else raw_fetch.latest() for tp in tps}
        if todo:
            # The reader's own client: its connections and metadata, no group, nothing assigned.
            fetcher = raw_fetch.RawReader(reader._client, raw_fetch.READ_COMMITTED)
            # Each fetch result is added on a thread (the native add lets go of the GIL) while the loop
            # receives and unpacks the next; a partition's results are added one after the other, in order.
            adding: dict[TopicPartition, asyncio.Future[None]] = {}
            try:
                async for tp, cols in fetcher.read({tp: starts[tp] for tp in todo}, todo, timeout):
                    if tp in adding:
                        await adding[tp]
                    adding[tp] = asyncio.ensure_future(asyncio.to_thread(
                        latest[tp].add, cols.data, cols.key_start, cols.key_end, cols.value_start, cols.value_end))
            finally:
                await asyncio.gather(*adding.values(), return_exceptions=True)
            for added in adding.values():
                added.result()
        out = {}
        for tp in tps:
            if tp in staged:
                latest[tp].finish()
                out[tp.partition] = PartitionRecords(StateRecords(*latest[tp].take_others()), ends[tp], latest[tp])
            else:
                out[tp.partition] = PartitionRecords(StateRecords(*latest[tp].take_columns()), ends[tp])
        return out
    state: dict[TopicPartition, dict[bytes, bytes]] = {tp: {} for tp in tps}
    if todo:
        await _read_getmany(reader, starts, todo, state, timeout)
    return {tp.partition: PartitionRecords(StateRecords.of(state[tp]), ends[tp]) for tp in tps}


async def _read_getmany(reader: AIOKafkaConsumer, starts: dict[TopicPartition, int], todo: dict[TopicPartition, int],
                        state: dict[TopicPartition, dict[bytes, bytes]], timeout: float) -> None:
    reader.assign(list(todo))
    for tp in todo:
        reader.seek(tp, starts[tp])
    deadline = time.monotonic() + timeout
    try:
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read the state of partitions {sorted(tp.partition for tp in todo)} "
                                   f"within {timeout:.0f} s")
            batch = await reader.getmany(timeout_ms=500, max_records=50_000)
            for tp, got in batch.items():
                records = state[tp]
                for record in got:
                    if record.value is None:
                        records.pop(record.key, None)
                    else:
                        records[record.key] = record.value
            for tp in list(todo):
                # Control records (transaction markers) take offsets too: the position is what counts.
                if await reader.position(tp) >= todo[tp]:
                    del todo[tp]
                    reader.pause(tp)
    finally:
        reader.assign([])


# --- writing ------------------------------------------------------------------------------------------------
class StateWriter:
    """The transactional producer of one state partition. Its transactional id is fixed per partition,
    so a new owner's producer fences the previous owner's (Kafka's zombie fencing): a worker that lost a
    partition can no longer commit state for it."""

    def __init__(self, topic: str, partition: int, group_id: str, client_options: dict[str, Any]) -> None:
        self.topic = topic
        self.partition = partition
        self.group_id = group_id
        self.options = client_options
        self.producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Start the producer; its init_transactions aborts whatever the previous owner left open."""
        self.producer = AIOKafkaProducer(
            transactional_id=f"{self.group_id}-state-{self.partition}", enable_idempotence=True, acks="all",
            max_batch_size=MAX_BATCH_BYTES, linger_ms=0, **self.options)
        try:
            await self.producer.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), 10)
            except Exception as exc:  # closing a broken producer must not take the worker with it
                log.debug("state writer %d: stop failed: %s", self.partition, exc)

    async def write(self, changes: Changes, offsets: dict[TopicPartition, int]) -> int:
        """Write a checkpoint's records, the meta record last, and the input offsets in one transaction;
        returns the meta record's offset."""
        if self.producer is None:
            await self.start()
        producer = self.producer
        assert producer is not None
        await producer.begin_transaction()
        try:
            sends = []
            for part in changes.parts(MAX_BATCH_BYTES):
                if part and isinstance(part[0], encoded.EncodedBatch):
                    for made in part:
                        sends.append(await producer.send_batch(made, self.topic, partition=self.partition))
                    continue
                batch = producer.create_batch()
                for key, value in part:
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        sends.append(await producer.send_batch(batch, self.topic, partition=self.partition))
                        batch = producer.create_batch()
                        if batch.append(key=key, value=value, timestamp=None) is None:
                            raise ChangelogError(f"a state record of {len(value or b'')} bytes does not fit a batch")
                if batch.record_count():
                    sends.append(await producer.send_batch(batch, self.topic, partition=self.partition))
            meta = await producer.send(self.topic, value=changes.meta, key=KEY_META, partition=self.partition)
            await producer.send_offsets_to_transaction(offsets, self.group_id)
            await producer.commit_transaction()
        except BaseException:
            # The producer may be mid-transaction or fenced: a fresh one (whose init aborts what this one
            # left open) is the only safe state to retry from.
            await self.close()
            raise
        for fut in sends:
            await fut
        return int((await meta).offset)

"""A local copy of each state partition's changelog, so a restarted worker reads only its tail.

The changelog is the state's source of truth, and restoring a big partition from it reads every record
(seconds per million pending predictions). So the worker also keeps (unless `--no-local-store`; the
native core is needed), per partition, an embedded store (`monitor._native.Staged.local`, fjall) under
`<state dir>/local/<group>/partition-<p>` holding the newest value of every changelog key. It is fed the
records of each checkpoint only after the checkpoint's transaction commits, so it never holds state the
changelog does not, and it is sealed now and then with a mark: the changelog offset up to which it holds
every record, with the partition and topics it describes and the time. A crash between seals loses only
what came after the mark, which the changelog still has.

On assignment, after fencing the previous owner, the worker opens the copy and reads the changelog from
the mark's offset to its end into it (rather than from the beginning), then loads the join from the copy
as a staged restore does. That is right whoever wrote the changelog after the mark (this worker before a
kill -9, or another worker since), because records after the mark are applied on top, in order. A copy is
not used, and is wiped and rebuilt from the whole changelog, when its mark names another partition or
other topics, when the mark's offset is outside the changelog (the topic was recreated or truncated),
when the copy cannot be opened, or when the mark is older than the state topic's `delete.retention.ms`:
after that long, compaction may have removed a tombstone written after the mark, and the copy would keep
an entry the changelog no longer has.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from monitor.stream import raw_fetch
from monitor.stream.changelog import Changes

try:
    from monitor import _native
except ImportError:  # the pure-Python install: no local copies
    _native = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# Records given to a copy between seals, at most: the entries among them wait in memory (a partition's copy
# costs about this much) and are written as one sorted run when it is sealed, in a fraction of a second.
SEAL_BYTES = 16 << 20
# Entry records held in memory before they are written as a run, sealed or not (a restore's read of a
# long tail, or a checkpoint larger than SEAL_BYTES).
RUN_BYTES = 32 << 20
# A copy is sealed at least this often while records arrive, and whenever SEAL_BYTES of them are held, so
# a restart after a crash reads about this long of the changelog at most, or SEAL_BYTES of records.
SEAL_SECONDS = float(os.environ.get("MLMON_LOCAL_SEAL_SECONDS", "60"))
# When the input pauses (a checkpoint finds nothing to write), a copy holding at least this much is sealed
# then rather than at its next deadline: the pause is spare time, and a restart after it reads no tail. The
# floor keeps an input that pauses every few seconds from leaving a run per pause (runs are merged only
# when many have piled up, a rewrite of the whole copy).
IDLE_SEAL_BYTES = int(os.environ.get("MLMON_LOCAL_IDLE_SEAL_BYTES", str(1 << 20)))


@dataclass(frozen=True)
class Mark:
    """What a sealed copy holds: every record of `topic` partition `partition` before `offset`."""

    offset: int
    written_at: float  # wall clock, seconds
    topic: str
    partition: int
    inputs: dict[str, str]  # offset key -> input topic, as the worker's state describes them

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | None) -> Mark | None:
        if raw is None:
            return None
        try:
            return cls(**orjson.loads(raw))
        except (orjson.JSONDecodeError, TypeError):
            return None


def directory(state_dir: str, group: str) -> Path:
    return Path(state_dir) / "local" / group


def supported() -> bool:
    """Copies need the native core (its store, and the native changelog reader that fills them)."""
    return raw_fetch.available()


class LocalCopy:
    """One partition's copy: the store, and the offset after the last records it was given."""

    def __init__(self, store: Any, path: Path, topic: str, partition: int, inputs: dict[str, str]) -> None:
        self.store = store
        self.path = path
        self.topic = topic
        self.partition = partition
        self.inputs = inputs
        self.end: int | None = None  # the changelog offset after the records given so far
        self.sealed_at = time.monotonic()
        self.unsealed = 0  # key and value bytes given since the last seal
        self.reused = False  # opened with a usable mark (not made anew)

    def feed(self, changes: Changes, end: int) -> None:
        """A committed checkpoint's records, then `end`, the changelog offset after its transaction; seals
        when the window is full or the last seal is old. Blocking (disk): run it off the event loop."""
        changes.copy_to(self.store)
        self.end = end
        self.unsealed += max(changes.size, 1)
        if self.unsealed >= SEAL_BYTES or self.due():
            self.seal()

    def due(self, idle: bool = False) -> bool:
        """Records given since a seal SEAL_SECONDS ago or more; when the input is `idle`, also at least
        IDLE_SEAL_BYTES of records, however recent the last seal."""
        if idle and self.unsealed >= IDLE_SEAL_BYTES:
            return True
        return self.unsealed > 0 and time.monotonic() - self.sealed_at >= SEAL_SECONDS

    def seal(self) -> None:
        """Everything given so far, marked as the changelog up to `end` (blocking)."""
        if self.end is None:
            return
        self.store.seal(Mark(self.end, time.time(), self.topic, self.partition, self.inputs).encode())
        self.sealed_at = time.monotonic()
        self.unsealed = 0

    def close(self) -> None:
        self.store.close()

    def discard(self) -> None:
        """Close and delete the copy (it may now miss records: the changelog has them)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)


def open_copy(folder: Path, topic: str, partition: int, inputs: dict[str, str], start: int, end: int,
              tombstone_ms: int, now: float | None = None) -> tuple[LocalCopy, int] | None:
    """The partition's copy and the changelog offset to read it from: its mark's offset when the copy is
    usable (see the module doc), else `start` after wiping it. None when another worker (process) holds
    the copy open: it is left alone, and this one goes without. Raises OSError or ValueError when not even
    an empty copy can be made there."""
    path = folder / f"partition-{partition}"
    now = time.time() if now is None else now
    try:
        store = _native.Staged.local(str(path), RUN_BYTES)
    except (OSError, ValueError) as exc:
        if _native.LOCAL_STORE_IN_USE in str(exc):
            log.warning("partition %d: local store %s is in use by another worker on this state dir; going "
                        "without one", partition, path)
            return None
        # A damaged copy: the changelog has everything.
        log.warning("partition %d: local store %s not usable (%s); rebuilding it from the changelog", partition,
                    path, exc)
        shutil.rmtree(path, ignore_errors=True)
        store = None
    if store is not None:
        copy = LocalCopy(store, path, topic, partition, inputs)
        mark = Mark.decode(store.mark)
        why = _unusable(mark, topic, partition, inputs, start, end, tombstone_ms, now)
        if why is None:
            assert mark is not None
            copy.end, copy.reused = mark.offset, True
            return copy, mark.offset
        if mark is not None or store.staged:
            log.info("partition %d: local store not used (%s); rebuilding it from the changelog", partition, why)
        copy.discard()
    path.parent.mkdir(parents=True, exist_ok=True)
    return LocalCopy(_native.Staged.local(str(path), RUN_BYTES), path, topic, partition, inputs), start


def _unusable(mark: Mark | None, topic: str, partition: int, inputs: dict[str, str], start: int, end: int,
              tombstone_ms: int, now: float) -> str | None:
    if mark is None:
        return "never sealed"
    if (mark.topic, mark.partition, mark.inputs) != (topic, partition, inputs):
        return f"it holds {mark.topic}[{mark.partition}] of {mark.inputs}"
    if not start <= mark.offset <= end:
        return f"its offset {mark.offset} is outside the changelog's {start}..{end}"
    age = now - mark.written_at
    if age * 1000 >= tombstone_ms:
        return (f"sealed {age / 3600:.1f} h ago, beyond the state topic's delete.retention.ms "
                f"({tombstone_ms / 3600e3:.1f} h): compaction may have removed tombstones since")
    return None

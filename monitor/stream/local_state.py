"""A partition's state kept on local disk across a graceful restart, used only when it matches the changelog.

The changelog is the state's source of truth; restoring a big partition from it reads every record
(seconds per million pending predictions). A worker that stops gracefully has just written its last
checkpoint, so its in-memory state is exactly what the changelog holds up to that checkpoint's end
offset. It writes that state to `<state dir>/local/<group>/partition-<p>-at-<end>.state` (a snapshot,
written to a temporary name and renamed, so a crash mid-write leaves no half file), where `<end>` is
the changelog end offset it describes. A restarted worker that is assigned the partition loads the file
instead of reading the changelog when, after fencing the previous owner, the changelog still ends at
that offset: nothing was written since, so file and changelog describe the same state. Otherwise
(another worker wrote state since, a kill -9 after later checkpoints, other topics) the file is ignored
and the changelog is read, as without a state dir. Files are removed once looked at: a partition's
file can match only once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.config import MonitorConfig
from monitor.engine import snapshot
from monitor.engine.engine import Engine
from monitor.reference import Reference

log = logging.getLogger(__name__)


@dataclass
class LocalState:
    engine: Engine
    extra: dict[str, Any]
    bytes: int


def directory(state_dir: str, group: str) -> Path:
    return Path(state_dir) / "local" / group


def save(folder: Path, partition: int, state_end: int, engine: Engine, extra: dict[str, Any]) -> int:
    """Write the engine's whole state (and `extra`) as describing the changelog up to `state_end`, in place
    of any older file of the partition; returns the bytes written."""
    data = snapshot.dump(engine, extra={**extra, "state_end": state_end})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"partition-{partition}-at-{state_end}.state"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    for old in folder.glob(f"partition-{partition}-at-*.state"):
        if old != path:
            _remove(old)
    return len(data)


def take(folder: Path, partition: int, state_end: int, config: MonitorConfig,
         references: dict[str, Reference | None], expect: dict[str, Any]) -> LocalState | None:
    """The partition's saved state when it describes the changelog up to `state_end` and its extra
    matches `expect` (partition, topics); else None. Every file of the partition is removed: once the
    partition's changelog moves on, a file can never match again."""
    found = sorted(folder.glob(f"partition-{partition}-at-*.state"))
    current = folder / f"partition-{partition}-at-{state_end}.state"
    out = None
    for path in found:
        if path == current:
            out = _load(path, config, references, expect)
        else:
            log.info("%s: older than the changelog, which now ends at %d; not used", path, state_end)
        _remove(path)
    return out


def _load(path: Path, config: MonitorConfig, references: dict[str, Reference | None],
          expect: dict[str, Any]) -> LocalState | None:
    try:
        data = path.read_bytes()
        engine, extra = snapshot.restore(config, references, data)
    except Exception as exc:  # any unreadable file: the changelog is the source of truth, fall back to it
        log.warning("%s: not usable (%s: %s); restoring from the changelog", path, type(exc).__name__, exc)
        return None
    mismatch = [k for k, v in expect.items() if extra.get(k) != v]
    if mismatch:
        log.info("%s: other %s than this worker's; restoring from the changelog", path, ", ".join(mismatch))
        return None
    return LocalState(engine, extra, len(data))


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError as exc:
        log.warning("%s: not removed (%s)", path, exc)

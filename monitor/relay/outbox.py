"""Durable outbox: retraining requests survive relay restarts in a SQLite file (WAL mode).

A request is committed (fsync'd: synchronous=FULL) before Alertmanager gets its 200, and leaves the
`pending` state only when the receiver answered 2xx (`delivered`) or a non-retryable 4xx (`failed`).
An exclusive flock on `<outbox>.lock` keeps a second relay off the same file, because two senders draining
one outbox would deliver requests twice.

All methods are blocking and thread-safe (one connection behind a lock); the relay calls them through
asyncio.to_thread so an fsync never stalls the event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from monitor.relay.payload import Episode, idempotency_key

PENDING: Final = "pending"
DELIVERED: Final = "delivered"
FAILED: Final = "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    idempotency_key  TEXT NOT NULL UNIQUE,
    model            TEXT NOT NULL,
    body             BLOB NOT NULL,
    created_at       REAL NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_error       TEXT,
    finished_at      REAL
);
CREATE INDEX IF NOT EXISTS requests_due ON requests (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS requests_model ON requests (model, created_at);
CREATE TABLE IF NOT EXISTS episodes (
    model        TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    starts_at    TEXT NOT NULL,
    request_key  TEXT NOT NULL,
    seen_at      REAL NOT NULL,
    PRIMARY KEY (model, fingerprint, starts_at)
);
"""


class OutboxLockedError(RuntimeError):
    """Another relay holds this outbox."""


@dataclass(frozen=True)
class Entry:
    id: int
    idempotency_key: str
    model: str
    body: bytes
    created_at: float
    attempts: int


@dataclass(frozen=True)
class EnqueueResult:
    outcome: Literal["enqueued", "duplicate", "suppressed"]
    idempotency_key: str | None
    # For "suppressed": seconds left in the model's cooldown.
    cooldown_left: float = 0.0


class Outbox:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(f"{self.path}.lock", "a+")  # noqa: SIM115 - held for the outbox's lifetime
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise OutboxLockedError(
                f"outbox {self.path} is in use by another relay (lock {self.path}.lock); "
                "two relays on one outbox would deliver requests twice"
            ) from None
        self._lock_file.truncate(0)
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()
        self._mutex = threading.Lock()
        # autocommit mode (isolation_level=None): transactions are the explicit BEGIN IMMEDIATE below.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we answer Alertmanager, even across power loss.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def enqueue(
        self,
        model: str,
        alert_episodes: list[Episode],
        now: float,
        cooldown: float,
        make_body: Callable[[str], bytes],
    ) -> EnqueueResult:
        """Dedupe, apply the model's cooldown and store a new request, in one transaction.

        Episodes already seen make a notification a duplicate (Alertmanager repeats firing alerts every
        repeat_interval, and an HA pair sends each notification twice). Only a notification with a new
        episode can start a request, and only when the model's last accepted request is older than the
        cooldown. Suppressed episodes are not recorded: if the alert still fires after the cooldown, the
        next repeat triggers retraining then.
        """
        with self._tx() as db:
            new = []
            seen_key = None
            for e in alert_episodes:
                row = db.execute(
                    "SELECT request_key FROM episodes WHERE model=? AND fingerprint=? AND starts_at=?",
                    (model, e.fingerprint, e.starts_at),
                ).fetchone()
                if row is None:
                    new.append(e)
                else:
                    seen_key = seen_key or row[0]
            if not new:
                return EnqueueResult("duplicate", seen_key)
            # A permanently failed request did not start a retraining, so it does not start a cooldown.
            (last,) = db.execute(
                "SELECT MAX(created_at) FROM requests WHERE model=? AND status IN ('pending', 'delivered')",
                (model,),
            ).fetchone()
            if last is not None and now - last < cooldown:
                return EnqueueResult("suppressed", None, cooldown_left=cooldown - (now - last))
            key = idempotency_key(model, new)
            cur = db.execute(
                "INSERT OR IGNORE INTO requests"
                " (idempotency_key, model, body, created_at, status, next_attempt_at)"
                " VALUES (?, ?, ?, ?, 'pending', ?)",
                (key, model, make_body(key), now, now),
            )
            outcome: Literal["enqueued", "duplicate"] = "enqueued" if cur.rowcount == 1 else "duplicate"
            db.executemany(
                "INSERT OR IGNORE INTO episodes (model, fingerprint, starts_at, request_key, seen_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(model, e.fingerprint, e.starts_at, key, now) for e in alert_episodes],
            )
            return EnqueueResult(outcome, key)

    def due(self, now: float, limit: int = 50) -> list[Entry]:
        with self._mutex:
            rows = self._db.execute(
                "SELECT id, idempotency_key, model, body, created_at, attempts FROM requests"
                " WHERE status='pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
                (now, limit),
            ).fetchall()
        return [Entry(*r) for r in rows]

    def next_attempt_at(self) -> float | None:
        with self._mutex:
            (t,) = self._db.execute(
                "SELECT MIN(next_attempt_at) FROM requests WHERE status='pending'"
            ).fetchone()
        return t

    def mark_delivered(self, entry_id: int, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE requests SET status='delivered', attempts=attempts+1, finished_at=?, last_error=NULL"
                " WHERE id=?",
                (now, entry_id),
            )

    def mark_failed(self, entry_id: int, now: float, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE requests SET status='failed', attempts=attempts+1, finished_at=?, last_error=?"
                " WHERE id=?",
                (now, error, entry_id),
            )

    def reschedule(self, entry_id: int, next_attempt_at: float, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE requests SET attempts=attempts+1, next_attempt_at=?, last_error=? WHERE id=?",
                (next_attempt_at, error, entry_id),
            )

    def stats(self) -> tuple[int, float | None]:
        """(pending requests, created_at of the oldest pending one)."""
        with self._mutex:
            n, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(created_at) FROM requests WHERE status='pending'"
            ).fetchone()
        return n, oldest

    def counts(self) -> dict[str, int]:
        with self._mutex:
            rows = self._db.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall()
        return {PENDING: 0, DELIVERED: 0, FAILED: 0, **dict(rows)}

    def requests(self) -> list[dict[str, object]]:
        """Every stored request, oldest first (for operators and tests)."""
        with self._mutex:
            cur = self._db.execute(
                "SELECT id, idempotency_key, model, status, attempts, created_at, finished_at, last_error"
                " FROM requests ORDER BY id"
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def prune(self, older_than: float) -> int:
        """Forget finished requests and their episodes older than `older_than` (epoch seconds).

        Pending requests are never pruned. An episode outlives its request only as long as the retention:
        an alert still firing after that can start a new request (subject to the cooldown).
        """
        with self._tx() as db:
            n = db.execute(
                "DELETE FROM requests WHERE status != 'pending' AND created_at < ?", (older_than,)
            ).rowcount
            db.execute(
                "DELETE FROM episodes WHERE seen_at < ? AND request_key NOT IN"
                " (SELECT idempotency_key FROM requests WHERE status='pending')",
                (older_than,),
            )
        return n

    def close(self) -> None:
        with self._mutex:
            self._db.close()
        fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
        self._lock_file.close()

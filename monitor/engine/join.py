"""The symmetric prediction / ground-truth join with TTL expiry and corrections.

Either side may arrive first. A prediction stays joinable for `ttl` after its timestamp, and after it is
joined it stays for the rest of that time so a later ground truth can correct it: the old outcome is
reverted and the new one applied, never doubled. Which ground truth wins does not depend on arrival
order: the one with the later timestamp, ties going to the later arrival (an identical re-send is a
duplicate). Expiry runs on event time (the
newest timestamp seen), so a replay and a live worker expire the same events.

The table calls back into a `JoinSink`; it keeps no statistics itself.
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Protocol

import numpy as np

from monitor.conventions import SIDE_GROUND_TRUTH, SIDE_JOINED, SIDE_PREDICTION
from monitor.events import GroundTruth, Prediction


class Pred:
    """What a pending or joined prediction keeps: about 300 bytes for 6 labels (docs/operations.md)."""

    __slots__ = ("predicted", "scores", "ts", "version")

    def __init__(self, p: Prediction, version: int) -> None:
        self.ts = p.ts
        self.version = version
        self.scores = p.scores
        self.predicted = p.predicted


class Truth:
    __slots__ = ("actual", "full", "known", "seq", "ts")

    def __init__(self, g: GroundTruth, seq: int) -> None:
        self.ts = g.ts
        self.known = g.known
        self.actual = g.actual
        self.full = g.full
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


class JoinSink(Protocol):
    def on_prediction(self, pred: Pred, features: dict | None) -> None: ...
    def on_join(self, pred: Pred, truth: Truth, sign: int) -> None: ...
    def on_first_join(self, pred: Pred, truth: Truth) -> None: ...
    def on_unpend(self, pred: Pred) -> None: ...


class JoinTable:
    def __init__(self, ttl: float, max_entries: int, sink: JoinSink) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.sink = sink
        self.entries: dict[str, Entry] = {}
        self._heap: list[tuple[float, str]] = []
        self._seq = 0
        self.watermark = float("-inf")
        self.pending = {SIDE_PREDICTION: 0, SIDE_GROUND_TRUTH: 0}
        self.expired: Counter[str] = Counter()
        # Removed early by the max_entries cap, by what the entry held (prediction / ground_truth: still
        # waiting, so also counted in `expired`; joined: its outcome stays, later corrections miss it).
        self.evicted: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()  # by side
        self.corrections = 0
        self.joined = 0

    def _schedule(self, pid: str, entry: Entry, expires: float) -> None:
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

    def add_prediction(self, p: Prediction, version: int) -> None:
        self.watermark = max(self.watermark, p.ts)
        entry = self._live(p.prediction_id)
        if entry is None:
            entry = self.entries[p.prediction_id] = Entry()
        elif entry.pred is not None:
            self.duplicates[SIDE_PREDICTION] += 1
            return
        pred = entry.pred = Pred(p, version)
        self.sink.on_prediction(pred, p.features)
        if entry.truth is None:
            self.pending[SIDE_PREDICTION] += 1
        else:
            self.pending[SIDE_GROUND_TRUTH] -= 1
            self.joined += 1
            self.sink.on_unpend(pred)  # on_prediction counted it as pending; it never was
            self.sink.on_first_join(pred, entry.truth)
            self.sink.on_join(pred, entry.truth, +1)
        self._schedule(p.prediction_id, entry, p.ts + self.ttl)
        self._enforce_cap()

    def add_ground_truth(self, g: GroundTruth) -> None:
        self.watermark = max(self.watermark, g.ts)
        self._seq += 1
        truth = Truth(g, self._seq)
        entry = self._live(g.prediction_id)
        if entry is None:
            entry = self.entries[g.prediction_id] = Entry()
            entry.truth = truth
            self.pending[SIDE_GROUND_TRUTH] += 1
            self._schedule(g.prediction_id, entry, g.ts + self.ttl)
            self._enforce_cap()
            return
        old = entry.truth
        # A re-sent identical truth is a duplicate; an older one is stale. A newer one with the same labels
        # still replaces, since it moves the observation time (order-independent either way).
        if old is not None and (not truth.supersedes(old) or (truth.ts == old.ts and truth.same_as(old))):
            self.duplicates[SIDE_GROUND_TRUTH] += 1
            return
        entry.truth = truth
        pred = entry.pred
        if pred is None:  # replacing a ground truth that still waits for its prediction
            self._schedule(g.prediction_id, entry, g.ts + self.ttl)
            return
        if old is None:
            self.pending[SIDE_PREDICTION] -= 1
            self.joined += 1
            self.sink.on_unpend(pred)
            self.sink.on_first_join(pred, truth)
        else:
            self.corrections += 1
            self.sink.on_join(pred, old, -1)
        self.sink.on_join(pred, truth, +1)

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
        del self.entries[pid]
        if entry.pred is None:
            self.pending[SIDE_GROUND_TRUTH] -= 1
            self.expired[SIDE_GROUND_TRUTH] += 1
        elif entry.truth is None:
            self.pending[SIDE_PREDICTION] -= 1
            self.expired[SIDE_PREDICTION] += 1
            self.sink.on_unpend(entry.pred)
        # A joined entry just leaves: its outcome stays counted, later corrections start a new wait.

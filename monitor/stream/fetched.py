"""Fetched records as columns (values, keys, offsets) instead of one `ConsumerRecord` per record.

aiokafka's `getmany` builds a Python `ConsumerRecord` (a dataclass with eleven fields) for every record;
on a plain input that was most of the worker's own CPU. `take` reads the fetch results aiokafka's fetcher
has already buffered and returns each partition's records as columns. Everything else stays aiokafka's:
group membership, fetch requests and prefetching, positions, read_committed filtering (aborted
transactions and control batches are skipped by aiokafka's own `PartitionRecords`), errors.

With the native core, a fetch result's record batches are unpacked in Rust (`raw_fetch.unpack`, as the
changelog reader does: the kafka-protocol crate's batch decoder under aiokafka's consumer rules) into
one buffer of keys and values with their spans, which the native decoder reads without a Python object
per record; the raw bytes come from aiokafka's `MemoryRecords`, which `install` makes keep them.
Without it, aiokafka's own iteration (Cython) gives the columns.

This reads aiokafka's fetcher internals (`Fetcher._records`, `FetchResult`, `PartitionRecords`), which
are not a public API: `supported` checks them once, and the worker falls back to `getmany` (and says
so) when they differ. tests/test_fetched.py compares every path record by record with getmany on a real
broker, transactions (committed and aborted) and compressed batches included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from monitor.engine import native
from monitor.spans import Spans
from monitor.stream import raw_fetch

log = logging.getLogger(__name__)


@dataclass
class PartitionBatch:
    """One partition's records from one fetch, in offset order. `records` holds aiokafka's records when
    they came from getmany (mapped inputs read their key, headers and timestamps); the columns are
    always there."""

    tp: TopicPartition
    values: Sequence[bytes]  # a record without a value is b""
    keys: Sequence[bytes | None]
    offsets: Sequence[int]
    records: list[ConsumerRecord] | None = None

    @classmethod
    def of_records(cls, tp: TopicPartition, records: list[ConsumerRecord]) -> PartitionBatch:
        return cls(tp, [r.value if r.value is not None else b"" for r in records], [r.key for r in records],
                   [r.offset for r in records], records)

    def __len__(self) -> int:
        return len(self.offsets)

    def since(self, offset: int) -> PartitionBatch:
        """The records at or after `offset` (those before it are already applied)."""
        if not self.offsets or self.offsets[0] >= offset:
            return self
        i = next((i for i, o in enumerate(self.offsets) if o >= offset), len(self.offsets))
        return PartitionBatch(self.tp, self.values[i:], self.keys[i:], self.offsets[i:],
                              self.records[i:] if self.records is not None else None)

    def record(self, i: int) -> ConsumerRecord:
        """Record i as aiokafka would have given it (for dead letters); headers and timestamps are only
        known when the batch came from getmany."""
        if self.records is not None:
            return self.records[i]
        value = self.values[i]
        key = self.keys[i]
        return ConsumerRecord(self.tp.topic, self.tp.partition, self.offsets[i], -1, 0, key, value, None,
                              -1 if key is None else len(key), len(value), ())


def supported(consumer: AIOKafkaConsumer) -> bool:
    """Whether this aiokafka's fetcher has the layout `take` reads (call after `start`)."""
    fetcher = getattr(consumer, "_fetcher", None)
    subscription = getattr(consumer, "_subscription", None)
    try:
        from aiokafka.consumer.fetcher import FetchResult, PartitionRecords
    except ImportError:
        return False
    return (fetcher is not None and subscription is not None and isinstance(getattr(fetcher, "_records", None), dict)
            and all(hasattr(fetcher, a) for a in ("_notify", "_wait_consume_future", "_create_fetch_waiter"))
            and all(hasattr(FetchResult, a) for a in ("check_assignment", "_update_position", "has_more"))
            and hasattr(PartitionRecords, "_consumer_record") and hasattr(subscription, "fetch_context"))


def install() -> bool:
    """Make aiokafka's fetcher keep each partition's raw record bytes (on its `MemoryRecords`, as `raw`)
    so the native core can unpack them; True when that is in place. Process-wide and idempotent: the
    subclass only adds the attribute, aiokafka's own reading is unchanged."""
    if not raw_fetch.available():
        return False
    try:
        import aiokafka.consumer.fetcher as fetcher_module
    except ImportError:
        return False
    base = getattr(fetcher_module, "MemoryRecords", None)
    if base is None:
        return False
    if getattr(base, "keeps_raw", False):
        return True

    class RawMemoryRecords(base):  # type: ignore[misc, valid-type]
        keeps_raw = True

        def __init__(self, data: bytes) -> None:
            super().__init__(data)
            self.raw = data

    fetcher_module.MemoryRecords = RawMemoryRecords  # type: ignore[attr-defined]
    return True


def _same(tp: TopicPartition, record: Any) -> Any:
    # Installed on a PartitionRecords instance: aiokafka's iteration (with its read_committed filtering)
    # then yields its parsed records as they are, instead of a ConsumerRecord for each.
    return record


def seek(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
    """Move `tp`'s position to `offset` unless aiokafka already holds that position. A seek drops what
    the fetcher holds for the partition and fetches it again, and on assignment the fetcher starts from the
    committed offset while the state is restored, which is the offset restored whenever the state and the
    offsets were committed together: an unconditional seek then fetched every partition's prefetch twice
    (up to fetch_max_bytes, about half a second on the benches)."""
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)  # type: ignore[attr-defined]
        there = state is not None and state.has_valid_position and state.position == offset
    except AttributeError:  # another aiokafka's layout: seek as before
        there = False
    if not there:
        consumer.seek(tp, offset)


async def take(consumer: AIOKafkaConsumer, timeout_ms: int, max_records: int,
               hold: asyncio.Event | None = None) -> list[PartitionBatch]:
    """The partitions' buffered records as columns, waiting up to `timeout_ms` for some to arrive. The
    counterpart of aiokafka's `Fetcher.fetched_records`, except that each fetch result is taken whole (one
    is at most max_partition_fetch_bytes), so `max_records` may be passed by less than one fetch result:
    the position moves past what was taken, and the fetcher is told to fetch again. Nothing is taken
    while `hold` is clear (aiokafka ends a reassignment before its listener has positioned the partitions)."""
    fetcher: Any = consumer._fetcher  # type: ignore[attr-defined]
    subscription: Any = consumer._subscription  # type: ignore[attr-defined]
    consumer._coordinator.check_errors()  # type: ignore[attr-defined]  # as getmany does
    deadline = time.monotonic() + timeout_ms / 1000
    with subscription.fetch_context():
        while True:
            if subscription.reassignment_in_progress:
                await subscription.wait_for_assignment()
            if hold is not None and not hold.is_set():
                try:
                    await asyncio.wait_for(hold.wait(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    return []
                continue
            out: list[PartitionBatch] = []
            taken = 0
            for tp in list(fetcher._records):
                if taken >= max_records:
                    break
                result = fetcher._records[tp]
                if not hasattr(result, "_partition_records"):  # a fetch error: raised as getmany raises it
                    if out:
                        return out
                    del fetcher._records[tp]
                    fetcher._notify(fetcher._wait_consume_future)
                    result.check_raise()
                if result.check_assignment(tp) and result.has_more():
                    out.append(_columns(tp, result))
                    taken += len(out[-1])
                del fetcher._records[tp]
                fetcher._notify(fetcher._wait_consume_future)
            left = deadline - time.monotonic()
            if out or left <= 0:
                return [b for b in out if len(b)]
            waiter = fetcher._create_fetch_waiter()
            done, pending = await asyncio.wait([waiter], timeout=left)
            for fut in pending:
                fut.cancel()
            if done:
                waiter.result()


def _columns(tp: TopicPartition, result: Any) -> PartitionBatch:
    records = result._partition_records
    raw = getattr(records._records, "raw", None)
    if raw is not None and native.enabled():
        return _unpacked(tp, result, raw)
    records._consumer_record = _same
    values: list[bytes] = []
    keys: list[bytes | None] = []
    offsets: list[int] = []
    for r in records:
        value = r.value
        values.append(value if value is not None else b"")
        keys.append(r.key)
        offsets.append(r.offset)
    result._update_position()  # to the next offset after the batch, skipped control/aborted batches included
    _release(result)
    return PartitionBatch(tp, values, keys, offsets)


def _unpacked(tp: TopicPartition, result: Any, raw: bytes) -> PartitionBatch:
    """The native core's columns of a fetch result's raw bytes (what aiokafka's iteration would give); a
    corrupt batch raises aiokafka's CorruptRecordException, as getmany would."""
    records = result._partition_records
    columns, _ = raw_fetch.unpack(raw, records.next_fetch_offset, records._isolation_level,
                                  records._aborted_transactions)
    records.next_fetch_offset = columns.next_offset
    result._update_position()
    _release(result)
    return PartitionBatch(tp, Spans(columns.data, columns.value_start, columns.value_end, b""),
                          Spans(columns.data, columns.key_start, columns.key_end), columns.offsets.tolist())


def _release(result: Any) -> None:
    """Drop a taken fetch result's records now. aiokafka's `PartitionRecords` and the generator it makes
    for its own iteration refer to each other until that iteration ends, which reading as columns never
    starts: left alone, each fetch response (up to max_partition_fetch_bytes) would wait for a full
    collection, and the worker's GC policy freezes survivors between its full passes (minutes)."""
    records = result._partition_records
    result._partition_records = None
    records._records_iterator = None
    records._records = None

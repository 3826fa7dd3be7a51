"""Read partitions through raw Fetch requests: each partition's record batches become flat columns (keys
and values in one buffer, monitor._native.unpack_records) instead of one ConsumerRecord per record.

Transport glue only, for partitions read outside any consumer group (the state restore): requests go
through an aiokafka client (its connections, metadata and protocol versions); the batches are decoded,
and control and aborted records dropped, by the native module exactly as aiokafka's fetcher does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from aiokafka import TopicPartition
from aiokafka import errors as Errors
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest

from monitor.engine import native

log = logging.getLogger(__name__)

try:
    from monitor import _native
except ImportError:  # the extension was not built: callers read through aiokafka's consumer
    _native = None  # type: ignore[assignment]

READ_UNCOMMITTED, READ_COMMITTED = 0, 1
RETRY_BACKOFF = 0.1


def available() -> bool:
    """Whether the native reader is used: the extension is built and MLMON_NATIVE=0 does not turn it off
    (then state restores read through aiokafka's consumer, like the rest of a pure-Python run)."""
    return native.enabled()


def latest() -> _native.Latest:
    """The newest value of every key over record columns (monitor._native.Latest)."""
    assert _native is not None
    return _native.Latest()


@dataclass
class RecordColumns:
    """The records of one fetch of one partition: record i's key is data[key_start[i]:key_end[i]] (None
    when key_start[i] is -1), its value likewise (None: a tombstone), its offset offsets[i]."""

    data: bytes
    key_start: npt.NDArray[np.int64]
    key_end: npt.NDArray[np.int64]
    value_start: npt.NDArray[np.int64]
    value_end: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.int64]
    next_offset: int

    def __len__(self) -> int:
        return len(self.offsets)

    def items(self) -> Iterator[tuple[bytes | None, bytes | None]]:
        data = self.data
        for ks, ke, vs, ve in zip(self.key_start.tolist(), self.key_end.tolist(), self.value_start.tolist(),
                                  self.value_end.tolist(), strict=True):
            yield (data[ks:ke] if ks >= 0 else None), (data[vs:ve] if vs >= 0 else None)


def unpack(records: bytes, fetch_offset: int, isolation_level: int,
           aborted: list[tuple[int, int]] | None) -> tuple[RecordColumns, int]:
    """(columns, complete batches read) of one partition's Fetch `records`."""
    assert _native is not None
    try:
        data, ks, ke, vs, ve, offsets, next_offset, batches = _native.unpack_records(
            records, fetch_offset, isolation_level == READ_COMMITTED, list(aborted or []))
    except ValueError as exc:
        raise Errors.CorruptRecordException(str(exc)) from None
    return RecordColumns(data, ks, ke, vs, ve, offsets, next_offset), batches


class RawReader:
    """Reads assigned partitions from given offsets up to given end offsets with raw Fetch requests."""

    def __init__(self, client: AIOKafkaClient, isolation_level: int = READ_COMMITTED, max_wait_ms: int = 500,
                 max_bytes: int = 52_428_800, partition_bytes: int = 8 << 20) -> None:
        self.client = client
        self.isolation_level = isolation_level
        self.max_wait_ms = max_wait_ms
        self.max_bytes = max_bytes
        self.partition_bytes = partition_bytes  # larger than aiokafka's 1 MiB default: fewer round trips

    async def read(self, starts: dict[TopicPartition, int], ends: dict[TopicPartition, int],
                   timeout: float = 600.0) -> AsyncIterator[tuple[TopicPartition, RecordColumns]]:
        """Per fetch that moved a partition's position: (partition, its records and next offset; no records
        when only control or aborted ones were read), until every partition's position reaches its end
        offset (control records take offsets too: the position, not the last record, ends a partition).
        The next fetch is already on its way while the caller handles a batch."""
        positions = {tp: starts[tp] for tp in starts if starts[tp] < ends[tp]}
        for topic in {tp.topic for tp in positions}:
            await self.client.add_topic(topic)
        deadline = time.monotonic() + timeout
        pending: asyncio.Task[list[tuple[TopicPartition, RecordColumns]]] | None = None
        try:
            while positions:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read partitions {sorted(map(str, positions))} within "
                                       f"{timeout:.0f} s")
                got = await (pending or self._round(positions))
                pending = None
                moved = []
                for tp, cols in got:
                    if len(cols) or cols.next_offset != positions[tp]:
                        moved.append((tp, cols))
                    if cols.next_offset >= ends[tp]:
                        del positions[tp]
                    else:
                        positions[tp] = cols.next_offset
                if positions:
                    pending = asyncio.ensure_future(self._round(dict(positions)))
                for tp, cols in moved:
                    yield tp, cols
        finally:
            if pending is not None:
                pending.cancel()

    async def _round(self, positions: dict[TopicPartition, int]) -> list[tuple[TopicPartition, RecordColumns]]:
        """One Fetch request per leader, concurrently; partitions whose leader is unknown wait for metadata."""
        by_node: dict[int, list[tuple[TopicPartition, int]]] = defaultdict(list)
        stale = False
        for tp, offset in positions.items():
            node = self.client.cluster.leader_for_partition(tp)
            if node is None or node == -1:
                stale = True
            else:
                by_node[node].append((tp, offset))
        if stale:
            await self.client.force_metadata_update()
        results = await asyncio.gather(*(self._fetch(node, parts) for node, parts in by_node.items()))
        got = [item for result in results for item in result]
        if not got:
            await asyncio.sleep(RETRY_BACKOFF)
        return got

    async def _fetch(self, node: int, parts: list[tuple[TopicPartition, int]]
                     ) -> list[tuple[TopicPartition, RecordColumns]]:
        topics: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        for tp, offset in parts:
            topics[tp.topic].append((tp.partition, offset, self.partition_bytes))
        request = FetchRequest(self.max_wait_ms, 1, self.max_bytes, self.isolation_level, list(topics.items()))
        try:
            response = await self.client.send(node, request)
        except Errors.KafkaError as exc:
            log.warning("fetch from broker %s failed: %s", node, exc)
            self.client.force_metadata_update()
            await asyncio.sleep(RETRY_BACKOFF)
            return []
        offsets = {tp: offset for tp, offset in parts}
        out = []
        for topic, partitions in response.topics:
            for partition, error_code, _highwater, *part_data in partitions:
                tp = TopicPartition(topic, partition)
                error = Errors.for_code(error_code)
                if error is Errors.NoError:
                    # part_data: [lso, (log start offset,) aborted transactions, (preferred replica,)
                    # records] depending on the version (aiokafka's fetcher reads it the same way).
                    aborted = part_data[2] if response.API_VERSION >= 11 else part_data[-2]
                    records = part_data[-1]
                    cols, batches = unpack(records or b"", offsets[tp], self.isolation_level, aborted)
                    if records and not batches:
                        raise Errors.RecordTooLargeError(f"{tp} at offset {offsets[tp]}: a record batch larger "
                                                         f"than the fetch limit of {self.partition_bytes} bytes")
                    out.append((tp, cols))
                elif error in (Errors.NotLeaderForPartitionError, Errors.UnknownTopicOrPartitionError):
                    log.info("fetch %s: %s, refreshing metadata", tp, error.__name__)
                    self.client.force_metadata_update()
                elif error is Errors.OffsetOutOfRangeError:
                    # Nothing to reset to for an explicit read: the caller's start was wrong (e.g. the log
                    # was truncated under it), so say so.
                    raise Errors.OffsetOutOfRangeError({tp: offsets[tp]})
                elif error.retriable:  # e.g. a broker's storage error: tried again until the read's deadline
                    log.warning("fetch %s at offset %d: %s, retrying", tp, offsets[tp], error.__name__)
                    self.client.force_metadata_update()
                else:
                    raise error(f"fetch {tp} at offset {offsets[tp]}")
        return out

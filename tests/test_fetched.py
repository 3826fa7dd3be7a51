"""monitor.stream.fetched against aiokafka's own getmany, on a real broker: the same records (partition,
offset, key, value) in the same order and the same positions afterwards, for committed and aborted
transactions, control batches, compressed batches (every codec aiokafka has), null keys and values."""

from __future__ import annotations

import asyncio
import gc
import uuid
import weakref
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.consumer import fetcher as aiokafka_fetcher

from monitor.stream import fetched

PARTITIONS = 3
Row = tuple[int, int, bytes | None, bytes | None]


async def _fill(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    sent = 0
    for codec in (None, "gzip", "snappy", "lz4", "zstd"):
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, linger_ms=20)
        await producer.start()
        try:
            futures = [await producer.send(topic, value=f'{{"n": {i}, "c": "{codec}"}}'.encode(),
                                           key=None if i % 7 == 0 else f"k{i}".encode(), partition=i % PARTITIONS)
                       for i in range(300)]
            futures.append(await producer.send(topic, value=None, key=b"tombstone", partition=0))
            await asyncio.gather(*futures)
            sent += len(futures)
        finally:
            await producer.stop()
    # Transactions: committed and aborted ones interleaved, so read_committed must skip aborted batches
    # and every transaction leaves a control batch (its marker) in each partition it wrote.
    txn = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-txn", compression_type="lz4")
    await txn.start()
    try:
        for t in range(6):
            await txn.begin_transaction()
            for i in range(50):
                await txn.send(topic, value=f'{{"t": {t}, "i": {i}}}'.encode(), key=f"t{t}".encode(),
                               partition=(t + i) % PARTITIONS)
            if t % 3 == 1:
                await txn.abort_transaction()
            else:
                await txn.commit_transaction()
                sent += 50
    finally:
        await txn.stop()
    return sent


async def _read(bootstrap: str, topic: str, isolation: str, columns: bool, spans: bool = False
                ) -> tuple[list[Row], dict[int, int]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation,
                                max_partition_fetch_bytes=4096)  # small fetches: many fetch results per partition
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        assert fetched.supported(consumer)
        rows: list[Row] = []
        for _ in range(200):  # bounded: a path that stops short fails the comparison instead of hanging
            if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
            if columns:
                got = await fetched.take(consumer, timeout_ms=200, max_records=500)
                assert all(isinstance(b.values, fetched.Spans) == spans for b in got)  # the path under test
                rows += [(b.tp.partition, o, k, v) for b in got for o, k, v in zip(b.offsets, list(b.keys),
                                                                                   list(b.values), strict=True)]
            else:
                many = await consumer.getmany(timeout_ms=200)
                rows += [(tp.partition, r.offset, r.key, r.value if r.value is not None else b"")
                         for tp, records in many.items() for r in records]
        return sorted(rows), {tp.partition: await consumer.position(tp) for tp in tps}
    finally:
        await consumer.stop()


def use_path(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Columns from the native core's unpacking of the raw bytes, or from aiokafka's own iteration."""
    if path == "native":
        if not fetched.install():
            pytest.skip("the native core (monitor._native) is not built")
    else:
        monkeypatch.setenv("MLMON_NATIVE", "0")


@pytest.fixture(scope="module")
def filled(kafka_bootstrap: str) -> tuple[str, str, int]:
    topic = f"fetched-{uuid.uuid4().hex[:8]}"
    return kafka_bootstrap, topic, asyncio.run(_fill(kafka_bootstrap, topic))


@pytest.mark.kafka
@pytest.mark.parametrize("isolation", ["read_committed", "read_uncommitted"])
@pytest.mark.parametrize("path", ["native", "aiokafka iteration"])
def test_columns_equal_getmany(filled: tuple[str, str, int], isolation: str, path: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    bootstrap, topic, sent = filled
    use_path(path, monkeypatch)
    ours, our_positions = asyncio.run(_read(bootstrap, topic, isolation, columns=True, spans=path == "native"))
    theirs, their_positions = asyncio.run(_read(bootstrap, topic, isolation, columns=False))
    assert ours == theirs
    assert our_positions == their_positions
    # Not vacuous: committed transactions are seen, aborted ones only without read_committed.
    aborted = sum(1 for _, _, _, v in ours if v.startswith(b'{"t": 1,') or v.startswith(b'{"t": 4,'))
    assert len(ours) == sent + (100 if isolation == "read_uncommitted" else 0)
    assert aborted == (0 if isolation == "read_committed" else 100)
    assert any(k is None for _, _, k, _ in ours) and any(v == b"" for _, _, _, v in ours)


def test_since_drops_what_is_applied() -> None:
    batch = fetched.PartitionBatch(TopicPartition("t", 0), [b"a", b"b", b"c"], [None, b"k", None], [5, 7, 8])
    assert batch.since(0) is batch
    later = batch.since(7)
    assert (list(later.values), list(later.offsets)) == ([b"b", b"c"], [7, 8])
    assert len(batch.since(9)) == 0
    record = later.record(0)
    assert (record.topic, record.partition, record.offset, record.key, record.value) == ("t", 0, 7, b"k", b"b")


@pytest.mark.kafka
@pytest.mark.parametrize("path", ["native", "aiokafka iteration"])
def test_taken_fetch_results_are_freed_without_the_cyclic_collector(
        filled: tuple[str, str, int], path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker freezes its survivors between full collections (monitor.stream.gc_policy), so a fetch
    result that only the cyclic collector could free would keep its response bytes for minutes."""
    bootstrap, topic, _ = filled
    use_path(path, monkeypatch)

    refs: list[weakref.ref[Any]] = []
    made = aiokafka_fetcher.PartitionRecords.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        refs.append(weakref.ref(self))

    monkeypatch.setattr(aiokafka_fetcher.PartitionRecords, "__init__", init)

    async def read() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    max_partition_fetch_bytes=4096)
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        taken = 0
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            for _ in range(50):
                taken += sum(len(b) for b in await fetched.take(consumer, timeout_ms=200, max_records=500))
        finally:
            await consumer.stop()
        return taken

    gc.collect()
    gc.disable()
    try:
        taken = asyncio.run(read())
        alive = sum(ref() is not None for ref in refs)
    finally:
        gc.enable()
    assert taken and len(refs) > 2 * PARTITIONS  # not vacuous: several fetch results per partition
    assert alive <= PARTITIONS  # at most the ones still buffered when the consumer stopped


@pytest.mark.kafka
def test_a_seek_to_the_held_position_keeps_what_was_fetched_and_hold_takes_nothing(
        filled: tuple[str, str, int]) -> None:
    """What the worker does on assignment: nothing is taken while its restore holds the loop, and the
    partitions are then positioned where aiokafka already is, so the prefetched records are not fetched
    again; a seek elsewhere still drops them and reads from there."""
    bootstrap, topic, _ = filled

    async def run() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    isolation_level="read_committed", auto_offset_reset="earliest")
        await consumer.start()
        tp = TopicPartition(topic, 0)
        try:
            consumer.assign([tp])
            held = asyncio.Event()
            records = consumer._fetcher._records  # type: ignore[attr-defined]
            for _ in range(100):  # the fetcher fetches on its own once the partition has a position
                assert await fetched.take(consumer, timeout_ms=50, max_records=500, hold=held) == []
                if tp in records:
                    break
            buffered = records[tp]
            assert await consumer.position(tp) == 0  # nothing taken: the position did not move
            fetched.seek(consumer, tp, 0)
            assert records.get(tp) is buffered  # kept: no second fetch of the same records
            held.set()
            got = await fetched.take(consumer, timeout_ms=2000, max_records=500, hold=held)
            assert got and got[0].offsets[0] == 0
            fetched.seek(consumer, tp, 5)  # elsewhere: a real seek
            assert tp not in records and await consumer.position(tp) == 5
            for _ in range(50):
                got = await fetched.take(consumer, timeout_ms=200, max_records=500)
                if got:
                    break
            assert got[0].offsets[0] == 5
        finally:
            await consumer.stop()

    asyncio.run(run())

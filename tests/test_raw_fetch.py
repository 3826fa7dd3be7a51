"""The raw record-batch read path (monitor._native.unpack_records, monitor.stream.raw_fetch) against
aiokafka's own consumer path as the oracle: the same bytes through aiokafka's PartitionRecords (no
broker), and the same topic through AIOKafkaConsumer.getmany (a real broker, transactions committed and
aborted, compressed batches)."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition, codec
from aiokafka import errors as Errors
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from monitor.stream import raw_fetch
from tests.kafka_fixtures import create_topic, kafka_bootstrap, unique_topic  # noqa: F401

pytestmark = pytest.mark.skipif(not raw_fetch.available(), reason="the native module is not built")

Row = tuple[int, bytes | None, bytes | None]  # offset, key, value

# aiokafka's codec ids (record attributes) for the codecs its Python side can write here.
CODECS = [c for c, ok in ((0, True), (1, codec.has_gzip()), (2, codec.has_snappy()), (3, codec.has_lz4()),
                          (4, codec.has_zstd())) if ok]


def batch(base: int, rows: list[tuple[bytes | None, bytes | None]], compression: int,
          transactional: bool = False, producer_id: int = -1) -> bytes:
    """One v2 batch by aiokafka's own builder, its base offset set as a broker would (outside the CRC)."""
    builder = DefaultRecordBatchBuilder(2, compression, int(transactional), producer_id, 0 if producer_id >= 0 else -1,
                                        0 if producer_id >= 0 else -1, 1 << 24)
    for i, (key, value) in enumerate(rows):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=key, value=value, headers=[])
    raw = builder.build()
    raw[0:8] = base.to_bytes(8, "big", signed=True)
    return bytes(raw)


def oracle(raw: bytes, fetch_offset: int, read_committed: bool,
           aborted: list[tuple[int, int]]) -> tuple[list[Row], int]:
    records = PartitionRecords(TopicPartition("t", 0), MemoryRecords(raw), list(aborted), fetch_offset, None, None,
                               True, int(read_committed))
    rows = [(r.offset, r.key, r.value) for r in records]
    return rows, records.next_fetch_offset


def unpacked(raw: bytes, fetch_offset: int, read_committed: bool,
             aborted: list[tuple[int, int]]) -> tuple[list[Row], int]:
    cols, _ = raw_fetch.unpack(raw, fetch_offset, raw_fetch.READ_COMMITTED if read_committed else 0, aborted)
    return [(o, k, v) for o, (k, v) in zip(cols.offsets.tolist(), cols.items(), strict=True)], cols.next_offset


def random_rows(rng: random.Random, n: int) -> list[tuple[bytes | None, bytes | None]]:
    return [(None if rng.random() < 0.05 else rng.randbytes(rng.randint(0, 40)),
             None if rng.random() < 0.1 else rng.randbytes(rng.randint(0, 200))) for _ in range(n)]


def test_batches_as_aiokafka_reads_them() -> None:
    """Several batches in every codec, tombstones and None keys, read from every start offset, and cut
    at every length: the same records and next offset as aiokafka's PartitionRecords."""
    rng = random.Random(7)
    raw, base = b"", 100
    for compression in CODECS * 2:
        n = rng.randint(1, 30)
        raw += batch(base, random_rows(rng, n), compression)
        base += n + rng.randint(0, 3)  # gaps: offsets compaction removed
    for start in range(95, base + 1):
        assert unpacked(raw, start, True, []) == oracle(raw, start, True, [])
    cuts = sorted(rng.sample(range(len(raw)), 60))
    for cut in cuts:
        got = unpacked(raw[:cut], 100, False, [])
        assert got == oracle(raw[:cut], 100, False, [])
    assert unpacked(raw, 100, False, [])[0], "the test must read something"


def test_aborted_producers_are_skipped_like_aiokafka() -> None:
    """Transactional batches of two producers, one listed as aborted from an offset on: without control
    batches (which only a broker writes) the aborted producer stays aborted to the end."""
    rng = random.Random(3)
    raw = (batch(0, random_rows(rng, 5), 1, True, 7) + batch(5, random_rows(rng, 5), 0, True, 8)
           + batch(10, random_rows(rng, 5), 0, True, 7) + batch(15, random_rows(rng, 5), 0, True, 8))
    for aborted in ([], [(7, 10)], [(7, 0)], [(8, 5), (7, 0)], [(9, 0)]):
        for committed in (True, False):
            assert unpacked(raw, 0, committed, aborted) == oracle(raw, 0, committed, aborted)
    assert len(unpacked(raw, 0, True, [(7, 10)])[0]) == 15


def test_a_corrupt_batch_is_an_error() -> None:
    raw = bytearray(batch(0, [(b"k", b"v" * 50)] * 3, 0))
    raw[-10] ^= 1
    with pytest.raises(Errors.CorruptRecordException):
        unpacked(bytes(raw), 0, True, [])
    with pytest.raises(Errors.CorruptRecordException):  # aiokafka agrees
        oracle(bytes(raw), 0, True, [])


# --- a real broker ----------------------------------------------------------------------------------------
async def write_transactions(bootstrap: str, topic: str) -> None:
    """Committed and aborted transactions of two producers interleaved, plus non-transactional writes,
    each producer in its own codec."""
    names = {1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
    codecs = [names[c] for c in CODECS if c] or [None]
    a = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique_topic("raw-a"),
                         compression_type=codecs[0])
    b = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique_topic("raw-b"),
                         compression_type=codecs[1 % len(codecs)])
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=codecs[-1], linger_ms=5)
    rng = random.Random(11)

    async def send(producer: AIOKafkaProducer, n: int, tag: bytes) -> None:
        futures = []
        for i in range(n):
            key = None if rng.random() < 0.05 else tag + b"-%d" % rng.randint(0, n)
            value = None if key is not None and rng.random() < 0.1 else tag + rng.randbytes(rng.randint(20, 150))
            futures.append(await producer.send(topic, key=key, value=value, partition=i % 2))
        await asyncio.gather(*futures)

    for p in (a, b, plain):
        await p.start()
    try:
        for round_ in range(3):
            await a.begin_transaction()
            await send(a, 700, b"a%d" % round_)
            await b.begin_transaction()
            await send(b, 400, b"b%d" % round_)
            await send(plain, 300, b"p%d" % round_)
            await a.abort_transaction()  # aborted while b's transaction is open and plain writes go on
            await send(b, 200, b"c%d" % round_)
            await b.commit_transaction()
            await a.begin_transaction()
            await send(a, 500, b"d%d" % round_)
            await (a.commit_transaction() if round_ != 1 else a.abort_transaction())
    finally:
        for p in (a, b, plain):
            await p.stop()


async def read_getmany(bootstrap: str, topic: str, starts: dict[TopicPartition, int],
                       isolation: str = "read_committed"
                       ) -> tuple[dict[TopicPartition, list[Row]], dict[TopicPartition, int]]:
    """The records and the final positions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(list(starts))
        consumer.assign(list(starts))
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        out: dict[TopicPartition, list[Row]] = {tp: [] for tp in starts}
        while any([await consumer.position(tp) < ends[tp] for tp in starts]):
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                out[tp].extend((r.offset, r.key, r.value) for r in records)
        return out, {tp: await consumer.position(tp) for tp in starts}
    finally:
        await consumer.stop()


async def read_raw(bootstrap: str, topic: str, starts: dict[TopicPartition, int],
                   partition_bytes: int) -> tuple[dict[TopicPartition, list[Row]], dict[TopicPartition, int]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        ends = await consumer.end_offsets(list(starts))
        reader = raw_fetch.RawReader(consumer._client, raw_fetch.READ_COMMITTED, partition_bytes=partition_bytes)
        out: dict[TopicPartition, list[Row]] = {tp: [] for tp in starts}
        last = dict(starts)
        async for tp, cols in reader.read(starts, ends, timeout=60):
            out[tp].extend(zip(cols.offsets.tolist(), *zip(*cols.items(), strict=True), strict=True))
            last[tp] = cols.next_offset
        return out, last
    finally:
        await consumer.stop()


@pytest.mark.kafka
def test_raw_reader_returns_what_getmany_returns(kafka_bootstrap: str) -> None:  # noqa: F811
    topic = create_topic(kafka_bootstrap, unique_topic("rawfetch"), partitions=2)
    asyncio.run(write_transactions(kafka_bootstrap, topic))
    tps = [TopicPartition(topic, p) for p in (0, 1)]
    for starts in ({tp: 0 for tp in tps}, {tps[0]: 1234, tps[1]: 2001}):
        expected, positions = asyncio.run(read_getmany(kafka_bootstrap, topic, starts))
        assert sum(map(len, expected.values())) > 1000, "the oracle must read something"
        # 4 KiB per partition and fetch: most fetches end in a truncated batch.
        for partition_bytes in (8 << 20, 4096):
            got, next_offsets = asyncio.run(read_raw(kafka_bootstrap, topic, starts, partition_bytes))
            assert got == expected
            assert next_offsets == positions
    # The aborted transactions really are in the log (else this would test nothing about them).
    committed, _ = asyncio.run(read_getmany(kafka_bootstrap, topic, {tp: 0 for tp in tps}))
    everything, _ = asyncio.run(read_getmany(kafka_bootstrap, topic, {tp: 0 for tp in tps}, "read_uncommitted"))
    assert sum(map(len, everything.values())) >= sum(map(len, committed.values())) + 3 * 700


def test_latest_keeps_what_a_dict_keeps() -> None:
    """Upserts, tombstones and keys written again after their removal, over several chunks: the newest
    value of each key, in the order a dict filled record by record holds them."""
    rng = random.Random(5)
    latest, expected = raw_fetch.latest(), {}
    for _ in range(20):
        rows = [(b"k%d" % rng.randint(0, 300), None if rng.random() < 0.25 else rng.randbytes(rng.randint(0, 30)))
                for _ in range(rng.randint(0, 200))]
        cols, _ = raw_fetch.unpack(batch(0, rows, 0), 0, raw_fetch.READ_COMMITTED, []) if rows else (None, 0)
        if cols is not None:
            latest.add(cols.data, cols.key_start, cols.key_end, cols.value_start, cols.value_end)
        for key, value in rows:
            if value is None:
                expected.pop(key, None)
            else:
                expected[key] = value
    size = len(latest)
    keys, ks, ke, values, vs, ve = (c.tobytes() if c.dtype == "uint8" else c for c in latest.take_columns())
    bounds = zip(ks.tolist(), ke.tolist(), vs.tolist(), ve.tolist(), strict=True)
    got = {keys[s:e]: values[a:b] for s, e, a, b in bounds}
    assert list(got.items()) == list(expected.items()) and size == len(expected) > 100 and len(latest) == 0
    assert vs[1:].tolist() == ve[:-1].tolist()  # values end to end


def test_latest_of_distinct_keys_hands_over_every_record() -> None:
    """No key replaced or removed (the arenas are handed over as they are): every record, in order."""
    rows = [(b"key-%d" % i, b"v" * (i % 7)) for i in range(500)]
    cols, _ = raw_fetch.unpack(batch(0, rows, 0), 0, raw_fetch.READ_COMMITTED, [])
    latest = raw_fetch.latest()
    latest.add(cols.data, cols.key_start, cols.key_end, cols.value_start, cols.value_end)
    keys, ks, ke, values, vs, ve = latest.take_columns()
    got = [(keys[s:e].tobytes(), values[a:b].tobytes())
           for s, e, a, b in zip(ks.tolist(), ke.tolist(), vs.tolist(), ve.tolist(), strict=True)]
    assert got == rows


def test_mlmon_native_0_turns_the_native_reader_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restores read through aiokafka's consumer in a pure-Python run, as its inputs and engine do."""
    monkeypatch.setenv("MLMON_NATIVE", "0")
    assert not raw_fetch.available()
    monkeypatch.setenv("MLMON_NATIVE", "1")
    assert raw_fetch.available()

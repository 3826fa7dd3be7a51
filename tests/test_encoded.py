"""The state changelog's natively encoded record batches (monitor/stream/encoded.py): aiokafka's own
record reader is the oracle offline, and a real broker takes them inside the writer's transactions."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.record.default_records import DefaultRecordBatch

from monitor.engine.engine import Engine
from monitor.stream import encoded
from monitor.stream.changelog import KEY_META, Changes, ChangeTracker, StateWriter, entry_key, track
from tests.kafka_fixtures import create_topic, kafka_bootstrap, unique_topic  # noqa: F401
from tests.test_oracle import make_stream, to_raw
from tests.test_snapshot import batches, oracle_config

pytestmark = pytest.mark.skipif(not encoded.supported(), reason="monitor._native not built")
ID = "caf\u00e9-\u65e5\u672c-\U0001f600"  # keys are UTF-8 of any width


def _changes() -> tuple[Engine, Changes]:
    """A checkpoint with live entries and tombstones (a short TTL), and ids no codec should trip on."""
    config = oracle_config(ttl="1h")
    raw_p, raw_g = to_raw(*make_stream(seed=4, n=900))
    last = json.loads(raw_p[-1])
    raw_p.append(json.dumps({**last, "prediction_id": ID}).encode())
    engine = Engine(config)
    track(engine)
    tracker = ChangeTracker()
    items = [("predictions", r) for r in raw_p] + [("ground_truth", r) for r in raw_g]
    first = True
    for batch in batches(items, 301):
        engine.process(batch)
        if first:  # entries that then expire or join become tombstones in the next checkpoint
            tracker.committed(tracker.take(engine, {}))
            first = False
    return engine, tracker.take(engine, {"offsets": {"predictions": 1}})


def test_batches_read_back_with_aiokafka_as_the_records_they_encode() -> None:
    _, changes = _changes()
    expected = list(changes.records())
    assert any(v is None for _, v in expected) and any(ID.encode() in k for k, _ in expected)
    got: list[tuple[bytes, bytes | None]] = []
    sequence = 0
    for part in changes.parts(4096):
        if not part or not isinstance(part[0], encoded.EncodedBatch):
            got += part
            continue
        for made in part:
            assert made.size() <= 4096 or made.record_count() == 1
            made._set_producer_state(4242, 7, sequence)
            batch = DefaultRecordBatch(bytes(made._build()))
            assert batch.validate_crc() and batch.is_transactional
            assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (4242, 7, sequence)
            records = list(batch)
            assert len(records) == made.record_count()
            got += [(r.key, r.value) for r in records]
            sequence += made.record_count()
    assert got == expected
    assert changes.count == len(expected) + 1
    assert changes.size == sum(len(k) + len(v or b"") for k, v in expected) + len(KEY_META) + len(changes.meta)


def test_the_writer_commits_encoded_batches_in_order(kafka_bootstrap: str) -> None:  # noqa: F811
    """Through StateWriter's transaction on a real broker: a read_committed consumer sees exactly the
    records `records()` lists, in that order, then the meta record."""
    _, changes = _changes()
    topic = create_topic(kafka_bootstrap, unique_topic("encoded"), partitions=1)
    source = create_topic(kafka_bootstrap, unique_topic("encoded-input"), partitions=1)

    async def run() -> list[tuple[bytes | None, bytes | None]]:
        writer = StateWriter(topic, 0, f"{topic}-group", {"bootstrap_servers": kafka_bootstrap})
        try:
            await writer.write(changes, {TopicPartition(source, 0): 5})
        finally:
            await writer.close()
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, isolation_level="read_committed",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            out: list[tuple[bytes | None, bytes | None]] = []
            while not out or out[-1][0] != KEY_META:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    out += [(r.key, r.value) for r in records]
            return out
        finally:
            await consumer.stop()

    expected = [*changes.records(), (KEY_META, changes.meta)]
    got = asyncio.run(run())
    assert got == expected
    assert entry_key("m", ID) in {k for k, _ in got}

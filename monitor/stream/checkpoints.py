"""Checkpoints: one partition engine's whole state and the next offsets of both input partitions, in ONE
message of the compacted state topic (partition p holds only key p).

Because state and offsets travel in the same message, restoring a checkpoint and reading on from its
offsets applies every event exactly once, whatever was committed or half-done when a worker died.
Committed consumer offsets are written after each checkpoint but only for lag tooling; nothing reads
them back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from monitor.config import MonitorConfig
from monitor.engine import snapshot
from monitor.engine.engine import Engine
from monitor.reference import Reference

log = logging.getLogger(__name__)

HEADER_KIND = "mlmon-checkpoint"


@dataclass
class Checkpoint:
    engine: Engine
    offsets: dict[str, int]  # engine topic (conventions.TOPIC_*) -> next offset to read
    state_offset: int  # where this checkpoint sits in the state topic
    size: int


class CheckpointStore:
    def __init__(self, config: MonitorConfig, references: dict[str, Reference | None], state_topic: str,
                 producer: AIOKafkaProducer, reader: AIOKafkaConsumer, input_topics: dict[str, str]) -> None:
        self.config = config
        self.references = references
        self.topic = state_topic
        self.producer = producer
        self.reader = reader  # a consumer outside any group, assigned by hand
        self.input_topics = input_topics  # engine topic -> Kafka topic, recorded to catch a config change

    async def write(self, partition: int, engine: Engine, offsets: dict[str, int]) -> tuple[asyncio.Future[Any], int]:
        """Serialise now (the caller holds the state still) and hand the message to the producer; returns
        a future of its RecordMetadata (resolved once the broker has it) and the message size."""
        extra = {"partition": partition, "offsets": offsets, "topics": self.input_topics, "written_at": time.time()}
        data = snapshot.dump(engine, extra=extra, compress=False)
        fut = await self.producer.send(self.topic, value=data, key=str(partition).encode(), partition=partition,
                                       headers=[(HEADER_KIND, b"1")])
        return fut, len(data)

    async def end_offsets(self, partitions: list[int]) -> dict[int, int]:
        tps = [TopicPartition(self.topic, p) for p in partitions]
        ends = await self.reader.end_offsets(tps)
        return {tp.partition: off for tp, off in ends.items()}

    async def read_latest(self, ends: dict[int, int], timeout: float = 60.0) -> dict[int, Checkpoint | None]:
        """The newest checkpoint of each partition (None where there is none yet), given the state
        topic's end offsets; all partitions are fetched together."""
        tps = {p: TopicPartition(self.topic, p) for p in ends}
        starts = await self.reader.beginning_offsets(list(tps.values()))
        wanted = {p: end - 1 for p, end in ends.items() if end > starts[tps[p]]}
        out: dict[int, Checkpoint | None] = {p: None for p in ends}
        if not wanted:
            return out
        self.reader.assign([tps[p] for p in wanted])
        for p, offset in wanted.items():
            self.reader.seek(tps[p], offset)
        deadline = time.monotonic() + timeout
        while wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read the checkpoints of partitions {sorted(wanted)} within "
                                   f"{timeout:.0f} s")
            batch = await self.reader.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if tp.partition in wanted and record.offset >= wanted[tp.partition]:
                        out[tp.partition] = self._decode(tp.partition, record.value, record.offset)
                        del wanted[tp.partition]
                        self.reader.pause(tp)
        self.reader.assign([])
        return out

    def _decode(self, partition: int, data: bytes, offset: int) -> Checkpoint:
        engine, extra = snapshot.restore(self.config, self.references, data)
        if extra.get("partition") != partition:
            raise snapshot.SnapshotError(f"checkpoint in partition {partition} is for partition "
                                         f"{extra.get('partition')}")
        if extra.get("topics") != self.input_topics:
            raise snapshot.SnapshotError(
                f"the state topic {self.topic!r} holds checkpoints of topics {extra.get('topics')}, not "
                f"{self.input_topics}: use another kafka.group_id for other topics")
        offsets = {k: int(v) for k, v in extra["offsets"].items()}
        log.info("partition %d: checkpoint of %d bytes at state offset %d, resuming at %s", partition,
                 len(data), offset, offsets)
        return Checkpoint(engine, offsets, offset, len(data))

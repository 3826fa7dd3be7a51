"""The repartition stage: inputs that are not co-partitioned by prediction id are copied, exactly once,
to internal topics that are, and the worker's join stage reads those instead (docs/worker.md).

The join needs every event of one prediction id in one partition engine. Topics keyed by something else
(a user id, no key) or with different partition counts do not give that, so this stage reads each source
topic, reads the prediction id of each message with the topic's mapping (the way the engine's decoder
will read it), and produces the message to `<group_id>-repartition-<side>`, in the partition the id hashes
to, with the state topic's partition count. Kafka Streams does the same through its repartition topics.

What is copied: the value, key, headers and timestamp unchanged, plus one header, `mlmon-origin`
(`<topic>:<partition>:<offset>` of the source record), which the join stage removes before a mapping sees
the headers and uses for the dead-letter headers and to pick the topic's mapping. The key is kept (not
replaced by the id) because a mapping with the `kafka` envelope may read it. A message whose id cannot be
read is copied too, to the partition its bytes hash to: the join stage rejects it, counts it and
dead-letters it exactly as it does for co-partitioned inputs. A message that no mapping's `when` selects
is not an event of its side and is not copied (the join stage would skip it).

Exactly once: each source partition has its own transactional producer (transactional id
`<group_id>-repartition-<topic>-<partition>`), and what was fetched from a source partition since its
previous transaction goes to the internal topics in ONE transaction together with the source offsets
(`send_offsets_to_transaction` to the group `<group_id>-repartition`). The join stage reads the
internal topics read_committed. A new owner of a source partition starts its producer first, which
aborts what a dead or stalled owner left open and fences it (per-partition ids, as Kafka Streams did
before KIP-447, which aiokafka does not offer), and only then reads the committed offset it resumes
from. So a kill -9 at any point neither loses a message nor copies one twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from monitor.config import KafkaConfig, MonitorConfig
from monitor.engine import native
from monitor.events import MAX_ID_LENGTH, Decoder, InvalidEvent
from monitor.mapping import RecordMeta, TopicReader, cloudevent, kafka_record, readers
from monitor.reference import Reference
from monitor.stream import fetched
from monitor.stream.rebalance import Listener

log = logging.getLogger(__name__)

ORIGIN_HEADER = "mlmon-origin"
SIDES = ("predictions", "ground_truth")
# A batch per internal partition and transaction; the internal topics accept records this large, so a
# source message up to the largest a topic holds by default is always copied.
MAX_BATCH_BYTES = 1 << 20
INTERNAL_MAX_MESSAGE_BYTES = 16 << 20


def internal_topic(kafka: KafkaConfig, side: str) -> str:
    return f"{kafka.group_id}-repartition-{side}"


def repartition_group(kafka: KafkaConfig) -> str:
    return f"{kafka.group_id}-repartition"


def internal_topic_configs() -> dict[str, str]:
    # CreateTime: the source record's timestamp is kept (a `kafka` envelope mapping may read it). No
    # time-based deletion: copies of old events carry old timestamps, and the broker would delete them at
    # once; the worker deletes what its state checkpoints cover instead (Purger).
    return {"message.timestamp.type": "CreateTime", "retention.ms": "-1",
            "max.message.bytes": str(INTERNAL_MAX_MESSAGE_BYTES)}


def partition_of(key: bytes, partitions: int) -> int:
    # crc32 (C, a fraction of a microsecond) rather than Kafka's murmur2: only this module writes these
    # topics, so the hash only has to be the same for a prediction and its ground truth.
    return zlib.crc32(key) % partitions


def origin(headers: Sequence[tuple[str, bytes]]) -> tuple[str, int, int] | None:
    """The source (topic, partition, offset) of a copied record; None for a record of a source topic."""
    if headers and headers[-1][0] == ORIGIN_HEADER:
        topic, partition, offset = headers[-1][1].decode().rsplit(":", 2)
        return topic, int(partition), int(offset)
    return None


def source_headers(headers: Sequence[tuple[str, bytes]]) -> Sequence[tuple[str, bytes]]:
    """The headers the source record had (the origin header is always the last one added)."""
    return headers[:-1] if headers and headers[-1][0] == ORIGIN_HEADER else headers


# --- reading the prediction id ------------------------------------------------------------------------------
SKIP = object()  # not an event of this side (no mapping's `when` selects it): not copied


def _valid_id(pid: Any) -> str | None:
    # What events._prediction_id accepts; anything else is rejected by the join stage wherever it lands.
    return pid if type(pid) is str and 0 < len(pid) <= MAX_ID_LENGTH else None


class IdReader:
    """The prediction id of one raw message of one (side, topic), read as TopicReader.decode reads it:
    the native field for native events, the claiming mapping's `prediction_id` expression otherwise."""

    def __init__(self, reader: TopicReader) -> None:
        self.reader = reader
        self.plain = reader.plain

    def read(self, raw: bytes, meta: Callable[[], RecordMeta]) -> str | object | None:
        if self.plain:
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return None
            return _valid_id(obj.get("prediction_id")) if type(obj) is dict else None
        r = self.reader
        try:
            body = r._body(raw)  # the topic's payload decoding (JSON, or OIP protobuf), shared with decode
            doc = body
            if r.envelope == "cloudevents":
                doc = cloudevent(body, meta())
            elif r.envelope == "kafka":
                doc = kafka_record(body, meta())
            selected = [m for m in r.mappings if m.selects(doc)]
            if not selected and not r.native:
                return SKIP
            mapping = next((m for m in selected if m.claims(doc)), None)
            if mapping is None:
                if r.native and r.envelope == "none" and type(body) is dict:
                    return _valid_id(body.get("prediction_id"))
                return None
            getter = mapping.fields.get("prediction_id")
            return _valid_id(getter.get(doc)) if getter is not None else None
        except InvalidEvent:
            return None


def _meta_of(record: ConsumerRecord) -> Callable[[], RecordMeta]:
    # Built only when an envelope reads it: most messages never need one.
    return lambda: RecordMeta(record.key, record.headers, record.timestamp)


class BatchIds:
    """The prediction ids of a batch of one (side, topic): through the engine's native fast-path decoder
    where it reads the topic (the very ids the join stage's decoder will see, a few times faster than
    parsing in Python), IdReader for the messages it leaves to the exact decoder."""

    def __init__(self, config: MonitorConfig, references: dict[str, Reference | None]) -> None:
        decoder = Decoder(config)
        self.readers = readers(config, decoder)
        self.exact = {key: IdReader(r) for key, r in self.readers.items()}
        self.fast, self.fast_readings = (native.fast_decoder(config, references, self.readers) if native.enabled()
                                         else (None, {}))

    def read(self, side: str, topic: str, raws: list[bytes],
             records: Sequence[ConsumerRecord]) -> list[str | object | None]:
        """Per message: its id, None when it has none the decoder would accept, or SKIP."""
        key = (side, topic)
        exact = self.exact[key]
        out: list[str | object | None] = [None] * len(raws)
        rest: Sequence[int] = range(len(raws))
        reading = self.fast_readings.get(key)
        if self.fast is not None and (exact.plain or reading is not None):
            decoded = (self.fast.predictions if side == SIDES[0] else self.fast.ground_truth)(raws, reading)
            blocks = [list(b["ids"]) for b in decoded["blocks"]]  # each block's str made at once
            rest = []
            for i, (m, row) in enumerate(zip(decoded["model"].tolist(), decoded["row"].tolist(), strict=True)):
                if m >= 0 and row >= 0:
                    out[i] = blocks[m][row]
                else:
                    rest.append(i)
        for i in rest:
            out[i] = exact.read(raws[i], _meta_of(records[i]))
        return out


# --- the stage ------------------------------------------------------------------------------------------------
@dataclass
class Source:
    tp: TopicPartition
    side: str
    producer: AIOKafkaProducer | None = None
    next_offset: int = 0  # the next source offset to copy (committed with the last transaction)
    resync: bool = False  # the producer failed: restart it and read the committed offset again
    failures: int = 0
    retry_at: float = 0.0
    # Fetched records waiting for the next transaction, the offset after the last one fetched, and the
    # task copying them: a partition's transactions follow one another, different partitions' overlap.
    queue: list[ConsumerRecord] = field(default_factory=list)
    fetched: int = 0
    task: asyncio.Task[None] | None = None


@dataclass
class RepartitionStats:
    copied: int = 0
    skipped: int = 0
    transactions: int = 0
    failures: int = 0
    seconds: float = 0.0
    last_error: str | None = None
    started: float = field(default_factory=time.monotonic)


class Repartitioner:
    """Consumes the source topics in the consumer group `<group_id>-repartition` and copies them to the
    internal topics, one transaction per source partition and batch (module docstring)."""

    def __init__(self, config: MonitorConfig, references: dict[str, Reference | None], sources: list[tuple[str, str]],
                 internal: dict[str, str], partitions: int, client_options: dict[str, Any], client_id: str,
                 max_batch: int = 20_000, write_timeout: float = 60.0, retry_base: float = 1.0) -> None:
        self.config = config
        self.kafka = config.kafka
        self.group = repartition_group(config.kafka)
        self.internal = internal
        self.partitions = partitions
        self.options = client_options
        self.client_id = client_id
        self.max_batch = max_batch
        self.write_timeout = write_timeout
        self.retry_base = retry_base
        self.side_of = {topic: side for side, topic in sources}
        self.ids = BatchIds(config, references)
        self.owned: dict[TopicPartition, Source] = {}
        self.lock = asyncio.Lock()
        self.stats = RepartitionStats()
        self.consumer: AIOKafkaConsumer | None = None
        self.joined = False

    # --- lifecycle -------------------------------------------------------------------------------------------
    async def start(self, session_timeout_ms: int, rebalance_timeout_ms: int) -> None:
        self.consumer = AIOKafkaConsumer(
            client_id=f"{self.client_id}-repartition", group_id=self.group, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(100, session_timeout_ms // 3), rebalance_timeout_ms=rebalance_timeout_ms,
            max_partition_fetch_bytes=4 << 20, **self.options)
        self.consumer.subscribe(sorted(self.side_of), listener=Listener(self))
        await self.consumer.start()

    async def stop(self) -> None:
        async with self.lock:
            for src in self.owned.values():
                src.queue.clear()
                await _settle(src)
                await _close(src)
        if self.consumer is not None:
            try:
                await self.consumer.stop()  # leaves the group
            except (KafkaError, OSError) as exc:
                log.warning("stopping the repartition consumer: %s", exc)

    async def run(self, stopping: asyncio.Event) -> None:
        assert self.consumer is not None
        while not stopping.is_set():
            for task in [s.task for s in self.owned.values() if s.task is not None and s.task.done()]:
                if not task.cancelled() and task.exception() is not None:  # unexpected: stops the worker
                    raise task.exception()  # type: ignore[misc]
            # Bounded memory: at most about two rounds of records wait for their transactions.
            waiting = [s.task for s in self.owned.values() if s.task is not None and not s.task.done()]
            if waiting and sum(len(s.queue) for s in self.owned.values()) > self.max_batch:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            batch = await self.consumer.getmany(timeout_ms=200, max_records=self.max_batch)
            async with self.lock:
                await self._retry_failed()
                for tp, records in batch.items():
                    src = self.owned.get(tp)
                    if src is None or src.resync or not records:
                        continue  # revoked, or to be read again from its committed offset
                    if records[0].offset < src.fetched:  # fetched before a seek to a later offset
                        records = [r for r in records if r.offset >= src.fetched]
                        if not records:
                            continue
                    src.queue.extend(records)
                    src.fetched = records[-1].offset + 1
                    if src.task is None or src.task.done():
                        src.task = asyncio.create_task(self._drain(src))

    async def _drain(self, src: Source) -> None:
        """Copy what src's queue holds, one transaction per turn, until it is empty or a copy failed."""
        while src.queue and not src.resync:
            records, src.queue = src.queue, []
            started = time.monotonic()
            await self._copy_safely(src, records)
            self.stats.seconds += time.monotonic() - started

    def lag(self) -> dict[TopicPartition, int]:
        """Per owned source partition: its end offset minus the next offset to copy (when known)."""
        out = {}
        if self.consumer is not None:
            for tp, src in list(self.owned.items()):
                high = self.consumer.highwater(tp)
                if high is not None:
                    out[tp] = max(0, high - src.next_offset)
        return out

    # --- copying ---------------------------------------------------------------------------------------------
    async def _copy_safely(self, src: Source, records: list[ConsumerRecord]) -> None:
        try:
            await asyncio.wait_for(self._copy(src, records), self.write_timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            # Whatever the transaction sent is aborted (by the next producer's start, if not before), and
            # its offsets with it; the partition resumes from its committed offset after a backoff.
            await _close(src)
            src.queue.clear()
            src.failures += 1
            src.resync = True
            src.retry_at = time.monotonic() + min(30.0, self.retry_base * 2 ** (src.failures - 1))
            self.stats.failures += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
            assert self.consumer is not None
            self.consumer.pause(src.tp)
            log.warning("%s[%d]: repartition transaction failed (%s); retrying in %.0f s", src.tp.topic,
                        src.tp.partition, self.stats.last_error, src.retry_at - time.monotonic())

    async def _copy(self, src: Source, records: list[ConsumerRecord]) -> None:
        if records[0].offset < src.next_offset:  # fetched before a seek to a later committed offset
            records = [r for r in records if r.offset >= src.next_offset]
            if not records:
                return
        if src.producer is None:
            src.producer = await self._producer(src.tp)
        producer = src.producer
        n = self.partitions
        values = [r.value if r.value is not None else b"" for r in records]
        pids = self.ids.read(src.side, src.tp.topic, values, records)
        prefix = f"{src.tp.topic}:{src.tp.partition}:".encode()
        builders: dict[tuple[str, int], Any] = {}
        topic = self.internal[src.side]
        sends = []
        skipped = 0
        await producer.begin_transaction()
        try:
            for r, value, pid in zip(records, values, pids, strict=True):
                if pid is SKIP:
                    skipped += 1
                    continue
                p = partition_of(pid.encode("utf-8", "surrogatepass") if isinstance(pid, str) else value, n)
                headers = [*r.headers, (ORIGIN_HEADER, prefix + str(r.offset).encode())]
                key = (topic, p)
                builder = builders.get(key)
                if builder is None:
                    builder = builders[key] = producer.create_batch()
                if builder.append(key=r.key, value=r.value, timestamp=r.timestamp, headers=headers) is None:
                    sends.append(await producer.send_batch(builder, topic, partition=p))
                    builder = builders[key] = producer.create_batch()
                    builder.append(key=r.key, value=r.value, timestamp=r.timestamp, headers=headers)
            for (t, p), builder in builders.items():
                if builder.record_count():
                    sends.append(await producer.send_batch(builder, t, partition=p))
            end = records[-1].offset + 1
            await producer.send_offsets_to_transaction({src.tp: end}, self.group)
            await producer.commit_transaction()
        except BaseException:
            await _close(src)  # mid-transaction or fenced: only a fresh producer is a safe state
            raise
        for fut in sends:
            await fut
        src.next_offset = end
        src.failures = 0
        self.stats.copied += len(records) - skipped
        self.stats.skipped += skipped
        self.stats.transactions += 1

    async def _producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        """Start the transactional producer of one source partition: its start aborts what a previous
        owner left open and fences that owner out."""
        producer = AIOKafkaProducer(
            client_id=f"{self.client_id}-repartition", transactional_id=f"{self.group}-{tp.topic}-{tp.partition}",
            enable_idempotence=True, acks="all", max_batch_size=MAX_BATCH_BYTES, linger_ms=0, **self.options)
        try:
            await producer.start()
        except BaseException:
            await asyncio.shield(_stop_quietly(producer))
            raise
        return producer

    async def _resume_from_committed(self, sources: list[Source]) -> None:
        """Fence, then seek each source partition to the offset its last committed transaction recorded."""
        assert self.consumer is not None
        consumer = self.consumer
        for s in sources:  # a producer left from a failed attempt: the new one would fence it anyway
            await _close(s)
        producers = await asyncio.gather(*(self._producer(s.tp) for s in sources), return_exceptions=True)
        failed: BaseException | None = None
        for s, producer in zip(sources, producers, strict=True):
            if isinstance(producer, BaseException):
                failed = failed or producer
            else:
                s.producer = producer
        if failed is not None:
            for s in sources:
                await _close(s)
            raise failed
        committed = await asyncio.gather(*(consumer.committed(s.tp) for s in sources))
        fresh = [s.tp for s, off in zip(sources, committed, strict=True) if off is None]
        starts = await consumer.beginning_offsets(fresh) if fresh else {}
        for s, off in zip(sources, committed, strict=True):
            s.next_offset = int(off) if off is not None else starts[s.tp]
            s.fetched = s.next_offset
            s.queue.clear()
            fetched.seek(consumer, s.tp, s.next_offset)
            s.resync = False

    async def _retry_failed(self) -> None:
        due = [s for s in self.owned.values() if s.resync and time.monotonic() >= s.retry_at
               and (s.task is None or s.task.done())]
        if not due:
            return
        assert self.consumer is not None
        try:
            await self._resume_from_committed(due)
        except (KafkaError, OSError) as exc:
            for s in due:
                s.failures += 1
                s.retry_at = time.monotonic() + min(30.0, self.retry_base * 2 ** (s.failures - 1))
            log.warning("repartition: resuming %s failed (%s)", [str(s.tp) for s in due], exc)
            return
        for s in due:
            self.consumer.resume(s.tp)
            log.info("%s[%d]: repartition resumed at offset %d", s.tp.topic, s.tp.partition, s.next_offset)

    # --- rebalances ------------------------------------------------------------------------------------------
    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.lock:
            self.joined = False
            for tp in revoked:
                src = self.owned.pop(tp, None)
                if src is not None:
                    # The transaction in flight ends (committed or aborted) before the partition goes; what
                    # waits behind it is left to the next owner, which reads from the committed offset.
                    src.queue.clear()
                    await _settle(src)
                    await _close(src)

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self.lock:
            new = [Source(tp, self.side_of[tp.topic]) for tp in sorted(assigned) if tp not in self.owned]
            try:
                await self._resume_from_committed(new)
            except (KafkaError, OSError) as exc:
                # Kept and retried by the loop: consumption of the other partitions goes on meanwhile.
                assert self.consumer is not None
                for s in new:
                    s.resync, s.failures = True, 1
                    s.retry_at = time.monotonic() + self.retry_base
                    self.consumer.pause(s.tp)
                log.warning("repartition: taking over %s failed (%s); retrying", [str(s.tp) for s in new], exc)
            for s in new:
                self.owned[s.tp] = s
                if not s.resync:
                    log.info("%s[%d]: repartitioning from offset %d", s.tp.topic, s.tp.partition, s.next_offset)
            self.joined = True


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 10)
    except Exception as exc:  # closing a broken producer must not take the worker with it
        log.debug("repartition producer: stop failed: %s", exc)


async def _settle(src: Source) -> None:
    if src.task is not None:
        await asyncio.gather(src.task, return_exceptions=True)
        src.task = None


async def _close(src: Source) -> None:
    producer, src.producer = src.producer, None
    if producer is not None:
        await _stop_quietly(producer)


class Purger:
    """Deletes the copies the join stage's state checkpoints cover (Kafka's DeleteRecords), as Kafka
    Streams purges its repartition topics: the internal topics keep no time-based retention, so without
    this they would grow with the input. A restore never needs a copy below its checkpoint's offsets."""

    def __init__(self, client_options: dict[str, Any], interval: float = 30.0) -> None:
        self.options = client_options
        self.interval = interval
        self.pending: dict[TopicPartition, int] = {}
        self.deleted = 0  # requests that succeeded

    def covered(self, offsets: dict[TopicPartition, int]) -> None:
        """A checkpoint of the join stage was committed with these next offsets."""
        for tp, off in offsets.items():
            self.pending[tp] = max(off, self.pending.get(tp, 0))

    async def run(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.admin.records_to_delete import RecordsToDelete

        admin = AIOKafkaAdminClient(client_id="mlmon-worker-purge", **self.options)
        await admin.start()
        try:
            while True:
                await asyncio.sleep(self.interval)
                todo, self.pending = self.pending, {}
                if not todo:
                    continue
                try:
                    await admin.delete_records({tp: RecordsToDelete(off) for tp, off in todo.items()})
                    self.deleted += 1
                except (KafkaError, OSError) as exc:
                    # Harmless: the copies stay a little longer; the next checkpoint's offsets retry it.
                    log.info("deleting repartitioned records below the checkpoints failed: %s", exc)
                    for tp, off in todo.items():
                        self.pending[tp] = max(off, self.pending.get(tp, 0))
        finally:
            await admin.close()

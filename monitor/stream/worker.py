"""`monitor worker`: the Kafka stream worker. Batches from aiokafka into one engine per partition,
exact under kill -9 and scale-out, /metrics and /healthz over aiohttp. How it works: docs/worker.md.

One asyncio loop does everything, in this order per turn: fetch a batch (`getmany`), apply it to the
partition engines (synchronous, so nothing else sees a half-applied batch), send its dead letters, and
now and then checkpoint: each partition's changes since its last checkpoint go to the state changelog in
one transaction with the input offsets (monitor.stream.changelog). Scrapes, health checks and the
rebalance callbacks run on the same loop between turns; the rebalance callbacks and checkpoints also take
`self.lock` because they await the broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import click
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaConnectionError, KafkaError
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor import conventions as c
from monitor.config import ConfigError, MonitorConfig, load_config
from monitor.engine import native
from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Engine, Rejection
from monitor.engine.figures import Figures
from monitor.engine.merge import merged_figures
from monitor.events import InvalidEvent, parse_timestamp
from monitor.exporter import FiguresCollector
from monitor.mapping import RecordMeta
from monitor.reference import Reference, load_reference
from monitor.stream import fetched, local_store, raw_fetch
from monitor.stream.changelog import (
    ChangelogError,
    Changes,
    ChangeTracker,
    Staging,
    StateWriter,
    read_partitions,
    rebuild,
    track,
)
from monitor.stream.fetched import PartitionBatch
from monitor.stream.gc_policy import GcPolicy
from monitor.stream.kafka_setup import SetupError, Topics, client_options, ensure_topics
from monitor.stream.rebalance import Listener
from monitor.stream.repartition import Purger, Repartitioner, origin, source_headers
from monitor.stream.web import WebServer

log = logging.getLogger("monitor.worker")

# Where a dead letter came from, so a consumer of the dead-letter topic can drop the duplicates a crash
# can cause (dead letters are at-least-once; the invalid-event counters are exact).


class WorkerError(Exception):
    """The worker cannot go on (bad setup, a checkpoint of another configuration, ...)."""


@dataclass
class WorkerOptions:
    metrics_port: int
    metrics_bind: str
    # Evaluation time for /metrics; None is the wall clock. Fixed only by tests and benchmarks.
    at: float | None = None
    checkpoint_interval: float = 2.0
    # Checkpoints take at most about this share of the time: a big state is checkpointed less often.
    checkpoint_budget: float = 0.1
    # Join entries changed and not yet in a checkpoint taken, over the partitions: at this many a checkpoint
    # is taken at once, and while one is being written the loop waits for it before consuming on. It bounds
    # the memory that changes waiting for the changelog hold (about twice this many entries), whatever the
    # input rate; the wait is bounded by `state_write_timeout`.
    max_unwritten: int = 200_000
    session_timeout_ms: int = 10_000
    rebalance_timeout_ms: int = 60_000
    # A state write that takes longer is abandoned (its transaction aborted) and retried later.
    state_write_timeout: float = 60.0
    # Failed state writes are retried after this, doubling per failure up to 30 s: bounded, never stuck.
    state_retry_base: float = 1.0
    # Records per fetch round (None: 200,000 with the native core, 20,000 without). A round is applied with
    # one flush per partition engine, and a flush costs mostly per call, so a worker catching up on a
    # backlog runs faster in large rounds: on the realistic mix 200,000 gave about 1.05x the events/s of
    # 60,000 (bench/worker_bench.py). Bounded so one round never blocks the loop
    # (heartbeats, scrapes) for long: about 0.2-0.3 s of applying either way. Memory is bounded by the
    # fetch sizes, not by this.
    max_batch: int | None = None
    # Plain inputs read as columns (monitor.stream.fetched); False: aiokafka's getmany, kept to compare.
    columns: bool = True
    # Keep a local copy of each partition's changelog in the state dir, when there is one
    # (monitor.stream.local_store).
    local_store: bool = True
    connect_timeout: float = 120.0


@dataclass
class PartitionState:
    partition: int
    engine: Engine
    offsets: dict[str, int]  # offset key (monitor.stream.worker.Worker.inputs) -> next offset to apply
    tracker: ChangeTracker
    writer: StateWriter
    dirty: bool = False
    # The state partition's end offset right after our newest checkpoint (or restore); None: unknown.
    state_end: int | None = None
    events: int = 0
    failures: int = 0  # consecutive failed state writes
    last_error: str | None = None
    retry_at: float = 0.0
    local: local_store.LocalCopy | None = None  # the local copy of its changelog, with a state dir


@dataclass
class Checkpoint:
    """A checkpoint taken: per partition its changes and the input offsets they describe, and the dead
    letters sent before it."""

    states: list[tuple[PartitionState, Changes, dict[TopicPartition, int]]]
    dead_letters: list[asyncio.Future[Any]]
    taken_at: float


@dataclass
class Stats:
    events: int = 0
    batches: int = 0
    dead_letters: int = 0
    checkpoints: int = 0
    checkpoint_bytes: int = 0
    checkpoint_records: int = 0
    checkpoint_seconds: float = 0.0
    state_write_failures: int = 0
    write_waits: int = 0  # times consumption waited for a state write (the changes' bound was reached)
    restored_bytes: int = 0
    restored_records: int = 0
    restore_seconds: float = 0.0
    local_store_failures: int = 0
    local_dropped: set[int] = field(default_factory=set)  # partitions whose local copy a failed write dropped
    started: float = field(default_factory=time.monotonic)


class Worker:
    def __init__(self, config: MonitorConfig, options: WorkerOptions) -> None:
        self.config = config
        self.options = options
        self.references: dict[str, Reference | None] = {m.name: load_reference(config, m) for m in config.models}
        self.partitions: dict[int, PartitionState] = {}
        # Revoked partitions kept in memory: reused when they come back and nobody checkpointed them since.
        self.parked: dict[int, PartitionState] = {}
        # Where each partition's local copy of its changelog lives (None: turned off, no state dir, or no
        # native core).
        self.local_dir = (local_store.directory(config.join.state_dir, config.kafka.group_id)
                          if options.local_store and config.join.state_dir and local_store.supported() else None)
        if options.local_store and config.join.state_dir and self.local_dir is None:
            log.warning("no local copies of the changelog are kept: they need the native core")
        self.lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.fatal: BaseException | None = None
        self.stats = Stats()
        self.topics: Topics | None = None
        self.roles: dict[str, str] = {}  # Kafka topic -> engine topic
        self.inputs: list[tuple[str, str]] = []  # (offset key, Kafka topic) of every input topic
        self.offset_key: dict[str, str] = {}
        self.mapped = any(m.input is not None for m in config.models)
        self.consumer: AIOKafkaConsumer | None = None
        self.columns = False  # read plain inputs as columns (set at start)
        self.max_batch = options.max_batch or (200_000 if native.enabled() else 20_000)
        self.producer: AIOKafkaProducer | None = None  # dead letters (at-least-once, not transactional)
        self.reader: AIOKafkaConsumer | None = None  # state restores: outside the group, read_committed
        self.ends: AIOKafkaConsumer | None = None  # the inputs' end offsets for the lag gauge
        # Copies the inputs to internal topics partitioned by prediction id, when they are not (kafka_setup).
        self.repartitioner: Repartitioner | None = None
        self._repartition_task: asyncio.Task[None] | None = None
        self.purger: Purger | None = None
        self.end_offsets: dict[TopicPartition, int] = {}
        self._client_options: dict[str, Any] = {}
        self.joined = False
        self.closed = False  # the partitions' state written and closed on the way out
        # Clear while newly assigned partitions are restored: aiokafka fetches for them meanwhile, and what
        # it fetched stays buffered until they are positioned (see fetched.seek), rather than being taken
        # first and fetched again after the seek.
        self.restored = asyncio.Event()
        self.restored.set()
        self.last_poll = 0.0
        self._dead_letter_futures: list[asyncio.Future[Any]] = []
        self._next_checkpoint = 0.0
        self._writing: asyncio.Task[None] | None = None  # the checkpoint being written, while consuming on
        self.gc = GcPolicy() if os.environ.get("MLMON_WORKER_GC_FREEZE", "1") != "0" else None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FiguresCollector(self.figures, self.partition_figures))
        registry.register(_LagCollector(self))
        registry.register(_StateCollector(self))
        self.web = WebServer(registry, self.health, options.metrics_bind, options.metrics_port)

    # --- what /metrics and /healthz see ------------------------------------------------------------------
    def figures(self) -> Figures:
        at = self.options.at if self.options.at is not None else time.time()
        engines = [s.engine for s in self.partitions.values()]
        return merged_figures(self.config, self.references, engines, at)

    def partition_figures(self) -> dict[int, Figures]:
        """Each held partition's counters and histograms, exported with a `partition` label, so they move
        with the partition instead of shrinking (a false reset for rate()) when a partition moves to
        another worker. Windows are not summed per partition: the merged figures give those."""
        return {p: s.engine.cumulative() for p, s in self.partitions.items()}

    def health(self) -> tuple[bool, str]:
        if self.fatal is not None:
            return False, f"failed: {self.fatal}"
        if not self.joined:
            return False, "starting: not yet a member of the consumer group"
        if time.monotonic() - self.last_poll > max(30.0, self.options.session_timeout_ms / 1000):
            return False, "stalled: no poll for more than 30 s"
        stage = self.repartitioner
        copying = sorted(f"{tp.topic}[{tp.partition}]" for tp, s in stage.owned.items() if s.failures) if stage else []
        if copying:
            return False, (f"degraded: repartition transactions failing for {copying} (last: "
                           f"{stage.stats.last_error if stage else None}); retrying")
        failing = {p: s for p, s in sorted(self.partitions.items()) if s.failures}
        if failing:
            # Still consuming and exact (a restart replays from the last state written), but the replay
            # after a crash grows until a write succeeds: someone should look.
            first = next(iter(failing.values()))
            return False, (f"degraded: state writes failing for partitions {sorted(failing)} "
                           f"({first.failures} in a row; last: {first.last_error}); consuming on, retrying")
        dropped = sorted(self.stats.local_dropped & set(self.partitions))
        note = (f"; local stores of partitions {dropped} dropped after a failed write (their next restore reads "
                "the whole changelog)") if dropped else ""
        return True, f"consuming {len(self.partitions)} partitions{note}"

    # --- lifecycle -----------------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        await self.web.start()
        log.info("serving /metrics and /healthz on %s:%d", self.options.metrics_bind, self.web.port)
        try:
            await self._connect()
            await self._consume()
        finally:
            await self._shutdown()
        if self.fatal is not None:
            raise WorkerError(str(self.fatal)) from self.fatal

    async def _connect(self) -> None:
        kafka = self.config.kafka
        deadline = time.monotonic() + self.options.connect_timeout
        while True:
            try:
                self.topics = await ensure_topics(self.config)
                break
            except (KafkaConnectionError, KafkaError, OSError) as exc:
                if time.monotonic() > deadline or self.stopping.is_set():
                    raise WorkerError(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}") from exc
                log.warning("Kafka not reachable yet (%s); retrying", exc)
                await asyncio.sleep(2.0)
        t = self.topics
        if t.internal:
            # The join stage reads only the internal topics, one per side, under the side's offset key.
            internal = dict(t.internal)
            self.roles = {internal[PREDICTIONS]: PREDICTIONS, internal[GROUND_TRUTH]: GROUND_TRUTH}
            self.inputs = [(PREDICTIONS, internal[PREDICTIONS]), (GROUND_TRUTH, internal[GROUND_TRUTH])]
        else:
            self.roles = {t.predictions: PREDICTIONS, t.ground_truth: GROUND_TRUTH,
                          **{tp: side for side, tp in t.extra}}
            # Offsets (and checkpoints) are kept per input: the default topics under their side, as always,
            # and each mapped topic (docs/attach.md) under "topic:<name>".
            self.inputs = [(PREDICTIONS, t.predictions), (GROUND_TRUTH, t.ground_truth),
                           *((f"topic:{tp}", tp) for _, tp in t.extra)]
        self.offset_key = {tp: key for key, tp in self.inputs}
        opts = client_options(kafka)
        self._client_options = opts
        client_id = f"mlmon-worker-{socket.gethostname()}-{os.getpid()}"
        session = self.options.session_timeout_ms
        if t.internal:
            self.repartitioner = Repartitioner(self.config, self.references, t.sources, dict(t.internal),
                                               t.partitions, opts, client_id, max_batch=self.max_batch,
                                               write_timeout=self.options.state_write_timeout,
                                               retry_base=self.options.state_retry_base)
            await self.repartitioner.start(session, max(session, self.options.rebalance_timeout_ms))
            # How often copies covered by checkpoints are deleted (tests shorten or lengthen it).
            self.purger = Purger(opts, float(os.environ.get("MLMON_REPARTITION_PURGE_INTERVAL", "30")))
        self.producer = AIOKafkaProducer(client_id=client_id, acks="all", enable_idempotence=True, linger_ms=5,
                                         **opts)
        self.reader = AIOKafkaConsumer(client_id=f"{client_id}-state", enable_auto_commit=False,
                                       isolation_level="read_committed", **opts)
        self.ends = AIOKafkaConsumer(client_id=f"{client_id}-lag", enable_auto_commit=False, **opts)
        if self.options.columns and not self.mapped:
            fetched.install()  # before the consumer starts: its fetcher then keeps the raw record bytes
        self.consumer = AIOKafkaConsumer(
            client_id=client_id, group_id=kafka.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            # Range assigns partition p of both topics to the same member: a join never crosses workers.
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=session, heartbeat_interval_ms=max(100, session // 3),
            rebalance_timeout_ms=max(session, self.options.rebalance_timeout_ms),
            max_partition_fetch_bytes=4 << 20,
            # The internal topics are written in transactions: only committed copies may be joined.
            isolation_level="read_committed" if t.internal else "read_uncommitted", **opts)
        await self.producer.start()
        await self.reader.start()
        await self.ends.start()
        self.consumer.subscribe([tp for _, tp in self.inputs], listener=Listener(self))
        await self.consumer.start()
        # Plain inputs are read as columns (monitor.stream.fetched); mapped inputs read each record's key,
        # headers and timestamp, and repartitioned copies their origin header, so they keep getmany.
        plain = not self.mapped and self.repartitioner is None
        self.columns = plain and self.options.columns and fetched.supported(self.consumer)
        if plain and self.options.columns and not self.columns:
            log.warning("this aiokafka's fetcher is not the one monitor.stream.fetched reads: using getmany")
        log.info("group %s: consuming %s (%d partitions), state changelog in %s; %s engine", kafka.group_id,
                 " and ".join(tp for _, tp in self.inputs), t.partitions, t.state,
                 "native" if native.enabled() else "pure-Python (monitor._native not built, or MLMON_NATIVE=0)")

    async def _shutdown(self) -> None:
        # Under the lock: a rebalance callback (the group may still rebalance until the consumer stops)
        # seals and closes the same partitions' copies.
        async with self.lock:
            if self.consumer is not None and self.fatal is None and self.topics is not None:
                await self._checkpoint(list(self.partitions.values()), force=True)
            elif self._writing is not None:
                try:
                    await self._settle()
                except Exception:  # already failing: the reason that stops the worker is reported elsewhere
                    log.exception("the checkpoint being written failed")
            for state in [*self.partitions.values(), *self.parked.values()]:
                await state.writer.close()
            await self._close_local([*self.partitions.values(), *self.parked.values()])
            self.closed = True
        self.stopping.set()
        if self._repartition_task is not None:
            await asyncio.gather(self._repartition_task, return_exceptions=True)
        if self.repartitioner is not None:
            await self.repartitioner.stop()
        for client in (self.consumer, self.reader, self.ends, self.producer):
            if client is not None:
                try:
                    await client.stop()  # the consumer leaves the group here
                except (KafkaError, OSError) as exc:
                    log.warning("stopping a Kafka client: %s", exc)
        await self.web.stop()
        if self.gc is not None:
            self.gc.close()
        elapsed = time.monotonic() - self.stats.started
        log.info("stopped: %d events in %d batches (%.0f/s over the run), %d dead letters, %d checkpoints "
                 "(%d records, %.1f MB, %.2f s), %d failed state writes", self.stats.events, self.stats.batches,
                 self.stats.events / max(elapsed, 1e-9), self.stats.dead_letters, self.stats.checkpoints,
                 self.stats.checkpoint_records, self.stats.checkpoint_bytes / 1e6, self.stats.checkpoint_seconds,
                 self.stats.state_write_failures)

    async def _close_local(self, states: list[PartitionState]) -> None:
        """Seal and close the local copies of `states`: a restart here then reads only what others write
        to the changelog after this."""
        for s in states:
            await self._seal_local(s)
            copy, s.local = s.local, None
            if copy is not None:
                await asyncio.to_thread(copy.close)

    async def _seal_all(self, states: list[PartitionState]) -> None:
        for s in states:
            await self._seal_local(s)

    async def _seal_local(self, s: PartitionState) -> None:
        if s.local is not None:
            try:
                await asyncio.to_thread(s.local.seal)
            except (OSError, ValueError) as exc:
                copy, s.local = s.local, None
                await self._drop_local(s.partition, copy, exc)

    # --- the loop ------------------------------------------------------------------------------------------
    async def _consume(self) -> None:
        assert self.consumer is not None
        self._next_checkpoint = time.monotonic() + self.options.checkpoint_interval
        lag = asyncio.create_task(self._poll_end_offsets())
        background = [lag]
        if self.repartitioner is not None and self.purger is not None:
            self._repartition_task = asyncio.create_task(self._repartition())
            background.append(asyncio.create_task(self.purger.run()))
        try:
            await self._loop()
        finally:
            for task in background:
                task.cancel()

    async def _repartition(self) -> None:
        assert self.repartitioner is not None
        try:
            await self.repartitioner.run(self.stopping)
        except Exception as exc:  # the join stage would starve: stop the worker, as for a failed assignment
            log.exception("the repartition stage failed")
            self.fatal = exc
            self.stop()

    async def _loop(self) -> None:
        assert self.consumer is not None
        while not self.stopping.is_set():
            if self.fatal is not None:
                return
            if self.columns:
                batch = await fetched.take(self.consumer, timeout_ms=200, max_records=self.max_batch,
                                           hold=self.restored)
            else:
                await self.restored.wait()
                got = await self.consumer.getmany(timeout_ms=200, max_records=self.max_batch)
                batch = [PartitionBatch.of_records(tp, records) for tp, records in got.items() if records]
            self.last_poll = time.monotonic()
            if batch:
                async with self.lock:
                    await self._apply(batch)
                if self.gc is not None:
                    self.gc.after_batch()
            if self._writing is not None and self._writing.done():
                await self._settle()
            full = self._unwritten() >= self.options.max_unwritten
            if full and self._writing is not None:
                self.stats.write_waits += 1
                await self._settle()  # the input outruns the changelog: it waits for the write in flight
            if self._writing is None and (full or time.monotonic() >= self._next_checkpoint):
                started = time.monotonic()
                async with self.lock:
                    checkpoint = self._take(list(self.partitions.values()), force=False)
                if checkpoint is None:
                    self._next_checkpoint = started + self.options.checkpoint_interval
                    idle = [s for s in self.partitions.values() if s.local is not None and s.local.due(idle=True)]
                    if idle:  # the input paused: copies holding enough records (or old ones) are sealed now
                        self._writing = asyncio.create_task(self._seal_all(idle))
                    continue
                # Written while the loop consumes on: the taken changes and offsets are a value, and the
                # next checkpoint starts after this one ends, so checkpoints commit in order.
                self._writing = asyncio.create_task(self._write(checkpoint))

    def _unwritten(self) -> int:
        """Changed join entries of the partitions a checkpoint would take now (one whose write failed
        waits for its retry: its changes do not hold the others back)."""
        now = time.monotonic()
        return sum(ChangeTracker.unwritten(s.engine) for s in self.partitions.values() if now >= s.retry_at)

    def _schedule_next(self, started: float) -> None:
        """A big state is checkpointed less often: checkpoints take about `checkpoint_budget` of the time."""
        cost = time.monotonic() - started
        self._next_checkpoint = time.monotonic() + max(self.options.checkpoint_interval,
                                                       cost / self.options.checkpoint_budget)

    async def _apply(self, batch: list[PartitionBatch]) -> None:
        by_partition: dict[int, tuple[list[PartitionBatch], list[PartitionBatch]]] = {}
        for part in batch:
            tp = part.tp
            state = self.partitions.get(tp.partition)
            role = self.roles.get(tp.topic)
            if state is None or role is None:
                continue  # revoked while this batch was in flight
            key = self.offset_key[tp.topic]
            part = part.since(state.offsets.get(key, 0))  # what a restored checkpoint already covers goes
            if not len(part):
                continue
            preds, truths = by_partition.setdefault(tp.partition, ([], []))
            (preds if role == PREDICTIONS else truths).append(part)
            state.offsets[key] = part.offsets[-1] + 1
        for p, (preds, truths) in by_partition.items():
            state = self.partitions[p]
            pred_values, truth_values = _values(preds), _values(truths)
            if self.mapped:
                pred_records = [r for part in preds for r in part.records or ()]
                truth_records = [r for part in truths for r in part.records or ()]
                if self.repartitioner is not None:
                    # Copies name their source topic (which selects the mapping) in the origin header,
                    # which the mapping must not see.
                    sources = ([_source_topic(r) for r in pred_records], [_source_topic(r) for r in truth_records])
                    metas = ([RecordMeta(r.key, source_headers(r.headers), r.timestamp) for r in pred_records],
                             [RecordMeta(r.key, source_headers(r.headers), r.timestamp) for r in truth_records])
                else:  # mapped inputs read their topic, key and headers (docs/attach.md)
                    sources = ([r.topic for r in pred_records], [r.topic for r in truth_records])
                    metas = ([RecordMeta(r.key, r.headers, r.timestamp) for r in pred_records],
                             [RecordMeta(r.key, r.headers, r.timestamp) for r in truth_records])
                rejected = state.engine.process_topics(pred_values, truth_values, sources, metas)
            else:
                rejected = state.engine.process_topics(pred_values, truth_values)
            events = len(pred_values) + len(truth_values)
            state.dirty = True
            state.events += events
            self.stats.events += events
            if rejected:
                items = [(PREDICTIONS, v, part, i) for part in preds for i, v in enumerate(part.values)]
                items += [(GROUND_TRUTH, v, part, i) for part in truths for i, v in enumerate(part.values)]
                await self._dead_letter(p, rejected, items)
        self.stats.batches += 1

    async def _dead_letter(self, partition: int, rejected: list[Rejection],
                           items: list[tuple[str, bytes, PartitionBatch, int]]) -> None:
        assert self.producer is not None and self.topics is not None
        for r, record in zip(rejected, _match(rejected, items), strict=True):
            if record is None:  # the engine handed back other bytes than it was given: cannot happen today
                log.error("dead letter without its source record (reason %s); not sent", r.reason)
                continue
            # A copy made by the repartition stage names its source record, which is what a reader wants.
            source = origin(record.headers) or (record.topic, partition, record.offset)
            headers = [(c.DLQ_REASON_HEADER, r.reason.encode()), (c.DLQ_DETAIL_HEADER, r.detail.encode()),
                       *([(c.DLQ_FIELD_HEADER, r.field.encode())] if r.field else []),
                       *([(c.DLQ_EXPRESSION_HEADER, r.expression.encode())] if r.expression else []),
                       (c.DLQ_TOPIC_HEADER, source[0].encode()),
                       (c.DLQ_PARTITION_HEADER, str(source[1]).encode()),
                       (c.DLQ_OFFSET_HEADER, str(source[2]).encode())]
            try:
                fut = await self.producer.send(self.topics.dead_letter, value=record.value, key=record.key,
                                               headers=headers)
            except KafkaError as exc:  # bad input never stops the worker, nor does a dead letter it cannot send
                log.error("dead letter for %s[%d]@%d not sent: %s", record.topic, partition, record.offset, exc)
                continue
            self._dead_letter_futures.append(fut)
            self.stats.dead_letters += 1

    @staticmethod
    async def _flush_dead_letters(futures: list[asyncio.Future[Any]]) -> None:
        for result in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("a dead letter was not delivered: %s", result)

    # --- checkpoints ---------------------------------------------------------------------------------------
    def _take(self, states: list[PartitionState], force: bool) -> Checkpoint | None:
        """Take a checkpoint of every dirty partition in `states` as of now (the caller holds `self.lock`):
        each one's changes and the input offsets they describe, and the dead letters sent so far."""
        now = time.monotonic()
        due = [s for s in states if s.dirty and (force or now >= s.retry_at)]
        if not due:
            return None
        taken = []
        for s in due:
            extra = {"partition": s.partition, "offsets": dict(s.offsets), "topics": dict(self.inputs),
                     "written_at": time.time()}
            offsets = {TopicPartition(topic, s.partition): s.offsets[key] for key, topic in self.inputs}
            changes = s.tracker.take(s.engine, extra)
            changes.keep = s.local is not None
            taken.append((s, changes, offsets))
            s.dirty = False
        futures, self._dead_letter_futures = self._dead_letter_futures, []
        return Checkpoint(taken, futures, now)

    async def _write(self, checkpoint: Checkpoint) -> None:
        """Write a taken checkpoint. A failed write is counted, shows in /healthz and is retried after a
        backoff; consumption goes on, and the last state written still stands (with its offsets), so
        nothing is lost or counted twice."""
        # Dead letters of the events a checkpoint covers reach the broker before the checkpoint does.
        await self._flush_dead_letters(checkpoint.dead_letters)
        # Each partition has its own transactional producer: their round trips overlap.
        await asyncio.gather(*(self._write_state(s, changes, offsets) for s, changes, offsets in checkpoint.states))
        self.stats.checkpoint_seconds += time.monotonic() - checkpoint.taken_at
        self._schedule_next(checkpoint.taken_at)

    async def _checkpoint(self, states: list[PartitionState], force: bool = False) -> None:
        """Checkpoint `states` now and wait for it (revocation, shutdown); the caller holds `self.lock`."""
        await self._settle()
        checkpoint = self._take(states, force)
        if checkpoint is not None:
            await self._write(checkpoint)

    async def _settle(self) -> None:
        """Wait for the checkpoint being written in the background, if any."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing  # a write's expected failures are handled in it: anything else stops the worker

    async def _write_state(self, s: PartitionState, changes: Changes, offsets: dict[TopicPartition, int]) -> None:
        assert self.topics is not None
        try:
            meta_offset = await asyncio.wait_for(s.writer.write(changes, offsets), self.options.state_write_timeout)
        except (KafkaError, OSError, TimeoutError, ChangelogError) as exc:
            s.tracker.failed(s.engine, changes)
            s.dirty = True
            s.failures += 1
            s.last_error = f"{type(exc).__name__}: {exc}"[:300]
            s.retry_at = time.monotonic() + min(30.0, self.options.state_retry_base * 2 ** (s.failures - 1))
            self.stats.state_write_failures += 1
            log.warning("partition %d: state write failed (%s); retrying in %.0f s, consuming on", s.partition,
                        s.last_error, s.retry_at - time.monotonic())
            return
        s.tracker.committed(changes)
        s.failures, s.last_error = 0, None
        s.state_end = meta_offset + 2  # the meta record, then the transaction's commit marker
        if s.local is not None:
            await self._copy_locally(s, changes, s.state_end)
        if self.purger is not None:
            self.purger.covered(offsets)
        self.stats.checkpoints += 1
        self.stats.checkpoint_records += changes.count
        self.stats.checkpoint_bytes += changes.size

    async def _copy_locally(self, s: PartitionState, changes: Changes, end: int) -> None:
        """A committed checkpoint into the partition's local copy, off the event loop. A copy that failed a
        write may miss records: it is dropped, and the partition's next restore reads the changelog."""
        copy = s.local
        assert copy is not None
        try:
            await asyncio.to_thread(copy.feed, changes, end)
        except (OSError, ValueError) as exc:
            s.local = None
            await self._drop_local(s.partition, copy, exc)

    async def _drop_local(self, partition: int, copy: local_store.LocalCopy | None, exc: Exception) -> None:
        """A write to a partition's local copy failed: only a slower restart is lost (the changelog has
        everything), but the copy may now miss records, so it goes (the caller no longer holds it)."""
        self.stats.local_store_failures += 1
        self.stats.local_dropped.add(partition)
        log.warning("partition %d: local store write failed (%s); dropped, so the next restore of this partition "
                    "reads its whole changelog", partition, exc)
        if copy is not None:
            await asyncio.to_thread(copy.discard)

    async def _poll_end_offsets(self) -> None:
        """The inputs' end offsets from the broker every few seconds, so the lag gauge grows while the
        worker does not consume (the fetch positions alone would hide a stall)."""
        while True:
            owned = [TopicPartition(topic, p) for p in list(self.partitions) for _, topic in self.inputs]
            if owned and self.ends is not None:
                try:
                    self.end_offsets = await self.ends.end_offsets(owned)
                except (KafkaError, OSError) as exc:
                    log.debug("end offsets not read: %s", exc)
            await asyncio.sleep(5.0)

    # --- rebalances ----------------------------------------------------------------------------------------
    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.lock:
            if self.closed:  # a rebalance finished while the consumer stops: the state is already written
                return
            states = [self.partitions[p] for p in sorted({tp.partition for tp in revoked}) if p in self.partitions]
            await self._checkpoint(states, force=True)
            for s in states:
                if s.dirty:
                    # Still exact: the next owner restores the last state written and replays more. This
                    # in-memory state is ahead of the changelog: never reuse it.
                    log.error("partition %d: state not written on revocation (%s)", s.partition, s.last_error)
                    s.state_end = None
                # Whoever restores it next here reads the changelog from this copy's end on.
                await self._seal_local(s)
            for s in states:
                self.parked[s.partition] = self.partitions.pop(s.partition)
            self.joined = False

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.restored.clear()
        try:
            async with self.lock:
                if self.closed:  # a rebalance finished while the consumer stops
                    return
                try:
                    await self._assign(assigned)
                except Exception as exc:
                    log.exception("cannot take over partitions %s", sorted(tp.partition for tp in assigned))
                    self.fatal = exc
                    self.stop()
                    return
                self.joined = True
                # What was just assigned is what its changelog holds: the first checkpoint is an interval away.
                if self._writing is None:
                    self._next_checkpoint = time.monotonic() + self.options.checkpoint_interval
        finally:
            self.restored.set()

    async def _assign(self, assigned: set[TopicPartition]) -> None:
        assert self.reader is not None and self.consumer is not None and self.topics is not None
        parts = sorted({tp.partition for tp in assigned})
        for p in parts:
            have = {tp.topic for tp in assigned if tp.partition == p}
            if have != {tp for _, tp in self.inputs}:
                raise WorkerError(f"partition {p} was assigned for {sorted(have)} only: the topics' partition "
                                  "counts must be equal (and the group must use the range assignor)")
        state_tps = [TopicPartition(self.topics.state, p) for p in parts]
        ends = {tp.partition: off for tp, off in (await self.reader.end_offsets(state_tps)).items()} if parts else {}
        states: dict[int, PartitionState] = {}
        for p in parts:
            parked = self.parked.pop(p, None)
            if parked is not None and not parked.dirty and parked.state_end == ends[p]:
                states[p] = parked
                log.info("partition %d: kept in memory (nothing written to its state since ours)", p)
            elif parked is not None:
                await parked.writer.close()
                await self._close_local([parked])  # sealed on revocation: opened again below
        started = time.monotonic()
        todo = [p for p in parts if p not in states]
        writers = {p: StateWriter(self.topics.state, p, self.config.kafka.group_id, self._client_options)
                   for p in todo}
        # Fence first: starting a partition's transactional producer aborts whatever a previous owner left
        # open, so the changelog read next is final.
        await asyncio.gather(*(w.start() for w in writers.values()))
        fenced = time.monotonic()
        copies = await self._open_local(todo)
        # A join with a memory budget restores within it: the entries of a partition whose changelog could
        # hold more than the budget are staged on disk while read (or into the local copy, with one).
        budget = self.config.join.memory_entries
        staging = Staging(self.config.join.state_dir, above=budget) if budget is not None else None
        read = await read_partitions(self.reader, self.topics.state, todo, staging=staging,
                                     into={p: (copy.store, start) for p, (copy, start) in copies.items()})
        if todo:
            how = "native reader" if raw_fetch.available() else "aiokafka consumer"
            staged = any(r.staged is not None for r in read.values()) and not copies
            log.info("state partitions %s: fenced in %.2f s, changelog read in %.2f s (%s%s)", todo,
                     fenced - started, time.monotonic() - fenced, how,
                     ", join entries staged on disk" if staged else
                     ", into the local stores" if copies else "")
        fresh = []
        for p in todo:
            copy, start = copies.get(p, (None, 0))
            sealed: Exception | None = None
            if copy is not None:
                copy.end = read[p].end
                try:
                    await asyncio.to_thread(copy.seal)
                except (OSError, ValueError) as exc:  # still readable for the rebuild; dropped after it
                    sealed = exc
            try:
                restored = rebuild(self.config, self.references, read[p].records, read[p].staged)
            except ChangelogError as exc:
                raise WorkerError(f"the state topic {self.topics.state!r}, partition {p}: {exc}. It holds state "
                                  "this worker cannot restore: use another kafka.group_id (a fresh start) or "
                                  "delete the state topic") from None
            if sealed is not None:
                await self._drop_local(p, copy, sealed)
                copies.pop(p)
                copy = None
            if restored is None:
                fresh.append(p)
                continue
            if restored.extra.get("partition") != p or restored.extra.get("topics") != dict(self.inputs):
                raise WorkerError(f"the state topic {self.topics.state!r} holds state of topics "
                                  f"{restored.extra.get('topics')} in partition {p}, not of {dict(self.inputs)}: "
                                  "use another kafka.group_id for other topics")
            offsets = {k: int(v) for k, v in restored.extra["offsets"].items()}
            states[p] = PartitionState(p, restored.engine, offsets, restored.tracker, writers[p],
                                       state_end=read[p].end, local=copy)
            self.stats.restored_bytes += restored.bytes
            self.stats.restored_records += restored.records
            source = (f"the local store and the {restored.records} changelog records after offset {start}"
                      if copy is not None and copy.reused else f"{restored.records} changelog records")
            log.info("partition %d: state restored from %s (%.1f MB) in %.2f s, resuming at %s",
                     p, source, restored.bytes / 1e6, time.monotonic() - started, offsets)
        # One offsets request for all fresh partitions: this callback must end well within the session
        # timeout, or the coordinator drops the member before its first heartbeat.
        tps = [TopicPartition(topic, p) for p in fresh for _, topic in self.inputs]
        starts = await self.consumer.beginning_offsets(tps) if tps else {}
        for p in fresh:
            engine = Engine(self.config, self.references)
            track(engine)
            states[p] = PartitionState(p, engine, {key: starts[TopicPartition(topic, p)] for key, topic in self.inputs},
                                       ChangeTracker(), writers[p], state_end=read[p].end,
                                       local=copies[p][0] if p in copies else None)
            log.info("partition %d: no state yet, starting at %s", p, states[p].offsets)
        self.stats.restore_seconds += time.monotonic() - started
        for p, state in sorted(states.items()):
            for key, topic in self.inputs:
                fetched.seek(self.consumer, TopicPartition(topic, p), state.offsets[key])
            self.partitions[p] = state
        # Whatever was parked and not given back now belongs to another worker.
        for state in self.parked.values():
            await state.writer.close()
        await self._close_local(list(self.parked.values()))
        self.parked.clear()


    async def _open_local(self, parts: list[int]) -> dict[int, tuple[local_store.LocalCopy, int]]:
        """Each partition's local copy and the changelog offset to read it from (read after fencing, so the
        changelog's end is final): its mark, or the beginning for a copy made anew."""
        if self.local_dir is None or not parts or self.reader is None or self.topics is None:
            return {}
        tps = [TopicPartition(self.topics.state, p) for p in parts]
        ends = await self.reader.end_offsets(tps)
        starts = await self.reader.beginning_offsets(tps)
        out = {}
        for tp in tps:
            got = await asyncio.to_thread(local_store.open_copy, self.local_dir, self.topics.state, tp.partition,
                                          dict(self.inputs), starts[tp], ends[tp], self.topics.state_tombstone_ms)
            if got is not None:
                out[tp.partition] = got
        return out


def _source_topic(record: ConsumerRecord) -> str:
    found = origin(record.headers)
    return found[0] if found is not None else record.topic


def _match(rejected: list[Rejection], items: list[tuple[str, bytes, PartitionBatch, int]]
           ) -> Iterator[ConsumerRecord | None]:
    """The record of each rejection. Rejections come in item order and carry the bytes that were passed
    in, so one forward scan pairs them (equal bytes always get the same verdict, so an earlier equal item
    was rejected too and already paired)."""
    i = 0
    for r in rejected:
        while i < len(items) and not (items[i][0] == r.topic and (items[i][1] is r.raw or items[i][1] == r.raw)):
            i += 1
        yield items[i][2].record(items[i][3]) if i < len(items) else None
        i += 1


def _values(parts: list[PartitionBatch]) -> Sequence[bytes]:
    """One side's values of a partition: the batch's own column when it is the only one."""
    if len(parts) == 1:
        return parts[0].values
    return [v for part in parts for v in part.values]


class _LagCollector(Collector):
    """mlmon_consumer_lag{topic,partition}: the input's end offset minus the next offset to apply. The
    end offset is the newer of the last fetch's high watermark and the broker's answer to the worker's
    own end-offset requests (every 5 s), so the gauge keeps growing when consumption stalls."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        w = self.worker
        fam = GaugeMetricFamily(c.CONSUMER_LAG.name, c.CONSUMER_LAG.help, labels=list(c.CONSUMER_LAG.labels))
        if w.consumer is not None and w.topics is not None:
            for p, state in sorted(w.partitions.items()):
                for role, topic in w.inputs:
                    tp = TopicPartition(topic, p)
                    known = [x for x in (w.consumer.highwater(tp), w.end_offsets.get(tp)) if x is not None]
                    high = max(known) if known else None
                    if high is not None:
                        fam.add_metric([topic, str(p)], max(0, high - state.offsets.get(role, 0)))
        if w.repartitioner is not None:  # the source topics, when the inputs are repartitioned
            for tp, lag in sorted(w.repartitioner.lag().items()):
                fam.add_metric([tp.topic, str(tp.partition)], lag)
        yield fam


class _StateCollector(Collector):
    """The state changelog's health: failed writes (each one also logged), records and bytes written, the
    times consumption waited for a write, and what the local copies hold unsealed."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        st = self.worker.stats
        for metric, value in ((c.STATE_WRITE_FAILURES, st.state_write_failures),
                              (c.LOCAL_STORE_FAILURES, st.local_store_failures),
                              (c.STATE_RECORDS_WRITTEN, st.checkpoint_records),
                              (c.STATE_BYTES_WRITTEN, st.checkpoint_bytes),
                              (c.STATE_WRITE_WAITS, st.write_waits)):
            fam = CounterMetricFamily(metric.name.removesuffix("_total"), metric.help)
            fam.add_metric([], value)
            yield fam
        unsealed = GaugeMetricFamily(c.LOCAL_STORE_UNSEALED.name, c.LOCAL_STORE_UNSEALED.help,
                                     labels=list(c.LOCAL_STORE_UNSEALED.labels))
        for p, state in sorted(self.worker.partitions.items()):
            if state.local is not None:
                unsealed.add_metric([str(p)], state.local.unsealed)
        yield unsealed


# --- command line ------------------------------------------------------------------------------------------
def _parse_at(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_timestamp(float(value), "--at")
    except ValueError:
        pass  # not a number: RFC 3339
    except InvalidEvent as exc:
        raise click.BadParameter(exc.detail, param_hint="--at") from None
    try:
        return parse_timestamp(value, "--at")
    except InvalidEvent as exc:
        raise click.BadParameter(exc.detail, param_hint="--at") from None


async def run_worker(config: MonitorConfig, options: WorkerOptions) -> None:
    worker = Worker(config, options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    await worker.run()


@click.command("worker")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Config file.")
@click.option("--metrics-port", type=int, help="Port of /metrics and /healthz (default: config metrics.port).")
@click.option("--checkpoint-interval", type=float, default=2.0, show_default=True, envvar="MLMON_CHECKPOINT_INTERVAL",
              help="Seconds between checkpoints of each partition's state (longer when the state is large).")
@click.option("--max-unwritten", type=click.IntRange(min=1), default=200_000, show_default=True,
              envvar="MLMON_MAX_UNWRITTEN",
              help="Join entries changed and not yet checkpointed at which a checkpoint starts at once, and "
                   "consumption waits for the one being written: bounds the memory of changes in flight.")
@click.option("--session-timeout-ms", type=int, default=10_000, show_default=True, envvar="MLMON_SESSION_TIMEOUT_MS",
              help="Consumer-group session timeout: how fast a dead worker's partitions move.")
@click.option("--at", hidden=True, envvar="MLMON_WORKER_AT",
              help="Fixed evaluation time for /metrics, RFC 3339 or epoch seconds (tests and benchmarks only; "
                   "default: now).")
@click.option("--state-dir", type=click.Path(file_okay=False), envvar="MLMON_STATE_DIR",
              help="Directory for the join's on-disk stores and the local copies of the state changelog "
                   "(default: join.state_dir, else mlmon-state in the system temp directory).")
@click.option("--local-store/--no-local-store", default=True, show_default=True, envvar="MLMON_LOCAL_STORE",
              help="Keep a local copy of each partition's changelog in the state dir, so a restart here reads "
                   "only what was written after it.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def worker_command(config_path: str, metrics_port: int | None, checkpoint_interval: float, max_unwritten: int,
                   session_timeout_ms: int, at: str | None, state_dir: str | None, local_store: bool,
                   log_level: str) -> None:
    """Consume predictions and ground truth from Kafka and serve the metrics on /metrics.

    Scale out by starting more workers with the same config: they share the partitions of one consumer
    group. State changes go to the compacted topic `<group_id>-state` in transactions with the input
    offsets, so a worker killed at any point resumes elsewhere without losing or double-counting an event.
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException("\n".join([str(exc.source or config_path) + ":", *exc.problems])) from None
    # Where a join memory budget (join.memory_entries) puts the entries beyond it, and the local copies.
    config = config.model_copy(update={"join": config.join.for_worker(state_dir)})
    options = WorkerOptions(
        metrics_port=config.metrics.port if metrics_port is None else metrics_port,
        metrics_bind=config.metrics.bind, at=_parse_at(at), checkpoint_interval=checkpoint_interval,
        max_unwritten=max_unwritten, session_timeout_ms=session_timeout_ms, local_store=local_store,
    )
    try:
        asyncio.run(run_worker(config, options))
    except (WorkerError, SetupError) as exc:
        raise click.ClickException(str(exc)) from None

"""`monitor worker`: the Kafka stream worker. Batches from aiokafka into one engine per partition,
exact under kill -9 and scale-out, /metrics and /healthz over aiohttp. Design record: docs/worker.md.

One asyncio loop does everything, in this order per turn: fetch a batch (`getmany`), apply it to the
partition engines (synchronous, so nothing else sees a half-applied batch), send its dead letters, and
now and then checkpoint. Scrapes, health checks and the rebalance callbacks run on the same loop between
turns; the rebalance callbacks and checkpoints also take `self.lock` because they await the broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import click
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, KafkaConnectionError, KafkaError
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor import conventions as c
from monitor.config import ConfigError, MonitorConfig, load_config
from monitor.engine import native
from monitor.engine.engine import GROUND_TRUTH, PREDICTIONS, Engine, Rejection
from monitor.engine.figures import Figures
from monitor.engine.merge import merged_figures
from monitor.engine.snapshot import SnapshotError
from monitor.events import InvalidEvent, parse_timestamp
from monitor.exporter import FiguresCollector
from monitor.mapping import RecordMeta
from monitor.reference import Reference, load_reference
from monitor.stream.checkpoints import CheckpointStore
from monitor.stream.gc_policy import GcPolicy
from monitor.stream.kafka_setup import SetupError, Topics, client_options, ensure_topics
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
    session_timeout_ms: int = 10_000
    rebalance_timeout_ms: int = 60_000
    max_state_bytes: int = 256 << 20
    # Bounded so one batch never blocks the loop (heartbeats, scrapes) for more than about a second.
    max_batch: int = 20_000
    connect_timeout: float = 120.0


@dataclass
class PartitionState:
    partition: int
    engine: Engine
    offsets: dict[str, int]  # engine topic -> next offset to apply
    dirty: bool = False
    state_offset: int | None = None  # our newest checkpoint's offset in the state topic
    events: int = 0


@dataclass
class Stats:
    events: int = 0
    batches: int = 0
    dead_letters: int = 0
    checkpoints: int = 0
    checkpoint_bytes: int = 0
    checkpoint_seconds: float = 0.0
    restored_bytes: int = 0
    restore_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)


class Worker:
    def __init__(self, config: MonitorConfig, options: WorkerOptions) -> None:
        self.config = config
        self.options = options
        self.references: dict[str, Reference | None] = {m.name: load_reference(config, m) for m in config.models}
        self.partitions: dict[int, PartitionState] = {}
        # Revoked partitions kept in memory: reused when they come back and nobody checkpointed them since.
        self.parked: dict[int, PartitionState] = {}
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
        self.producer: AIOKafkaProducer | None = None
        self.store: CheckpointStore | None = None
        self.joined = False
        self.last_poll = 0.0
        self._dead_letter_futures: list[asyncio.Future[Any]] = []
        self._next_checkpoint = 0.0
        self.gc = GcPolicy() if os.environ.get("MLMON_WORKER_GC_FREEZE", "1") != "0" else None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FiguresCollector(self.figures))
        registry.register(_LagCollector(self))
        self.web = WebServer(registry, self.health, options.metrics_bind, options.metrics_port)

    # --- what /metrics and /healthz see ------------------------------------------------------------------
    def figures(self) -> Figures:
        at = self.options.at if self.options.at is not None else time.time()
        engines = [s.engine for s in self.partitions.values()]
        return merged_figures(self.config, self.references, engines, at)

    def health(self) -> tuple[bool, str]:
        if self.fatal is not None:
            return False, f"failed: {self.fatal}"
        if not self.joined:
            return False, "starting: not yet a member of the consumer group"
        if time.monotonic() - self.last_poll > max(30.0, self.options.session_timeout_ms / 1000):
            return False, "stalled: no poll for more than 30 s"
        return True, f"consuming {len(self.partitions)} partitions"

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
                self.topics = await ensure_topics(self.config, self.options.max_state_bytes)
                break
            except (KafkaConnectionError, KafkaError, OSError) as exc:
                if time.monotonic() > deadline or self.stopping.is_set():
                    raise WorkerError(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}") from exc
                log.warning("Kafka not reachable yet (%s); retrying", exc)
                await asyncio.sleep(2.0)
        t = self.topics
        self.roles = {t.predictions: PREDICTIONS, t.ground_truth: GROUND_TRUTH, **{tp: side for side, tp in t.extra}}
        # Offsets (and checkpoints) are kept per input: the default topics under their side, as always, and
        # each mapped topic (docs/attach.md) under "topic:<name>".
        self.inputs = [(PREDICTIONS, t.predictions), (GROUND_TRUTH, t.ground_truth),
                       *((f"topic:{tp}", tp) for _, tp in t.extra)]
        self.offset_key = {tp: key for key, tp in self.inputs}
        opts = client_options(kafka)
        client_id = f"mlmon-worker-{socket.gethostname()}-{os.getpid()}"
        self.producer = AIOKafkaProducer(client_id=client_id, acks="all", enable_idempotence=True,
                                         max_request_size=self.options.max_state_bytes, linger_ms=5, **opts)
        reader = AIOKafkaConsumer(client_id=f"{client_id}-checkpoints", enable_auto_commit=False,
                                  max_partition_fetch_bytes=self.options.max_state_bytes,
                                  fetch_max_bytes=self.options.max_state_bytes, **opts)
        session = self.options.session_timeout_ms
        self.consumer = AIOKafkaConsumer(
            client_id=client_id, group_id=kafka.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            # Range assigns partition p of both topics to the same member: a join never crosses workers.
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=session, heartbeat_interval_ms=max(100, session // 3),
            rebalance_timeout_ms=max(session, self.options.rebalance_timeout_ms),
            max_partition_fetch_bytes=4 << 20, **opts)
        await self.producer.start()
        await reader.start()
        self.store = CheckpointStore(self.config, self.references, t.state, self.producer, reader,
                                     dict(self.inputs))
        self.consumer.subscribe([tp for _, tp in self.inputs], listener=_Listener(self))
        await self.consumer.start()
        log.info("group %s: consuming %s and %s (%d partitions), checkpoints in %s; %s engine", kafka.group_id,
                 t.predictions, t.ground_truth, t.partitions, t.state,
                 "native" if native.enabled() else "pure-Python (monitor._native not built, or MLMON_NATIVE=0)")

    async def _shutdown(self) -> None:
        if self.consumer is not None and self.fatal is None and self.store is not None:
            try:
                async with self.lock:
                    await self._checkpoint(list(self.partitions.values()))
            except (KafkaError, OSError) as exc:
                log.error("final checkpoint failed (the next owner replays from the previous one): %s", exc)
        for client in (self.consumer, self.store.reader if self.store else None, self.producer):
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
                 "(%.1f MB, %.2f s)", self.stats.events, self.stats.batches, self.stats.events / max(elapsed, 1e-9),
                 self.stats.dead_letters, self.stats.checkpoints, self.stats.checkpoint_bytes / 1e6,
                 self.stats.checkpoint_seconds)

    # --- the loop ------------------------------------------------------------------------------------------
    async def _consume(self) -> None:
        assert self.consumer is not None
        self._next_checkpoint = time.monotonic() + self.options.checkpoint_interval
        while not self.stopping.is_set():
            if self.fatal is not None:
                return
            batch = await self.consumer.getmany(timeout_ms=200, max_records=self.options.max_batch)
            self.last_poll = time.monotonic()
            if batch:
                async with self.lock:
                    await self._apply(batch)
                if self.gc is not None:
                    self.gc.after_batch()
            if time.monotonic() >= self._next_checkpoint:
                started = time.monotonic()
                try:
                    async with self.lock:
                        await self._checkpoint(list(self.partitions.values()))
                except (KafkaError, OSError) as exc:
                    # E.g. no partition leader for longer than the request timeout during a broker outage:
                    # the failed partitions stay dirty and the last checkpoint stands, so retrying at the
                    # next interval loses nothing, while exiting would stop consuming for no gain.
                    log.warning("checkpoint failed (%s); retrying at the next interval", type(exc).__name__)
                cost = time.monotonic() - started
                self._next_checkpoint = time.monotonic() + max(self.options.checkpoint_interval,
                                                               cost / self.options.checkpoint_budget)

    async def _apply(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        by_partition: dict[int, tuple[list[ConsumerRecord], list[ConsumerRecord]]] = {}
        for tp, records in batch.items():
            state = self.partitions.get(tp.partition)
            role = self.roles.get(tp.topic)
            if state is None or role is None or not records:
                continue  # revoked while this batch was in flight
            key = self.offset_key[tp.topic]
            floor = state.offsets.get(key, 0)
            if records[0].offset < floor:  # already applied (restored from a later checkpoint)
                records = [r for r in records if r.offset >= floor]
                if not records:
                    continue
            preds, truths = by_partition.setdefault(tp.partition, ([], []))
            (preds if role == PREDICTIONS else truths).extend(records)
            state.offsets[key] = records[-1].offset + 1
        for p, (preds, truths) in by_partition.items():
            state = self.partitions[p]
            records = preds + truths
            pred_values = [r.value if r.value is not None else b"" for r in preds]
            truth_values = [r.value if r.value is not None else b"" for r in truths]
            if self.mapped:  # mapped inputs read their topic, key and headers (docs/attach.md)
                rejected = state.engine.process_topics(
                    pred_values, truth_values, ([r.topic for r in preds], [r.topic for r in truths]),
                    ([RecordMeta(r.key, r.headers, r.timestamp) for r in preds],
                     [RecordMeta(r.key, r.headers, r.timestamp) for r in truths]))
            else:
                rejected = state.engine.process_topics(pred_values, truth_values)
            state.dirty = True
            state.events += len(records)
            self.stats.events += len(records)
            if rejected:
                items = [(PREDICTIONS, v) for v in pred_values] + [(GROUND_TRUTH, v) for v in truth_values]
                await self._dead_letter(p, rejected, items, records)
        self.stats.batches += 1

    async def _dead_letter(self, partition: int, rejected: list[Rejection], items: list[tuple[str, bytes]],
                           records: list[ConsumerRecord]) -> None:
        assert self.producer is not None and self.topics is not None
        for r, record in zip(rejected, _match(rejected, items, records), strict=True):
            if record is None:  # the engine handed back other bytes than it was given: cannot happen today
                log.error("dead letter without its source record (reason %s); not sent", r.reason)
                continue
            headers = [(c.DLQ_REASON_HEADER, r.reason.encode()), (c.DLQ_DETAIL_HEADER, r.detail.encode()),
                       *([(c.DLQ_FIELD_HEADER, r.field.encode())] if r.field else []),
                       *([(c.DLQ_EXPRESSION_HEADER, r.expression.encode())] if r.expression else []),
                       (c.DLQ_TOPIC_HEADER, record.topic.encode()),
                       (c.DLQ_PARTITION_HEADER, str(partition).encode()),
                       (c.DLQ_OFFSET_HEADER, str(record.offset).encode())]
            try:
                fut = await self.producer.send(self.topics.dead_letter, value=record.value, key=record.key,
                                               headers=headers)
            except KafkaError as exc:  # bad input never stops the worker, nor does a dead letter it cannot send
                log.error("dead letter for %s[%d]@%d not sent: %s", record.topic, partition, record.offset, exc)
                continue
            self._dead_letter_futures.append(fut)
            self.stats.dead_letters += 1

    async def _flush_dead_letters(self) -> None:
        futures, self._dead_letter_futures = self._dead_letter_futures, []
        for result in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("a dead letter was not delivered: %s", result)

    # --- checkpoints ---------------------------------------------------------------------------------------
    async def _checkpoint(self, states: list[PartitionState]) -> None:
        """Write a checkpoint of every dirty partition in `states`; the caller holds `self.lock`."""
        dirty = [s for s in states if s.dirty]
        if not dirty:
            return
        assert self.store is not None and self.consumer is not None and self.topics is not None
        started = time.monotonic()
        # Dead letters of the events a checkpoint covers reach the broker before the checkpoint does.
        await self._flush_dead_letters()
        sends = []
        for s in dirty:
            fut, size = await self.store.write(s.partition, s.engine, dict(s.offsets))
            sends.append((s, dict(s.offsets), fut, size))
            s.dirty = False
        commit = {}
        for s, offsets, fut, size in sends:
            try:
                meta = await fut
            except KafkaError:
                s.dirty = True  # try again next time; the previous checkpoint still stands
                raise
            s.state_offset = meta.offset
            self.stats.checkpoints += 1
            self.stats.checkpoint_bytes += size
            for role, topic in self.inputs:
                if role in offsets:
                    commit[TopicPartition(topic, s.partition)] = offsets[role]
        self.stats.checkpoint_seconds += time.monotonic() - started
        # Only for lag tooling (kafka-consumer-groups and the like): restores read the checkpoint instead.
        owned = self.consumer.assignment()
        commit = {tp: off for tp, off in commit.items() if tp in owned}
        if commit:
            try:
                await self.consumer.commit(commit)
            except (CommitFailedError, KafkaError) as exc:
                log.debug("offset commit skipped: %s", exc)

    # --- rebalances ----------------------------------------------------------------------------------------
    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.lock:
            states = [self.partitions[p] for p in sorted({tp.partition for tp in revoked}) if p in self.partitions]
            try:
                await self._checkpoint(states)
            except (KafkaError, OSError) as exc:
                # Still exact: the next owner restores the previous checkpoint and replays more.
                log.error("checkpoint on revocation failed: %s", exc)
                for s in states:
                    s.state_offset = None  # never reuse this in-memory state: it is ahead of any checkpoint
            for s in states:
                self.parked[s.partition] = self.partitions.pop(s.partition)
            self.joined = False

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self.lock:
            try:
                await self._assign(assigned)
            except Exception as exc:
                log.exception("cannot take over partitions %s", sorted(tp.partition for tp in assigned))
                self.fatal = exc
                self.stop()
                return
            self.joined = True

    async def _assign(self, assigned: set[TopicPartition]) -> None:
        assert self.store is not None and self.consumer is not None and self.topics is not None
        parts = sorted({tp.partition for tp in assigned})
        for p in parts:
            have = {tp.topic for tp in assigned if tp.partition == p}
            if have != {tp for _, tp in self.inputs}:
                raise WorkerError(f"partition {p} was assigned for {sorted(have)} only: the topics' partition "
                                  "counts must be equal (and the group must use the range assignor)")
        ends = await self.store.end_offsets(parts) if parts else {}
        states: dict[int, PartitionState] = {}
        for p in parts:
            parked = self.parked.pop(p, None)
            if parked is not None and not parked.dirty and _unchanged_since(parked, ends[p]):
                states[p] = parked
                log.info("partition %d: kept in memory (no checkpoint written since ours)", p)
        started = time.monotonic()
        loaded = await self.store.read_latest({p: ends[p] for p in parts if p not in states})
        fresh = [p for p, cp in loaded.items() if cp is None]
        # One offsets request for all fresh partitions: this callback must end well within the session
        # timeout, or the coordinator drops the member before its first heartbeat.
        tps = [TopicPartition(topic, p) for p in fresh for _, topic in self.inputs]
        starts = await self.consumer.beginning_offsets(tps) if tps else {}
        for p, cp in loaded.items():
            if cp is not None:
                states[p] = PartitionState(p, cp.engine, cp.offsets, state_offset=cp.state_offset)
                self.stats.restored_bytes += cp.size
            else:
                states[p] = PartitionState(p, Engine(self.config, self.references), {
                    key: starts[TopicPartition(topic, p)] for key, topic in self.inputs})
                log.info("partition %d: no checkpoint, starting at %s", p, states[p].offsets)
        self.stats.restore_seconds += time.monotonic() - started
        for p, state in sorted(states.items()):
            for key, topic in self.inputs:
                self.consumer.seek(TopicPartition(topic, p), state.offsets[key])
            self.partitions[p] = state
        # Whatever was parked and not given back now belongs to another worker.
        self.parked.clear()


def _unchanged_since(parked: PartitionState, end: int) -> bool:
    if parked.state_offset is None:
        return end == 0 and parked.events == 0
    return end == parked.state_offset + 1


def _match(rejected: list[Rejection], items: list[tuple[str, bytes]],
           records: list[ConsumerRecord]) -> Iterator[ConsumerRecord | None]:
    """The record of each rejection. Rejections come in item order and carry the very bytes object that
    was passed in, so one forward scan pairs them (equal bytes always get the same verdict)."""
    i = 0
    for r in rejected:
        while i < len(items) and not (items[i][1] is r.raw and items[i][0] == r.topic):
            i += 1
        yield records[i] if i < len(items) else None
        i += 1


class _Listener(ConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.worker.on_assigned(assigned)


class _LagCollector(Collector):
    """mlmon_consumer_lag{topic,partition}: the broker's high watermark minus the next offset to apply."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        w = self.worker
        fam = GaugeMetricFamily(c.CONSUMER_LAG.name, c.CONSUMER_LAG.help, labels=list(c.CONSUMER_LAG.labels))
        if w.consumer is not None and w.topics is not None:
            for p, state in sorted(w.partitions.items()):
                for role, topic in w.inputs:
                    high = w.consumer.highwater(TopicPartition(topic, p))
                    if high is not None:
                        fam.add_metric([topic, str(p)], max(0, high - state.offsets.get(role, 0)))
        yield fam


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
@click.option("--session-timeout-ms", type=int, default=10_000, show_default=True, envvar="MLMON_SESSION_TIMEOUT_MS",
              help="Consumer-group session timeout: how fast a dead worker's partitions move.")
@click.option("--max-state-mb", type=int, default=256, show_default=True, envvar="MLMON_MAX_STATE_MB",
              help="Largest checkpoint message (state topic max.message.bytes, producer max request size).")
@click.option("--at", hidden=True, envvar="MLMON_WORKER_AT",
              help="Fixed evaluation time for /metrics, RFC 3339 or epoch seconds (tests and benchmarks only; "
                   "default: now).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def worker_command(config_path: str, metrics_port: int | None, checkpoint_interval: float, session_timeout_ms: int,
                   max_state_mb: int, at: str | None, log_level: str) -> None:
    """Consume predictions and ground truth from Kafka and serve the metrics on /metrics.

    Scale out by starting more workers with the same config: they share the partitions of one consumer
    group. State is checkpointed to the compacted topic `<group_id>-state`, so a worker killed at any point
    resumes elsewhere without losing or double-counting an event.
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException("\n".join([str(exc.source or config_path) + ":", *exc.problems])) from None
    options = WorkerOptions(
        metrics_port=config.metrics.port if metrics_port is None else metrics_port,
        metrics_bind=config.metrics.bind, at=_parse_at(at), checkpoint_interval=checkpoint_interval,
        session_timeout_ms=session_timeout_ms, max_state_bytes=max_state_mb << 20,
    )
    try:
        asyncio.run(run_worker(config, options))
    except (WorkerError, SetupError, SnapshotError) as exc:
        raise click.ClickException(str(exc)) from None

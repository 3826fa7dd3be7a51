"""Reading a state changelog: aiokafka's getmany vs the raw record-batch reader, in one run.

    python -m bench.raw_fetch_bench [--pending 2000000] [--rounds 2] [--bootstrap HOST:PORT]

An engine of the example config (6 labels) gets N predictions that never see ground truth; one checkpoint
of it goes to a one-partition state topic through the worker's own StateWriter (a Kafka transaction, the
records the worker writes: N join entries of ~140 bytes plus blocks and the meta record). Then, on the same
topic, alternating `--rounds` times:
- read: records/s of a bare getmany loop (read_committed, the worker's reader settings) vs the raw reader
  (monitor.stream.raw_fetch), each only counting records;
- restore: changelog.read_partitions (newest value per key) + changelog.rebuild (the engine), as the
  worker restores a partition, with getmany (`raw=False`) and with the raw reader; entries/s.
Without --bootstrap a local broker is started (monitor.stream.broker.LocalKafka, stock settings).

Target (the state design): restore from the changelog at least 500k entries/s.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.state_scale import T0, prediction
from monitor.config import MonitorConfig, load_config
from monitor.engine.engine import Engine
from monitor.reference import Reference, load_reference
from monitor.stream import raw_fetch
from monitor.stream.changelog import ChangeTracker, StateWriter, read_partitions, rebuild, track

ROOT = Path(__file__).resolve().parent.parent
TARGET_RESTORE = 500_000
References = dict[str, Reference | None]


def engine_with_pending(config: MonitorConfig, references: References, n: int) -> Engine:
    engine = Engine(config, references)
    track(engine)
    chunk = 50_000
    for start in range(0, n, chunk):
        raws = [prediction(str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15 + 1) % (1 << 122))), T0 + i * 1e-3, i)
                for i in range(start, min(start + chunk, n))]
        rejected = engine.predictions(raws)
        assert not rejected, rejected[:1]
    engine.flush()
    return engine


async def write_state(bootstrap: str, config: MonitorConfig, references: References, n: int) -> tuple[str, int]:
    name = f"rawbench-{uuid.uuid4().hex[:8]}"
    state, source = f"{name}-state", f"{name}-in"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(state, 1, 1, topic_configs={"cleanup.policy": "compact"}),
                                   NewTopic(source, 1, 1)])
    finally:
        await admin.close()
    engine = engine_with_pending(config, references, n)
    changes = ChangeTracker().take(engine, {"partition": 0, "topics": {}, "offsets": {}})
    writer = StateWriter(state, 0, f"{name}-group", {"bootstrap_servers": bootstrap})
    started = time.perf_counter()
    await writer.write(changes, {TopicPartition(source, 0): n})
    await writer.close()
    print(f"wrote {changes.count:,} changelog records ({changes.size / 1e6:.0f} MB of keys and values, "
          f"{changes.entries:,} entries) in {time.perf_counter() - started:.1f} s", flush=True)
    return state, changes.count


def reader(bootstrap: str) -> AIOKafkaConsumer:
    # The worker's state reader (monitor.stream.worker), aiokafka's default fetch sizes.
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed")


async def count_getmany(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int) -> int:
    consumer.assign([tp])
    consumer.seek(tp, start)
    n = 0
    while await consumer.position(tp) < end:
        for records in (await consumer.getmany(timeout_ms=500, max_records=50_000)).values():
            n += len(records)
    consumer.assign([])
    return n


async def count_raw(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int) -> int:
    n = 0
    async for _, cols in raw_fetch.RawReader(consumer._client).read({tp: start}, {tp: end}):
        n += len(cols)
    return n


async def timed(what: Callable[[], Awaitable[int]]) -> tuple[int, float]:
    started = time.perf_counter()
    n = await what()
    return n, time.perf_counter() - started


async def run(bootstrap: str, n: int, rounds: int) -> None:
    config = load_config(ROOT / "monitor" / "examples" / "config.yaml")
    references = {m.name: load_reference(config, m) for m in config.models}  # as the worker loads them
    state, count = await write_state(bootstrap, config, references, n)
    tp = TopicPartition(state, 0)
    consumer = reader(bootstrap)
    await consumer.start()
    try:
        start = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        rates: dict[tuple[str, str], list[float]] = {}
        for r in range(rounds):
            for name, fn in (("getmany", count_getmany), ("raw", count_raw)):
                got, secs = await timed(lambda fn=fn: fn(consumer, tp, start, end))  # type: ignore[misc]
                assert got == count, (name, got, count)
                rates.setdefault(("read (count only)", name), []).append(got / secs)
            for name, raw in (("getmany", False), ("raw", True)):
                started = time.perf_counter()
                read = await read_partitions(consumer, state, [0], raw=raw)
                read_s = time.perf_counter() - started
                restored = rebuild(config, references, read[0].records)
                secs = time.perf_counter() - started
                assert restored is not None and restored.records == count, (name, restored and restored.records)
                entries = sum(len(s.join) for s in restored.engine.models.values())
                assert entries == n, (entries, n)
                rates.setdefault(("restore (read + rebuild)", name), []).append(restored.records / secs)
                rates.setdefault(("restore: read_partitions", name), []).append(restored.records / read_s)
                del read, restored
            print(f"round {r + 1}: " + ", ".join(f"{w} {k} {v[-1]:,.0f}/s" for (w, k), v in rates.items()), flush=True)
    finally:
        await consumer.stop()
    best = {k: max(v) for k, v in rates.items()}
    print(f"\n{count:,} changelog records ({n:,} pending entries), best of {rounds} rounds, records/s:")
    print(f"{'':<28} {'getmany':>12} {'raw':>12} {'raw/getmany':>12}")
    for what in ("read (count only)", "restore: read_partitions", "restore (read + rebuild)"):
        g, w = best[(what, "getmany")], best[(what, "raw")]
        print(f"{what:<28} {g:>12,.0f} {w:>12,.0f} {w / g:>11.2f}x")
    verdict = "met" if best[("restore (read + rebuild)", "raw")] >= TARGET_RESTORE else "NOT met"
    print(f"restore target {TARGET_RESTORE:,} entries/s: {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pending", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bootstrap")
    args = ap.parse_args()
    if not raw_fetch.available():
        raise SystemExit("the native module (monitor._native with unpack_records) is not built")
    if args.bootstrap:
        asyncio.run(run(args.bootstrap, args.pending, args.rounds))
        return
    from monitor.stream.broker import LocalKafka

    with LocalKafka() as broker:
        asyncio.run(run(broker.bootstrap, args.pending, args.rounds))


if __name__ == "__main__":
    main()

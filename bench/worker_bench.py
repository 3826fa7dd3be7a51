"""Broker -> worker -> metrics, beside `monitor replay` and a bare aiokafka consumer, on the same events.

    python -m bench.worker_bench [--mix example|realistic] [--events N] [--partitions P] [--bootstrap HOST:PORT]
                                 [--profile FILE] [--no-repartition] [--repeat R] [--no-local-store]

1. Generates N predictions and their ground truth: of the 6-label example model (monitor.simulate), or with
   `--mix realistic` bench/make_stream.py's mix (three models; served lists, partial ground truth,
   multiclass and binary, epoch timestamps) with its config.
2. Uses KAFKA_BOOTSTRAP_SERVERS / --bootstrap, else starts a local Apache Kafka (monitor.stream.broker).
3. Produces both topics keyed by prediction_id (P partitions each), then times, in this one run:
   - bare: one aiokafka consumer reading both topics with getmany and orjson-decoding every value;
   - replay: `run_replay` on the same bytes (the engine alone, files already in memory);
   - worker: the real Worker in this process, with a state dir (so, as by default, it keeps a local copy
     of each partition's changelog: monitor/stream/local_store.py), from the end of its assignment to its
     last applied event, then a scrape of /metrics, and the same figures as replay (checked); and the
     same reading through aiokafka's getmany (--no-local-store: both workers without copies);
   - restart: a second Worker on the same group after a graceful stop, without a state dir: time until
     it has restored every partition from its changelog; then one on the first worker's state dir, which
     reads only what follows its local copies' seals;
   - repartitioned: a Worker with `kafka.repartition: always` (another group) on the same topics: the
     repartition stage copies every event to the internal topics in transactions and the join stage
     reads the copies, both in this one process, from the first event to the last applied (checked
     against replay too). --no-repartition skips it.
4. Reports events/s and the ratios worker/replay and worker/bare, checkpoint counts and sizes, and
   the memory per pending join (resident-set growth over predictions that never get ground truth).

With --repeat R, bare, replay and both workers run R rounds in turn (each round's workers on fresh groups)
and the table gives each peer's median, with every round's rates and ratios below it: single runs of
about a second follow the broker's fetches and the machine's load.

With --profile the worker runs under cProfile (first round) and the top functions are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import shutil
import statistics
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from monitor.config import MonitorConfig, load_config
from monitor.engine import native, snapshot
from monitor.engine.engine import Engine
from monitor.replay import run_replay
from monitor.simulate import TrafficSpec, generate
from monitor.stream.worker import Worker, WorkerOptions

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "monitor" / "examples" / "config.yaml"


def bench_config(bootstrap: str, partitions: int, path: Path = EXAMPLE) -> MonitorConfig:
    base = load_config(path)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    kafka = base.kafka.model_copy(update={
        "bootstrap_servers": bootstrap, "predictions_topic": f"{name}-predictions",
        "ground_truth_topic": f"{name}-truth", "dead_letter_topic": f"{name}-dlq", "group_id": f"{name}-group",
        "partitions": partitions})
    return base.model_copy(update={"kafka": kafka})


async def produce(config: MonitorConfig, preds: list[bytes], truths: list[bytes]) -> float:
    k = config.kafka
    admin = AIOKafkaAdminClient(bootstrap_servers=k.bootstrap_servers)
    await admin.start()
    await admin.create_topics([NewTopic(t, k.partitions, 1) for t in (k.predictions_topic, k.ground_truth_topic)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=k.bootstrap_servers, linger_ms=50, max_batch_size=512 << 10)
    await producer.start()
    started = time.perf_counter()
    try:
        for topic, values in ((k.predictions_topic, preds), (k.ground_truth_topic, truths)):
            futures = []
            for v in values:
                futures.append(await producer.send(topic, value=v, key=orjson.loads(v)["prediction_id"].encode()))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def bare_consume(config: MonitorConfig, total: int) -> float:
    k = config.kafka
    consumer = AIOKafkaConsumer(bootstrap_servers=k.bootstrap_servers, enable_auto_commit=False,
                                max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in (k.predictions_topic, k.ground_truth_topic) for p in range(k.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen, started = 0, time.perf_counter()
        while seen < total:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for records in batch.values():
                for r in records:
                    orjson.loads(r.value)
                seen += len(records)
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def _cpu_of(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process has used so far; None when unknown (a remote broker)."""
    if pid is None:
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# CPU seconds of the last run_worker: the worker process's and the broker's (None: not measured), from its
# first event to its last. On a shared machine wall time follows the other jobs; CPU time much less.
LAST_CPU: dict[str, float | None] = {}
BROKER_PID: list[int | None] = [None]
# Whether the workers keep local copies of their changelogs (the default; --no-local-store: the peer).
LOCAL_STORE = [True]


async def run_worker(config: MonitorConfig, total: int, at: float, profile: cProfile.Profile | None,
                     columns: bool = True) -> tuple[float, Worker, bytes]:
    worker = Worker(config, WorkerOptions(metrics_port=0, metrics_bind="127.0.0.1", at=at,
                                          session_timeout_ms=6000, columns=columns,
                                          local_store=LOCAL_STORE[0]))
    # A profile covers start-up too: enabling it mid-flight loses the frames already running.
    if profile is not None:
        profile.enable()
    # The clock starts once the worker owns its partitions (group joined, nothing applied yet), taken as
    # its assignment ends: at this loop's next turn, a getmany building records may have held the loop.
    owned: list[tuple[float, float, float | None]] = []
    assign = worker.on_assigned

    async def on_assigned(assigned: set[TopicPartition]) -> None:
        await assign(assigned)
        if not owned and worker.joined:
            owned.append((time.perf_counter(), time.process_time(), _cpu_of(BROKER_PID[0])))

    worker.on_assigned = on_assigned  # type: ignore[method-assign]
    task = asyncio.create_task(worker.run())
    first = None
    while worker.stats.events < total:
        if task.done():
            task.result()
        stage = worker.repartitioner
        if first is None and owned and (stage is None or stage.joined):
            # With a repartition stage, the later of the two (its join is seen here, a little late).
            first, cpu0, broker0 = owned[0] if stage is None else (time.perf_counter(), time.process_time(),
                                                                   _cpu_of(BROKER_PID[0]))
        await asyncio.sleep(0.001 if first is None else 0.01)
    elapsed = time.perf_counter() - (first or time.perf_counter())
    broker1 = _cpu_of(BROKER_PID[0])
    LAST_CPU["worker"] = time.process_time() - cpu0 if first is not None else None
    LAST_CPU["broker"] = broker1 - broker0 if first is not None and broker0 is not None and broker1 else None
    if profile is not None:
        profile.disable()
    body = await asyncio.to_thread(_get, f"http://127.0.0.1:{worker.web.port}/metrics")
    worker.stop()
    await task
    return elapsed, worker, body


async def restart(config: MonitorConfig, at: float) -> tuple[float, Worker]:
    worker = Worker(config, WorkerOptions(metrics_port=0, metrics_bind="127.0.0.1", at=at,
                                          session_timeout_ms=6000))
    started = time.perf_counter()
    task = asyncio.create_task(worker.run())
    while not worker.joined:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    worker.stop()
    await task
    return elapsed, worker


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def pending_join_memory(config: MonitorConfig, use_native: bool, n: int = 200_000) -> tuple[float, float]:
    """Bytes per pending prediction in memory and in a checkpoint. Memory is the growth of the process's
    resident set while `n` predictions that never get ground truth are applied in worker-sized batches
    (tracemalloc cannot see the native core's heap). An upper bound: freed batch buffers the allocator
    keeps count too."""
    preds, _ = generate(TrafficSpec(n=n, rate=50.0, label_share=0.0, seed=3))
    raws = [r for _, r in preds]
    engine = Engine(config, use_native=use_native)
    engine.predictions(raws[:1])
    gc.collect()
    before = _rss()
    for i in range(1, n, 5000):
        engine.predictions(raws[i:i + 5000])
    gc.collect()
    grown = _rss() - before
    size = len(snapshot.dump(engine, compress=False))
    return grown / (n - 1), size / n


def events_of(mix: str, n: int) -> tuple[list[bytes], list[bytes], Path]:
    """(predictions, ground truth, config path) of the chosen stream."""
    if mix == "example":
        p, g = generate(TrafficSpec(n=n, rate=20.0, seed=7))
        return [r for _, r in p], [r for _, r in g], EXAMPLE
    from bench.make_stream import ensure_stream

    preds_path, truth_path, config_path, _ = ensure_stream(n, mix=mix)
    return preds_path.read_bytes().splitlines(), truth_path.read_bytes().splitlines(), config_path


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Round:
    """One round of the timed peers on the same topics: seconds and CPU per peer, and what the checks
    compare (the replay's figures and both workers' /metrics)."""

    seconds: dict[str, float]
    cpu: dict[str, dict[str, float | None]]
    at: float
    figures: Any
    worker: Worker
    body: bytes
    getmany_body: bytes


def with_state_dir(config: MonitorConfig, state_dir: str) -> MonitorConfig:
    return config.model_copy(update={"join": config.join.for_worker(state_dir)})


def one_round(config: MonitorConfig, with_dir: MonitorConfig, preds: list[bytes], truths: list[bytes],
              suffix: str, profile: cProfile.Profile | None) -> Round:
    """A bare consumer, replay in memory, the worker reading columns and the worker reading through
    aiokafka's getmany, one after the other; the workers on groups named with `suffix`."""
    total = len(preds) + len(truths)
    cpu0 = time.process_time()
    bare_s = asyncio.run(bare_consume(config, total))  # its CPU includes the consumer's start-up
    bare_cpu = time.process_time() - cpu0
    started, cpu0 = time.perf_counter(), time.process_time()
    # Evaluated at the newest event time, as the engine reads it (the mix's timestamps come in several
    # forms); the worker is then evaluated at the same instant.
    replay_engine, replay_figures = run_replay(config, preds, truths)
    replay_s, replay_cpu = time.perf_counter() - started, time.process_time() - cpu0
    at = replay_engine.latest_event_time or 0.0

    def group(name: MonitorConfig, extra: str) -> MonitorConfig:
        k = name.kafka.model_copy(update={"group_id": f"{config.kafka.group_id}{extra}{suffix}"})
        return name.model_copy(update={"kafka": k})

    worker_s, worker, body = asyncio.run(run_worker(group(with_dir, ""), total, at, profile))
    cpu: dict[str, dict[str, float | None]] = {"bare": {"worker": bare_cpu}, "replay": {"worker": replay_cpu},
                                               "worker": dict(LAST_CPU)}
    # The same worker reading its inputs through aiokafka's getmany (a ConsumerRecord per record), on
    # another group: the peer of the columnar read.
    getmany_s, _, getmany_body = asyncio.run(run_worker(group(with_dir, "-getmany"), total, at, None, columns=False))
    cpu["worker, getmany"] = dict(LAST_CPU)
    seconds = {"bare": bare_s, "replay": replay_s, "worker": worker_s, "worker, getmany": getmany_s}
    return Round(seconds, cpu, at, replay_figures, worker, body, getmany_body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", choices=("example", "realistic"), default="example",
                    help="the example model's stream, or bench/make_stream.py's realistic mix")
    ap.add_argument("--events", type=int, default=100_000, help="predictions (ground truth adds about 80%%)")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    ap.add_argument("--profile", help="write the worker's cProfile stats here and print the top entries")
    ap.add_argument("--no-repartition", action="store_true", help="skip the repartitioned worker's run")
    ap.add_argument("--no-local-store", action="store_true",
                    help="the workers keep no local copies of their changelogs (to compare with the default)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of bare, replay and both workers (fresh groups each); medians are reported")
    args = ap.parse_args()
    LOCAL_STORE[0] = not args.no_local_store

    broker = None
    if not args.bootstrap:
        from monitor.stream.broker import start_broker

        broker = start_broker()
        args.bootstrap = broker.bootstrap
        BROKER_PID[0] = broker.pid
    try:
        preds, truths, config_path = events_of(args.mix, args.events)
        total = len(preds) + len(truths)
        config = bench_config(args.bootstrap, args.partitions, config_path)
        # The workers run with a state dir (the join's store and the local copies of the changelog).
        state_dirs = [tempfile.mkdtemp(prefix="mlmon-bench-state-") for _ in range(args.repeat)]
        with_dir = with_state_dir(config, state_dirs[0])
        produce_s = asyncio.run(produce(config, preds, truths))
        profile = cProfile.Profile() if args.profile else None
        rounds: list[Round] = []
        for r in range(args.repeat):
            # Each round's workers join fresh groups (with fresh changelogs), so each consumes everything.
            rounds.append(one_round(config, with_state_dir(config, state_dirs[r]), preds, truths,
                                    "" if r == 0 else f"-r{r}", profile if r == 0 else None))
        first = rounds[0]
        at, replay_figures, worker, body, getmany_body = first.at, first.figures, first.worker, first.body, \
            first.getmany_body
        # Medians over the rounds (the broker's CPU is the first round's: the repartition lines print it).
        cpu = {name: {**used, "worker": statistics.median([r.cpu[name]["worker"] or 0.0 for r in rounds])}
               for name, used in first.cpu.items()}
        restart_s, restarted = asyncio.run(restart(config, at))  # no state dir: reads the changelog
        # The first round's worker sealed its copies there.
        local = asyncio.run(restart(with_dir, at)) if LOCAL_STORE[0] else None
        for state_dir in state_dirs:
            shutil.rmtree(state_dir, ignore_errors=True)
        repartitioned = None
        if not args.no_repartition:
            # Same source topics, another group (so nothing is restored), every event through the copies.
            k = config.kafka.model_copy(update={"group_id": f"{config.kafka.group_id}-rp", "repartition": "always"})
            rp_s, rp_worker, rp_body = asyncio.run(run_worker(config.model_copy(update={"kafka": k}), total, at, None))
            repartitioned = (rp_s, rp_worker, rp_body)
            cpu["repartitioned"] = dict(LAST_CPU)
        memory = {name: pending_join_memory(config, use) for name, use in (("native", True), ("pure Python", False))
                  if use is False or native.enabled()}

        from monitor.exporter import prometheus_text
        from tests.test_worker import assert_series_equal, parse

        assert_series_equal(parse(body.decode()), parse(prometheus_text(replay_figures).decode()))
        assert_series_equal(parse(getmany_body.decode()), parse(prometheus_text(replay_figures).decode()))
        for extra in rounds[1:]:
            for got in (extra.body, extra.getmany_body):
                assert_series_equal(parse(got.decode()), parse(prometheus_text(replay_figures).decode()))
        runs = [(name, statistics.median([r.seconds[name] for r in rounds])) for name in first.seconds]
        worker_s = dict(runs)["worker"]
        if repartitioned is not None:
            assert_series_equal(parse(repartitioned[2].decode()), parse(prometheus_text(replay_figures).decode()))
            runs.append(("repartitioned", repartitioned[0]))
        rate = {name: total / s for name, s in runs}
        st = worker.stats
        models = ", ".join(f"{m.name} ({m.task}, {len(m.labels)} labels)" for m in config.models)
        print(f"events: {total} ({len(preds)} predictions, {len(truths)} ground truth), {args.partitions} partitions, "
              f"{args.mix} mix: {models}; produced in {produce_s:.1f} s")
        print(f"{'path':<18}{'seconds':>10}{'events/s':>12}{'CPU us/event':>14}")
        for name, s in runs:
            used = cpu.get(name, {}).get("worker")
            print(f"{name:<18}{s:>10.2f}{rate[name]:>12,.0f}{'' if used is None else f'{1e6 * used / total:.1f}':>14}")
        if len(rounds) > 1:
            print(f"(medians of {len(rounds)} rounds; each round runs bare, replay, worker and worker (getmany) "
                  "one after the other)")
            print(f"{'round':<7}" + "".join(f"{name + ' ev/s':>24}" for name in first.seconds)
                  + f"{'worker/replay':>15}{'worker/bare':>13}")
            for i, r in enumerate(rounds, 1):
                ev = {name: total / sec for name, sec in r.seconds.items()}
                print(f"{i:<7}" + "".join(f"{ev[name]:>24,.0f}" for name in first.seconds)
                      + f"{ev['worker'] / ev['replay']:>15.2f}{ev['worker'] / ev['bare']:>13.2f}")
            paired = {peer: statistics.median([r.seconds[peer] / r.seconds["worker"] for r in rounds])
                      for peer in ("replay", "bare")}
            print(f"median of the rounds' ratios: worker/replay = {paired['replay']:.2f}   "
                  f"worker/bare = {paired['bare']:.2f}")
        print(f"worker/replay = {rate['worker'] / rate['replay']:.2f}   "
              f"worker/bare = {rate['worker'] / rate['bare']:.3f}   "
              "(targets: worker >= 0.8 x replay and >= 2 x bare)")
        print(f"worker (columns) / worker (getmany) = {rate['worker'] / rate['worker, getmany']:.2f} by events/s")
        print(f"checkpoints: {st.checkpoints} written, {st.checkpoint_bytes / 1e6:.1f} MB in total, "
              f"{st.checkpoint_seconds:.2f} s spent ({100 * st.checkpoint_seconds / max(worker_s, 1e-9):.0f}% of "
              f"the run); /metrics identical to replay: yes")
        if repartitioned is not None:
            rp_s, rp_worker, _ = repartitioned
            rst = rp_worker.repartitioner.stats if rp_worker.repartitioner is not None else None
            print(f"repartitioned/worker = {rate['repartitioned'] / rate['worker']:.2f} (same events, same topics); "
                  f"/metrics identical to replay: yes")
            for name, used in cpu.items():
                if name in ("bare", "replay"):
                    continue
                broker_us = f"{1e6 * used['broker'] / total:.1f}" if used.get("broker") is not None else "?"
                print(f"CPU per event, {name}: worker process {1e6 * (used['worker'] or 0) / total:.1f} us, "
                      f"broker {broker_us} us")
            if rst is not None:
                print(f"repartition stage: {rst.copied} copied in {rst.transactions} transactions, "
                      f"{rst.seconds:.2f} s inside them, summed over source partitions (they overlap)")
        rs = restarted.stats
        if local is not None:
            local_s, loaded = local
            print(f"restart after graceful stop, local store: {local_s:.2f} s to joined and restored "
                  f"({loaded.stats.restored_records} changelog records read after the local stores' seals; "
                  f"restore {loaded.stats.restore_seconds:.2f} s)")
        print(f"restart after graceful stop, changelog: {restart_s:.2f} s to joined and restored "
              f"({rs.restored_bytes / 1e6:.1f} MB of checkpoints read in {rs.restore_seconds:.2f} s)")
        for name, (mem, snap) in memory.items():
            print(f"pending join, {name} engine: {mem:.0f} bytes in memory (resident-set growth over 200k pending), "
                  f"{snap:.0f} bytes in a checkpoint")
        if profile is not None:
            profile.dump_stats(args.profile)
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(18)
            print(out.getvalue())
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()

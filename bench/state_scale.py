"""The worker with N pending predictions in one partition, on a stock Apache Kafka broker.

    python -m bench.state_scale [--sizes 1000000,5000000,10000000] [--probe 100000] [--bootstrap HOST:PORT]

For each N (a fresh consumer group and topics of one partition each):
1. produces N predictions that never get ground truth (UUID ids, the 6-label example model), and starts
   `monitor worker` as a sub-process: the time until all N are applied gives the fill rate;
2. once the fill is checkpointed, the local copy sealed and the worker idle, a probe with N pending: P new
   predictions, then P ground truths for them. The worker's CPU time from the first probe event until
   the probe's changes are in the changelog and the local copy has sealed them (the seal that follows a
   pause in the input) is the compared figure (probe events per CPU second). The bench asks the worker
   nothing meanwhile (a scrape costs it CPU): the group's committed offsets, read from the broker, say
   when the probe is checkpointed. The wall time from the start of producing until then is shown
   beside it. The same probe on an empty state (its own group, measured first in the same run) is the
   peer;
3. reads the worker's resident set (now and peak, /proc), and the changelog bytes it wrote per input event
   (mlmon_state_bytes_written_total);
4. kill -9s it and starts a new worker process on the same state dir: it restores from its local copy of
   the changelog (monitor/stream/local_store.py, on by default, so in every worker of this bench) plus
   the changelog records after the copy's last seal;
5. stops that one gracefully and starts another on a fresh state dir (a new machine): it restores from
   the changelog alone, and its peak resident set is the restore's. Each restart, like the probe, waits
   for the disk to be idle first.
Both restore times are the worker's own log's (from fencing to the state rebuilt): start-up and the dead
member's session timeout before the group hands the partition over are not the restore's cost.

The worker runs with the config's join settings (the default memory budget, 500,000 entries in memory
and the rest in the embedded store); `--memory-entries B` sets `join.memory_entries`, and
`--memory-entries 0` sets it to null: everything in memory.

`--join-only` measures the native join alone, without Kafka, each budget in its own process: N pending
predictions (fill rate), then a probe of P new predictions and P ground truths for random pending ids
(the worst case for the store: nearly every hit is on disk), and the resident set.

Targets (from the state design): RSS flat in N and under 1 GiB at 10M; changelog bytes per event
independent of N and at most 2x the encoded entry; probe rate with N pending at least 0.7x the empty
state's; restore at least 500k entries/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from monitor.stream import local_store
from monitor.stream.changelog import entry_dtype

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["violence", "hate", "spam", "nudity", "self_harm", "harassment"]
CHECKPOINT_S = 2.0  # the worker's default --checkpoint-interval
T0 = 1_790_000_000.0  # event times: a fixed day, so every run evaluates the same windows


@dataclass
class Row:
    pending: int
    fill_rate: float
    probe_rate: float  # probe events per second of wall time, from producing them until checkpointed
    probe_cpu_rate: float  # probe events per CPU second of the worker (the compared figure)
    rss_mb: float
    peak_mb: float
    bytes_per_event: float
    restore_s: float  # from the changelog alone
    read_s: float  # of which reading the changelog (into the new local copy); the rest is loading the join
    restore_rate: float  # changelog records (entries and blocks) per second
    restore_peak_mb: float  # the restoring worker's peak resident set
    local_s: float  # after kill -9, from the local copy and the changelog after its last seal
    local_tail: int  # changelog records read after that seal


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prediction(pid: str, ts: float, i: int) -> bytes:
    scores = {label: ((i * 7919 + k * 104729) % 1000) / 1000 for k, label in enumerate(LABELS)}
    return orjson.dumps({"prediction_id": pid, "model": "moderation", "model_version": "v7", "timestamp": ts,
                         "scores": scores})


def truth(pid: str, ts: float, i: int) -> bytes:
    return orjson.dumps({"prediction_id": pid, "model": "moderation", "timestamp": ts,
                         "labels": [LABELS[i % len(LABELS)]]})


async def produce(bootstrap: str, topic: str, values: Iterable[tuple[bytes, bytes]]) -> None:
    """Send (key, value) pairs in full batches, waiting for each 64 batches to be acknowledged so that
    neither the events nor the batches of millions are ever all in memory at once."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 << 10)
    await producer.start()
    try:
        batch, sends = producer.create_batch(), []
        for key, value in values:
            if batch.append(key=key, value=value, timestamp=None) is None:
                sends.append(await producer.send_batch(batch, topic, partition=0))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
                if len(sends) >= 64:
                    await asyncio.gather(*sends)
                    sends = []
        sends.append(await producer.send_batch(batch, topic, partition=0))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def wait_committed(bootstrap: str, group: str, ends: dict[str, int], timeout: float = 600) -> None:
    """Until `group`'s committed offset in each topic (partition 0) is its end in `ends`; asks the broker only."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            offsets = await admin.list_consumer_group_offsets(group)
            committed = {tp.topic: meta.offset for tp, meta in offsets.items()}
            if all(committed.get(topic) == end for topic, end in ends.items()):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {group} to commit {ends} (committed: {committed})")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 1, 1) for n in names])
    finally:
        await admin.close()


class WorkerProc:
    def __init__(self, config: Path, port: int, log: Path, state_dir: Path) -> None:
        self.port = port
        self.out = open(log, "ab")  # noqa: SIM115 (closed in kill)
        env = {**os.environ, "MLMON_WORKER_AT": str(T0 + 3600), "MLMON_STATE_DIR": str(state_dir)}
        self.proc = subprocess.Popen([sys.executable, "-m", "monitor.cli", "worker", "--config", str(config),
                                      "--metrics-port", str(port)], cwd=ROOT, env=env, stdout=self.out,
                                     stderr=subprocess.STDOUT)

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for name in ("mlmon_predictions_total", "mlmon_ground_truth_total", "mlmon_state_bytes_written_total",
                     "mlmon_state_records_written_total", "mlmon_local_store_unsealed_bytes"):
            out[name] = sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))
        return out

    def sealed(self) -> bool:
        """The local copy holds less unsealed than a pause in the input seals (what it holds then waits for
        its 60 s deadline)."""
        held = self.metrics().get("mlmon_local_store_unsealed_bytes")
        return held is not None and held < local_store.IDLE_SEAL_BYTES

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def wait(self, what: str, done: callable, timeout: float = 3600) -> float:  # type: ignore[valid-type]
        started = time.perf_counter()
        while not done():
            if self.proc.poll() is not None:
                raise SystemExit(f"the worker exited ({self.proc.returncode}) while waiting for {what}")
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.1)  # each poll is a scrape, which costs the worker CPU
        return time.perf_counter() - started

    def cpu(self) -> float:
        """User and system CPU seconds the worker has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def settle(self, timeout: float = 600) -> float:
        """Seconds until the worker uses under 5% of a core over 2 s (its background work done)."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            before = self.cpu()
            time.sleep(2)
            if self.cpu() - before < 0.1:
                break
        return time.perf_counter() - started

    def memory(self) -> tuple[float, float]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        return rss / 1024, peak / 1024

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.out.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(900)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.out.close()


def write_config(tmp: Path, bootstrap: str, name: str, max_pending: int, memory_entries: int | None) -> Path:
    config = yaml.safe_load((ROOT / "monitor" / "examples" / "config.yaml").read_text())
    config["kafka"] = {"bootstrap_servers": bootstrap, "predictions_topic": f"{name}-p", "ground_truth_topic":
                       f"{name}-g", "dead_letter_topic": f"{name}-dlq", "group_id": f"{name}-group", "partitions": 1}
    config["join"] = {"ttl": "72h", "max_pending": max_pending}
    if memory_entries is not None:  # else the default budget; 0: none, everything in memory
        config["join"]["memory_entries"] = memory_entries or None
    for key in ("reference", "features", "slos"):
        config["models"][0].pop(key, None)
    config.pop("retraining", None)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def probe_events(n: int, start: int) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    preds, truths = [], []
    for i in range(start, start + n):
        pid = str(uuid.UUID(int=i + (1 << 100)))
        ts = T0 + 1800 + i * 1e-6
        preds.append((pid.encode(), prediction(pid, ts, i)))
        truths.append((pid.encode(), truth(pid, ts + 1, i)))
    return preds, truths


def run_one(tmp: Path, bootstrap: str, pending: int, probe: int, label: str, memory_entries: int | None) -> Row:
    name = f"scale-{label}-{uuid.uuid4().hex[:6]}"
    config = write_config(tmp, bootstrap, name, max_pending=max(2_000_000, 2 * (pending + probe)),
                          memory_entries=memory_entries)
    asyncio.run(create_topics(bootstrap, [f"{name}-p", f"{name}-g"]))
    def fill() -> Iterator[tuple[bytes, bytes]]:
        for i in range(pending):
            pid = str(uuid.uuid4())
            yield pid.encode(), prediction(pid, T0 + i * 1e-4, i)

    asyncio.run(produce(bootstrap, f"{name}-p", fill()))
    log, here, elsewhere = tmp / f"{name}.log", tmp / f"{name}.state", tmp / f"{name}.new-machine"
    worker = WorkerProc(config, free_port(), log, here)
    try:
        worker.wait("the worker's start", worker.healthy, timeout=300)
        fill_s = worker.wait(f"{pending:,} pending predictions",
                             lambda: worker.metrics().get("mlmon_predictions_total") == pending)
        # The fill's last changes checkpointed, the local copy sealed (the input paused) and the worker idle
        # (the stores' flushes and compactions done) before the probe: it pays for its own work only.
        worker.wait("the checkpoint of the fill",
                    lambda: worker.metrics().get("mlmon_state_records_written_total", 0) >= pending)
        worker.wait("the local copy's seal after the fill", worker.sealed)
        quiet = worker.settle()
        os.sync()
        print(f"  {pending:,} pending: the worker was busy {quiet:.0f} s after the fill", file=sys.stderr)
        preds, truths = probe_events(probe, pending)
        # The worker's CPU time from the first probe event until the probe's changes are in the changelog and
        # the local copy has sealed them: its state writes included, as the fill's are left out above. Nothing
        # asks the worker anything meanwhile (a scrape of /metrics costs it about 30 ms, a sixth of an empty
        # probe): the probe is checkpointed when the group's committed offsets, which each checkpoint's
        # transaction commits, reach the inputs' ends; the seal follows at the next checkpoint (it finds
        # nothing to write), CHECKPOINT_S later.
        cpu_before, started = worker.cpu(), time.perf_counter()
        asyncio.run(produce(bootstrap, f"{name}-p", preds))
        asyncio.run(produce(bootstrap, f"{name}-g", truths))
        asyncio.run(wait_committed(bootstrap, f"{name}-group", {f"{name}-p": pending + probe, f"{name}-g": probe}))
        probe_s = time.perf_counter() - started
        time.sleep(CHECKPOINT_S + 1)
        probe_cpu = worker.cpu() - cpu_before
        while not worker.sealed():  # checked after the CPU time is read; a late seal is waited for
            time.sleep(1)
            probe_cpu = worker.cpu() - cpu_before
        if worker.metrics().get("mlmon_ground_truth_total") != probe:
            raise SystemExit(f"the probe's offsets are committed but not all its ground truth counted: see {log}")
        rss, peak = worker.memory()
        written = worker.metrics()["mlmon_state_bytes_written_total"]
        events = pending + 2 * probe
        worker.kill()
        for state_dir in (here, elsewhere):  # after kill -9 on the same machine, then on a new one
            os.sync()  # each restore starts with the disk idle, as the probe does
            again = WorkerProc(config, free_port(), log, state_dir)
            try:
                again.wait("the restore", lambda w=again: w.healthy() and (
                    w.metrics().get("mlmon_ground_truth_total") == probe), timeout=1800)
                restore_peak = again.memory()[1]
            finally:
                again.stop()
    finally:
        if worker.proc.poll() is None:
            worker.stop()
    text = log.read_text()
    found = re.findall(r"state restored from (\d+) changelog records \(.*?\) in ([\d.]+) s", text)
    reads = re.findall(r"changelog read in ([\d.]+) s", text)  # the last one is the new machine's
    local = re.findall(r"state restored from the local store and the (\d+) changelog records after offset \d+ "
                       r"\(.*?\) in ([\d.]+) s", text)
    if not found or not local:
        raise SystemExit(f"a restarted worker did not restore state as expected: see {log}")
    restored, restore_s = int(found[-1][0]), float(found[-1][1])
    return Row(pending, pending / fill_s if pending else 0.0, 2 * probe / probe_s, 2 * probe / probe_cpu, rss, peak,
               written / events, restore_s, float(reads[-1]), restored / restore_s, restore_peak,
               float(local[-1][1]), int(local[-1][0]))


def join_row(pending: int, probe: int, budget: int | None) -> str:
    """One budget's join-only figures (run in its own process, so the resident set is its own)."""
    import numpy as np

    from monitor import _native

    n_labels, size = len(LABELS), 20_000
    join = _native.Join(72 * 3600.0, 2 * (pending + probe), n_labels, budget, None)
    rng = np.random.default_rng(7)
    no_f, no_b = np.zeros(0), np.zeros((0, n_labels), dtype=bool)

    def ids(start: int, stop: int) -> list[str]:
        # Made on demand (a list of 10M ids would take more memory than the join's budget).
        return [str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15 + 1) % (1 << 122))) for i in range(start, stop)]

    def step(kind: int, batch: list[str], ts: np.ndarray) -> None:
        k = len(batch)
        kinds, rows = np.full(k, kind, dtype=np.uint8), np.arange(k, dtype=np.int64)
        if kind == 0:
            scores = rng.random((k, n_labels))
            join.apply(kinds, rows, batch, ts, np.zeros(k, np.int64), scores, scores > 0.5, [], no_f, no_b, no_b,
                       np.zeros(0, bool))
        else:
            join.apply(kinds, rows, [], no_f, np.zeros(0, np.int64), np.zeros((0, n_labels)), no_b, batch, ts,
                       np.ones((k, n_labels), bool), rng.random((k, n_labels)) > 0.5, np.ones(k, bool))
        join.expire()
        join.drain()

    started = time.perf_counter()
    for i in range(0, pending, size):
        batch = ids(i, min(i + size, pending))
        step(0, batch, T0 + np.arange(i, i + len(batch)) * 1e-4)
    fill = pending / (time.perf_counter() - started)
    judged = [ids(k, k + 1)[0] for k in rng.integers(0, pending, probe).tolist()]
    started = time.perf_counter()
    for i in range(0, probe, size):
        batch = ids(pending + i, min(pending + i + size, pending + probe))
        step(0, batch, T0 + pending * 1e-4 + np.arange(len(batch)) * 1e-4)
        step(1, judged[i:i + size], T0 + pending * 1e-4 + 10 + np.arange(len(judged[i:i + size])) * 1e-4)
    rate = 2 * probe / (time.perf_counter() - started)
    rss = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
    return f"{pending:>11,} {budget or 'all':>10} {join.memory_len:>10,} {fill:>10,.0f} {rate:>11,.0f} {rss:>8.0f}"


def join_only(sizes: list[int], probe: int, budgets: list[int | None]) -> None:
    print(f"native join alone, 6 labels, UUID ids; probe: {probe:,} new predictions + {probe:,} ground truths for "
          "random pending ids")
    print(f"{'pending':>11} {'budget':>10} {'in memory':>10} {'fill ev/s':>10} {'probe ev/s':>11} {'RSS MB':>8}")
    for n in sizes:
        for budget in budgets:
            code = f"from bench.state_scale import join_row; print(join_row({n}, {probe}, {budget}))"
            out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
            print(out.stdout.rstrip(), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--join-only", action="store_true", help="the native join alone, no broker (see above)")
    ap.add_argument("--budgets", default="none,500000,100000",
                    help="--join-only: join.memory_entries values to compare (none: all in memory)")
    ap.add_argument("--sizes", default="1000000,5000000,10000000", help="pending predictions, comma-separated")
    ap.add_argument("--probe", type=int, default=100_000, help="predictions (and as many ground truths) timed")
    ap.add_argument("--memory-entries", type=int, default=None,
                    help="the worker's join.memory_entries (default: the config's default, 500,000; "
                         "0: none, all in memory)")
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    if args.join_only:
        join_only(sizes, args.probe, [None if b == "none" else int(b) for b in args.budgets.split(",")])
        return
    broker = None
    if not args.bootstrap:
        from monitor.stream.broker import start_broker

        broker = start_broker()  # stock settings: message.max.bytes 1 MB, socket.request.max.bytes 100 MB
        args.bootstrap = broker.bootstrap
    entry = entry_dtype(len(LABELS)).itemsize + 16 + 36  # value, key prefix and model name, UUID id
    budget = ("the default join memory budget" if args.memory_entries is None else
              f"join.memory_entries {args.memory_entries:,}" if args.memory_entries else "no join memory budget")
    print(f"one partition, 6 labels, UUID ids, stock broker, {budget}; probe: {args.probe:,} predictions + "
          f"{args.probe:,} ground truths; encoded entry with its key: about {entry} bytes")
    print(f"{'pending':>11} {'fill ev/s':>10} {'probe ev/s':>11} {'ev/CPU s':>10} {'vs empty':>9} {'RSS MB':>8} "
          f"{'peak MB':>8} "
          f"{'state B/event':>14} {'restore s':>10} {'read s':>7} {'records/s':>10} {'restore peak MB':>16} "
          f"{'local s':>8} "
          f"{'tail':>8}", flush=True)
    print("(restore: from the changelog alone, on a new machine, of which read: reading it from the broker, the "
          "rest loading the join; local: after kill -9, from the local store and the tail of the changelog after "
          "its last seal)", flush=True)
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            empty = run_one(tmp, args.bootstrap, 0, args.probe, "empty", args.memory_entries)
            show(empty, empty)
            for n in sizes:  # each row as soon as it is measured: a long run that fails later keeps them
                show(run_one(tmp, args.bootstrap, n, args.probe, str(n), args.memory_entries), empty)
    finally:
        if broker is not None:
            broker.stop()


def show(r: Row, empty: Row) -> None:
    print(f"{r.pending:>11,} {r.fill_rate:>10,.0f} {r.probe_rate:>11,.0f} {r.probe_cpu_rate:>10,.0f} "
          f"{r.probe_cpu_rate / empty.probe_cpu_rate:>9.2f} "
          f"{r.rss_mb:>8.0f} {r.peak_mb:>8.0f} {r.bytes_per_event:>14.0f} {r.restore_s:>10.1f} {r.read_s:>7.1f} "
          f"{r.restore_rate:>10,.0f} {r.restore_peak_mb:>16.0f} {r.local_s:>8.1f} {r.local_tail:>8,}", flush=True)


if __name__ == "__main__":
    main()

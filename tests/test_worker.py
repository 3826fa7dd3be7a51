"""`monitor worker` against a real broker: exact figures, kill -9, scale-out, dead letters.

Each test runs the worker as a subprocess (`python -m monitor.cli worker`) on topics of its own and
compares its /metrics with `monitor replay` on the same events, evaluated at the same fixed time (the
hidden `--at`). Counts must match exactly; sums of scores may differ in the last bits because the
worker adds them in another order (tolerance 1e-9).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from monitor import conventions as c
from monitor.config import MonitorConfig, load_config
from monitor.engine import native
from monitor.exporter import prometheus_text
from monitor.replay import run_replay
from monitor.simulate import TrafficSpec, generate
from monitor.stream.broker import free_port
from tests.conftest import EXAMPLE_CONFIG, ROOT
from tests.kafka_fixtures import create_topic, kafka_bootstrap, unique_topic  # noqa: F401

kafka_test = pytest.mark.kafka

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# Series that add up across workers (counts and sums); ratios do not and are compared per worker only.
ADDITIVE_GAUGES = {
    c.LABEL_OUTCOMES.name, c.WINDOW_PREDICTIONS.name, c.WINDOW_JOINED.name, c.PREDICTED_POSITIVES.name,
    c.FEATURE_MISSING.name, c.FEATURE_BIN.name, c.SCORE_BIN.name, c.CALIBRATION_BIN.name, c.PENDING_IN_WINDOW.name,
    c.SLO_EVENTS.name, c.LABEL_SUPPORT.name, c.PENDING_JOINS.name, c.CONFUSION.name,
}
# Worker-only series, or constants every worker exports whole (the reference, SLO targets).
NOT_COMPARED = {*c.WORKER_ONLY, c.BUILD_INFO.name + "_info"}
PER_WORKER_CONSTANTS = {c.REFERENCE_FEATURE_BIN.name, c.REFERENCE_SCORE_BIN.name, c.REFERENCE_POSITIVE_RATE.name,
                        c.SLO_TARGET.name}


# --- helpers -------------------------------------------------------------------------------------------------
def parse(text: str) -> Series:
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in NOT_COMPARED or family.name in NOT_COMPARED:
                continue
            # Counters come per partition (monitor.exporter): the worker's total is their sum.
            key = (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "partition")))
            out[key] = out.get(key, 0.0) + s.value
    return out


def assert_series_equal(got: Series, want: Series, rel: float = 1e-9, abs_: float = 1e-9) -> None:
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not unexpected, f"missing {missing[:4]}, unexpected {unexpected[:4]}"
    bad = [(k, got[k], v) for k, v in want.items() if not math.isclose(got[k], v, rel_tol=rel, abs_tol=abs_)]
    assert not bad, f"{len(bad)} of {len(want)} series differ, e.g. {bad[:4]}"


def write_config(tmp_path: Path, bootstrap: str, partitions: int = 4,
                 join: dict | None = None) -> tuple[Path, MonitorConfig]:
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    if join:
        data["join"] = {**data.get("join", {}), **join}
    name = unique_topic("w")
    data["kafka"] = {"bootstrap_servers": bootstrap, "predictions_topic": f"{name}-predictions",
                     "ground_truth_topic": f"{name}-truth", "dead_letter_topic": f"{name}-dlq",
                     "group_id": f"{name}-group", "partitions": partitions}
    for m in data["models"]:
        m["reference"] = str((EXAMPLE_CONFIG.parent / m["reference"]).resolve())
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, load_config(path)


def key_of(raw: bytes) -> bytes | None:
    try:
        pid = orjson.loads(raw).get("prediction_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return pid.encode() if isinstance(pid, str) else None


def produce(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes | None] | None = None) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 << 10)
        await producer.start()
        try:
            futures = [await producer.send(topic, value=v, key=key_of(v) if keys is None else keys[i])
                       for i, v in enumerate(values)]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


class WorkerProcess:
    def __init__(self, config_path: Path, at: float, tmp_path: Path, checkpoint_interval: float = 0.5,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = tmp_path / f"worker-{self.port}.log"
        # The workers of a test share one state dir, as workers on one machine do (never the default in
        # the system temp directory, which would outlive the test).
        env = {**os.environ, "MLMON_SESSION_TIMEOUT_MS": "3000", "MLMON_CHECKPOINT_INTERVAL": str(checkpoint_interval),
               "MLMON_STATE_DIR": str(tmp_path / "state"), **(env or {})}
        self.state_dir = Path(env["MLMON_STATE_DIR"])
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monitor.cli", "worker", "--config", str(config_path),
                 "--metrics-port", str(self.port), "--at", repr(float(at))],
                cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def scrape(self) -> Series:
        status, body = self.get("/metrics")
        assert status == 200
        return parse(body.decode())

    def try_scrape(self) -> Series | None:
        try:
            return self.scrape()
        except (OSError, AssertionError):
            return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def total(series: Series, name: str) -> float:
    return sum(v for (n, _), v in series.items() if n == name)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 90.0, workers: list[WorkerProcess] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for w in workers:
            assert w.proc.poll() is None, f"worker exited with {w.proc.returncode}:\n{w.output()[-3000:]}"
        time.sleep(0.25)
    logs = "\n".join(w.output()[-3000:] for w in workers)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def worker_counter(worker: WorkerProcess, name: str) -> float | None:
    """One of the worker-only counters (which `parse` leaves out); None while /metrics does not answer."""
    status, body = worker.get("/metrics")
    if status != 200:
        return None
    found = re.search(rf"^{name} (\S+)$", body.decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def state_settled(worker: WorkerProcess, quiet: float = 1.0) -> Callable[[], bool]:
    """True once the worker has written state and then nothing for `quiet` seconds: every partition's
    state is in the changelog (a dirty partition is written at the next checkpoint interval)."""
    seen = {"value": -1.0, "since": time.monotonic()}

    def check() -> bool:
        value = worker_counter(worker, c.STATE_RECORDS_WRITTEN.name)
        if value is None:
            return False
        if value != seen["value"]:
            seen["value"], seen["since"] = value, time.monotonic()
            return False
        return value > 0 and time.monotonic() - seen["since"] >= quiet

    return check


def drained(workers: list[WorkerProcess], expected: Series) -> Callable[[], bool]:
    """True once the workers together have applied every event (the cumulative counters match)."""
    names = [c.PREDICTIONS_TOTAL.name, c.GROUND_TRUTH_TOTAL.name, c.INVALID_EVENTS_TOTAL.name]

    def check() -> bool:
        scrapes = [w.try_scrape() for w in workers]
        if any(s is None for s in scrapes):
            return False
        return all(sum(total(s, n) for s in scrapes) == total(expected, n) for n in names)

    return check


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)


@pytest.fixture(scope="module")
def stream() -> tuple[list[bytes], list[bytes], float]:
    preds, truths = generate(TrafficSpec(n=3000, rate=2.0, seed=5))
    at = float(max(ts for ts, _ in preds + truths))
    return [r for _, r in preds], [r for _, r in truths], at


def replay_series(config: MonitorConfig, preds: list[bytes], truths: list[bytes], at: float) -> Series:
    _, figures = run_replay(config, preds, truths, at)
    return parse(prometheus_text(figures).decode())


# --- the tests -----------------------------------------------------------------------------------------------
@kafka_test
@pytest.mark.timeout(240)
def test_worker_metrics_equal_replay(kafka_bootstrap: str, tmp_path: Path, stream, workers) -> None:  # noqa: F811
    preds, truths, at = stream
    path, config = write_config(tmp_path, kafka_bootstrap)
    expected = replay_series(config, preds, truths, at)
    # The worker starts first and creates the topics; the producers come later.
    w = WorkerProcess(path, at, tmp_path)
    workers.append(w)
    wait_for("the worker to join its group", lambda: w.get("/healthz")[0] == 200 if w.try_scrape() else False,
             workers=workers)
    produce(kafka_bootstrap, config.kafka.predictions_topic, preds)
    produce(kafka_bootstrap, config.kafka.ground_truth_topic, truths)
    wait_for("the worker to drain", drained([w], expected), workers=workers)
    assert_series_equal(w.scrape(), expected)
    status, body = w.get("/healthz")
    assert status == 200 and orjson.loads(body)["status"] == "ok"

    def no_lag() -> bool:  # known per partition once a fetch response has come back for it
        lag = [line for line in w.get("/metrics")[1].decode().splitlines() if line.startswith("mlmon_consumer_lag{")]
        return len(lag) == 2 * config.kafka.partitions and all(line.endswith(" 0.0") for line in lag)

    wait_for("consumer lag 0 on every partition", no_lag, timeout=30, workers=workers)
    assert w.stop() == 0
    assert "stopped:" in w.output()


@kafka_test
@pytest.mark.timeout(240)
# With a memory budget most entries live in the join's store, and the restart restores through a staging
# store (monitor._native.Staged) rather than memory. With the local store (the default), each partition's
# local copy of its changelog, sealed every half second, is where the restart starts: it reads only the
# changelog after it; with --no-local-store the restart reads the whole changelog.
@pytest.mark.parametrize(("join", "local"), [
    pytest.param(None, False, id="no-local-store"), pytest.param({"memory_entries": 40}, False, id="budget"),
    pytest.param(None, True, id="local-store"),
    pytest.param({"memory_entries": 40}, True, id="budget-local-store")])
def test_kill_9_mid_stream_then_restart_is_exact(kafka_bootstrap: str, tmp_path: Path, stream, workers,  # noqa: F811
                                                  join: dict | None, local: bool) -> None:
    if local and not native.enabled():
        pytest.skip("local copies of the changelog need the native core")
    preds, truths, at = stream
    path, config = write_config(tmp_path, kafka_bootstrap, join=join)
    env = {"MLMON_LOCAL_SEAL_SECONDS": "0.5", "MLMON_LOCAL_STORE": "1" if local else "0"}
    expected = replay_series(config, preds, truths, at)
    kafka = config.kafka
    # Ground truth is produced in event-time order with its predictions, as in production.
    cut = len(preds) // 2
    for topic in (kafka.predictions_topic, kafka.ground_truth_topic):
        create_topic(kafka_bootstrap, topic, partitions=kafka.partitions)
    produce(kafka_bootstrap, kafka.predictions_topic, preds[:cut])
    first = WorkerProcess(path, at, tmp_path, checkpoint_interval=0.3, env=env)
    workers.append(first)
    wait_for("the first half", lambda: total(first.try_scrape() or {}, c.PREDICTIONS_TOTAL.name) == cut,
             workers=workers)
    wait_for("a checkpoint of the first half", state_settled(first), workers=workers)
    if local:
        time.sleep(1.5)  # the copies are sealed meanwhile (idle, after the half second): the restart reads less

    # The rest arrives in small slices while the worker runs; it is killed in the middle of it.
    done = threading.Event()

    def feed() -> None:
        rest = preds[cut:]
        for i in range(0, len(rest), 150):
            produce(kafka_bootstrap, kafka.predictions_topic, rest[i:i + 150])
        for i in range(0, len(truths), 300):
            produce(kafka_bootstrap, kafka.ground_truth_topic, truths[i:i + 300])
            time.sleep(0.1)  # spread out, so that the kill below lands while the stream still arrives
        done.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    wait_for("progress past the first half",
             lambda: total(first.try_scrape() or {}, c.PREDICTIONS_TOTAL.name) >= cut + 300, workers=workers)
    before = first.scrape()
    first.proc.kill()  # kill -9: no final checkpoint, no leaving the group
    first.proc.wait(10)
    assert (total(before, c.PREDICTIONS_TOTAL.name) < len(preds)
            or total(before, c.GROUND_TRUTH_TOTAL.name) < len(truths))  # killed mid-stream

    started = time.monotonic()
    second = WorkerProcess(path, at, tmp_path, checkpoint_interval=0.3, env=env)
    workers.append(second)
    feeder.join(120)
    assert done.is_set()
    wait_for("the restarted worker to drain", drained([second], expected), workers=[second])
    restart = time.monotonic() - started
    assert_series_equal(second.scrape(), expected)
    out = second.output()
    resumed = [orjson.loads(line.split("resuming at ")[1].replace("'", '"')) for line in out.splitlines()
               if "resuming at " in line]
    assert len(resumed) == kafka.partitions, out[-2000:]  # every partition restored state, none started over
    assert ("join entries staged on disk" in out) == (join is not None and not local), out[-2000:]
    if local:  # every partition from its copy, sealed after the first half, and the changelog after that
        tails = re.findall(r"state restored from the local store and the (\d+) changelog records after offset "
                           r"(\d+)", out)
        assert len(tails) == kafka.partitions and all(int(at_) > 0 for _, at_ in tails), out[-2000:]
    covered = sum(r["predictions"] for r in resumed)  # topics start at offset 0
    applied = total(before, c.PREDICTIONS_TOTAL.name)
    assert covered <= applied
    print(f"killed after {applied:.0f} predictions, checkpoints covered {covered}: {applied - covered:.0f} "
          f"re-applied exactly once; restart to drained {restart:.1f} s")


@kafka_test
@pytest.mark.timeout(240)
def test_unwritten_changes_are_bounded_and_checkpointed_by_size(kafka_bootstrap: str, tmp_path: Path, stream,  # noqa: F811
                                                                 workers) -> None:
    """With checkpoints a long interval apart, the bound on unwritten changes alone makes the worker
    checkpoint (and wait for the write in flight when it is reached again); the figures stay exact, and a
    worker killed with -9 resumes from those checkpoints."""
    preds, truths, at = stream
    path, config = write_config(tmp_path, kafka_bootstrap)
    expected = replay_series(config, preds, truths, at)
    kafka = config.kafka
    for topic in (kafka.predictions_topic, kafka.ground_truth_topic):
        create_topic(kafka_bootstrap, topic, partitions=kafka.partitions)
    bound = {"MLMON_MAX_UNWRITTEN": "50"}
    first = WorkerProcess(path, at, tmp_path, checkpoint_interval=600, env=bound)
    workers.append(first)
    wait_for("the worker to join its group", lambda: first.get("/healthz")[0] == 200 if first.try_scrape() else False,
             workers=workers)
    for i in range(0, len(preds), 200):  # slices: batches keep arriving while checkpoints are written
        produce(kafka_bootstrap, kafka.predictions_topic, preds[i:i + 200])
    for i in range(0, len(truths), 200):
        produce(kafka_bootstrap, kafka.ground_truth_topic, truths[i:i + 200])
    wait_for("the worker to drain", drained([first], expected), workers=workers)
    assert_series_equal(first.scrape(), expected)
    wait_for("the checkpoints to settle", state_settled(first), workers=workers)
    written, waits = (worker_counter(first, m.name) for m in (c.STATE_RECORDS_WRITTEN, c.STATE_WRITE_WAITS))
    assert written is not None and written >= len(preds)  # every entry went out, the 600 s interval never came
    print(f"{written:.0f} state records, {waits:.0f} waits for a write")
    first.proc.kill()
    first.proc.wait(10)

    second = WorkerProcess(path, at, tmp_path, checkpoint_interval=600, env=bound)
    workers.append(second)
    wait_for("the restarted worker to drain", drained([second], expected), workers=[second])
    assert_series_equal(second.scrape(), expected)
    assert second.output().count("resuming at ") == kafka.partitions


@kafka_test
@pytest.mark.timeout(240)
@pytest.mark.skipif(not native.enabled(), reason="local copies of the changelog need the native core")
@pytest.mark.parametrize("join", [None, pytest.param({"memory_entries": 40}, id="beyond-budget")])
def test_graceful_restart_reads_only_the_local_store(kafka_bootstrap: str, tmp_path: Path, stream, workers,  # noqa: F811
                                                     join: dict | None) -> None:
    """A graceful stop seals each partition's local copy at its final checkpoint: the restart reads no
    changelog record at all, and goes on exactly (with most entries in the join's store, too)."""
    preds, truths, at = stream
    path, config = write_config(tmp_path, kafka_bootstrap, join=join)
    expected = replay_series(config, preds, truths, at)
    kafka = config.kafka
    for topic in (kafka.predictions_topic, kafka.ground_truth_topic):
        create_topic(kafka_bootstrap, topic, partitions=kafka.partitions)
    cut = len(preds) // 2
    produce(kafka_bootstrap, kafka.predictions_topic, preds[:cut])
    first = WorkerProcess(path, at, tmp_path)
    workers.append(first)
    wait_for("the first half", lambda: total(first.try_scrape() or {}, c.PREDICTIONS_TOTAL.name) == cut,
             workers=workers)
    assert first.stop() == 0
    assert len(list((first.state_dir / "local" / kafka.group_id).iterdir())) == kafka.partitions

    produce(kafka_bootstrap, kafka.predictions_topic, preds[cut:])
    produce(kafka_bootstrap, kafka.ground_truth_topic, truths)
    second = WorkerProcess(path, at, tmp_path)
    workers.append(second)
    wait_for("the restarted worker to drain", drained([second], expected), workers=[second])
    assert_series_equal(second.scrape(), expected)
    out = second.output()
    assert out.count("state restored from the local store and the 0 changelog records after offset") \
        == kafka.partitions, out[-2000:]


def unsealed(worker: WorkerProcess) -> dict[str, float] | None:
    """`mlmon_local_store_unsealed_bytes` by partition; None while /metrics does not answer."""
    try:
        status, body = worker.get("/metrics")
    except OSError:
        return None
    if status != 200:
        return None
    found = re.findall(rf'^{c.LOCAL_STORE_UNSEALED.name}{{partition="(\d+)"}} (\S+)$', body.decode(), re.MULTILINE)
    return {p: float(v) for p, v in found}


@kafka_test
@pytest.mark.timeout(240)
@pytest.mark.skipif(not native.enabled(), reason="local copies of the changelog need the native core")
def test_a_pause_in_the_input_seals_the_local_copies_holding_enough(kafka_bootstrap: str, tmp_path: Path, stream,  # noqa: F811
                                                                     workers) -> None:
    """With the 60 s deadline far away, a copy holding at least the idle floor is sealed as soon as a
    checkpoint finds nothing to write; one holding less waits for its deadline."""
    preds, _, at = stream
    path, config = write_config(tmp_path, kafka_bootstrap)
    kafka = config.kafka
    for topic in (kafka.predictions_topic, kafka.ground_truth_topic):
        create_topic(kafka_bootstrap, topic, partitions=kafka.partitions)
    floor = 20_000
    w = WorkerProcess(path, at, tmp_path, env={"MLMON_LOCAL_IDLE_SEAL_BYTES": str(floor)})
    workers.append(w)
    wait_for("the copies' gauge", lambda: len(unsealed(w) or {}) == kafka.partitions, workers=workers)
    started = time.monotonic()
    produce(kafka_bootstrap, kafka.predictions_topic, preds[:1500])  # tens of KB of changelog per partition
    wait_for("the first slice", lambda: total(w.try_scrape() or {}, c.PREDICTIONS_TOTAL.name) == 1500,
             workers=workers)
    # The state counters move after the copies are fed: once they stop, a zero gauge means a seal.
    wait_for("the first slice's checkpoints", state_settled(w), workers=workers)
    wait_for("every copy sealed after the pause", lambda: set((unsealed(w) or {"": 1}).values()) == {0.0},
             timeout=30, workers=workers)
    assert time.monotonic() - started < 50  # long before the 60 s deadline of any copy

    produce(kafka_bootstrap, kafka.predictions_topic, preds[1500:1510])  # far less than the floor
    wait_for("the second slice", lambda: total(w.try_scrape() or {}, c.PREDICTIONS_TOTAL.name) == 1510,
             workers=workers)
    wait_for("its checkpoint", state_settled(w), workers=workers)
    time.sleep(2.0)  # four checkpoint intervals, every one of them idle
    held = unsealed(w) or {}
    assert 0 < sum(held.values()) < floor * kafka.partitions, held
    assert time.monotonic() - started < 55, "the 60 s deadline may have passed: the check above proved nothing"


@kafka_test
@pytest.mark.timeout(240)
def test_two_workers_share_the_partitions_and_add_up(kafka_bootstrap: str, tmp_path: Path, stream, workers) -> None:  # noqa: F811
    preds, truths, at = stream
    path, config = write_config(tmp_path, kafka_bootstrap, partitions=4)
    expected = replay_series(config, preds, truths, at)
    # Created up front: producing first would auto-create them with the broker's default of 1 partition.
    for topic in (config.kafka.predictions_topic, config.kafka.ground_truth_topic):
        create_topic(kafka_bootstrap, topic, partitions=4)
    produce(kafka_bootstrap, config.kafka.predictions_topic, preds[:1000])
    a = WorkerProcess(path, at, tmp_path)
    workers.append(a)
    wait_for("the first worker to start", lambda: total(a.try_scrape() or {}, c.PREDICTIONS_TOTAL.name) > 0,
             workers=workers)
    b = WorkerProcess(path, at, tmp_path)  # joins later: a rebalance hands over live state
    workers.append(b)
    wait_for("the second worker to get partitions",
             lambda: b.get("/healthz")[0] == 200 and "consuming 0 " not in b.get("/healthz")[1].decode()
             if b.try_scrape() is not None else False, workers=workers)
    produce(kafka_bootstrap, config.kafka.predictions_topic, preds[1000:])
    produce(kafka_bootstrap, config.kafka.ground_truth_topic, truths)
    wait_for("both workers to drain", drained([a, b], expected), workers=workers)
    sa, sb = a.scrape(), b.scrape()
    for s in (sa, sb):
        assert 0 < total(s, c.PREDICTIONS_TOTAL.name) < len(preds)  # each has a share
    summed: Series = {}
    for s in (sa, sb):
        for key, v in s.items():
            name = key[0]
            additive = (name.endswith(("_total", "_bucket", "_count", "_sum")) or name in ADDITIVE_GAUGES)
            if additive:
                summed[key] = summed.get(key, 0.0) + v
    want = {k: v for k, v in expected.items()
            if k[0].endswith(("_total", "_bucket", "_count", "_sum")) or k[0] in ADDITIVE_GAUGES}
    assert_series_equal(summed, want)
    for w in (a, b):
        assert w.stop() == 0


@kafka_test
@pytest.mark.timeout(240)
def test_bad_input_goes_to_the_dead_letter_topic(kafka_bootstrap: str, tmp_path: Path, stream, workers) -> None:  # noqa: F811
    preds, truths, at = stream
    path, config = write_config(tmp_path, kafka_bootstrap, partitions=2)
    kafka = config.kafka
    bad_preds = [b"{not json", orjson.dumps({"prediction_id": "x1", "model": "nope", "timestamp": at - 60,
                                             "scores": {}}), b""]
    bad_truths = [orjson.dumps({"prediction_id": "x2", "model": "moderation", "timestamp": "yesterday",
                                "labels": []})]
    good_p, good_t = preds[:200], [t for t in truths if orjson.loads(t)["prediction_id"] in
                                   {orjson.loads(p)["prediction_id"] for p in preds[:200]}]
    expected = replay_series(config, [*bad_preds, *good_p], [*bad_truths, *good_t], at)
    w = WorkerProcess(path, at, tmp_path)
    workers.append(w)
    wait_for("the worker to start", lambda: w.try_scrape() is not None, workers=workers)
    # Bad events first, then good ones behind them on the same partitions.
    produce(kafka_bootstrap, kafka.predictions_topic, [*bad_preds, *good_p],
            keys=[b"k1", b"k2", None, *[key_of(p) for p in good_p]])
    produce(kafka_bootstrap, kafka.ground_truth_topic, [*bad_truths, *good_t])
    wait_for("the worker to drain", drained([w], expected), workers=workers)
    assert_series_equal(w.scrape(), expected)

    async def read_dlq() -> list:
        consumer = AIOKafkaConsumer(kafka.dead_letter_topic, bootstrap_servers=kafka_bootstrap,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            out: list = []
            deadline = time.monotonic() + 30
            while len(out) < 4 and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(records)
            return out
        finally:
            await consumer.stop()

    letters = asyncio.run(read_dlq())
    assert len(letters) == 4
    by_value = {r.value: r for r in letters}
    assert set(by_value) == {*bad_preds, *bad_truths}
    for r in letters:
        headers = {k: v.decode() for k, v in r.headers}
        assert headers[c.DLQ_REASON_HEADER] in c.ALL_REASONS
        assert headers[c.DLQ_DETAIL_HEADER]
    h = {k: v.decode() for k, v in by_value[b"{not json"].headers}
    assert h[c.DLQ_REASON_HEADER] == "invalid_json" and h[c.DLQ_TOPIC_HEADER] == kafka.predictions_topic
    assert by_value[b"{not json"].key == b"k1"
    assert {k: v.decode() for k, v in by_value[bad_truths[0]].headers}[c.DLQ_TOPIC_HEADER] == kafka.ground_truth_topic
    assert w.stop() == 0


# --- without a broker ------------------------------------------------------------------------------------------
def test_security_options_come_from_the_config_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.config import KafkaConfig
    from monitor.stream.kafka_setup import SetupError, client_options

    plain = client_options(KafkaConfig())
    assert plain == {"bootstrap_servers": "localhost:9092", "security_protocol": "PLAINTEXT"}
    sasl = KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                       sasl_username_env="T_KAFKA_USER", sasl_password_env="T_KAFKA_PASSWORD")
    monkeypatch.delenv("T_KAFKA_PASSWORD", raising=False)
    monkeypatch.setenv("T_KAFKA_USER", "monitor")
    with pytest.raises(SetupError, match="T_KAFKA_PASSWORD is not set"):
        client_options(sasl)
    monkeypatch.setenv("T_KAFKA_PASSWORD", "s3cret")
    opts = client_options(sasl)
    assert (opts["sasl_mechanism"], opts["sasl_plain_username"], opts["sasl_plain_password"]) == \
        ("SCRAM-SHA-512", "monitor", "s3cret")
    with pytest.raises(SetupError, match="ssl"):
        client_options(KafkaConfig(security_protocol="SSL", ssl_cafile="/nonexistent/ca.pem"))


def test_rejections_are_paired_with_their_records_even_for_equal_bytes() -> None:
    from aiokafka import TopicPartition

    from monitor.engine.engine import Engine
    from monitor.stream.fetched import PartitionBatch
    from monitor.stream.worker import _match

    config = load_config(EXAMPLE_CONFIG)
    # Equal bytes in one batch; the engine gets copies (a fetch's columns hand out new objects).
    values = [b"", b"{bad", b"", b"{bad", b"{bad"]
    batch = PartitionBatch(TopicPartition("predictions", 0), values, [None] * len(values), [10, 11, 12, 13, 14])
    items = [("predictions", v, batch, i) for i, v in enumerate(values)]
    rejected = Engine(config).process([(t, bytes(bytearray(v))) for t, v, _, _ in items])
    assert [r.offset for r in _match(rejected, items)] == [10, 11, 12, 13, 14]


def test_at_accepts_epoch_seconds_and_rfc3339() -> None:
    import click

    from monitor.stream.worker import _parse_at

    assert _parse_at("1795651200.5") == 1795651200.5
    assert _parse_at("2026-11-20T00:00:00Z") == 1795132800.0
    assert _parse_at(None) is None
    with pytest.raises(click.BadParameter):
        _parse_at("1e30")

"""More than 2M pending predictions in one partition, on a broker with its STOCK settings (message.max.bytes
1 MB, socket.request.max.bytes 100 MB): the worker stays healthy, writes its state as small changelog
records, survives kill -9 and restores from its local copy of the changelog plus the records after its
last seal, and ends exactly where `monitor replay` of the same events ends; a worker on a new machine then
restores the whole changelog to the same figures. (The whole-state checkpoint this replaced stopped
consuming at about 700k.)
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from monitor import conventions as c
from monitor.config import load_config
from tests.conftest import EXAMPLE_CONFIG
from tests.kafka_fixtures import create_topic, kafka_bootstrap, unique_topic  # noqa: F401
from tests.test_worker import (
    Series,
    WorkerProcess,
    assert_series_equal,
    drained,
    replay_series,
    total,
    wait_for,
    worker_counter,
    workers,  # noqa: F401
)

PENDING = 2_100_000
LATER = 20_000  # ground truth for that many of the pending predictions, and as many new predictions
LABELS = ["violence", "hate", "spam", "nudity", "self_harm", "harassment"]
T0 = 1_790_000_000.0


def _pid(i: int) -> str:
    return f"00000000-0000-0000-0000-{i:012x}"  # str(uuid.UUID(int=i)), 10x faster, for i < 2**48


# A prediction's scores repeat every 1,000 ids: their JSON is made once (2.1M events take 3 s, not 30 s).
_SCORES = [orjson.dumps({label: ((j * 7919 + k * 104729) % 1000) / 1000 for k, label in enumerate(LABELS)})
           for j in range(1000)]


def _prediction(i: int) -> bytes:
    return (b'{"prediction_id":"%s","model":"moderation","model_version":"v7","timestamp":%s,"scores":%s,'
            b'"features":{"text_length":%d,"num_links":%d,"lang":"en"}}'
            % (_pid(i).encode(), repr(T0 + i * 0.01).encode(), _SCORES[i % 1000], i % 500, i % 3))


def _truth(i: int) -> bytes:
    return orjson.dumps({"prediction_id": _pid(i), "model": "moderation",
                         "timestamp": T0 + PENDING * 0.01 + i * 1e-3, "labels": [LABELS[i % 6], LABELS[i % 4]]})


def _produce(bootstrap: str, topic: str, ids: range, make: Callable[[int], bytes]) -> None:
    """`make(i)` for every i in `ids`, keyed by its prediction id, to partition 0."""
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 << 10)
        await producer.start()
        try:
            batch, sends = producer.create_batch(), []
            for i in ids:
                key, v = _pid(i).encode(), make(i)
                if batch.append(key=key, value=v, timestamp=None) is None:
                    sends.append(await producer.send_batch(batch, topic, partition=0))
                    batch = producer.create_batch()
                    batch.append(key=key, value=v, timestamp=None)
                    if len(sends) >= 64:  # a finished batch's future keeps its buffer: wait, then drop them
                        await asyncio.gather(*sends)
                        sends = []
            sends.append(await producer.send_batch(batch, topic, partition=0))
            await asyncio.gather(*sends)
        finally:
            await producer.stop()

    asyncio.run(run())


def _expected(config_path: Path) -> Series:
    """`monitor replay` of every event the test sends (run in a child process while the worker works)."""
    preds = [_prediction(i) for i in range(PENDING + LATER)]
    truths = [_truth(i) for i in range(0, 2 * LATER, 2)]
    return replay_series(load_config(config_path), preds, truths, T0 + PENDING * 0.01 + 600)


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_millions_pending_on_a_stock_broker_survive_kill_9_exactly(kafka_bootstrap: str, tmp_path: Path,  # noqa: F811
                                                                   workers) -> None:  # noqa: F811
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    name = unique_topic("scale")
    data["kafka"] = {"bootstrap_servers": kafka_bootstrap, "predictions_topic": f"{name}-p",
                     "ground_truth_topic": f"{name}-g", "dead_letter_topic": f"{name}-dlq",
                     "group_id": f"{name}-group", "partitions": 1}
    data["join"] = {"ttl": "72h", "max_pending": 3_000_000}
    data["models"][0]["reference"] = str((EXAMPLE_CONFIG.parent / data["models"][0]["reference"]).resolve())
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    load_config(path)  # a bad config fails here, not in the worker
    for topic in (f"{name}-p", f"{name}-g"):
        create_topic(kafka_bootstrap, topic, partitions=1)

    # The oracle (a replay of all 2.1M events, about 15 s) runs in a child process meanwhile.
    oracle = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    try:
        _run(kafka_bootstrap, name, path, tmp_path, workers, oracle.submit(_expected, path))
    finally:
        oracle.shutdown(wait=False, cancel_futures=True)


def _run(kafka_bootstrap: str, name: str, path: Path, tmp_path: Path, workers: list[WorkerProcess],  # noqa: F811
         expected_later: Future[Series]) -> None:
    _produce(kafka_bootstrap, f"{name}-p", range(PENDING), _prediction)
    first = WorkerProcess(path, T0 + PENDING * 0.01 + 600, tmp_path, checkpoint_interval=2.0)
    workers.append(first)
    healthy = []

    def filled() -> bool:
        healthy.append(first.get("/healthz")[0] if first.try_scrape() is not None else None)
        scrape = first.try_scrape() or {}
        if total(scrape, c.PREDICTIONS_TOTAL.name) != PENDING:
            return False
        return (worker_counter(first, c.STATE_RECORDS_WRITTEN.name) or 0.0) >= PENDING

    wait_for(f"{PENDING:,} pending predictions applied and in the changelog", filled, timeout=400, workers=workers)
    assert healthy[-1] == 200 and 503 not in healthy[len(healthy) // 2:], healthy[-20:]
    scrape = first.scrape()
    assert scrape[(c.PENDING_JOINS.name, (("model", "moderation"), ("side", "prediction")))] == PENDING

    # More arrives (ground truth for some of the pending, new predictions); killed in the middle of it.
    truth_ids = range(0, 2 * LATER, 2)
    _produce(kafka_bootstrap, f"{name}-g", truth_ids[:LATER // 2], _truth)
    wait_for("some ground truth applied", lambda: total(first.try_scrape() or {}, c.GROUND_TRUTH_TOTAL.name) > 0,
             workers=workers)
    first.stop(signal.SIGKILL)
    _produce(kafka_bootstrap, f"{name}-g", truth_ids[LATER // 2:], _truth)
    _produce(kafka_bootstrap, f"{name}-p", range(PENDING, PENDING + LATER), _prediction)

    started = time.monotonic()
    second = WorkerProcess(path, T0 + PENDING * 0.01 + 600, tmp_path, checkpoint_interval=2.0)
    workers.append(second)
    expected = expected_later.result(timeout=300)
    wait_for("the restarted worker to drain", drained([second], expected), timeout=400, workers=[second])
    assert_series_equal(second.scrape(), expected)
    out = second.output()
    # On the same machine: the local copy of the changelog, and only the records after its last seal.
    local = re.findall(r"state restored from the local store and the (\d+) changelog records after offset (\d+) "
                       r".* in ([\d.]+) s", out)
    assert local and int(local[0][1]) > 0 and int(local[0][0]) < PENDING, out[-2000:]
    assert "state write failed" not in first.output() + out
    status, body = second.get("/healthz")
    assert status == 200, body  # the reason, when not healthy
    drain_s = time.monotonic() - started
    assert second.stop() == 0, second.output()[-3000:]

    # On a new machine (another state dir): the whole changelog, to the same figures.
    third = WorkerProcess(path, T0 + PENDING * 0.01 + 600, tmp_path, env={"MLMON_STATE_DIR": str(tmp_path / "new")})
    workers.append(third)
    wait_for("the worker on a new machine to restore", drained([third], expected), timeout=400, workers=[third])
    assert_series_equal(third.scrape(), expected)
    restored = re.findall(r"state restored from (\d+) changelog records .* in ([\d.]+) s", third.output())
    assert restored and int(restored[0][0]) >= PENDING, third.output()[-2000:]
    print(f"after kill -9: {int(local[0][0]):,} changelog records on top of the local copy in {local[0][2]} s, "
          f"drained {drain_s:.0f} s after the restart; on a new machine {int(restored[0][0]):,} records in "
          f"{restored[0][1]} s")

"""Model-server logs on a real broker, as the servers write them (docs/attach.md): KServe's inference logger
through a Knative KafkaSink (CloudEvents, binary and structured content mode, request and response events)
and Seldon Core 2's model output topic (OIP V2 JSON, key = request id, headers kept). The worker's /metrics
must equal `monitor replay` of the same events in the native shape, which tests/test_mapping.py checks
against scikit-learn."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from monitor import conventions as c
from monitor.config import load_config
from tests.attach_shapes import KSERVE_RESPONSE, SHAPES, Record, kserve_event, ms_stream, renamed
from tests.kafka_fixtures import kafka_bootstrap, unique_topic  # noqa: F401
from tests.test_mapping import WINDOWS
from tests.test_oracle import LABELS, to_raw
from tests.test_worker import (  # noqa: F401
    Series,
    WorkerProcess,
    assert_series_equal,
    drained,
    replay_series,
    state_settled,
    wait_for,
    workers,
)

pytestmark = pytest.mark.kafka


def produce_records(bootstrap: str, topic: str, records: list[Record]) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
        await producer.start()
        try:
            futures = [await producer.send(topic, value=r.value, key=r.key, headers=r.headers,
                                           timestamp_ms=r.timestamp_ms) for r in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def read_topic(bootstrap: str, topic: str, at_least: int, timeout: float = 30.0,
               isolation: str = "read_committed") -> list:
    """The topic's records from the beginning, until `at_least` arrived or `timeout` passed."""
    async def run() -> list:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    isolation_level=isolation)
        await consumer.start()
        try:
            out: list = []
            deadline = time.monotonic() + timeout
            while len(out) < at_least and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(records)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(run())


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("shape_name", "partitions"), [
    # KServe's logger sets no Kafka key (KafkaSink keys only by a `partitionkey` extension it does not
    # send), so the join needs one partition; Seldon keys every record by its request id.
    ("kserve", 1),
    ("seldon", 3),
    ("seldon_protobuf", 2),
])
def test_worker_reads_model_server_logs(kafka_bootstrap: str, tmp_path: Path, workers, shape_name: str,  # noqa: F811
                                        partitions: int) -> None:
    preds, all_gts = ms_stream(seed=21, n=400)
    # One ground truth per prediction: which of two corrections counts as a duplicate depends on arrival
    # order, and replay orders by time where the worker takes the topics' order.
    last = {g.pid: g for g in sorted(all_gts, key=lambda g: (g.ts, g.order))}
    gts = sorted(last.values(), key=lambda g: g.order)
    prefix = unique_topic(shape_name)
    shape = renamed(SHAPES[shape_name](preds, gts), prefix)
    native_p, native_g = to_raw(preds, gts)
    data = {"kafka": {"bootstrap_servers": kafka_bootstrap, "predictions_topic": f"{prefix}-predictions",
                      "ground_truth_topic": f"{prefix}-truth", "dead_letter_topic": f"{prefix}-dlq",
                      "group_id": f"{prefix}-group", "partitions": partitions},
            "windows": WINDOWS, "join": {"ttl": "3d"},
            "models": [{"name": "m", "labels": LABELS, "thresholds": {"b": 0.3}, "input": shape.inputs}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    at = max([p.ts for p in preds] + [g.ts for g in gts])
    native_config = load_config(path).model_copy(
        update={"models": [config.models[0].model_copy(update={"input": None})]})
    expected = replay_series(native_config, native_p, native_g, at)
    pred_topic = shape.inputs["predictions"]["topic"]
    # One hostile record: the worker dead-letters it, naming field and expression, and goes on.
    if shape_name == "kserve":
        bad = kserve_event(KSERVE_RESPONSE, "x1", at, {"outputs": [{"name": "probabilities", "data": [0.1]}]}, False)
    else:
        bad = Record(orjson.dumps({"outputs": [{"name": "predict_proba", "data": [0.1, 0.2, 0.3]}]}),
                     key=None, timestamp_ms=round(at * 1000))
    key = ("mlmon_invalid_events_total", (("reason", "missing_score" if shape_name == "kserve" else "missing_field"),
                                          ("topic", c.TOPIC_PREDICTIONS)))
    expected[key] += 1

    w = WorkerProcess(path, at, tmp_path)
    workers.append(w)
    wait_for("the worker to join its group", lambda: w.get("/healthz")[0] == 200 if w.try_scrape() else False,
             workers=workers)
    for topic, records in shape.topics.items():
        produce_records(kafka_bootstrap, topic, [bad, *records] if topic == pred_topic else records)
    wait_for("the worker to drain", drained([w], expected), workers=workers)
    assert_series_equal(w.scrape(), expected)

    letters = read_topic(kafka_bootstrap, f"{prefix}-dlq", 1, isolation="read_uncommitted")
    assert len(letters) == 1
    headers = {k: v.decode() for k, v in letters[0].headers}
    assert headers[c.DLQ_TOPIC_HEADER] == pred_topic and letters[0].value == bad.value
    if shape_name == "kserve":
        assert headers[c.DLQ_FIELD_HEADER] == "scores"
        assert headers[c.DLQ_EXPRESSION_HEADER] == shape.inputs["predictions"]["fields"]["scores"]
    else:
        assert headers[c.DLQ_FIELD_HEADER] == "prediction_id" and headers[c.DLQ_EXPRESSION_HEADER] == "key"
        assert '(fields.prediction_id = "key")' in headers[c.DLQ_DETAIL_HEADER]
    assert w.stop() == 0


@dataclass
class MappedRun:
    """A stream in a foreign shape on its own topics, its worker config and replay's series of the same
    events in the native shape (the oracle)."""

    prefix: str
    shape: Any
    path: Path
    at: float
    expected: Series
    gts: list


def mapped_run(bootstrap: str, tmp_path: Path, shape_name: str, seed: int, n: int, partitions: int,
               name: str) -> MappedRun:
    preds, all_gts = ms_stream(seed=seed, n=n)
    last = {g.pid: g for g in sorted(all_gts, key=lambda g: (g.ts, g.order))}
    gts = sorted(last.values(), key=lambda g: g.order)
    prefix = unique_topic(name)
    shape = renamed(SHAPES[shape_name](preds, gts), prefix)
    data = {"kafka": {"bootstrap_servers": bootstrap, "predictions_topic": f"{prefix}-predictions",
                      "ground_truth_topic": f"{prefix}-truth", "dead_letter_topic": f"{prefix}-dlq",
                      "group_id": f"{prefix}-group", "partitions": partitions},
            "windows": WINDOWS, "join": {"ttl": "3d"},
            "models": [{"name": "m", "labels": LABELS, "thresholds": {"b": 0.3}, "input": shape.inputs}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    at = max([p.ts for p in preds] + [g.ts for g in gts])
    native_p, native_g = to_raw(preds, gts)
    native_config = config.model_copy(update={"models": [config.models[0].model_copy(update={"input": None})]})
    return MappedRun(prefix, shape, path, at, replay_series(native_config, native_p, native_g, at), gts)


@pytest.mark.timeout(300)
def test_kill_9_on_mapped_topics_then_restart_is_exact(kafka_bootstrap: str, tmp_path: Path, workers) -> None:  # noqa: F811
    """Offsets of mapped topics travel in the checkpoints like the default topics': a worker killed
    mid-stream and restarted applies every Seldon record exactly once."""
    run = mapped_run(kafka_bootstrap, tmp_path, "seldon", seed=23, n=1200, partitions=3, name="kill")
    shape, path, at, expected, gts = run.shape, run.path, run.at, run.expected, run.gts
    pred_topic, gt_topic = shape.inputs["predictions"]["topic"], shape.inputs["ground_truth"]["topic"]
    first = WorkerProcess(path, at, tmp_path, checkpoint_interval=0.3)
    workers.append(first)
    wait_for("the worker to join its group", lambda: first.get("/healthz")[0] == 200 if first.try_scrape() else False,
             workers=workers)
    records = shape.topics[pred_topic]
    cut = len(records) // 2
    produce_records(kafka_bootstrap, pred_topic, records[:cut])
    wait_for("the first half", lambda: sum(v for (n, _), v in (first.try_scrape() or {}).items()
                                           if n == c.PREDICTIONS_TOTAL.name) == cut, workers=workers)
    wait_for("a checkpoint of the first half", state_settled(first), workers=workers)
    produce_records(kafka_bootstrap, gt_topic, shape.topics[gt_topic][: len(gts) // 3])
    wait_for("some ground truth", lambda: sum(v for (n, _), v in (first.try_scrape() or {}).items()
                                              if n == c.GROUND_TRUTH_TOTAL.name) > 0, workers=workers)
    first.proc.kill()  # kill -9: no final checkpoint
    first.proc.wait(10)
    produce_records(kafka_bootstrap, pred_topic, records[cut:])
    produce_records(kafka_bootstrap, gt_topic, shape.topics[gt_topic][len(gts) // 3:])
    second = WorkerProcess(path, at, tmp_path, checkpoint_interval=0.3)
    workers.append(second)
    wait_for("the restarted worker to drain", drained([second], expected), workers=[second])
    assert_series_equal(second.scrape(), expected)
    # At least one partition resumed from a checkpoint that holds the mapped topic's offset (how many
    # depends on when the adaptive checkpoint interval fell), and the figures are exact either way.
    resumed = [line for line in second.output().splitlines() if "resuming at " in line]
    assert any(f"'topic:{pred_topic}': " in line and f"'topic:{pred_topic}': 0" not in line for line in resumed), \
        first.output()[-3000:] + second.output()[-2000:]

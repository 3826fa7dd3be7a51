"""Inputs that are not co-partitioned by prediction id: the worker repartitions them through internal
topics (monitor/stream/repartition.py), exactly once.

The Kafka tests produce the same 3000-prediction stream as tests/test_worker.py to topics with 3 and 5
partitions (or 4 and 4 under `repartition: always`), keyed by a user id or not keyed at all, so a
prediction and its ground truth almost never share a source partition. They kill workers with -9 mid-stream
and compare the workers' /metrics with `monitor replay` of the same events (the oracle is the engine run
in one process over the files, which knows nothing of partitions).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import orjson
import pytest
import yaml

from monitor import conventions as c
from monitor.config import MonitorConfig, load_config
from monitor.events import Decoder, GroundTruth, Prediction
from monitor.mapping import RecordMeta, readers
from monitor.stream.repartition import SKIP, BatchIds, IdReader, origin, partition_of, source_headers
from tests.conftest import EXAMPLE_CONFIG
from tests.kafka_fixtures import create_topic, kafka_bootstrap, unique_topic  # noqa: F401
from tests.test_attach_kafka import read_topic
from tests.test_worker import (
    ADDITIVE_GAUGES,
    Series,
    WorkerProcess,
    assert_series_equal,
    drained,
    key_of,
    produce,
    replay_series,
    state_settled,
    stream,  # noqa: F401  (module fixture: the 3000-prediction stream)
    total,
    wait_for,
    workers,  # noqa: F401  (fixture: kills leftover worker processes)
)

kafka_test = pytest.mark.kafka

# Events the repartition stage cannot read an id from: they are copied anyway, and the join stage
# rejects, counts and dead-letters them as for co-partitioned inputs.
BAD_PREDICTIONS = [b"{not json", orjson.dumps({"model": "moderation", "timestamp": 1795132800, "scores": {}}),
                   orjson.dumps({"prediction_id": 17, "model": "moderation"})]
BAD_TRUTHS = [orjson.dumps({"prediction_id": "", "model": "moderation", "labels": []})]


def _config(tmp_path: Path, bootstrap: str, repartition: str, partitions: int = 4) -> tuple[Path, MonitorConfig]:
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    name = unique_topic("r")
    data["kafka"] = {"bootstrap_servers": bootstrap, "predictions_topic": f"{name}-predictions",
                     "ground_truth_topic": f"{name}-truth", "dead_letter_topic": f"{name}-dlq",
                     "group_id": f"{name}-group", "partitions": partitions, "repartition": repartition}
    for m in data["models"]:
        m["reference"] = str((EXAMPLE_CONFIG.parent / m["reference"]).resolve())
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, load_config(path)


def user_keys(values: list[bytes], seed: int) -> list[bytes | None]:
    """Keyed by a user id that has nothing to do with the prediction id; every fifth record has no key."""
    return [None if (i + seed) % 5 == 0 else f"user-{(i * 7919 + seed) % 41}".encode() for i in range(len(values))]


def produce_keyed(bootstrap: str, topic: str, values: list[bytes], seed: int) -> None:
    produce(bootstrap, topic, values, keys=user_keys(values, seed))


def additive(series: Series) -> Series:
    return {k: v for k, v in series.items()
            if k[0].endswith(("_total", "_bucket", "_count", "_sum")) or k[0] in ADDITIVE_GAUGES}


def summed(scrapes: list[Series]) -> Series:
    out: Series = {}
    for s in scrapes:
        for key, v in additive(s).items():
            out[key] = out.get(key, 0.0) + v
    return out


def beginning_offsets(bootstrap: str, topics: list[str]) -> dict:
    from kafka import KafkaConsumer
    from kafka import TopicPartition as Tp

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="mlmon-tests")
    try:
        tps = [Tp(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        return consumer.beginning_offsets(tps)
    finally:
        consumer.close()


# --- without a broker ------------------------------------------------------------------------------------------
def test_the_id_read_for_routing_is_the_one_the_decoder_reads(stream) -> None:  # noqa: F811
    """IdReader against the exact decoder (events.Decoder through mapping.TopicReader), native and mapped."""
    preds, truths, _ = stream
    config = load_config(EXAMPLE_CONFIG)
    pairs = readers(config, Decoder(config))
    for side, raws in (("predictions", preds[:300] + BAD_PREDICTIONS), ("ground_truth", truths[:300] + BAD_TRUTHS)):
        reader = pairs[(side, config.topic_of(config.models[0], side))]
        ids = IdReader(reader)
        for raw in raws:
            event = reader.decode(raw)
            got = ids.read(raw, RecordMeta)
            if isinstance(event, Prediction | GroundTruth):
                assert got == event.prediction_id
            else:  # rejected: routed by its bytes, rejected again by the join stage
                assert got is None or isinstance(got, str)
        # The batch reader (native fast path where it applies) gives the same ids.
        records = [RecordMeta() for _ in raws]
        batch = BatchIds(config, {m.name: None for m in config.models}).read(
            side, config.topic_of(config.models[0], side), raws, records)
        assert batch == [ids.read(raw, RecordMeta) for raw in raws]

    # A mapped topic with the kafka envelope: the id comes from a header, the `when` leaves some out.
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data["models"][0]["reference"] = str((EXAMPLE_CONFIG.parent / data["models"][0]["reference"]).resolve())
    labels = data["models"][0]["labels"]
    data["models"][0]["input"] = {"predictions": {"topic": "served", "envelope": "kafka", "when": "value.kind == 'out'",
                                                  "fields": {"model": "'moderation'", "prediction_id": "headers.rid",
                                                             "timestamp": "timestamp", "scores": "value.p"}}}
    mapped = MonitorConfig.model_validate(data)
    reader = readers(mapped, Decoder(mapped))[("predictions", "served")]
    ids = IdReader(reader)
    body = orjson.dumps({"kind": "out", "p": dict.fromkeys(labels, 0.5)})
    meta = RecordMeta(b"user-1", [("rid", b"abc-1")], 1795132800000)
    event = reader.decode(body, meta)
    assert isinstance(event, Prediction) and event.prediction_id == "abc-1"
    assert ids.read(body, lambda: meta) == "abc-1"
    assert ids.read(orjson.dumps({"kind": "in"}), lambda: meta) is SKIP
    assert reader.decode(orjson.dumps({"kind": "in"}), meta) is None  # the decoder skips it too
    assert ids.read(body, lambda: RecordMeta(b"k", [], 1795132800000)) is None  # no id: routed by bytes


def test_origin_header_round_trip_and_stable_partitions() -> None:
    headers = [("ce_id", b"1"), ("mlmon-origin", b"my.topic-1:4:1234567")]
    assert origin(headers) == ("my.topic-1", 4, 1234567)
    assert list(source_headers(headers)) == [("ce_id", b"1")]
    assert origin([("ce_id", b"1")]) is None and list(source_headers([("a", b"")])) == [("a", b"")]
    ids = [f"id-{i}".encode() for i in range(6000)]
    parts = [partition_of(k, 6) for k in ids]
    assert parts == [partition_of(k, 6) for k in ids]  # a function of the id alone
    assert min(parts.count(p) for p in range(6)) > 800  # and spread over every partition


# --- on a real broker ------------------------------------------------------------------------------------------
@kafka_test
@pytest.mark.timeout(120)
def test_never_refuses_different_partition_counts(kafka_bootstrap: str, tmp_path: Path) -> None:  # noqa: F811
    from monitor.stream.kafka_setup import SetupError, ensure_topics

    _, config = _config(tmp_path, kafka_bootstrap, "never")
    create_topic(kafka_bootstrap, config.kafka.predictions_topic, partitions=3)
    create_topic(kafka_bootstrap, config.kafka.ground_truth_topic, partitions=5)
    with pytest.raises(SetupError, match=r"kafka\.repartition to auto or always"):
        asyncio.run(ensure_topics(config))
    auto = config.model_copy(update={"kafka": config.kafka.model_copy(update={"repartition": "auto"})})
    topics = asyncio.run(ensure_topics(auto))
    assert topics.partitions == 4 and dict(topics.internal) == {
        "predictions": f"{config.kafka.group_id}-repartition-predictions",
        "ground_truth": f"{config.kafka.group_id}-repartition-ground_truth"}


@kafka_test
@pytest.mark.timeout(120)
def test_own_topics_configured_by_hand_are_refused_with_every_problem_named(kafka_bootstrap: str,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    """A state topic made by hand without compaction and with a small size limit, and a repartition topic
    with a retention, would fail every state write or lose copies: the worker refuses to start and names
    each problem with the setting to change. Fixed by hand, the same topics are taken."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    from monitor.stream.changelog import MAX_BATCH_BYTES
    from monitor.stream.kafka_setup import SetupError, ensure_topics, state_topic_name
    from monitor.stream.repartition import INTERNAL_MAX_MESSAGE_BYTES

    _, config = _config(tmp_path, kafka_bootstrap, "always")
    state = state_topic_name(config.kafka)
    copies = f"{config.kafka.group_id}-repartition-predictions"
    create_topic(kafka_bootstrap, state, partitions=4,
                 config={"cleanup.policy": "delete", "max.message.bytes": "100000"})
    create_topic(kafka_bootstrap, copies, partitions=4, config={"retention.ms": "86400000"})
    with pytest.raises(SetupError) as err:
        asyncio.run(ensure_topics(config))
    message = str(err.value)
    assert f"{state!r} (the state changelog) has cleanup.policy=delete" in message
    assert "--add-config cleanup.policy=compact" in message
    assert f"up to 100000 bytes (max.message.bytes); state writes need {MAX_BATCH_BYTES + 1024}" in message
    assert f"{copies!r} (repartitioned copies) has retention.ms=86400000" in message

    fixed = {state: {"cleanup.policy": "compact", "max.message.bytes": str(1 << 20)},
             copies: {"retention.ms": "-1", "max.message.bytes": str(INTERNAL_MAX_MESSAGE_BYTES)}}
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="mlmon-tests")
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t, configs=c) for t, c in fixed.items()])
        # The broker applies a config change a moment after acknowledging it: wait until it reports it.
        deadline = time.monotonic() + 30
        while True:
            described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in fixed])["topic"]
            seen = {t: {k: entry["value"] for k, entry in described.get(t, {}).items()} for t in fixed}
            if all(seen[t].get(k) == v for t, c in fixed.items() for k, v in c.items()):
                break
            assert time.monotonic() < deadline, f"the broker did not apply the configs: {seen}"
            time.sleep(0.2)
    finally:
        admin.close()
    topics = asyncio.run(ensure_topics(config))
    assert topics.state == state and topics.partitions == 4


@kafka_test
@pytest.mark.timeout(240)
def test_3_and_5_partitions_keyed_by_user_kill_9_and_restart_is_exact(kafka_bootstrap: str, tmp_path: Path,  # noqa: F811
                                                                       stream, workers,  # noqa: F811
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLMON_REPARTITION_PURGE_INTERVAL", "1")
    preds, truths, at = stream
    path, config = _config(tmp_path, kafka_bootstrap, "auto", partitions=4)
    kafka = config.kafka
    preds_all, truths_all = [*BAD_PREDICTIONS, *preds], [*BAD_TRUTHS, *truths]
    expected = replay_series(config, preds_all, truths_all, at)
    create_topic(kafka_bootstrap, kafka.predictions_topic, partitions=3)
    create_topic(kafka_bootstrap, kafka.ground_truth_topic, partitions=5)
    cut = len(preds_all) // 2
    produce_keyed(kafka_bootstrap, kafka.predictions_topic, preds_all[:cut], seed=1)
    first = WorkerProcess(path, at, tmp_path, checkpoint_interval=0.3)
    workers.append(first)
    wait_for("the first half", lambda: total(first.try_scrape() or {}, c.PREDICTIONS_TOTAL.name) == cut - 3,
             workers=workers)
    wait_for("a checkpoint of the first half", state_settled(first), workers=workers)

    done = threading.Event()

    def feed() -> None:
        rest = preds_all[cut:]
        for i in range(0, len(rest), 150):
            produce_keyed(kafka_bootstrap, kafka.predictions_topic, rest[i:i + 150], seed=i)
        for i in range(0, len(truths_all), 100):
            produce_keyed(kafka_bootstrap, kafka.ground_truth_topic, truths_all[i:i + 100], seed=i + 3)
            time.sleep(0.15)  # spread out (about 6 s), so that the kill lands while the stream still arrives
        done.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    wait_for("progress past the first half",
             lambda: total(first.try_scrape() or {}, c.GROUND_TRUTH_TOTAL.name) >= 300, workers=workers)
    before = first.scrape()
    first.proc.kill()  # kill -9: no final checkpoint or transaction, no leaving either group
    first.proc.wait(10)
    assert total(before, c.GROUND_TRUTH_TOTAL.name) < len(truths)  # killed mid-stream

    second = WorkerProcess(path, at, tmp_path, checkpoint_interval=0.3)
    workers.append(second)
    feeder.join(120)
    assert done.is_set()
    wait_for("the restarted worker to drain", drained([second], expected), workers=[second])
    assert_series_equal(second.scrape(), expected)
    out = second.output()
    assert "repartitioning from offset" in out and "resuming at" in out, out[-2000:]

    # Copies the checkpoints cover are deleted (DeleteRecords), so the internal topics do not grow forever.
    def purged() -> bool:
        starts = beginning_offsets(kafka_bootstrap, [f"{kafka.group_id}-repartition-{side}"
                                                     for side in ("predictions", "ground_truth")])
        return sum(starts.values()) > 0

    wait_for("copies below the checkpoints deleted", purged, timeout=30, workers=[second])

    # The events without a readable id went to the dead-letter topic once each (dead letters are
    # at-least-once across a crash: the source offsets tell the copies apart), naming their source record.
    letters = read_topic(kafka_bootstrap, kafka.dead_letter_topic, at_least=4)
    sources = {}
    for r in letters:
        h = {k: v.decode() for k, v in r.headers}
        sources[(h[c.DLQ_TOPIC_HEADER], h[c.DLQ_PARTITION_HEADER], h[c.DLQ_OFFSET_HEADER])] = r.value
    assert sorted(sources.values()) == sorted([*BAD_PREDICTIONS, *BAD_TRUTHS])
    assert {t for t, _, _ in sources} == {kafka.predictions_topic, kafka.ground_truth_topic}
    assert second.stop() == 0, second.output()[-3000:]


@kafka_test
@pytest.mark.timeout(240)
def test_always_with_two_workers_one_killed_and_replaced_adds_up(kafka_bootstrap: str, tmp_path: Path,  # noqa: F811
                                                                  stream, workers,  # noqa: F811
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal partition counts keyed by user id: `auto` would take them as keyed by prediction id, so the
    config says `always`. Two workers share both stages; one is killed with -9 mid-stream and a new one
    starts; the survivors' figures add up to replay's."""
    monkeypatch.setenv("MLMON_REPARTITION_PURGE_INTERVAL", "3600")  # the copies are counted at the end
    preds, truths, at = stream
    path, config = _config(tmp_path, kafka_bootstrap, "always", partitions=3)
    kafka = config.kafka
    expected = additive(replay_series(config, preds, truths, at))
    for topic in (kafka.predictions_topic, kafka.ground_truth_topic):
        create_topic(kafka_bootstrap, topic, partitions=4)
    produce_keyed(kafka_bootstrap, kafka.predictions_topic, preds[:1000], seed=2)
    a = WorkerProcess(path, at, tmp_path, checkpoint_interval=0.3)
    b = WorkerProcess(path, at, tmp_path, checkpoint_interval=0.3)
    workers.extend([a, b])
    wait_for("both workers to consume", lambda: all(total(w.try_scrape() or {}, c.PREDICTIONS_TOTAL.name) > 0
                                                    for w in (a, b)), workers=workers)
    done = threading.Event()

    def feed() -> None:
        for i in range(1000, len(preds), 200):
            produce_keyed(kafka_bootstrap, kafka.predictions_topic, preds[i:i + 200], seed=i)
        for i in range(0, len(truths), 100):
            produce_keyed(kafka_bootstrap, kafka.ground_truth_topic, truths[i:i + 100], seed=i + 1)
            time.sleep(0.15)
        done.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    wait_for("ground truth arriving", lambda: total(summed([a.try_scrape() or {}, b.try_scrape() or {}]),
                                                    c.GROUND_TRUTH_TOTAL.name) >= 300, workers=workers)
    a.proc.kill()
    a.proc.wait(10)
    assert not done.is_set()  # killed while the stream still arrived
    replacement = WorkerProcess(path, at, tmp_path, checkpoint_interval=0.3)
    workers.append(replacement)
    feeder.join(120)
    assert done.is_set()
    live = [b, replacement]
    wait_for("the live workers to drain", drained(live, expected), workers=live)
    scrapes = [w.scrape() for w in live]
    assert_series_equal(summed(scrapes), expected)
    for w in live:
        assert w.stop() == 0, w.output()[-3000:]
    # Copies keep the source record: key, value and headers (plus the origin header) and its timestamp.
    copies = read_topic(kafka_bootstrap, f"{kafka.group_id}-repartition-predictions", at_least=len(preds))
    assert len(copies) == len(preds)  # every prediction copied exactly once, across the kill
    by_value = {r.value: r for r in copies}
    keys = dict(zip(preds[:1000], user_keys(preds[:1000], 2), strict=True))
    for value, key in list(keys.items())[:50]:
        assert by_value[value].key == key and origin(by_value[value].headers)[0] == kafka.predictions_topic
    assert all(key_of(r.value) is not None for r in copies)


@kafka_test
@pytest.mark.timeout(240)
def test_unkeyed_kserve_log_on_several_partitions(kafka_bootstrap: str, tmp_path: Path, workers) -> None:  # noqa: F811
    """KServe's logger sets no Kafka key, so its topic could only be read with one partition before. With
    3 partitions (and the review table on 2) the worker repartitions both; the CloudEvents attributes in
    the headers (binary content mode) reach the mapping unchanged, and a rejected record's dead letter
    names its source topic."""
    from tests.attach_shapes import KSERVE_RESPONSE, kserve_event
    from tests.test_attach_kafka import mapped_run, produce_records

    run = mapped_run(kafka_bootstrap, tmp_path, "kserve", seed=29, n=600, partitions=4, name="rk")
    prefix, shape, path, at, expected = run.prefix, run.shape, run.path, run.at, run.expected
    bad = kserve_event(KSERVE_RESPONSE, "x1", at, {"outputs": [{"name": "probabilities", "data": [0.1]}]}, False)
    expected[("mlmon_invalid_events_total", (("reason", "missing_score"), ("topic", c.TOPIC_PREDICTIONS)))] += 1
    pred_topic, gt_topic = shape.inputs["predictions"]["topic"], shape.inputs["ground_truth"]["topic"]
    create_topic(kafka_bootstrap, pred_topic, partitions=3)
    create_topic(kafka_bootstrap, gt_topic, partitions=2)
    w = WorkerProcess(path, at, tmp_path)
    workers.append(w)
    wait_for("the worker to join its group", lambda: w.get("/healthz")[0] == 200 if w.try_scrape() else False,
             workers=workers)
    produce_records(kafka_bootstrap, pred_topic, [bad, *shape.topics[pred_topic]])
    produce_records(kafka_bootstrap, gt_topic, shape.topics[gt_topic])
    wait_for("the worker to drain", drained([w], expected), workers=workers)
    assert_series_equal(w.scrape(), expected)
    letters = read_topic(kafka_bootstrap, f"{prefix}-dlq", 1, isolation="read_uncommitted")
    assert len(letters) == 1 and letters[0].value == bad.value
    headers = {k: v.decode() for k, v in letters[0].headers}
    assert headers[c.DLQ_TOPIC_HEADER] == pred_topic and headers[c.DLQ_FIELD_HEADER] == "scores"
    assert w.stop() == 0


@kafka_test
@pytest.mark.timeout(200)
def test_broker_restart_mid_stream_is_exact(tmp_path: Path, stream, workers) -> None:  # noqa: F811
    """The broker goes away under a repartitioning worker (its state writes and both groups' heartbeats
    fail meanwhile) and comes back; the worker goes on and ends exact. A failed repartition transaction
    itself is forced in the next test."""
    from monitor.stream.broker import LocalKafka, free_port

    preds, truths, at = stream
    broker = LocalKafka(port=free_port(), data_dir=tmp_path / "kafka", controller_port=free_port())
    broker.start()
    try:
        bootstrap = broker.bootstrap
        path, config = _config(tmp_path, bootstrap, "auto", partitions=2)
        kafka = config.kafka
        expected = replay_series(config, preds, truths, at)
        create_topic(bootstrap, kafka.predictions_topic, partitions=3)
        create_topic(bootstrap, kafka.ground_truth_topic, partitions=1)
        cut = len(preds) // 2
        ids = {key_of(p) for p in preds[:cut]}
        produce_keyed(bootstrap, kafka.predictions_topic, preds[:cut], seed=4)
        w = WorkerProcess(path, at, tmp_path, checkpoint_interval=0.3)
        workers.append(w)
        wait_for("the first part", lambda: total(w.try_scrape() or {}, c.PREDICTIONS_TOTAL.name) > 0, workers=workers)
        produce_keyed(bootstrap, kafka.ground_truth_topic, [t for t in truths if key_of(t) in ids], seed=5)
        broker.stop()  # graceful: the data dir is kept
        time.sleep(2.0)  # fetches, transactions and checkpoints fail meanwhile
        assert w.proc.poll() is None, w.output()[-3000:]
        broker.start()
        produce_keyed(bootstrap, kafka.predictions_topic, preds[cut:], seed=6)
        produce_keyed(bootstrap, kafka.ground_truth_topic, [t for t in truths if key_of(t) not in ids], seed=7)
        wait_for("the worker to drain after the restart", drained([w], expected), timeout=120, workers=workers)
        assert_series_equal(w.scrape(), expected)
        assert w.stop() == 0, w.output()[-3000:]
    finally:
        broker.stop()


@kafka_test
@pytest.mark.timeout(120)
def test_a_failed_copy_transaction_is_aborted_and_resumed_exactly_once(kafka_bootstrap: str,  # noqa: F811
                                                                      tmp_path: Path, stream) -> None:  # noqa: F811
    """The stage in-process on a real broker; the first transaction fails after its copies were sent
    (its commit raises, as when the broker drops the connection at that moment). The aborted copies
    never reach a read_committed reader, the partition resumes from its committed offset, and every
    source record is in the internal topic exactly once."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    from monitor.stream.kafka_setup import client_options, ensure_topics
    from monitor.stream.repartition import Repartitioner

    preds, _, _ = stream
    _, config = _config(tmp_path, kafka_bootstrap, "always", partitions=3)
    kafka = config.kafka
    create_topic(kafka_bootstrap, kafka.predictions_topic, partitions=2)
    create_topic(kafka_bootstrap, kafka.ground_truth_topic, partitions=2)
    values = preds[:1200]
    produce_keyed(kafka_bootstrap, kafka.predictions_topic, values, seed=8)
    original = AIOKafkaProducer.commit_transaction
    failed: list[int] = []

    async def flaky_commit(self: AIOKafkaProducer) -> None:
        if not failed:
            failed.append(1)
            raise KafkaConnectionError("injected: connection lost while committing")
        await original(self)

    async def run() -> Repartitioner:
        topics = await ensure_topics(config)
        stage = Repartitioner(config, {m.name: None for m in config.models}, topics.sources, dict(topics.internal),
                              topics.partitions, client_options(kafka), "test", retry_base=0.2)
        await stage.start(3000, 10_000)
        stopping = asyncio.Event()
        task = asyncio.create_task(stage.run(stopping))
        deadline = time.monotonic() + 60
        while stage.stats.copied < len(values) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stopping.set()
        await task
        await stage.stop()
        return stage

    AIOKafkaProducer.commit_transaction = flaky_commit  # type: ignore[method-assign]
    try:
        stage = asyncio.run(run())
    finally:
        AIOKafkaProducer.commit_transaction = original  # type: ignore[method-assign]
    assert failed and stage.stats.failures == 1 and stage.stats.copied == len(values)
    copies = read_topic(kafka_bootstrap, f"{kafka.group_id}-repartition-predictions", at_least=len(values) + 1,
                        timeout=5)
    assert sorted(r.value for r in copies) == sorted(values)  # each once: the aborted copies are invisible
    for r in copies:  # and in the partition of its prediction id, with its source key
        assert r.partition == partition_of(key_of(r.value), 3)
    uncommitted = read_topic(kafka_bootstrap, f"{kafka.group_id}-repartition-predictions",
                             at_least=len(values) + 1, timeout=5, isolation="read_uncommitted")
    assert len(uncommitted) > len(values)  # the failed transaction did send copies, later aborted

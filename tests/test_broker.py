"""Real-broker tests: both Python clients against the pinned Kafka (4.x), group joins, transactions, the
launcher itself, and one compatibility test on the 3.9 line."""

from __future__ import annotations

import asyncio
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

import monitor.stream.broker as broker_mod
from monitor.stream.broker import (
    COMPAT_KAFKA_VERSION,
    KAFKA_VERSION,
    BrokerError,
    LocalKafka,
    ensure_kafka_jars,
    free_port,
)
from tests.kafka_fixtures import create_topic, unique_topic

pytestmark = pytest.mark.kafka


def _produce_with_kafka_python(bootstrap: str, topic: str, n: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for i in range(n):
            producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
        producer.flush(timeout=30)
    finally:
        producer.close()


async def _consume_with_aiokafka(bootstrap: str, topic: str, group: str, n: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(values) < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            values += [rec.value for recs in batches.values() for rec in recs if rec.value is not None]
        await consumer.commit()
        committed = 0
        for tp in consumer.assignment():
            committed += await consumer.committed(tp) or 0
        assert committed == n, "the group's committed offsets cover every message"
        return values
    finally:
        await consumer.stop()


def test_kafka_python_produces_and_aiokafka_group_consumes(kafka_bootstrap: str) -> None:
    n = 1000
    topic = create_topic(kafka_bootstrap, unique_topic("roundtrip"), partitions=3)
    _produce_with_kafka_python(kafka_bootstrap, topic, n)
    values = asyncio.run(_consume_with_aiokafka(kafka_bootstrap, topic, unique_topic("g"), n))
    assert sorted(values) == sorted(f"v{i}".encode() for i in range(n))


def test_aiokafka_idempotent_producer_and_kafka_python_group_consumer(kafka_bootstrap: str) -> None:
    n = 200
    topic = create_topic(kafka_bootstrap, unique_topic("idem"), partitions=2)

    async def produce() -> None:
        # faust's producer path: aiokafka with idempotence on.
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            for i in range(n):
                await producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(produce())
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=unique_topic("kp"),
        auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
    )
    try:
        values = []
        for record in consumer:
            values.append(record.value)
            if len(values) == n:
                break
    finally:
        consumer.close()
    assert sorted(values) == sorted(f"v{i}".encode() for i in range(n))


async def _read_committed(bootstrap: str, topic: str, isolation: str, until: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                isolation_level=isolation, enable_auto_commit=False)
    await consumer.start()
    try:
        values: list[bytes] = []
        deadline = time.monotonic() + 20
        # Read to the end: the last stable offset (read_committed) or the high watermark.
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            values += [r.value for recs in batches.values() for r in recs if r.value is not None]
            ends = await consumer.end_offsets(list(consumer.assignment()))
            positions = {tp: await consumer.position(tp) for tp in ends}
            if len(values) >= until and all(positions[tp] >= end for tp, end in ends.items()):
                break
        return values
    finally:
        await consumer.stop()


def _consume_transform_produce(bootstrap: str) -> None:
    """aiokafka's transactional producer in the consume-transform-produce loop (the pattern that gives
    exactly-once): input offsets committed with send_offsets_to_transaction inside the transaction, one
    transaction aborted. read_committed readers see the committed output only, read_uncommitted ones
    also the aborted records, and the group's committed offsets are the ones the committed transactions
    carried."""
    n = 30
    source = create_topic(bootstrap, unique_topic("txn-in"), partitions=2)
    sink = create_topic(bootstrap, unique_topic("txn-out"), partitions=2)
    group = unique_topic("txn-group")
    _produce_with_kafka_python(bootstrap, source, n)

    async def run() -> dict[TopicPartition, int]:
        consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=group,
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    isolation_level="read_committed")
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique_topic("txn"))
        await consumer.start()
        await producer.start()
        try:
            done = 0
            deadline = time.monotonic() + 30
            while done < n and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                if not batches:
                    continue
                async with producer.transaction():
                    offsets = {}
                    for tp, records in batches.items():
                        for record in records:
                            assert record.value is not None
                            await producer.send(sink, key=record.key, value=record.value.upper())
                        offsets[tp] = records[-1].offset + 1
                        done += len(records)
                    await producer.send_offsets_to_transaction(offsets, group)
            assert done == n, f"consumed {done} of {n}"
            # An aborted transaction: its records and its offsets must both be invisible.
            await producer.begin_transaction()
            await producer.send(sink, value=b"ABORTED")
            await producer.send_offsets_to_transaction({TopicPartition(source, 0): 0}, group)
            await producer.abort_transaction()
            return {tp: await consumer.committed(tp) or 0 for tp in consumer.assignment()}
        finally:
            await producer.stop()
            await consumer.stop()

    committed = asyncio.run(run())
    assert sum(committed.values()) == n, committed
    expected = sorted(f"V{i}".encode() for i in range(n))
    assert sorted(asyncio.run(_read_committed(bootstrap, sink, "read_committed", n))) == expected
    uncommitted = asyncio.run(_read_committed(bootstrap, sink, "read_uncommitted", n + 1))
    assert sorted(uncommitted) == sorted([*expected, b"ABORTED"])


def test_aiokafka_transactions_with_offsets_and_read_committed(kafka_bootstrap: str) -> None:
    _consume_transform_produce(kafka_bootstrap)


def test_clients_on_the_3_9_compatibility_broker() -> None:
    """The 3.9 line still works: the jars the launcher resolves for it, both clients, transactions."""
    with LocalKafka(version=COMPAT_KAFKA_VERSION) as broker:
        assert f"Kafka version: {COMPAT_KAFKA_VERSION}" in broker.log_path.read_text()
        libs = {p.name for p in ensure_kafka_jars(version=COMPAT_KAFKA_VERSION).glob("*.jar")}
        assert f"kafka_2.13-{COMPAT_KAFKA_VERSION}.jar" in libs and any(j.startswith("reload4j-") for j in libs)
        topic = create_topic(broker.bootstrap, unique_topic("compat"), partitions=2)
        _produce_with_kafka_python(broker.bootstrap, topic, 100)
        values = asyncio.run(_consume_with_aiokafka(broker.bootstrap, topic, unique_topic("g"), 100))
        assert sorted(values) == sorted(f"v{i}".encode() for i in range(100))
        _consume_transform_produce(broker.bootstrap)


def test_launcher_resolves_the_4x_jars_with_log4j2() -> None:
    """Kafka 4 logs through log4j2: the launcher adds its SLF4J binding (without it the broker logs
    nothing) and none of the 3.x reload4j jars."""
    libs = {p.name for p in ensure_kafka_jars().glob("*.jar")}
    assert f"kafka_2.13-{KAFKA_VERSION}.jar" in libs
    for prefix in ("log4j-core-", "log4j-api-", "log4j-slf4j-impl-", "kafka-clients-", "kafka-server-"):
        assert any(j.startswith(prefix) for j in libs), prefix
    assert not any("reload4j" in j for j in libs)
    with pytest.raises(BrokerError, match=r"unsupported Kafka version '2\.8\.0'"):
        LocalKafka(version="2.8.0")


def test_second_group_member_gets_half_the_partitions(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, unique_topic("join"), partitions=2)
    group = unique_topic("group")

    def member() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,  # the broker default minimum, so this works on any broker
            heartbeat_interval_ms=300,  # a rebalance is noticed on the next heartbeat
        )

    async def run() -> tuple[set[TopicPartition], set[TopicPartition], set[bytes]]:
        first, second = member(), member()
        await first.start()
        try:
            await _until(lambda: len(first.assignment()) == 2, first)
            await second.start()
            try:
                await _until(lambda: len(first.assignment()) == 1 and len(second.assignment()) == 1, first, second)
                _produce_with_kafka_python(kafka_bootstrap, topic, 20)
                seen: set[bytes] = set()
                deadline = time.monotonic() + 20
                while len(seen) < 20 and time.monotonic() < deadline:
                    for consumer in (first, second):
                        batches = await consumer.getmany(timeout_ms=200)
                        seen |= {r.value for recs in batches.values() for r in recs if r.value is not None}
                return set(first.assignment()), set(second.assignment()), seen
            finally:
                await second.stop()
        finally:
            await first.stop()

    a, b, seen = asyncio.run(run())
    assert a.isdisjoint(b) and len(a | b) == 2
    assert seen == {f"v{i}".encode() for i in range(20)}


async def _until(condition: object, *consumers: AIOKafkaConsumer, timeout: float = 30.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"group did not settle within {timeout} s")
        for consumer in consumers:  # polling drives aiokafka's fetcher; the rejoin runs in its coordinator
            await consumer.getmany(timeout_ms=100)


def _monitor_command() -> list[str]:
    exe = shutil.which("monitor")
    return [exe] if exe else [sys.executable, "-m", "monitor.cli"]


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"no line on stdout within {timeout} s")
    return proc.stdout.readline()


def test_monitor_broker_command_prints_ready_and_stops_on_sigterm(tmp_path: Path) -> None:
    ensure_kafka_jars()  # a first-time fetch must not count against the start-up timeout below
    port = free_port()
    data_dir = tmp_path / "kafka"
    stderr = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen(
        [*_monitor_command(), "broker", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    try:
        line = _read_line(proc, timeout=90)
        assert line == f"ready bootstrap=127.0.0.1:{port}\n", (tmp_path / "stderr.txt").read_text()
        topic = unique_topic("cli")
        _produce_with_kafka_python(f"127.0.0.1:{port}", topic, 3)  # auto-created topic
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        try:
            assert topic in admin.list_topics()
        finally:
            admin.close()

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 10
        assert proc.stdout is not None and proc.stdout.read() == "", "exactly one line on stdout"
        assert not broker_mod._port_accepts(port), "the JVM is gone with the command"
        assert (data_dir / "kafka-logs" / "meta.properties").is_file(), "a given --data-dir is kept"
        assert f"Kafka version: {KAFKA_VERSION}" in (data_dir / "broker.log").read_text(), "log4j2 logs"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()


def test_restart_after_crash_on_same_data_dir_keeps_messages(tmp_path: Path) -> None:
    broker = LocalKafka(data_dir=tmp_path / "kafka")
    with broker:
        topic = create_topic(broker.bootstrap, unique_topic("durable"), partitions=2)
        _produce_with_kafka_python(broker.bootstrap, topic, 50)
        broker.kill()
        assert not broker.is_running()
        broker.start()
        values = asyncio.run(_consume_with_aiokafka(broker.bootstrap, topic, unique_topic("g"), 50))
    assert len(values) == 50
    assert not broker.is_running()
    assert (tmp_path / "kafka" / "broker.log").is_file()


def test_start_failure_reports_the_broker_log(tmp_path: Path) -> None:
    port, controller = free_port(), free_port()
    # Valid config (so storage formats), but the client listener cannot bind: a documentation-only
    # address (RFC 5737) is on no interface here.
    listeners = f"PLAINTEXT://192.0.2.1:{port},CONTROLLER://127.0.0.1:{controller}"
    broker = LocalKafka(port, tmp_path / "kafka", controller_port=controller, overrides={"listeners": listeners})
    with pytest.raises(BrokerError) as info:
        broker.start()
    message = str(info.value)
    assert "exited with code" in message and "broker.log (tail)" in message
    assert "192.0.2.1" in message, "the cause, from the broker's own log, is in the error"
    assert not broker.is_running()


def test_taken_port_is_refused_up_front() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} .* already in use"):
            LocalKafka(port=port).start()


def test_readiness_timeout_is_a_clear_error() -> None:
    broker = LocalKafka(startup_timeout=0.5)
    with pytest.raises(BrokerError, match=r"not ready within 0.5 s") as info:
        broker.start()
    assert "broker.log (tail)" in str(info.value)
    assert not broker.is_running() and broker.data_dir is None, "temp dir removed after a failed start"


def test_cached_jars_do_not_run_maven(monkeypatch: pytest.MonkeyPatch) -> None:
    libs = ensure_kafka_jars()

    def no_maven(*args: object, **kwargs: object) -> None:
        raise AssertionError("mvn must not run when the cache is complete")

    monkeypatch.setattr(broker_mod, "_run_maven", no_maven)
    assert ensure_kafka_jars() == libs
    assert (libs / f"kafka_2.13-{broker_mod.KAFKA_VERSION}.jar").is_file()


def test_concurrent_first_fetch_runs_maven_once(tmp_path: Path) -> None:
    real_mvn = shutil.which("mvn")
    if real_mvn is None:
        pytest.skip("mvn not installed")
    # A counting wrapper in front of the real mvn; ~/.m2 is warm by now, so this costs a few seconds.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    count_file = tmp_path / "mvn-runs"
    wrapper = bin_dir / "mvn"
    wrapper.write_text(f'#!/bin/sh\necho run >> "{count_file}"\nexec "{real_mvn}" "$@"\n')
    wrapper.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "MLMON_KAFKA_CACHE": str(tmp_path / "cache"),
    }
    code = "from monitor.stream.broker import ensure_kafka_jars; print(ensure_kafka_jars())"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1] == str(tmp_path / "cache" / f"kafka-{broker_mod.KAFKA_VERSION}" / "libs")
    assert count_file.read_text().count("run") == 1

"""The Kafka broker for tests: one per session, from the first source that is available.

1. `KAFKA_BOOTSTRAP_SERVERS` if set (a broker someone else runs, e.g. CI's or docker-compose's);
2. testcontainers' KafkaContainer when a Docker engine answers;
3. else a local Apache Kafka from Maven Central jars (monitor.stream.broker.LocalKafka).

Load it from tests/conftest.py with `from tests.kafka_fixtures import kafka_bootstrap  # noqa: F401`.
Tests that use it are marked `@pytest.mark.kafka`.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator, Mapping

import pytest

from monitor.stream.broker import KAFKA_VERSION, TEST_BROKER_SETTINGS, LocalKafka

log = logging.getLogger(__name__)

# testcontainers' KafkaContainer drives Confluent's image start-up scripts, so it needs a cp-kafka image;
# Confluent Platform 8.0 ships Apache Kafka 4.0, the release line the local broker pins.
DEFAULT_CONTAINER_IMAGE = "confluentinc/cp-kafka:8.0.0"


def _start_container() -> tuple[object, str] | None:
    """(container, bootstrap) from testcontainers, or None when no Docker engine answers."""
    try:
        from docker.errors import DockerException
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:
        return None
    image = os.environ.get("MLMON_KAFKA_TEST_IMAGE", DEFAULT_CONTAINER_IMAGE)
    try:
        container = KafkaContainer(image).with_kraft()
        for key, value in TEST_BROKER_SETTINGS.items():
            container.with_env("KAFKA_" + key.upper().replace(".", "_"), value)
        container.start()
    except DockerException as exc:
        # Without an engine this is raised within milliseconds, before anything is pulled.
        log.info("no Docker engine for testcontainers (%s); using a local Apache Kafka %s", exc, KAFKA_VERSION)
        return None
    return container, container.get_bootstrap_server()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """`host:port` of a real Kafka broker, alive for the whole test session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield external
        return
    started = _start_container()
    if started is not None:
        container, bootstrap = started
        try:
            yield bootstrap
        finally:
            container.stop()  # type: ignore[attr-defined]
        return
    with LocalKafka() as broker:
        yield broker.bootstrap


def unique_topic(prefix: str = "test") -> str:
    """A topic name no other test (or earlier run against a shared broker) has used."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    *,
    replication_factor: int = 1,
    config: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> str:
    """Create `name` and return once every partition has a leader (so producers never race it)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="mlmon-tests")
    try:
        admin.create_topics(
            {
                name: {
                    "num_partitions": partitions,
                    "replication_factor": replication_factor,
                    "configs": dict(config or {}),
                }
            },
            timeout_ms=int(timeout_s * 1000),
            wait_for_metadata=True,
        )
    finally:
        admin.close()
    return name

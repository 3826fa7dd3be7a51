"""Client options from the config (security included) and the topics the worker needs.

The worker's exactness rests on one layout fact: partition p of the predictions topic and partition p
of the ground-truth topic hold every event of the same prediction ids (both keyed by prediction_id, same
partition count, same default partitioner). So the worker creates missing topics with
`kafka.partitions` and refuses to start when existing ones disagree, rather than silently joining
nothing across mismatched partitions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.helpers import create_ssl_context

from monitor.config import KafkaConfig, MonitorConfig

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36
_NO_ERROR = 0


class SetupError(Exception):
    """The cluster or the config cannot host the worker; the message says what to change."""


def client_options(kafka: KafkaConfig) -> dict[str, Any]:
    """Connection and security keyword arguments common to aiokafka's consumer, producer and admin."""
    opts: dict[str, Any] = {"bootstrap_servers": kafka.bootstrap_servers,
                            "security_protocol": kafka.security_protocol}
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = _ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = kafka.sasl_mechanism or "PLAIN"
        opts["sasl_plain_username"] = _secret(kafka.sasl_username_env, "kafka.sasl_username_env")
        opts["sasl_plain_password"] = _secret(kafka.sasl_password_env, "kafka.sasl_password_env")
    return opts


def _ssl_context(kafka: KafkaConfig) -> ssl.SSLContext:
    try:
        return create_ssl_context(cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise SetupError(f"kafka.ssl_*: cannot build the TLS context: {exc}") from None


def _secret(env_name: str | None, key: str) -> str:
    # Secrets come from the environment only; the message names the variable, never a value.
    if not env_name:
        raise SetupError(f"{key}: SASL needs the name of an environment variable holding the secret")
    value = os.environ.get(env_name)
    if value is None:
        raise SetupError(f"{key}: environment variable {env_name} is not set")
    return value


@dataclass(frozen=True)
class Topics:
    predictions: str
    ground_truth: str
    dead_letter: str
    state: str
    partitions: int
    # (side, topic) of each topic a model's input mapping names beyond the two above (docs/attach.md).
    extra: tuple[tuple[str, str], ...] = ()


def state_topic_name(kafka: KafkaConfig) -> str:
    return f"{kafka.group_id}-state"


async def ensure_topics(config: MonitorConfig) -> Topics:
    """Create what is missing, check what exists; returns the names and the common partition count."""
    kafka = config.kafka
    extra = tuple(pair for pair in config.sources()
                  if pair[1] not in (kafka.predictions_topic, kafka.ground_truth_topic))
    topics = Topics(kafka.predictions_topic, kafka.ground_truth_topic, kafka.dead_letter_topic,
                    state_topic_name(kafka), kafka.partitions, extra)
    names = (topics.predictions, topics.ground_truth, *(topic for _, topic in extra))
    admin = AIOKafkaAdminClient(client_id="mlmon-worker-admin", **client_options(kafka))
    await admin.start()
    try:
        existing = await _partition_counts(admin)
        inputs = {name: existing[name] for name in names if name in existing}
        # Existing input topics decide the count; new ones follow them, else the config.
        count = next(iter(inputs.values()), kafka.partitions)
        if len(set(inputs.values())) > 1:
            raise SetupError(
                f"input topics have different partition counts ({', '.join(f'{k!r}: {v}' for k, v in inputs.items())})"
                ": "
                "all must be keyed by prediction_id with the same partition count so each prediction meets its "
                "ground truth in one worker. Recreate one of them, or add partitions to the smaller one before "
                "producing."
            )
        if inputs and count != kafka.partitions:
            log.warning("input topics have %d partitions, config kafka.partitions says %d: using %d",
                        count, kafka.partitions, count)
        wanted = {
            topics.predictions: {},
            topics.ground_truth: {},
            **{topic: {} for _, topic in extra},
            topics.dead_letter: {},
            # The state changelog of input partition p in partition p (monitor.stream.changelog): small keyed
            # records under the broker's stock message limit; compaction keeps the newest of each key.
            topics.state: {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
                           "segment.ms": str(10 * 60 * 1000)},
        }
        missing = [NewTopic(name, count, kafka.replication_factor, topic_configs=cfg)
                   for name, cfg in wanted.items() if name not in existing]
        if missing:
            await _create(admin, missing)
            # New topics reach the metadata a moment after the create call returns.
            for _ in range(50):
                existing = await _partition_counts(admin)
                if all(t.name in existing for t in missing):
                    break
                await asyncio.sleep(0.1)
        state_count = existing.get(topics.state)
        if state_count != count:
            raise SetupError(
                f"state topic {topics.state!r} has {state_count} partitions but the input topics have {count}: "
                "it holds checkpoints of a differently partitioned stream. Use another kafka.group_id (a "
                "fresh start) or delete the state topic."
            )
        return Topics(topics.predictions, topics.ground_truth, topics.dead_letter, topics.state, count, extra)
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    # Metadata for all topics: asking for named ones could auto-create them with the broker's default
    # partition count.
    out = {}
    for t in await admin.describe_topics():
        if t["error_code"] == _NO_ERROR:
            out[t["topic"]] = len(t["partitions"])
    return out


async def _create(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> None:
    log.info("creating topics %s", ", ".join(f"{t.name} ({t.num_partitions} partitions)" for t in topics))
    response = await admin.create_topics(topics)
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        if code not in (_NO_ERROR, _TOPIC_ALREADY_EXISTS):  # another worker may have won the race
            message = entry[2] if len(entry) > 2 else ""
            raise SetupError(f"cannot create topic {name!r}: error {code} {message or ''}".strip())

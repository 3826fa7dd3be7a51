"""Client options from the config (security included) and the topics the worker needs.

The worker's exactness rests on one layout fact: partition p of every topic its join stage reads holds
every event of the same prediction ids. Input topics keyed by prediction_id with the same partition count
(and the default partitioner) give that directly. Otherwise (`kafka.repartition`: `always`, or `auto` with
different partition counts) the worker reads them through internal topics partitioned by prediction id
(monitor.stream.repartition). With `never` it refuses to start when the counts differ, rather than
silently joining nothing across mismatched partitions. Keying itself cannot be seen from the outside:
`auto` takes equal counts as keyed by prediction_id.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.helpers import create_ssl_context

from monitor.config import KafkaConfig, MonitorConfig
from monitor.stream.repartition import INTERNAL_MAX_MESSAGE_BYTES, SIDES, internal_topic, internal_topic_configs

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


# Kafka's default delete.retention.ms (24 h), assumed when the state topic's is not described.
DEFAULT_TOMBSTONE_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Topics:
    predictions: str
    ground_truth: str
    dead_letter: str
    state: str
    partitions: int  # of the topics the join stage reads, and of the state topic
    # (side, topic) of each topic a model's input mapping names beyond the two above (docs/attach.md).
    extra: tuple[tuple[str, str], ...] = ()
    # (side, internal topic) when the inputs are repartitioned: the join stage reads these instead.
    internal: tuple[tuple[str, str], ...] = ()
    # How long the state topic keeps a tombstone once its segment is compacted (delete.retention.ms): a
    # local copy of the changelog older than that may miss removals (monitor.stream.local_store).
    state_tombstone_ms: int = DEFAULT_TOMBSTONE_MS

    @property
    def sources(self) -> list[tuple[str, str]]:
        """(side, topic) of every input topic the config names."""
        return [("predictions", self.predictions), ("ground_truth", self.ground_truth), *self.extra]


def state_topic_name(kafka: KafkaConfig) -> str:
    return f"{kafka.group_id}-state"


_STATE_CONFIGS = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.ms": str(10 * 60 * 1000)}


async def ensure_topics(config: MonitorConfig) -> Topics:
    """Create what is missing, check what exists; returns the names and the join stage's partition count."""
    kafka = config.kafka
    extra = tuple(pair for pair in config.sources()
                  if pair[1] not in (kafka.predictions_topic, kafka.ground_truth_topic))
    state = state_topic_name(kafka)
    names = (kafka.predictions_topic, kafka.ground_truth_topic, *(topic for _, topic in extra))
    admin = AIOKafkaAdminClient(client_id="mlmon-worker-admin", **client_options(kafka))
    await admin.start()
    try:
        existing = await _partition_counts(admin)
        inputs = {name: existing[name] for name in names if name in existing}
        counts = ", ".join(f"{k!r}: {v}" for k, v in inputs.items())
        differ = len(set(inputs.values())) > 1
        if differ and kafka.repartition == "never":
            raise SetupError(
                f"input topics have different partition counts ({counts}) and kafka.repartition is never: "
                "all must be keyed by prediction_id with the same partition count so each prediction meets its "
                "ground truth in one worker. Set kafka.repartition to auto or always (the worker then copies "
                "them to internal topics partitioned by prediction id), or recreate one of them."
            )
        repartition = kafka.repartition == "always" or (differ and kafka.repartition == "auto")
        if repartition:
            internal = tuple((side, internal_topic(kafka, side)) for side in SIDES)
            # The join stage's count: the state's if it exists (a restart), else the config's.
            count = existing.get(state) or next((existing[t] for _, t in internal if t in existing),
                                                kafka.partitions)
            if differ:
                log.info("input topics have different partition counts (%s): reading them through %s",
                         counts, ", ".join(t for _, t in internal))
            # Source topics only need to exist; their partition counts do not matter.
            wanted: dict[str, dict[str, str]] = {name: {} for name in names}
            wanted.update({topic: internal_topic_configs() for _, topic in internal})
        else:
            internal = ()
            # Existing input topics decide the count; new ones follow them, else the config.
            count = next(iter(inputs.values()), kafka.partitions)
            if inputs and count != kafka.partitions:
                log.warning("input topics have %d partitions, config kafka.partitions says %d: using %d",
                            count, kafka.partitions, count)
            if kafka.repartition == "auto":
                log.info("input topics have equal partition counts: read directly, as keyed by prediction_id "
                         "(set kafka.repartition: always for topics keyed otherwise)")
            wanted = {name: {} for name in names}
        wanted[kafka.dead_letter_topic] = {}
        # The state changelog of join partition p in partition p (monitor.stream.changelog): small keyed
        # records under the broker's stock message limit; compaction keeps the newest of each key.
        wanted[state] = _STATE_CONFIGS
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
        for name in (state, *(t for _, t in internal)):
            if existing.get(name) != count:
                raise SetupError(
                    f"topic {name!r} has {existing.get(name)} partitions but the join stage reads {count}: "
                    "it holds data of a differently partitioned stream. Use another kafka.group_id (a fresh "
                    "start) or delete the topic."
                )
        tombstone_ms = await _check_configs(admin, kafka, state, [t for _, t in internal], names)
        return Topics(kafka.predictions_topic, kafka.ground_truth_topic, kafka.dead_letter_topic, state, count,
                      extra, internal, tombstone_ms)
    finally:
        await admin.close()


# Record-batch framing beyond the producer's batch size (the batch header and a record's own header).
_BATCH_ROOM = 1024


async def _check_configs(admin: AIOKafkaAdminClient, kafka: KafkaConfig, state: str, internal: list[str],
                         inputs: tuple[str, ...]) -> int:
    """The worker's own topics against what it writes to them. A topic created by the worker is right; one
    created or changed by hand, or a broker whose limits were lowered, would otherwise fail every state
    write or copy (counted and retried, but never succeeding), so every such problem is named at once,
    with the setting to change. Returns the state topic's delete.retention.ms."""
    from monitor.stream.changelog import MAX_BATCH_BYTES as STATE_BATCH_BYTES

    configs = await _topic_configs(admin, [state, kafka.dead_letter_topic, *internal, *inputs])
    unseen = [t for t in (state, *internal) if t not in configs]
    if unseen:
        log.warning("cannot read the configs of %s (DescribeConfigs refused?): their cleanup policy, retention "
                    "and size limits are not checked", ", ".join(map(repr, unseen)))
    problems = []
    have = configs.get(state, {"cleanup.policy": "compact"})
    policy = have.get("cleanup.policy", "")
    if "compact" not in policy.split(","):
        problems.append(f"topic {state!r} (the state changelog) has cleanup.policy={policy or '?'}: it must be "
                        "compact, or old entries and window blocks are deleted and a restore misses them "
                        f"(kafka-configs.sh --alter --entity-type topics --entity-name {state} --add-config "
                        "cleanup.policy=compact)")
    need = STATE_BATCH_BYTES + _BATCH_ROOM
    limit = int(have.get("max.message.bytes", need))
    if limit < need:
        problems.append(f"topic {state!r} (the state changelog) accepts record batches of up to {limit} bytes "
                        f"(max.message.bytes); state writes need {need}: raise it to at least {need}")
    for topic in internal:
        have = configs.get(topic, {})
        if have.get("retention.ms", "-1") != "-1":
            problems.append(f"topic {topic!r} (repartitioned copies) has retention.ms={have['retention.ms']}: it "
                            "must be -1 (copies carry their source's old timestamps, and the worker deletes "
                            "what its state covers itself)")
        limit = int(have.get("max.message.bytes", INTERNAL_MAX_MESSAGE_BYTES))
        if limit < INTERNAL_MAX_MESSAGE_BYTES:
            problems.append(f"topic {topic!r} (repartitioned copies) accepts record batches of up to {limit} "
                            f"bytes (max.message.bytes); copies need {INTERNAL_MAX_MESSAGE_BYTES}")
    if problems:
        raise SetupError("the worker's own topics cannot hold what it writes:\n- " + "\n- ".join(problems))
    dead = int(configs.get(kafka.dead_letter_topic, {}).get("max.message.bytes", 0) or 0)
    largest = max((int(configs.get(t, {}).get("max.message.bytes", 0) or 0) for t in inputs), default=0)
    if dead and dead < largest:
        log.warning("topic %r (dead letters) accepts records of up to %d bytes, the input topics up to %d: the "
                    "dead letter of an event larger than that is refused (logged); raise its max.message.bytes",
                    kafka.dead_letter_topic, dead, largest)
    return int(configs.get(state, {}).get("delete.retention.ms", DEFAULT_TOMBSTONE_MS))


async def _topic_configs(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, dict[str, str]]:
    """cleanup.policy, retention.ms, delete.retention.ms and max.message.bytes of each topic (the topic's own
    or the broker's default); a topic the broker does not describe (not authorised, gone) is left out."""
    wanted = {"cleanup.policy": None, "retention.ms": None, "delete.retention.ms": None, "max.message.bytes": None}
    resources = [ConfigResource(ConfigResourceType.TOPIC, t, dict(wanted)) for t in dict.fromkeys(topics)]
    out: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for error, _message, _kind, name, entries, *_ in response.resources:
            if error == _NO_ERROR:
                out[name] = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
    return out


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

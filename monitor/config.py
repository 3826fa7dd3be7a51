"""Typed configuration: YAML in, validated models out, every problem named by its key.

pydantic does the type checking; this module turns its errors into lines a person can act on
(`models[0].slos[1].target: 1.5 is not allowed: must be less than 1`) and adds the cross-field rules
(thresholds for unknown labels, SLOs on unknown labels, windows the bucketing cannot represent).
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import jmespath
import yaml
from jmespath.exceptions import JMESPathError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

MINUTE = 60
HOUR = 3600
DAY = 86400
# Windows up to this length are assembled from 1-minute buckets, longer ones from 1-hour buckets.
FINE_WINDOW_LIMIT = 6 * HOUR
# Join entries held in memory per model and partition engine unless join.memory_entries says otherwise:
# about 140 MB of them (about 280 bytes each). Pending predictions beyond it live on local disk.
DEFAULT_MEMORY_ENTRIES = 500_000

_UNITS = {"s": 1, "m": MINUTE, "h": HOUR, "d": DAY, "w": 7 * DAY}
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` holds one line per problem, each naming its key."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


def parse_duration(value: Any) -> int:
    """'90s', '5m', '72h', '30d', '2w' (or a whole number of seconds) -> seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 5m, 72h or 30d")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be positive")
        return value
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            seconds = int(m.group(1)) * _UNITS[m.group(2)]
            if seconds <= 0:
                raise ValueError("must be positive")
            return seconds
    raise ValueError("must be a duration such as 5m, 72h or 30d")


def format_duration(seconds: int) -> str:
    """Inverse of parse_duration using the largest exact unit: 300 -> '5m', 86400 -> '1d'."""
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Duration = Annotated[int, BeforeValidator(parse_duration), PlainSerializer(format_duration)]

_ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _env_name(value: str) -> str:
    # The *_env keys name a variable; a secret pasted here instead would be echoed by every "variable X is not
    # set" message. Portable variable names (POSIX: upper case, digits, _) rule out almost every real secret.
    if not _ENV_NAME_RE.match(value):
        raise ValueError("must be the name of an environment variable (A-Z, 0-9 and _) that holds the secret, "
                         "never the secret itself")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaConfig(_Strict):
    bootstrap_servers: str = "localhost:9092"
    predictions_topic: str = "predictions"
    ground_truth_topic: str = "ground-truth"
    dead_letter_topic: str = "monitor-dead-letter"
    group_id: str = "quality-monitor"
    partitions: int = Field(6, ge=1, le=10_000)
    replication_factor: int = Field(1, ge=1, le=10)
    max_message_bytes: int = Field(1 << 20, ge=256)
    # Whether the worker copies its inputs to internal topics partitioned by prediction id before joining
    # (monitor.stream.repartition). `auto` repartitions when the input topics' partition counts differ; it
    # cannot see how a topic is keyed, so topics keyed otherwise (user id, no key) need `always`.
    repartition: Literal["auto", "always", "never"] = "auto"
    # Security: the names of environment variables, never the secrets themselves.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username_env: EnvName | None = None
    sasl_password_env: EnvName | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @model_validator(mode="after")
    def _security_consistent(self) -> KafkaConfig:
        # A security key the protocol does not use would be ignored without a word: a TLS file with
        # PLAINTEXT means the operator believes the traffic is encrypted when it is not.
        problems = []
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        sasl = self.security_protocol.startswith("SASL")
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, key) is not None and not tls:
                problems.append(f"{key} is set but security_protocol {self.security_protocol} does not use TLS "
                                "(use SSL or SASL_SSL)")
        for key in ("sasl_mechanism", "sasl_username_env", "sasl_password_env"):
            if getattr(self, key) is not None and not sasl:
                problems.append(f"{key} is set but security_protocol {self.security_protocol} does not use SASL "
                                "(use SASL_SSL or SASL_PLAINTEXT)")
            elif getattr(self, key) is None and sasl:
                problems.append(f"{key} is required with security_protocol {self.security_protocol}")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            problems.append("ssl_keyfile needs ssl_certfile (the client certificate it belongs to)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class JoinConfig(_Strict):
    ttl: Duration = 72 * HOUR
    # Beyond this many pending events per model the oldest are expired early (counted), so a flood of
    # unmatched ids cannot exhaust memory.
    max_pending: int = Field(2_000_000, ge=1)
    # Events timestamped more than this ahead of the wall clock are rejected (timestamp_out_of_range):
    # one event from the far future would otherwise move the event-time watermark there, expiring every
    # pending join and dropping every window block. None (the default) trusts producers' clocks.
    max_clock_skew: Duration | None = None
    # Join entries kept in memory per model and partition engine (native core); the rest spill to an
    # embedded store on local disk, so memory stays flat however many are pending (a spilled entry costs
    # a random disk read when its ground truth arrives, see docs/benchmarks.md). None: all in memory.
    # Unset, it is DEFAULT_MEMORY_ENTRIES, or join.max_pending when that is lower.
    memory_entries: int | None = Field(DEFAULT_MEMORY_ENTRIES, ge=1)
    # Where the stores go (a fresh directory per table, removed with it): the store is a cache of the
    # worker's changelog, never read back after a restart. The worker also keeps its local copies of the
    # changelog there (monitor.stream.local_store). None: the system temp directory, and for the worker
    # WORKER_STATE_DIR.
    state_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_budget_within_cap(cls, data: Any) -> Any:
        # Only a budget the config sets is refused above join.max_pending; the default yields to it.
        if isinstance(data, dict) and "memory_entries" not in data:
            cap = data.get("max_pending", cls.model_fields["max_pending"].default)
            if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1:
                data = {**data, "memory_entries": min(DEFAULT_MEMORY_ENTRIES, cap)}
        return data

    @model_validator(mode="after")
    def _budget_within_cap(self) -> JoinConfig:
        if self.memory_entries is not None and self.memory_entries > self.max_pending:
            raise ValueError(f"join.memory_entries ({self.memory_entries}) is above join.max_pending "
                             f"({self.max_pending}): the cap evicts before the store is ever used; lower "
                             "join.memory_entries or raise join.max_pending")
        return self

    def for_worker(self, state_dir: str | None) -> JoinConfig:
        """The worker's join settings: the state directory `--state-dir` when given, else join.state_dir,
        else WORKER_STATE_DIR (one fixed place, so a restarted worker finds its local copies there)."""
        return self.model_copy(update={"state_dir": state_dir or self.state_dir or WORKER_STATE_DIR})


# As Kafka Streams' state.dir (`<java.io.tmpdir>/kafka-streams`): a worker restarted on the same machine
# reuses what it kept there without being told where.
WORKER_STATE_DIR = str(Path(tempfile.gettempdir()) / "mlmon-state")


class FeaturesConfig(_Strict):
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _disjoint(self) -> FeaturesConfig:
        both = sorted(set(self.numeric) & set(self.categorical))
        if both:
            raise ValueError(f"features {both} are listed as both numeric and categorical")
        for group in (self.numeric, self.categorical):
            dupes = sorted({f for f in group if group.count(f) > 1})
            if dupes:
                raise ValueError(f"features {dupes} are listed twice")
        return self

    @property
    def all(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class DriftConfig(_Strict):
    """PSI severity bands (docs/semantics.md) and the sample-size guard."""

    moderate: float = Field(0.1, gt=0)
    significant: float = Field(0.25, gt=0)
    # PSI is not reported for a window with fewer predictions than this: with n events and k bins the
    # PSI of an unchanged distribution has expected value about (k-1)/n, so 10 bins need a few hundred.
    min_samples: int = Field(200, ge=1)
    missing_ratio_alert: float = Field(0.05, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> DriftConfig:
        if self.significant < self.moderate:
            raise ValueError("significant must be >= moderate")
        return self


class SLOConfig(_Strict):
    label: str
    objective: Literal["recall", "precision"]
    target: float = Field(gt=0, lt=1)
    period: Duration = 30 * DAY
    severity: Literal["page", "ticket"] = "ticket"
    # The name of one of the model's segments: the SLO is also held for each value of that segment, with
    # one burn alert per value (docs/alerting.md, Per-segment SLOs). None: the whole model only.
    per_segment: str | None = None

    @property
    def name(self) -> str:
        return f"{self.label}-{self.objective}"


# --- input mapping (docs/attach.md): how to read a model's logs when they are not in the native shape ------
# Expressions are JMESPath, compiled once here; the decoders look them up with `compiled_expression`.
_COMPILED: dict[str, Any] = {}


def _expression(value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a JMESPath expression")
    if value not in _COMPILED:
        try:
            _COMPILED[value] = jmespath.compile(value)
        except JMESPathError as exc:
            raise ValueError(f"invalid JMESPath expression: {str(exc).splitlines()[0]}") from None
    return value


Expression = Annotated[str, AfterValidator(_expression)]


def compiled_expression(expression: str) -> Any:
    """The compiled form of a validated expression (compiled again only if it never went through a config)."""
    found = _COMPILED.get(expression)
    return found if found is not None else _COMPILED.setdefault(expression, jmespath.compile(expression))


PathStep = str | int


def simple_path(expression: str) -> tuple[PathStep, ...] | None:
    """The steps of an expression that only walks the document, or None.

    A simple path is a chain of field names (`a.b`, `"quoted name"`) and non-negative list indexes
    (`outputs[0].data`); steps are str (an object key) and int (a list index). Evaluating it is: start at
    the body, for each step take that key of an object or that index of a list, and stop with null as soon
    as a step does not apply (a key of a non-object, an index of a non-list, absent key, index past the
    end), exactly as JMESPath does. Everything else (literals, projections, functions, negative indexes,
    filters) is evaluated by the jmespath library. The native decoder's fast path takes exactly these.
    """
    steps: list[PathStep] = []

    def walk(node: dict[str, Any]) -> bool:
        kind = node["type"]
        if kind == "field":
            steps.append(node["value"])
            return True
        if kind in ("subexpression", "index_expression"):  # children apply in order, each to the last result
            return all(walk(child) for child in node["children"])
        if kind == "index" and isinstance(node["value"], int) and node["value"] >= 0:
            steps.append(node["value"])
            return True
        return False

    return tuple(steps) if walk(compiled_expression(expression).parsed) else None


def literal_value(expression: str) -> tuple[bool, Any]:
    """(True, value) for a JMESPath literal (`'moderation'`, `` `"moderation"` ``), else (False, None)."""
    node = compiled_expression(expression).parsed
    return (True, node["value"]) if node["type"] == "literal" else (False, None)


class PredictionFields(_Strict):
    """Where each native prediction field is found in the message; a key left out reads the native field."""

    model: Expression = "model"
    prediction_id: Expression = "prediction_id"
    timestamp: Expression = "timestamp"
    model_version: Expression = "model_version"
    # An object {label: score}; a list aligned with `score_labels` (or with the configured labels);
    # a single number when the model has one label.
    scores: Expression = "scores"
    score_labels: Expression | None = None
    predicted: Expression = "predicted"
    # One expression giving an object, or one expression per feature.
    features: Expression | dict[str, Expression] = "features"
    latency_ms: Expression = "latency_ms"


class GroundTruthFields(_Strict):
    model: Expression = "model"
    prediction_id: Expression = "prediction_id"
    timestamp: Expression = "timestamp"
    # A list of labels (full), an object label -> 0/1 (partial), one class name, or a 0/1 list aligned
    # with the configured labels.
    labels: Expression = "labels"


# What the expressions see: the message body (`none`); a CloudEvent with its attributes at the top and
# the payload in `data`, from ce_* headers (binary mode) or the body (structured mode) (`cloudevents`);
# or the Kafka record as {key, headers, timestamp, value} (`kafka`).
Envelope = Literal["none", "cloudevents", "kafka"]
# How the message value is decoded: JSON; or, for Seldon Core 2 topics, JSON when it parses as JSON and
# else a protobuf OIP ModelInferResponse (needs the `protobuf` package: pip install mlmon[seldon]).
Payload = Literal["json", "oip-protobuf"]


class PredictionInput(_Strict):
    topic: str | None = Field(None, min_length=1, max_length=249)
    envelope: Envelope = "none"
    payload: Payload = "json"
    # Messages for which this is false or null are not events of this side and are skipped (e.g. the
    # request half of a request/response log).
    when: Expression | None = None
    fields: PredictionFields = Field(default_factory=PredictionFields)


class GroundTruthInput(_Strict):
    topic: str | None = Field(None, min_length=1, max_length=249)
    envelope: Envelope = "none"
    payload: Payload = "json"
    when: Expression | None = None
    fields: GroundTruthFields = Field(default_factory=GroundTruthFields)


class ModelInput(_Strict):
    predictions: PredictionInput | None = None
    ground_truth: GroundTruthInput | None = None


class SegmentConfig(_Strict):
    """A named dimension the figures are broken down by (docs/configuration.md, segments)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # Where the value is read: a key of the event's `features` object, or a JMESPath expression over the
    # event (for a mapped input: over the message body the mapping reads). Exactly one of the two.
    feature: str | None = Field(None, min_length=1)
    field: Expression | None = None
    # Distinct values kept per segment; the rest are counted as "_other", so the series stay bounded.
    max_values: int = Field(20, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_source(self) -> SegmentConfig:
        if (self.feature is None) == (self.field is None):
            raise ValueError(f"segment {self.name!r}: set exactly one of feature and field")
        return self


class ModelConfig(_Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    task: Literal["multilabel", "multiclass", "binary"] = "multilabel"
    labels: list[str] = Field(min_length=1)
    threshold: float = Field(0.5, ge=0, le=1)
    thresholds: dict[str, float] = Field(default_factory=dict)
    reference: Path | None = None
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    min_events: int = Field(50, ge=1)
    slos: list[SLOConfig] = Field(default_factory=list)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    # Label pairs are tracked for co-occurrence drift among at most this many labels (the first ones
    # listed): pairs grow quadratically.
    cooccurrence_max_labels: int = Field(64, ge=0, le=512)
    # Per-label detail series (calibration bins) only for these labels; None means all.
    detail_labels: list[str] | None = None
    latency_slo_seconds: float = Field(0.5, gt=0)
    # Every model version is a label value on every series: past this many, further versions are counted
    # together as version "_other", so a caller sending ad-hoc versions cannot explode /metrics.
    max_versions: int = Field(20, ge=1, le=1000)
    # How this model's events are read when they are not in the native shape (docs/attach.md).
    input: ModelInput | None = None
    # Dimensions the window figures are also reported by (mlmon_segment_* series).
    segments: list[SegmentConfig] = Field(default_factory=list, max_length=8)

    @field_validator("segments")
    @classmethod
    def _unique_segments(cls, segments: list[SegmentConfig]) -> list[SegmentConfig]:
        names = [s.name for s in segments]
        dupes = sorted({x for x in names if names.count(x) > 1})
        if dupes:
            raise ValueError(f"segments {dupes} are named twice")
        return segments

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"labels {dupes} are listed twice")
        bad = [x for x in labels if not x or len(x) > 128]
        if bad:
            raise ValueError("every label must be a non-empty string of at most 128 characters")
        return labels

    @model_validator(mode="after")
    def _cross_checks(self) -> ModelConfig:
        problems = model_problems(self.task, self.labels, self.thresholds, list(enumerate(self.slos)),
                                  self.detail_labels, [s.name for s in self.segments])
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def side_input(self, side: str) -> PredictionInput | GroundTruthInput | None:
        """The mapping of one side ("predictions" | "ground_truth"), or None for the native shape."""
        if self.input is None:
            return None
        return self.input.predictions if side == "predictions" else self.input.ground_truth

    def threshold_for(self, label: str) -> float:
        return self.thresholds.get(label, self.threshold)


def model_problems(task: str | None, labels: list[str] | None, thresholds: dict[str, Any] | None,
                   slos: list[tuple[int, SLOConfig]], detail_labels: list[str] | None,
                   segments: list[str] | None = None) -> list[str]:
    """A model's cross-field rules, on whatever parts of it are valid (check-config runs them even when
    other parts are not, so one run names every problem). `segments`: the names of the model's segments
    (None when unknown: per_segment is not checked)."""
    problems = []
    if segments is not None:
        for i, slo in slos:
            if slo.per_segment is not None and slo.per_segment not in segments:
                problems.append(f"slos[{i}].per_segment: {slo.per_segment!r} is not one of the segments "
                                f"{segments} (models[].segments names them)")
    if labels is not None and task == "binary" and len(labels) != 1:
        problems.append(f"task binary needs exactly one label, got {len(labels)}")
    if labels is not None and task == "multiclass" and len(labels) < 2:
        problems.append("task multiclass needs at least two labels (classes)")
    if labels is None:
        return problems
    known = set(labels)
    for label, value in (thresholds or {}).items():
        if label not in known:
            problems.append(f"thresholds: {label!r} is not one of the labels {labels}")
        elif isinstance(value, int | float) and not 0 <= value <= 1:
            problems.append(f"thresholds.{label}: {value} is not allowed: must be in [0, 1]")
    for i, slo in slos:
        if slo.label not in known:
            problems.append(f"slos[{i}].label: {slo.label!r} is not one of the labels {labels}")
    names = [s.name for _, s in slos]
    if len(set(names)) != len(names):
        problems.append("slos: two SLOs share a label and objective")
    for label in detail_labels or []:
        if label not in known:
            problems.append(f"detail_labels: {label!r} is not one of the labels {labels}")
    return problems


def top_problems(windows: list[int] | None, names: list[str], slos: list[tuple[int, int, SLOConfig]]) -> list[str]:
    """The config's cross-model rules, on whatever parts of it are valid (see model_problems)."""
    problems = []
    if len(set(names)) != len(names):
        problems.append("models: two models share a name")
    for i, j, slo in slos:
        if windows is not None and slo.period not in windows:
            problems.append(
                f"models[{i}].slos[{j}].period: {format_duration(slo.period)} must be one of the "
                f"windows {[format_duration(w) for w in windows]}"
            )
    return problems


class RetrainingConfig(_Strict):
    url: str = Field(pattern=r"^https?://")
    secret_env: EnvName = "RETRAIN_WEBHOOK_SECRET"
    cooldown: Duration = 6 * HOUR
    # Optional: HMAC secret Alertmanager's webhooks must carry (header X-Mlmon-Signature).
    inbound_secret_env: EnvName | None = None
    outbox: Path | None = None


class MetricsConfig(_Strict):
    bind: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class StoreConfig(_Strict):
    kind: Literal["memory", "rocksdb"] = "memory"
    data_dir: Path | None = None


class MonitorConfig(_Strict):
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    join: JoinConfig = Field(default_factory=JoinConfig)
    windows: list[Duration] = Field(
        default_factory=lambda: [5 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR, 6 * HOUR, DAY, 3 * DAY, 30 * DAY]
    )
    models: list[ModelConfig] = Field(min_length=1)
    retraining: RetrainingConfig | None = None
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)

    @field_validator("windows")
    @classmethod
    def _windows(cls, windows: list[int]) -> list[int]:
        if not windows:
            raise ValueError("at least one window is needed")
        for w in windows:
            unit = MINUTE if w <= FINE_WINDOW_LIMIT else HOUR
            if w % unit:
                raise ValueError(
                    f"window {format_duration(w)} is not a whole number of "
                    f"{'minutes' if unit == MINUTE else 'hours'} (windows up to 6h use 1-minute buckets, "
                    "longer ones 1-hour buckets)"
                )
        if len(set(windows)) != len(windows):
            raise ValueError("windows are listed twice")
        return sorted(windows)

    @model_validator(mode="after")
    def _cross_checks(self) -> MonitorConfig:
        problems = top_problems(self.windows, [m.name for m in self.models],
                                [(i, j, slo) for i, m in enumerate(self.models) for j, slo in enumerate(m.slos)])
        problems += self._input_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _input_problems(self) -> list[str]:
        problems = []
        role_of: dict[str, str] = {}
        for role, topic in self.sources():
            if role_of.setdefault(topic, role) != role:
                problems.append(f"topic {topic!r} is read both as predictions and as ground truth")
        for i, model in enumerate(self.models):
            for side in ("predictions", "ground_truth"):
                spec = model.side_input(side)
                if spec is None:
                    continue
                key = f"models[{i}].input.{side}.fields.model"
                topic = self.topic_of(model, side)
                for other in self.models:
                    theirs = other.side_input(side)
                    if other is not model and self.topic_of(other, side) == topic and \
                            (theirs.envelope if theirs is not None else "none") != spec.envelope:
                        problems.append(f"models[{i}].input.{side}.envelope: {other.name!r} reads topic {topic!r} "
                                        "with another envelope (one topic, one envelope)")
                        break
                if spec.payload == "oip-protobuf" and importlib.util.find_spec("google.protobuf") is None:
                    problems.append(f"models[{i}].input.{side}.payload: oip-protobuf needs the protobuf package "
                                    "(pip install 'mlmon[seldon]')")
                is_literal, value = literal_value(spec.fields.model)
                if not is_literal:
                    continue
                if value != model.name:
                    problems.append(f"{key}: the literal {value!r} must be this model's name {model.name!r}")
                others = [m.name for m in self.models if m is not model and self.topic_of(m, side) == topic]
                if others:
                    problems.append(f"{key}: a literal model name claims every message of topic {topic!r}, "
                                    f"which models {others} read too (give this model its own topic, or read "
                                    "the model name from the message)")
        return problems

    def topic_of(self, model: ModelConfig, side: str) -> str:
        """The Kafka topic (or replay input) that carries `side` ("predictions" | "ground_truth") for `model`."""
        spec = model.side_input(side)
        if spec is not None and spec.topic is not None:
            return spec.topic
        return self.kafka.predictions_topic if side == "predictions" else self.kafka.ground_truth_topic

    def sources(self) -> list[tuple[str, str]]:
        """Every (side, topic) the models read: the two default topics first, then each mapped topic once."""
        out = [("predictions", self.kafka.predictions_topic), ("ground_truth", self.kafka.ground_truth_topic)]
        for m in self.models:
            for side in ("predictions", "ground_truth"):
                pair = (side, self.topic_of(m, side))
                if pair not in out:
                    out.append(pair)
        return out

    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None

    @property
    def window_names(self) -> list[str]:
        return [format_duration(w) for w in self.windows]


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-", "constrained-", "lax-")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe(err: dict[str, Any]) -> str:
    key = _loc(tuple(p for p in err["loc"] if not str(p).startswith("function-")))
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key (check the spelling; see docs/configuration.md)"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    if key.endswith("_env"):  # whatever was written there may be a misplaced secret: never echo it
        return f"{key}: {msg}"
    value = err.get("input")
    if isinstance(value, dict | list):
        return f"{key}: {msg}"
    if isinstance(value, str) and "://" in value:  # a URL's user-info and query may hold credentials
        value = _URL_SECRETS_RE.sub(r"\1***@", value.split("?", 1)[0])
    return f"{key}: {value!r} is not allowed: {msg}"


def _one_per_line(err: Any) -> list[str]:
    """A validator that found several problems joins them with '; ': give each its own line and key."""
    line = _describe(err)
    if err["type"] != "value_error":
        return [line]
    key, _, body = line.partition(": ")
    return [f"{key}: {part}" for part in body.split("; ")]


_URL_SECRETS_RE = re.compile(r"(://)[^/@\s]*@")


def parse_config(data: Any, base_dir: Path | None = None, source: str | None = None) -> MonitorConfig:
    """Validate an already-parsed mapping; relative reference paths resolve against base_dir."""
    if not isinstance(data, dict):
        raise ConfigError(["(top level): the configuration must be a mapping"], source)
    try:
        cfg = MonitorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([line for e in exc.errors() for line in _one_per_line(e)], source) from None
    if base_dir is not None:
        kafka = cfg.kafka
        tls_files = {key: str(base_dir / value) for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
                     if (value := getattr(kafka, key)) is not None and not Path(value).is_absolute()}
        if tls_files:
            cfg = cfg.model_copy(update={"kafka": kafka.model_copy(update=tls_files)})
        models = [
            m.model_copy(update={"reference": base_dir / m.reference})
            if m.reference is not None and not m.reference.is_absolute()
            else m
            for m in cfg.models
        ]
        cfg = cfg.model_copy(update={"models": models})
    return cfg


def load_config(path: str | Path) -> MonitorConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror}"], str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from None
    return parse_config(data, base_dir=path.resolve().parent, source=str(path))


def check_config(path: str | Path) -> list[str]:
    """Every problem with the config file in one list, including references that are missing or unusable
    (checked exactly as replay and the worker load them); empty when usable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [f"cannot read the file: {exc.strerror}"]
    except UnicodeDecodeError:
        return ["the file is not UTF-8 text"]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"not valid YAML: {exc}"]
    try:
        cfg: MonitorConfig | None = parse_config(data, base_dir=path.resolve().parent, source=str(path))
        problems: list[str] = []
    except ConfigError as exc:
        cfg, problems = None, list(exc.problems)
        # pydantic runs a model's cross-field rules only once all its fields are valid: run them on the
        # valid parts, so the person fixing the file sees every problem now rather than one stage per run.
        problems += [p for p in _partial_problems(data) if not _reported(p, problems)]
    return problems + _reference_problems(data, cfg, path.resolve().parent)


def _reported(problem: str, problems: list[str]) -> bool:
    """pydantic joins a model's cross-field problems into one line behind the model's key."""
    key, _, body = problem.partition(": ")
    return any(problem in seen or (seen.startswith(key + ": ") and body in seen) for seen in problems)


def _valid(annotation: Any, value: Any) -> Any:
    try:
        return TypeAdapter(annotation).validate_python(value)
    except ValidationError:
        return None


def _partial_problems(data: Any) -> list[str]:
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        return []
    problems = []
    windows: list[int] | None = None
    if isinstance(data.get("windows"), list):
        # The windows that are valid on their own: an SLO period is checked against those.
        windows = [w for item in data["windows"] if (w := _valid(Duration, item)) is not None]
    elif "windows" not in data:
        windows = MonitorConfig.model_fields["windows"].get_default(call_default_factory=True)
    names, all_slos = [], []
    for i, raw in enumerate(data["models"]):
        if not isinstance(raw, dict):
            continue
        labels = _valid(list[str], raw.get("labels"))
        slos = [(j, s) for j, item in enumerate(raw.get("slos") or [] if isinstance(raw.get("slos"), list) else [])
                if (s := _valid(SLOConfig, item)) is not None]
        task = raw.get("task", "multilabel")
        thresholds = _valid(dict[str, Any], raw.get("thresholds", {}))
        detail = _valid(list[str] | None, raw.get("detail_labels"))
        problems += [f"models[{i}]: {p}" for p in model_problems(task if isinstance(task, str) else None, labels,
                                                                 thresholds, slos, detail, _segment_names(raw))]
        if isinstance(raw.get("name"), str):
            names.append(raw["name"])
        all_slos += [(i, j, s) for j, s in slos]
    return problems + top_problems(windows, names, all_slos)


def _segment_names(raw: dict[str, Any]) -> list[str] | None:
    """The names a model's segments give themselves, even when another key of a segment is invalid (that
    one is reported on its own; an SLO naming it is not wrong too)."""
    segments = raw.get("segments", [])
    if not isinstance(segments, list):
        return None
    return [s["name"] for s in segments if isinstance(s, dict) and isinstance(s.get("name"), str)]


_REFERENCE_KEYS = ("name", "task", "labels", "threshold", "thresholds", "reference", "features",
                   "cooccurrence_max_labels")


def _reference_part(raw: Any) -> Any:
    """What loading a model's reference depends on; without the rest, a model with a broken SLO still
    gets its reference checked."""
    if not isinstance(raw, dict):
        return raw
    part = {k: raw[k] for k in _REFERENCE_KEYS if k in raw}
    if _valid(ModelConfig, part) is None:
        part.pop("thresholds", None)
    return part


def _reference_problems(data: Any, cfg: MonitorConfig | None, base_dir: Path) -> list[str]:
    """Each model's reference loaded as replay loads it: missing, unreadable or malformed files, named."""
    from monitor.reference import load_reference  # the reference module imports this one

    if cfg is not None:
        models = list(enumerate(cfg.models))
        config = cfg
    else:
        # Models that are valid on their own still get their references checked.
        raw_models = data.get("models") if isinstance(data, dict) else None
        models = [(i, m) for i, raw in enumerate(raw_models if isinstance(raw_models, list) else [])
                  if (m := _valid(ModelConfig, _reference_part(raw))) is not None]
        models = [(i, m.model_copy(update={"reference": base_dir / m.reference}))
                  if m.reference is not None and not m.reference.is_absolute() else (i, m) for i, m in models]
        if not models:
            return []
        config = MonitorConfig.model_construct(models=[m for _, m in models])  # defaults for the rest
    problems = []
    for i, m in models:
        try:
            load_reference(config, m)
        except ConfigError as exc:
            problems += [p.replace(f"models[{m.name}]", f"models[{i}]", 1) for p in exc.problems]
    return problems

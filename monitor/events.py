"""Decoding and validation of prediction and ground-truth events (docs/events.md).

One `Decoder` per config. `decode_prediction` / `decode_ground_truth` take the raw message bytes and
return a compact, validated event or raise `InvalidEvent` with a machine-readable reason (one of
conventions.Reason) and a detail that names the field but never echoes payload text, so rejections can
be logged and counted without leaking inputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
import orjson

from monitor.config import ModelConfig, MonitorConfig
from monitor.conventions import Reason
from monitor.segments import SegmentReader

E = TypeVar("E")

MAX_ID_LENGTH = 256
MAX_VERSION_LENGTH = 64
EPOCH_2000 = 946_684_800.0
EPOCH_2100 = 4_102_444_800.0
# Above this an epoch number can only be milliseconds (1e11 seconds is the year 5138).
_MILLIS_CUTOFF = 1e11
_FEATURES_MAX = 1024


class InvalidEvent(Exception):
    """A rejected event: `reason` is a conventions.Reason value, `detail` is safe to log.

    `field` is the native event field at fault (None when the message as a whole is, e.g. invalid JSON);
    `expression` the mapping expression that read it, for events of a mapped input (docs/attach.md).
    The reason is what metrics count; field and expression only reach dead-letter headers and messages.
    """

    def __init__(self, reason: str, detail: str, model: str | None = None, field: str | None = None,
                 expression: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.model = model
        self.field = field if field is not None else _field_of(detail)
        self.expression = expression

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


_TOP_FIELDS = ("prediction_id", "model_version", "model", "timestamp", "scores", "predicted", "features",
               "latency_ms", "labels")


def _field_of(detail: str) -> str | None:
    """The native field a detail starts with ("scores.spam is missing" -> "scores")."""
    head = detail.split(" ", 1)[0].split(".", 1)[0]
    return head if head in _TOP_FIELDS else None


@dataclass(slots=True)
class Prediction:
    prediction_id: str
    model: str
    version: str
    ts: float
    scores: np.ndarray  # float64[L], in config label order
    predicted: np.ndarray  # bool[L]
    features: dict[str, Any] | None
    latency_s: float | None
    ignored_scores: int
    # One value per models[].segments entry (monitor.segments), in config order; () without segments.
    segments: tuple[str, ...] = ()


@dataclass(slots=True)
class GroundTruth:
    prediction_id: str
    model: str
    ts: float
    known: np.ndarray  # bool[L]: labels whose truth this event states
    actual: np.ndarray  # bool[L]: truth where known (False elsewhere)
    full: bool  # every configured label known


def parse_json(raw: bytes, max_bytes: int) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise InvalidEvent(Reason.OVERSIZED, f"message of {len(raw)} bytes exceeds {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = _parse_json_slow(raw)
    if not isinstance(obj, dict):
        raise InvalidEvent(Reason.NOT_AN_OBJECT, "the event must be a JSON object")
    return obj


def _parse_json_slow(raw: bytes) -> Any:
    """Only for what orjson refused: tell invalid UTF-8 apart, and let NaN/Infinity literals through so
    they are rejected as non-finite scores rather than as broken JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent(Reason.INVALID_UTF8, "the message is not valid UTF-8") from None
    if "NaN" in text or "Infinity" in text:
        try:
            obj = json.loads(text, parse_int=_parse_int)
            # A \ud800-style escape makes a str that is not Unicode: orjson refuses it, json accepts it,
            # and as an id or a version it would later break every checkpoint and every scrape.
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
            return obj
        except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
            pass
    raise InvalidEvent(Reason.INVALID_JSON, "the message is not valid JSON")


def _parse_int(digits: str) -> int | float:
    # As orjson does beyond 64 bits: a float (inf past 1e308), so a huge integer is rejected as not finite
    # or out of range instead of raising OverflowError in math.isfinite / float().
    if len(digits) > 19:
        return float(digits)
    value = int(digits)
    return value if -(1 << 63) <= value < (1 << 64) else float(value)


def parse_timestamp(value: Any, field: str = "timestamp") -> float:
    """RFC 3339 string, or epoch seconds / milliseconds, to epoch seconds within 2000-2100."""
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent(Reason.BAD_TIMESTAMP, f"{field} is not RFC 3339") from None
        if dt.tzinfo is None:
            raise InvalidEvent(Reason.BAD_TIMESTAMP, f"{field} has no UTC offset (RFC 3339 needs one)")
        ts = dt.timestamp()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        ts = float(value)
        if not math.isfinite(ts):
            raise InvalidEvent(Reason.BAD_TIMESTAMP, f"{field} is not finite")
        if ts >= _MILLIS_CUTOFF:
            ts /= 1000.0
    elif value is None:
        raise InvalidEvent(Reason.MISSING_FIELD, f"{field} is missing")
    else:
        raise InvalidEvent(Reason.WRONG_TYPE, f"{field} must be a string or a number")
    if not EPOCH_2000 <= ts < EPOCH_2100:
        raise InvalidEvent(Reason.TIMESTAMP_OUT_OF_RANGE, f"{field} is outside the years 2000-2100")
    return ts


def _prediction_id(obj: dict[str, Any]) -> str:
    pid = obj.get("prediction_id")
    if pid is None:
        raise InvalidEvent(Reason.MISSING_FIELD, "prediction_id is missing")
    if not isinstance(pid, str):
        raise InvalidEvent(Reason.WRONG_TYPE, "prediction_id must be a string")
    if not 0 < len(pid) <= MAX_ID_LENGTH:
        raise InvalidEvent(Reason.INVALID_PREDICTION_ID, f"prediction_id must have 1-{MAX_ID_LENGTH} characters")
    return pid


class _ModelSchema:
    """Per-model constants precomputed once, so the per-event path is dict lookups and comparisons."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.labels = list(cfg.labels)
        self.index = {label: i for i, label in enumerate(cfg.labels)}
        self.thresholds = np.array([cfg.threshold_for(x) for x in cfg.labels], dtype=np.float64)
        self.multiclass = cfg.task == "multiclass"
        self.numeric = set(cfg.features.numeric)
        self.label_set = frozenset(cfg.labels)
        self.all_known = np.ones(len(cfg.labels), dtype=bool)
        self.all_known.setflags(write=False)
        self.categorical = set(cfg.features.categorical)
        self.segments = SegmentReader(cfg)


class Decoder:
    def __init__(self, config: MonitorConfig) -> None:
        self.max_bytes = config.kafka.max_message_bytes
        self.schemas = {m.name: _ModelSchema(m) for m in config.models}

    def _schema(self, obj: dict[str, Any]) -> _ModelSchema:
        model = obj.get("model")
        if model is None:
            raise InvalidEvent(Reason.MISSING_FIELD, "model is missing")
        if not isinstance(model, str):
            raise InvalidEvent(Reason.WRONG_TYPE, "model must be a string")
        schema = self.schemas.get(model)
        if schema is None:
            raise InvalidEvent(Reason.UNKNOWN_MODEL, "model is not configured")
        return schema

    def decode_prediction(self, raw: bytes) -> Prediction:
        return self._decode(raw, self._prediction)

    def decode_ground_truth(self, raw: bytes) -> GroundTruth:
        return self._decode(raw, self._ground_truth)

    def decode_or_invalid(self, raw: bytes, ground_truth: bool) -> Prediction | GroundTruth | InvalidEvent:
        """The event, or its rejection as a value (for batch decoders that collect both)."""
        try:
            return self.decode_ground_truth(raw) if ground_truth else self.decode_prediction(raw)
        except InvalidEvent as exc:
            return exc

    def decode_object(self, obj: dict[str, Any], ground_truth: bool) -> Prediction | GroundTruth:
        """Validate an event already parsed (and, for a mapped input, already put in the native shape)."""
        return self._validate(obj, self._ground_truth if ground_truth else self._prediction)

    def _decode(self, raw: bytes, build: Callable[[dict[str, Any], str, _ModelSchema], E]) -> E:
        return self._validate(parse_json(raw, self.max_bytes), build)

    def _validate(self, obj: dict[str, Any], build: Callable[[dict[str, Any], str, _ModelSchema], E]) -> E:
        pid = _prediction_id(obj)
        schema = self._schema(obj)
        try:
            return build(obj, pid, schema)
        except InvalidEvent as exc:
            exc.model = schema.cfg.name  # rejections after the model is known are counted for it
            raise

    def _prediction(self, obj: dict[str, Any], pid: str, schema: _ModelSchema) -> Prediction:
        version = obj.get("model_version", "unknown")
        if not isinstance(version, str):
            raise InvalidEvent(Reason.WRONG_TYPE, "model_version must be a string")
        if not 0 < len(version) <= MAX_VERSION_LENGTH:
            raise InvalidEvent(Reason.WRONG_TYPE, f"model_version must have 1-{MAX_VERSION_LENGTH} characters")
        ts = parse_timestamp(obj.get("timestamp"))

        raw_scores = obj.get("scores")
        if raw_scores is None:
            raise InvalidEvent(Reason.MISSING_FIELD, "scores is missing")
        if not isinstance(raw_scores, dict):
            raise InvalidEvent(Reason.WRONG_TYPE, "scores must be an object of label -> score")
        scores = np.empty(len(schema.labels), dtype=np.float64)
        for i, label in enumerate(schema.labels):
            value = raw_scores.get(label)
            if value is None:
                raise InvalidEvent(Reason.MISSING_SCORE, f"scores.{label} is missing")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidEvent(Reason.WRONG_TYPE, f"scores.{label} must be a number")
            if not math.isfinite(value):
                raise InvalidEvent(Reason.SCORE_NOT_FINITE, f"scores.{label} is not finite")
            if not 0.0 <= value <= 1.0:
                raise InvalidEvent(Reason.SCORE_OUT_OF_RANGE, f"scores.{label} is outside [0, 1]")
            scores[i] = value
        ignored = len(raw_scores) - len(schema.labels)

        served = obj.get("predicted")
        if served is None:
            if schema.multiclass:
                predicted = np.zeros(len(schema.labels), dtype=bool)
                predicted[int(np.argmax(scores))] = True
            else:
                predicted = scores >= schema.thresholds
        else:
            predicted = self._label_set(served, schema, "predicted")
            if schema.multiclass and int(predicted.sum()) != 1:
                raise InvalidEvent(Reason.INVALID_LABELS, "predicted must hold exactly one class")

        features = obj.get("features")
        if features is not None:
            features = self._features(features, schema)

        latency = obj.get("latency_ms")
        latency_s = None
        if latency is not None:
            if isinstance(latency, bool) or not isinstance(latency, int | float):
                raise InvalidEvent(Reason.INVALID_LATENCY, "latency_ms must be a number")
            if not math.isfinite(latency) or latency < 0:
                raise InvalidEvent(Reason.INVALID_LATENCY, "latency_ms must be finite and >= 0")
            latency_s = latency / 1000.0

        segments = schema.segments.read(obj) if schema.segments else ()
        return Prediction(pid, schema.cfg.name, version, ts, scores, predicted, features, latency_s, ignored,
                          segments)

    @staticmethod
    def _label_set(value: Any, schema: _ModelSchema, field: str) -> np.ndarray:
        if not isinstance(value, list):
            raise InvalidEvent(Reason.WRONG_TYPE, f"{field} must be a list of labels")
        if len(value) > len(schema.labels):
            raise InvalidEvent(Reason.INVALID_LABELS, f"{field} lists more labels than are configured")
        out = np.zeros(len(schema.labels), dtype=bool)
        for label in value:
            if not isinstance(label, str):
                raise InvalidEvent(Reason.WRONG_TYPE, f"{field} must be a list of label names")
            i = schema.index.get(label)
            if i is None:
                raise InvalidEvent(Reason.UNKNOWN_LABEL, f"{field} names a label that is not configured")
            if out[i]:
                raise InvalidEvent(Reason.INVALID_LABELS, f"{field} lists a label twice")
            out[i] = True
        return out

    @staticmethod
    def _features(value: Any, schema: _ModelSchema) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise InvalidEvent(Reason.INVALID_FEATURES, "features must be an object")
        if len(value) > _FEATURES_MAX:
            raise InvalidEvent(Reason.INVALID_FEATURES, f"features has more than {_FEATURES_MAX} keys")
        for name in schema.numeric:
            v = value.get(name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise InvalidEvent(Reason.INVALID_FEATURES, f"features.{name} must be a finite number")
        for name in schema.categorical:
            v = value.get(name)
            if v is None:
                continue
            if not isinstance(v, str | int | bool):
                raise InvalidEvent(Reason.INVALID_FEATURES, f"features.{name} must be a string or integer")
        return value

    def _ground_truth(self, obj: dict[str, Any], pid: str, schema: _ModelSchema) -> GroundTruth:
        ts = parse_timestamp(obj.get("timestamp"))
        labels = obj.get("labels")
        n = len(schema.labels)
        if labels is None:
            raise InvalidEvent(Reason.MISSING_FIELD, "labels is missing")
        if isinstance(labels, list):
            actual = self._label_set(labels, schema, "labels")
            if schema.multiclass and int(actual.sum()) != 1:
                raise InvalidEvent(Reason.INVALID_LABELS, "multiclass labels must hold exactly one class",
                                   field="labels")
            return GroundTruth(pid, schema.cfg.name, ts, schema.all_known, actual, True)
        if isinstance(labels, dict):
            if schema.multiclass:
                raise InvalidEvent(Reason.INVALID_LABELS, "multiclass labels must be a list of one class",
                                   field="labels")
            if not labels:
                raise InvalidEvent(Reason.INVALID_LABELS, "labels must state at least one label")
            known = np.zeros(n, dtype=bool)
            actual = np.zeros(n, dtype=bool)
            for label, v in labels.items():
                i = schema.index.get(label)
                if i is None:
                    raise InvalidEvent(Reason.UNKNOWN_LABEL, "labels names a label that is not configured")
                if v is True or (type(v) is int and v == 1):
                    actual[i] = True
                elif not (v is False or (type(v) is int and v == 0)):
                    raise InvalidEvent(Reason.WRONG_TYPE, "partial labels must map label -> 0 or 1", field="labels")
                known[i] = True
            return GroundTruth(pid, schema.cfg.name, ts, known, actual, bool(known.all()))
        raise InvalidEvent(Reason.WRONG_TYPE, "labels must be a list or an object of label -> 0/1")


class BatchDecoder:
    """Decodes a batch of raw events, fast for the common shape and exact for everything else.

    The common shape (string id, RFC 3339 timestamp, a number in [0, 1] for every label, no served list,
    well-typed features, full ground truth as a list) is checked with plain comparisons and its scores
    become rows of one matrix per model, thresholded in one numpy call. Anything else goes through
    `Decoder`, which gives the precise rejection reason; so the fast path only has to be sure when it
    accepts, never when it rejects.
    """

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.max_bytes = decoder.max_bytes

    def predictions(self, raws: list[bytes]) -> list[Prediction | InvalidEvent]:
        out: list[Prediction | InvalidEvent | None] = [None] * len(raws)
        rows: dict[str, tuple[_ModelSchema, list[int], list[list[float]]]] = {}
        pending: list[tuple[int, str, str, str, float, dict[str, Any] | None, float | None, int]] = []
        for i, raw in enumerate(raws):
            try:
                obj, pid, schema, scores, ts = self._common(raw, "scores")
                row = [scores[label] for label in schema.labels]
                version = obj.get("model_version", "unknown")
                if type(version) is not str or not 0 < len(version) <= MAX_VERSION_LENGTH or "predicted" in obj:
                    raise ValueError
                for v in row:
                    if (type(v) is not float and type(v) is not int) or not 0.0 <= v <= 1.0:
                        raise ValueError
                features = obj.get("features")
                if features is not None and not _features_ok(features, schema):
                    raise ValueError
                latency = obj.get("latency_ms")
                if latency is not None:
                    if (type(latency) is not float and type(latency) is not int) or latency < 0:
                        raise ValueError
                    latency = latency / 1000.0
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                out[i] = self.decoder.decode_or_invalid(raw, ground_truth=False)
                continue
            entry = rows.get(schema.cfg.name)
            if entry is None:
                entry = rows[schema.cfg.name] = (schema, [], [])
            entry[1].append(i)
            entry[2].append(row)
            pending.append((i, pid, schema.cfg.name, version, ts, features, latency, len(scores) - len(schema.labels)))
        made: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for schema, idx, matrix in rows.values():
            S = np.array(matrix, dtype=np.float64)
            P = schema.thresholds <= S
            for k, i in enumerate(idx):
                made[i] = (S[k], P[k])
        for i, pid, model, version, ts, features, latency, ignored in pending:
            s, p = made[i]
            out[i] = Prediction(pid, model, version, ts, s, p, features, latency, ignored)
        return out  # type: ignore[return-value]

    def _common(self, raw: bytes, body: str) -> tuple[dict[str, Any], str, _ModelSchema, Any, float]:
        """(event, id, model schema, the event's `body` field, time) of a common-shape event; ValueError,
        KeyError or TypeError send the event to the exact decoder."""
        if len(raw) > self.max_bytes:
            raise ValueError
        obj = orjson.loads(raw)
        pid = obj["prediction_id"]
        schema = self.decoder.schemas[obj["model"]]
        value = obj[body]
        ts_raw = obj["timestamp"]
        if type(pid) is not str or not 0 < len(pid) <= MAX_ID_LENGTH or type(ts_raw) is not str or schema.multiclass:
            raise ValueError
        dt = datetime.fromisoformat(ts_raw)
        if dt.tzinfo is None:
            raise ValueError
        ts = dt.timestamp()
        if not EPOCH_2000 <= ts < EPOCH_2100:
            raise ValueError
        return obj, pid, schema, value, ts

    def ground_truth(self, raws: list[bytes]) -> list[GroundTruth | InvalidEvent]:
        out: list[GroundTruth | InvalidEvent] = []
        for raw in raws:
            try:
                _, pid, schema, labels, ts = self._common(raw, "labels")
                if type(labels) is not list:
                    raise ValueError
                stated = set(labels)
                if len(stated) != len(labels) or not stated <= schema.label_set:
                    raise ValueError
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                out.append(self.decoder.decode_or_invalid(raw, ground_truth=True))  # type: ignore[arg-type]
                continue
            actual = np.zeros(len(schema.labels), dtype=bool)
            for label in labels:
                actual[schema.index[label]] = True
            out.append(GroundTruth(pid, schema.cfg.name, ts, schema.all_known, actual, True))
        return out


def _features_ok(features: Any, schema: _ModelSchema) -> bool:
    if type(features) is not dict or len(features) > _FEATURES_MAX:
        return False
    for name in schema.numeric:
        v = features.get(name)
        if v is not None and type(v) is not float and type(v) is not int:
            return False
    for name in schema.categorical:
        v = features.get(name)
        if v is not None and type(v) is not str and type(v) is not int and type(v) is not bool:
            return False
    return True

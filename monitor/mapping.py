"""Reading logs of another shape (docs/attach.md): a model's `input:` mapping turns each message into a
native event, which the exact decoder (events.Decoder) then validates like any other.

One `TopicReader` per (side, topic) the config reads. A topic that only carries native events has no
reader work to do and keeps the fast decoders (`TopicReader.plain`). Otherwise each message is parsed
once, put in its envelope (the body alone, a CloudEvent, or a Kafka record), and given to the mapping
whose `model` expression names its model; native models on the same topic read it as it is.

Rejections name the native field and the expression that read it:
`missing_field: prediction_id is missing (fields.prediction_id = "id")`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from jmespath.exceptions import JMESPathError
from jmespath.visitor import TreeInterpreter

from monitor.config import (
    GroundTruthInput,
    ModelConfig,
    MonitorConfig,
    PredictionInput,
    compiled_expression,
    literal_value,
    simple_path,
)
from monitor.conventions import Reason
from monitor.events import Decoder, GroundTruth, InvalidEvent, Prediction, parse_json

PREDICTIONS = "predictions"
GROUND_TRUTH = "ground_truth"


@dataclass(frozen=True, slots=True)
class RecordMeta:
    """What Kafka carries beside the message value; envelopes other than `none` read it."""

    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_ms: int | None = None


# One interpreter for every search: jmespath's own `search` builds a new one per call, which costs more
# than most expressions' evaluation.
_INTERPRETER = TreeInterpreter()


def evaluator(expression: str) -> Callable[[Any], Any]:
    """A function evaluating `expression` on a document, as JMESPath defines it. Simple paths (names and
    indexes, config.simple_path) are walked directly, which gives the same result several times faster."""
    steps = simple_path(expression)
    if steps is None:
        parsed = compiled_expression(expression).parsed
        return lambda doc: _INTERPRETER.visit(parsed, doc)  # may raise JMESPathError (a function's type)
    if len(steps) == 1 and isinstance(steps[0], str):
        name = steps[0]
        return lambda doc: doc.get(name) if type(doc) is dict else None

    def walk(doc: Any) -> Any:
        value = doc
        for step in steps:
            if type(step) is str:
                if type(value) is not dict:
                    return None
                value = value.get(step)
            else:
                if type(value) is not list or step >= len(value):  # type: ignore[operator]
                    return None
                value = value[step]  # type: ignore[index]
        return value

    return walk


class _Field:
    __slots__ = ("expression", "get", "name")

    def __init__(self, name: str, expression: str) -> None:
        self.name = name
        self.expression = expression
        get = evaluator(expression)
        if simple_path(expression) is not None:
            self.get = get
        else:
            def checked(doc: Any) -> Any:
                try:
                    return get(doc)
                except JMESPathError:  # e.g. length() of a number: this message, not the config, is at fault
                    raise self.fail(Reason.WRONG_TYPE, f"{name} cannot be read from this message") from None

            self.get = checked

    def fail(self, reason: str, detail: str) -> InvalidEvent:
        return InvalidEvent(reason, f"{detail} {self.where}", field=self.name.split(".", 1)[0],
                            expression=self.expression)

    @property
    def where(self) -> str:
        return f"(fields.{self.name} = {orjson.dumps(self.expression).decode()})"


class SideMapping:
    """One model's mapping of one side: from an envelope document to a native event object."""

    def __init__(self, model: ModelConfig, side: str, spec: PredictionInput | GroundTruthInput) -> None:
        self.model = model
        self.side = side
        self.labels = list(model.labels)
        fields = spec.fields
        self.model_field = _Field("model", fields.model)
        is_literal, value = literal_value(fields.model)
        self.constant_model = value if is_literal else None
        self.when = _Field("when", spec.when).get if spec.when is not None else None
        self.fields: dict[str, _Field] = {}
        self.feature_fields: list[_Field] | None = None
        for name, expression in fields.model_dump(exclude={"model"}).items():
            if expression is None:
                continue
            if isinstance(expression, dict):
                self.feature_fields = [_Field(f"{name}.{k}", v) for k, v in expression.items()]
            else:
                self.fields[name] = _Field(name, expression)

    def selects(self, doc: Any) -> bool:
        """False for a message `when` leaves out (not an event of this side at all)."""
        return self.when is None or _truthy(self.when(doc))

    def claims(self, doc: Any) -> bool:
        """Whether this message is one of this model's events (its `model` expression names the model)."""
        return self.constant_model is not None or self.model_field.get(doc) == self.model.name

    def to_native(self, doc: Any) -> dict[str, Any]:
        """The native event object; structural problems (a list where an object was expected, a label list
        that does not fit the scores) are rejected here, everything else by the exact decoder."""
        out: dict[str, Any] = {"model": self.model.name}
        for name, field in self.fields.items():
            value = field.get(doc)
            if value is not None:
                out[name] = value
        if self.feature_fields is not None:
            features = {f.name.split(".", 1)[1]: v for f in self.feature_fields if (v := f.get(doc)) is not None}
            out["features"] = features
        if self.side == PREDICTIONS:
            self._scores(out)
            self._predicted(out)
        else:
            self._labels(out)
        out.pop("score_labels", None)
        return out

    def _scores(self, out: dict[str, Any]) -> None:
        scores = out.get("scores")
        field = self.fields["scores"]
        if scores is None or isinstance(scores, dict):
            return
        if isinstance(scores, list):
            names_field = self.fields.get("score_labels")
            if names_field is not None:
                names = out.get("score_labels")
                if names is None:
                    raise names_field.fail(Reason.MISSING_FIELD, "score_labels is missing")
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise names_field.fail(Reason.WRONG_TYPE, "score_labels must be a list of label names")
                if len(names) != len(scores):
                    raise names_field.fail(Reason.INVALID_LABELS,
                                           f"score_labels has {len(names)} names for {len(scores)} scores")
                if len(set(names)) != len(names):
                    raise names_field.fail(Reason.INVALID_LABELS, "score_labels lists a label twice")
            else:
                if len(scores) != len(self.labels):
                    raise field.fail(Reason.MISSING_SCORE if len(scores) < len(self.labels) else Reason.INVALID_LABELS,
                                     f"scores has {len(scores)} values for {len(self.labels)} configured labels")
                names = self.labels
            out["scores"] = dict(zip(names, scores, strict=True))
        elif len(self.labels) == 1 and isinstance(scores, int | float) and not isinstance(scores, bool):
            out["scores"] = {self.labels[0]: scores}
        else:
            raise field.fail(Reason.WRONG_TYPE, "scores must be an object of label -> score, a list of scores"
                             + (" or a number" if len(self.labels) == 1 else ""))

    def _predicted(self, out: dict[str, Any]) -> None:
        value = out.get("predicted")
        if value is not None:
            out["predicted"] = self._label_list(value, self.fields["predicted"])

    def _labels(self, out: dict[str, Any]) -> None:
        value = out.get("labels")
        if value is not None and not isinstance(value, dict):
            out["labels"] = self._label_list(value, self.fields["labels"])

    def _label_list(self, value: Any, field: _Field) -> Any:
        """A list of names as it is; one name; a 0/1 vector aligned with the labels; 0/1 for one label."""
        if isinstance(value, str):
            return [value]
        if _is_flag(value) and len(self.labels) == 1:
            return [self.labels[0]] if value else []
        if isinstance(value, list) and value and all(_is_flag(v) for v in value):
            if len(value) != len(self.labels):
                raise field.fail(Reason.INVALID_LABELS, f"{field.name} as 0/1 has {len(value)} entries for "
                                 f"{len(self.labels)} configured labels")
            return [label for label, v in zip(self.labels, value, strict=True) if v]
        if isinstance(value, list):
            return value
        raise field.fail(Reason.WRONG_TYPE, f"{field.name} must be a list of labels, one label, or 0/1 per label")

    def explain(self, exc: InvalidEvent) -> InvalidEvent:
        """The decoder's rejection of a mapped event, with the expression that read the field at fault."""
        field = self.fields.get(exc.field or "") if exc.field != "model" else self.model_field
        if exc.field == "features" and self.feature_fields is not None:  # one expression per feature
            named = exc.detail.split(" ", 1)[0]
            field = next((f for f in self.feature_fields if f.name == named), None)
        if field is None or exc.expression is not None:
            return exc
        return InvalidEvent(exc.reason, f"{exc.detail} {field.where}", exc.model, exc.field, field.expression)


def _truthy(value: Any) -> bool:
    # JMESPath's truth: false, null, and empty strings, lists and objects are false.
    return not (value is None or value is False or value in ("", [], {}))


def _is_flag(value: Any) -> bool:
    return value is True or value is False or (type(value) is int and value in (0, 1))


# --- envelopes ---------------------------------------------------------------------------------------------
def _header_text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def cloudevent(body: Any, meta: RecordMeta | None) -> Any:
    """The CloudEvent a Kafka record carries, as one object: attributes at the top, the payload in `data`.

    Binary content mode (the CloudEvents Kafka protocol binding): attributes are `ce_<name>` headers and
    the value is the data. Structured mode: the value is the whole event as JSON (`specversion`, `data`).
    """
    headers = meta.headers if meta is not None else ()
    attributes = {name[3:]: _header_text(value) for name, value in headers if name.startswith("ce_")}
    if "specversion" in attributes:
        content_type = next((v for k, v in headers if k.lower() == "content-type"), None)
        if content_type is not None:  # the binding maps datacontenttype to the content-type header
            attributes["datacontenttype"] = _header_text(content_type)
        attributes["data"] = body
        return attributes
    return body  # structured: already the event object (or not a CloudEvent, which the mapping will tell)


def kafka_record(body: Any, meta: RecordMeta | None) -> dict[str, Any]:
    """A Kafka record as one object: `key` (text), `headers` (name -> text), `timestamp` (ms), `value`."""
    meta = meta or RecordMeta()
    return {"key": _header_text(meta.key), "headers": {k: _header_text(v) for k, v in meta.headers},
            "timestamp": meta.timestamp_ms, "value": body}


class TopicReader:
    """Every way a message of one (side, topic) can be read: the mappings that read it, and whether
    native events are expected there too."""

    def __init__(self, config: MonitorConfig, side: str, topic: str, decoder: Decoder) -> None:
        self.side = side
        self.topic = topic
        self.decoder = decoder
        self.mappings: list[SideMapping] = []
        self.native = False
        envelopes = set()
        payloads = set()
        for m in config.models:
            if config.topic_of(m, side) != topic:
                continue
            spec = m.side_input(side)
            if spec is None:
                self.native = True
            else:
                self.mappings.append(SideMapping(m, side, spec))
                envelopes.add(spec.envelope)
                payloads.add(spec.payload)
        if len(envelopes) > 1:  # config validation forbids it; a guard for hand-built configs
            raise ValueError(f"topic {topic!r}: every model reading it must use the same envelope")
        self.envelope = envelopes.pop() if envelopes else "none"
        self.oip_protobuf = "oip-protobuf" in payloads
        self.plain = not self.mappings

    def decode(self, raw: bytes, meta: RecordMeta | None = None) -> Prediction | GroundTruth | InvalidEvent | None:
        """The event, its rejection, or None for a message no mapping's `when` selects."""
        ground_truth = self.side != PREDICTIONS
        if self.plain:
            return self.decoder.decode_or_invalid(raw, ground_truth)
        try:
            body = self._body(raw)
            doc = body
            if self.envelope == "cloudevents":
                doc = cloudevent(body, meta)
            elif self.envelope == "kafka":
                doc = kafka_record(body, meta)
            selected = [m for m in self.mappings if m.selects(doc)]
            if not selected and not self.native:
                return None  # not an event of this side: skipped, neither counted nor dead-lettered
            mapping = next((m for m in selected if m.claims(doc)), None)
            if mapping is None:
                if self.native and self.envelope == "none":
                    return self.decoder.decode_object(body, ground_truth)
                field = self.mappings[0].model_field
                if len(self.mappings) == 1:
                    return field.fail(Reason.UNKNOWN_MODEL, "model does not name the configured model")
                return InvalidEvent(Reason.UNKNOWN_MODEL, "model does not name a model configured for topic "
                                    f"{self.topic!r} (fields.model of each)", field="model")
            try:
                native = mapping.to_native(doc)
            except InvalidEvent as exc:
                exc.model = mapping.model.name
                return exc
            try:
                event = self.decoder.decode_object(native, ground_truth)
            except InvalidEvent as exc:
                return mapping.explain(exc)
            segments = self.decoder.schemas[mapping.model.name].segments
            if isinstance(event, Prediction) and segments.has_fields:
                event.segments = segments.read(native, doc)  # `field` segments read the message, not the event
            return event
        except InvalidEvent as exc:
            return exc


    def _body(self, raw: bytes) -> Any:
        if not self.oip_protobuf:
            return parse_json(raw, self.decoder.max_bytes) if self.envelope != "kafka" else _any_json(raw, self.decoder)
        try:
            return _any_json(raw, self.decoder)
        except InvalidEvent as exc:
            if exc.reason != Reason.INVALID_JSON:
                raise
        from monitor.oip_protobuf import OipDecodeError, decode_response

        try:
            return decode_response(raw)
        except OipDecodeError:
            raise InvalidEvent(Reason.INVALID_JSON, "the message is neither JSON nor a protobuf OIP "
                               "ModelInferResponse") from None


def _any_json(raw: bytes, decoder: Decoder) -> Any:
    """A Kafka record's value for the `kafka` envelope: any JSON (not only an object); None if empty."""
    if not raw:
        return None
    if len(raw) > decoder.max_bytes:
        raise InvalidEvent(Reason.OVERSIZED, f"message of {len(raw)} bytes exceeds {decoder.max_bytes}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidEvent(Reason.INVALID_JSON, "the message is not valid JSON") from None


def record_lines(lines: list[bytes]) -> tuple[list[bytes], list[RecordMeta]]:
    """Replay's file form of Kafka records, one JSON object a line: `value` (an object or array is the JSON
    value, a string the value's text) or `value_base64` (binary values such as protobuf), optional `key`
    (text), `headers` (name -> text) and `timestamp` (epoch ms). A line that is not such an object is kept
    as a value of its own (and rejected as such)."""
    values: list[bytes] = []
    metas: list[RecordMeta] = []
    for line in lines:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("value_base64"), str):
            try:
                obj["value"] = base64.b64decode(obj["value_base64"], validate=True)
            except binascii.Error:
                obj = None
        if not isinstance(obj, dict) or "value" not in obj:
            values.append(line)
            metas.append(RecordMeta())
            continue
        value = obj["value"]
        values.append(value if isinstance(value, bytes) else value.encode() if isinstance(value, str)
                      else b"" if value is None else orjson.dumps(value))
        key = obj.get("key")
        headers = obj.get("headers") or {}
        ts = obj.get("timestamp")
        metas.append(RecordMeta(
            key=key.encode() if isinstance(key, str) else None,
            headers=[(str(k), str(v).encode()) for k, v in headers.items()] if isinstance(headers, dict) else (),
            timestamp_ms=ts if type(ts) is int else None))
    return values, metas


def readers(config: MonitorConfig, decoder: Decoder) -> dict[tuple[str, str], TopicReader]:
    """One reader per (side, topic) the config reads."""
    return {(side, topic): TopicReader(config, side, topic, decoder) for side, topic in config.sources()}

"""One stream of events in foreign shapes (docs/attach.md): a flat custom log with a review table, KServe's
inference logger (CloudEvents, binary and structured mode, V2 bodies, request and response events), and
Seldon Core 2's model output topic (OIP V2 JSON, key = request id). Each shape comes with the `input:`
mapping that reads it; the native stream is the oracle's (tests/test_oracle.py).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from tests.events import rfc3339
from tests.test_oracle import GT, LABELS, THRESHOLDS, Pred, make_stream

KSERVE_REQUEST = "org.kubeflow.serving.inference.request"  # kserve pkg/logger/worker.go
KSERVE_RESPONSE = "org.kubeflow.serving.inference.response"


@dataclass
class Record:
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp_ms: int | None = None

    def line(self) -> bytes:
        """Replay's record-line form (mapping.record_lines)."""
        try:
            value: dict[str, str] = {"value": self.value.decode()}
        except UnicodeDecodeError:
            value = {"value_base64": base64.b64encode(self.value).decode()}
        return orjson.dumps({"key": self.key.decode() if self.key is not None else None,
                             "headers": {k: v.decode() for k, v in self.headers},
                             "timestamp": self.timestamp_ms, **value})


@dataclass
class Shape:
    name: str
    inputs: dict[str, Any]  # the model's `input:` section
    topics: dict[str, list[Record]]  # topic -> records
    envelopes: dict[str, str]

    def replay_inputs(self) -> dict[str, list[bytes]]:
        return {t: [r.value if self.envelopes[t] == "none" else r.line() for r in recs]
                for t, recs in self.topics.items()}


def ms_stream(seed: int, n: int = 2500) -> tuple[list[Pred], list[GT]]:
    """The oracle's stream with times on whole milliseconds (epoch-ms shapes carry no finer time)."""
    preds, gts = make_stream(seed, n)
    for x in [*preds, *gts]:
        x.ts = round(x.ts * 1000) / 1000
    return preds, gts


def served(p: Pred) -> list[int] | None:
    """The served 0/1 vector when the stream says a list was served, else None (thresholds decide)."""
    return None if np.array_equal(p.predicted, p.scores >= THRESHOLDS) else [int(v) for v in p.predicted]


def _ms(ts: float) -> int:
    return round(ts * 1000)


def review_table(gts: list[GT], topic: str = "review-results") -> tuple[dict[str, Any], list[Record]]:
    """Ground truth as a review table: full truth as a 0/1 vector, partial as an object."""
    recs = []
    for i, g in enumerate(sorted(gts, key=lambda g: g.order)):
        gold: Any = ([int(a) for a in g.actual] if g.full else
                     {x: int(a) for x, k, a in zip(LABELS, g.known, g.actual, strict=True) if k})
        recs.append(Record(orjson.dumps({"review_id": i, "request_id": g.pid, "reviewed_at": rfc3339(g.ts),
                                         "gold_labels": gold})))
    spec = {"topic": topic, "fields": {"model": "'m'", "prediction_id": "request_id", "timestamp": "reviewed_at",
                                       "labels": "gold_labels"}}
    return spec, recs


def flat_log(preds: list[Pred], gts: list[GT]) -> Shape:
    recs = []
    for p in preds:
        body: dict[str, Any] = {"id": p.pid, "model_name": "m", "model_version": p.version, "created_at": _ms(p.ts),
                                "outputs": [{"data": p.scores[::-1].tolist()}],
                                "parameters": {"label_names": LABELS[::-1]}}
        if (s := served(p)) is not None:
            body["served"] = s
        recs.append(Record(orjson.dumps(body)))
    gt_spec, gt_recs = review_table(gts)
    inputs = {"predictions": {"topic": "inference-log", "fields": {
        "model": "model_name", "prediction_id": "id", "timestamp": "created_at", "model_version": "model_version",
        "scores": "outputs[0].data", "score_labels": "parameters.label_names", "predicted": "served"}},
        "ground_truth": gt_spec}
    return Shape("flat", inputs, {"inference-log": recs, "review-results": gt_recs},
                 {"inference-log": "none", "review-results": "none"})


def kserve_event(ce_type: str, pid: str, ts: float, data: dict[str, Any], structured: bool) -> Record:
    """What a Knative KafkaSink writes for one CloudEvent of KServe's inference logger."""
    attributes = {"specversion": "1.0", "id": pid, "type": ce_type, "time": rfc3339(ts),
                  "source": "http://localhost:9081/", "inferenceservicename": "m", "namespace": "default",
                  "component": "predictor", "endpoint": "default", "metadata": "{}"}
    if structured:
        return Record(orjson.dumps({**attributes, "datacontenttype": "application/json", "data": data}),
                      headers=[("content-type", b"application/cloudevents+json")])
    return Record(orjson.dumps(data), headers=[("content-type", b"application/json"),
                                              *((f"ce_{k}", v.encode()) for k, v in attributes.items())])


def kserve(preds: list[Pred], gts: list[GT]) -> Shape:
    recs = []
    for i, p in enumerate(preds):
        structured = i % 3 == 0  # both content modes on one topic
        request = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["..."]}]}
        outputs = [{"name": "probabilities", "shape": [1, 3], "datatype": "FP32", "data": p.scores.tolist()}]
        if (s := served(p)) is not None:
            outputs.append({"name": "labels", "shape": [1, 3], "datatype": "INT64", "data": s})
        response = {"model_name": "m", "model_version": p.version, "id": p.pid, "outputs": outputs}
        recs.append(kserve_event(KSERVE_REQUEST, p.pid, p.ts, request, structured))
        recs.append(kserve_event(KSERVE_RESPONSE, p.pid, p.ts, response, structured))
    gt_spec, gt_recs = review_table(gts)
    inputs = {"predictions": {"topic": "kserve-log", "envelope": "cloudevents",
                              "when": f"type == '{KSERVE_RESPONSE}'", "fields": {
                                  "model": "inferenceservicename", "prediction_id": "id", "timestamp": "time",
                                  "model_version": "data.model_version",
                                  "scores": "data.outputs[?name=='probabilities'] | [0].data",
                                  "predicted": "data.outputs[?name=='labels'] | [0].data"}},
              "ground_truth": gt_spec}
    return Shape("kserve", inputs, {"kserve-log": recs, "review-results": gt_recs},
                 {"kserve-log": "cloudevents", "review-results": "none"})


def kserve_v1(preds: list[Pred], gts: list[GT]) -> Shape:
    """KServe V1 bodies ({"instances"} / {"predictions"}), binary mode, one instance per request; the custom
    predictor returns per instance its scores as an object, the served 0/1 vector and its version."""
    recs = []
    for p in preds:
        recs.append(kserve_event(KSERVE_REQUEST, p.pid, p.ts, {"instances": [["..."]]}, False))
        prediction = {"scores": dict(zip(LABELS, p.scores.tolist(), strict=True)), "served": served(p),
                      "model_version": p.version}
        recs.append(kserve_event(KSERVE_RESPONSE, p.pid, p.ts, {"predictions": [prediction]}, False))
    gt_spec, gt_recs = review_table(gts)
    inputs = {"predictions": {"topic": "kserve-v1-log", "envelope": "cloudevents",
                              "when": f"type == '{KSERVE_RESPONSE}'", "fields": {
                                  "model": "inferenceservicename", "prediction_id": "id", "timestamp": "time",
                                  "model_version": "data.predictions[0].model_version",
                                  "scores": "data.predictions[0].scores",
                                  "predicted": "data.predictions[0].served"}},
              "ground_truth": gt_spec}
    return Shape("kserve_v1", inputs, {"kserve-v1-log": recs, "review-results": gt_recs},
                 {"kserve-v1-log": "cloudevents", "review-results": "none"})


SELDON_OUTPUTS = "seldon.default.model.m.outputs"  # <topicPrefix>.<namespace>.model.<model>.outputs


def _oip_protobuf(p: Pred, s: list[int] | None) -> bytes:
    """A ModelInferResponse as Seldon's model gateway serializes it: scores as typed contents, the served
    vector as raw little-endian contents (both forms occur)."""
    from monitor.oip_protobuf import response_class

    msg = response_class()(model_name="m_1", model_version=p.version, id="3f1c0e6a")
    out = msg.outputs.add(name="predict_proba", datatype="FP64", shape=[1, 3])
    if s is None:
        out.contents.fp64_contents.extend(p.scores.tolist())
    else:  # raw contents are for every output or for none
        msg.outputs.add(name="predict", datatype="INT64", shape=[1, 3])
        msg.raw_output_contents.extend([np.asarray(p.scores, dtype="<f8").tobytes(),
                                        np.asarray(s, dtype="<i8").tobytes()])
    return msg.SerializeToString()


def seldon(preds: list[Pred], gts: list[GT], protobuf: bool = False) -> Shape:
    recs = []
    for p in preds:
        outputs = [{"name": "predict_proba", "shape": [1, 3], "datatype": "FP64", "data": p.scores.tolist()}]
        if (s := served(p)) is not None:
            outputs.append({"name": "predict", "shape": [1, 3], "datatype": "INT64", "data": s})
        body = {"model_name": "m_1", "model_version": p.version, "id": "3f1c0e6a", "parameters": {},
                "outputs": outputs}
        if protobuf:
            recs.append(Record(_oip_protobuf(p, s), key=p.pid.encode(),
                               headers=[("seldon-infer-type", b"proto/InferModelRequest")], timestamp_ms=_ms(p.ts)))
            continue
        recs.append(Record(orjson.dumps(body), key=p.pid.encode(),
                           headers=[("seldon-infer-type", b"json/inferModelRequest")], timestamp_ms=_ms(p.ts)))
    gt_recs = [Record(orjson.dumps({"labels": [x for x, a in zip(LABELS, g.actual, strict=True) if a] if g.full
                                    else {x: int(a) for x, k, a in zip(LABELS, g.known, g.actual, strict=True) if k}}),
                      key=g.pid.encode(), timestamp_ms=_ms(g.ts))
               for g in sorted(gts, key=lambda g: g.order)]
    inputs = {"predictions": {"topic": SELDON_OUTPUTS, "envelope": "kafka",
                              "payload": "oip-protobuf" if protobuf else "json", "fields": {
                  "model": "'m'", "prediction_id": "key", "timestamp": "timestamp",
                  "model_version": "value.model_version",
                  "scores": "value.outputs[?name=='predict_proba'] | [0].data",
                  "predicted": "value.outputs[?name=='predict'] | [0].data"}},
              "ground_truth": {"topic": "feedback", "envelope": "kafka", "fields": {
                  "model": "'m'", "prediction_id": "key", "timestamp": "timestamp", "labels": "value.labels"}}}
    return Shape("seldon", inputs, {SELDON_OUTPUTS: recs, "feedback": gt_recs},
                 {SELDON_OUTPUTS: "kafka", "feedback": "kafka"})


def seldon_protobuf(preds: list[Pred], gts: list[GT]) -> Shape:
    return seldon(preds, gts, protobuf=True)


SHAPES = {"flat": flat_log, "kserve": kserve, "kserve_v1": kserve_v1, "seldon": seldon,
          "seldon_protobuf": seldon_protobuf}


def renamed(shape: Shape, prefix: str) -> Shape:
    """The shape with topics of its own (`prefix`-<topic>), for tests on a shared broker."""
    def name(topic: str) -> str:
        return f"{prefix}-{topic}"

    inputs = {side: {**spec, "topic": name(spec["topic"])} for side, spec in shape.inputs.items()}
    return Shape(shape.name, inputs, {name(t): r for t, r in shape.topics.items()},
                 {name(t): e for t, e in shape.envelopes.items()})
